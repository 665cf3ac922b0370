//! Hostile inputs too large to store, made at run time and run through
//! the real binary: lines of 10 MB (accepted) and past the 16 MiB cap
//! (refused, in every format and in predict), tables whose shape would
//! cost memory in proportion to rows x columns if read densely, and
//! devices given where a file is expected.

mod common;

use std::path::Path;

use common::{polyhead, scratch, Run};

const SMALL: &[&str] = &[
    "--epochs",
    "1",
    "--embed-dim",
    "4",
    "--filters",
    "3",
    "--kernel-size",
    "2",
    "--hidden",
    "2",
    "-q",
];

fn good_model() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/models/good.safetensors");
    path.to_str().unwrap().to_string()
}

fn train(dir: &Path, file: &str, extra: &[&str]) -> Run {
    let mut args = vec!["train", "--data", file, "--out", "m.safetensors"];
    args.extend(SMALL);
    args.extend(extra);
    polyhead(dir, &args)
}

/// The single error line, after checking exit 1 and no panic.
fn error_of(run: Run) -> String {
    let run = run.fails(1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("polyhead: warning:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    errors[0].to_string()
}

/// `count` words of text, about `count * 6` bytes.
fn words(count: usize) -> String {
    (0..count)
        .map(|i| ["alpha", "beta", "gamma", "delta"][i % 4])
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_ten_megabyte_line_is_read() {
    let dir = scratch("gen-10mb");
    let text = words(2 << 20);
    assert!(text.len() >= 10 << 20 && text.len() < 16 << 20);
    let table = format!("text\ttopic\n{text}\tx\nshort one\ty\n");
    std::fs::write(dir.join("t.tsv"), table).unwrap();
    let run = train(&dir, "t.tsv", &[]).ok();
    assert!(!run.stderr.contains("longer than"), "{}", run.stderr);

    std::fs::write(dir.join("p.txt"), format!("{text}\nsecond\n")).unwrap();
    let run = polyhead(&dir, &["predict", "--model", &good_model(), "p.txt"]).ok();
    assert_eq!(run.stdout.lines().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lines_past_sixteen_mebibytes_are_refused_in_every_format() {
    let dir = scratch("gen-17mb");
    std::fs::write(dir.join("m.safetensors"), b"earlier").unwrap();
    let long = "a".repeat(17 << 20);

    let csv = format!("text,topic\nb,x\n\"{long}\",y\n");
    std::fs::write(dir.join("long.csv"), csv).unwrap();
    let error = error_of(train(&dir, "long.csv", &[]));
    assert!(
        error.contains("long.csv:3: record longer than 16 MiB"),
        "{error}"
    );

    let jsonl = format!("{{\"text\": \"b\", \"topic\": \"x\"}}\n{{\"text\": \"{long}\"}}\n");
    std::fs::write(dir.join("long.jsonl"), jsonl).unwrap();
    let error = error_of(train(&dir, "long.jsonl", &[]));
    assert!(
        error.contains("long.jsonl:2: line longer than 16 MiB"),
        "{error}"
    );

    std::fs::write(dir.join("long.txt"), format!("fine\n{long}\n")).unwrap();
    let run = polyhead(&dir, &["predict", "--model", &good_model(), "long.txt"]);
    let error = error_of(run);
    assert!(
        error.contains("long.txt:2: line longer than 16 MiB"),
        "{error}"
    );

    assert_eq!(
        std::fs::read(dir.join("m.safetensors")).unwrap(),
        b"earlier"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A header of 200,000 columns over 50,000 one-field rows: read densely
/// that is 10^10 cells (about 240 GB); read sparsely, a few MB.
#[test]
fn a_wide_header_over_short_rows_costs_what_the_file_holds() {
    let dir = scratch("gen-wide");
    let mut table = String::from("text\ttopic");
    for i in 0..200_000 {
        table += &format!("\tc{i}");
    }
    table += "\n";
    for i in 0..50_000 {
        table += if i % 2 == 0 { "a b\tx\n" } else { "c d\ty\n" };
    }
    std::fs::write(dir.join("wide.tsv"), table).unwrap();
    let run = train(&dir, "wide.tsv", &["--tasks", "topic"]).ok();
    assert!(!run.stderr.contains("error"), "{}", run.stderr);

    // Without --tasks every column is a task: the error lists a few names.
    let error = error_of(train(&dir, "wide.tsv", &[]));
    assert!(
        error.contains("task \"c0\" has no label in any row"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 30,000 JSON lines each naming a new key: read densely, 9 * 10^8 cells.
#[test]
fn json_lines_each_with_a_new_key_cost_what_the_file_holds() {
    let dir = scratch("gen-keys");
    let mut jsonl = String::new();
    for i in 0..30_000 {
        let label = if i % 2 == 0 { "x" } else { "y" };
        jsonl += &format!("{{\"text\": \"a b\", \"topic\": \"{label}\", \"k{i}\": 1}}\n");
    }
    std::fs::write(dir.join("keys.jsonl"), jsonl).unwrap();
    train(&dir, "keys.jsonl", &["--tasks", "topic"]).ok();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A device of endless bytes given as data is refused at once instead of
/// being read into memory.
#[test]
fn endless_devices_as_input() {
    if !Path::new("/dev/zero").exists() {
        println!("endless_devices_as_input: skipped: no /dev/zero");
        return;
    }
    let dir = scratch("gen-devzero");
    let run = polyhead(
        &dir,
        &[
            "train",
            "--train",
            "/dev/zero",
            "--format",
            "csv",
            "--epochs",
            "1",
        ],
    );
    let error = error_of(run);
    assert!(error.contains("/dev/zero:1:1: NUL byte"), "{error}");

    for format in ["tsv", "jsonl"] {
        let run = polyhead(&dir, &["train", "--train", "/dev/zero", "--format", format]);
        let error = error_of(run);
        assert!(
            error.contains("/dev/zero:1: line longer than 16 MiB"),
            "{error}"
        );
    }
    let run = polyhead(&dir, &["predict", "--model", &good_model(), "/dev/zero"]);
    let error = error_of(run);
    assert!(
        error.contains("/dev/zero:1: line longer than 16 MiB"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_path_that_cannot_be_written_is_refused_before_training() {
    let dir = scratch("gen-out");
    std::fs::write(dir.join("t.tsv"), "text\ttopic\na\tx\nb\ty\n").unwrap();
    std::fs::create_dir(dir.join("folder")).unwrap();
    for (out, fragment) in [
        ("folder", "--out folder: is a directory"),
        (
            "absent/m.safetensors",
            "--out absent/m.safetensors: the folder does not exist",
        ),
    ] {
        let run = polyhead(&dir, &["train", "--data", "t.tsv", "--out", out]).fails(2);
        assert!(run.stderr.contains(fragment), "{}", run.stderr);
        assert!(
            !run.stderr.contains("epoch"),
            "trained first: {}",
            run.stderr
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sizes past what the loader accepts would train a model nothing can load.
#[test]
fn sizes_the_loader_would_refuse_are_refused_before_training() {
    let dir = scratch("gen-sizes");
    std::fs::write(dir.join("t.tsv"), "text\ttopic\na\tx\nb\ty\n").unwrap();
    for flag in [
        "--max-len",
        "--embed-dim",
        "--filters",
        "--kernel-size",
        "--hidden",
    ] {
        let run = polyhead(&dir, &["train", "--data", "t.tsv", flag, "65537"]).fails(2);
        let expected = format!("{flag} must be at most 65536, got 65537");
        assert!(run.stderr.contains(&expected), "{}", run.stderr);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
