//! The token cache: a second run on the same data reads its tokens from the
//! cache and trains the same model, and a cache that cannot be used never
//! stops a run.

mod common;

use std::path::Path;
use std::process::Command;

use common::{scratch, Run};

/// `polyhead ARGS` in `dir` with `POLYHEAD_CACHE_DIR` set to `cache`.
fn polyhead_with_cache(dir: &Path, cache: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_polyhead"))
        .args(args)
        .current_dir(dir)
        .env("POLYHEAD_CACHE_DIR", cache)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_data(dir: &Path) {
    let mut train = String::from("text\ttopic\tmood\n");
    for i in 0..600 {
        let topic = ["sport", "music", "food"][i % 3];
        let mood = ["good", "bad"][i % 2];
        train.push_str(&format!(
            "{topic} talk number {i} was {mood} indeed\t{topic}\t{mood}\n"
        ));
    }
    std::fs::write(dir.join("train.tsv"), &train).unwrap();
    std::fs::write(dir.join("valid.tsv"), &train[..2000]).unwrap();
}

fn train(dir: &Path, cache: &str, out: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "train",
        "--train",
        "train.tsv",
        "--valid",
        "valid.tsv",
        "--epochs",
        "2",
        "--threads",
        "2",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    polyhead_with_cache(dir, cache, &args).ok()
}

fn cache_entries(cache: &Path) -> usize {
    std::fs::read_dir(cache).map_or(0, |d| d.count())
}

#[test]
fn second_run_reads_tokens_from_the_cache_and_trains_the_same_model() {
    let dir = scratch("token-cache");
    write_data(&dir);
    let cache = dir.join("cache");
    let cache_arg = cache.to_str().unwrap();

    let first = train(&dir, cache_arg, "first.safetensors", &[]);
    assert!(
        first.stderr.contains("read and tokenised in"),
        "{}",
        first.stderr
    );
    assert_eq!(cache_entries(&cache), 2, "one entry per table");

    let second = train(&dir, cache_arg, "second.safetensors", &[]);
    assert!(
        second
            .stderr
            .contains("tokens of 2 of 2 tables from the token cache"),
        "{}",
        second.stderr
    );
    let uncached = train(&dir, cache_arg, "uncached.safetensors", &["--no-cache"]);
    assert!(
        uncached.stderr.contains("read and tokenised in"),
        "{}",
        uncached.stderr
    );

    let first = std::fs::read(dir.join("first.safetensors")).unwrap();
    assert_eq!(
        first,
        std::fs::read(dir.join("second.safetensors")).unwrap()
    );
    assert_eq!(
        first,
        std::fs::read(dir.join("uncached.safetensors")).unwrap()
    );
}

#[test]
fn changed_data_is_tokenised_again() {
    let dir = scratch("token-cache-changed");
    write_data(&dir);
    let cache = dir.join("cache");
    let cache_arg = cache.to_str().unwrap();
    train(&dir, cache_arg, "m.safetensors", &[]);

    let mut text = std::fs::read_to_string(dir.join("train.tsv")).unwrap();
    text = text.replacen("sport talk number 0", "sport chat number 0", 1);
    std::fs::write(dir.join("train.tsv"), text).unwrap();
    let run = train(&dir, cache_arg, "m.safetensors", &[]);
    assert!(
        run.stderr
            .contains("tokens of 1 of 2 tables from the token cache"),
        "{}",
        run.stderr
    );
    assert_eq!(cache_entries(&cache), 3);
}

#[test]
fn no_cache_and_an_empty_cache_dir_write_nothing() {
    let dir = scratch("token-cache-off");
    write_data(&dir);
    let cache = dir.join("cache");
    train(
        &dir,
        cache.to_str().unwrap(),
        "m.safetensors",
        &["--no-cache"],
    );
    assert!(!cache.exists(), "--no-cache wrote a cache");

    let run = train(&dir, "", "m.safetensors", &[]);
    assert!(
        run.stderr.contains("read and tokenised in"),
        "{}",
        run.stderr
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("tokens-")), "{names:?}");
}

#[test]
fn unusable_cache_folder_does_not_stop_training() {
    let dir = scratch("token-cache-blocked");
    write_data(&dir);
    let blocked = dir.join("not-a-folder");
    std::fs::write(&blocked, b"a file where the cache folder would be").unwrap();
    let run = train(&dir, blocked.to_str().unwrap(), "m.safetensors", &[]);
    assert!(
        run.stderr.contains("read and tokenised in"),
        "{}",
        run.stderr
    );
    assert!(dir.join("m.safetensors").exists());
    assert!(
        run.stderr.contains(&format!(
            "warning: the token cache could not store tokens: {}: not a folder",
            blocked.display()
        )),
        "{}",
        run.stderr
    );
}
