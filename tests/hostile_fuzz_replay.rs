//! Replays, without cargo-fuzz, every input a fuzz target once crashed on
//! (tests/hostile/fuzz/<target>/) and the whole stored corpus through the
//! checks the fuzz targets make (fuzz/fuzz_targets/checks.rs).

use std::path::{Path, PathBuf};

use polyhead::data::table::Format;

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

fn files(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every file of the target's crash folder and of
/// `corpus`; returns how many inputs were replayed.
fn replay(target: &str, corpus: &[&str], check: impl Fn(&[u8])) -> usize {
    let crashes = files(&format!("tests/hostile/fuzz/{target}"));
    let stored = corpus.iter().flat_map(|c| files(c));
    let mut count = 0;
    for path in crashes.into_iter().chain(stored) {
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        count += 1;
    }
    count
}

const TABLES: &[&str] = &["tests/hostile/data", "tests/hostile/state"];

#[test]
fn table_readers() {
    for (target, format) in [
        ("table_tsv", Format::Tsv),
        ("table_csv", Format::Csv),
        ("table_jsonl", Format::Jsonl),
    ] {
        let replayed = replay(target, TABLES, |bytes| checks::table(bytes, format));
        assert!(replayed > 50, "{target}: {replayed} inputs");
    }
}

#[test]
fn tokenizer() {
    let replayed = replay("tokenizer", TABLES, |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            checks::tokenizer(text);
        }
    });
    assert!(replayed > 50, "{replayed} inputs");
}

#[test]
fn model_file() {
    let replayed = replay("model_file", &["tests/hostile/models"], checks::model_file);
    assert!(replayed > 30, "{replayed} inputs");
}

#[test]
fn run_state() {
    let replayed = replay("run_state", &["tests/hostile/state"], checks::run_state);
    assert!(replayed > 15, "{replayed} inputs");
}
