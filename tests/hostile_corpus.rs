//! The hostile-input corpus in tests/hostile/ (written by
//! tests/hostile/make_corpus.py), run through the real binary: each file
//! with the command it breaks, the exit code and the fragment its one
//! error line must hold.
//!
//! Every refused input must give exit 1 (2 for a misuse of the command
//! line), exactly one error line naming the file, no panic, no backtrace,
//! and leave the files already written (an earlier model at `--out`, the
//! model and state of a run being resumed) byte for byte as they were.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{polyhead, scratch, Run};

fn corpus(folder: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(folder)
}

/// What an existing `--out` file holds before a run that must not touch it.
const EARLIER_MODEL: &[u8] = b"a model written by an earlier run";

#[derive(Clone, Copy, Debug)]
enum Command {
    /// `train --data FILE`
    Train,
    /// `train --train <good table> --valid FILE`
    Valid,
    /// `eval --model <good model> --data FILE`
    Eval,
    /// `predict --model <good model> FILE`
    Predict,
}

struct Case {
    file: &'static str,
    command: Command,
    exit: i32,
    /// On failure: fragments of the one error line. On success: fragments
    /// of the output (stdout and stderr together).
    expect: &'static [&'static str],
}

const fn case(
    file: &'static str,
    command: Command,
    exit: i32,
    expect: &'static [&'static str],
) -> Case {
    Case {
        file,
        command,
        exit,
        expect,
    }
}

use Command::{Eval, Predict, Train, Valid};

const DATA_CASES: &[Case] = &[
    // Invalid UTF-8, located by line and character column.
    case("utf8_in_header.tsv", Train, 1, &[":1:3: invalid UTF-8"]),
    case("utf8_text_start.tsv", Train, 1, &[":3:1: invalid UTF-8"]),
    case("utf8_in_label.tsv", Train, 1, &[":2:8: invalid UTF-8"]),
    case("utf8_cut_at_eof.tsv", Train, 1, &[":3:3: invalid UTF-8"]),
    case("utf8_overlong.tsv", Train, 1, &[":2:3: invalid UTF-8"]),
    case("utf8_surrogate.jsonl", Train, 1, &[":1:12: invalid UTF-8"]),
    case(
        "utf8_in_quoted_newline.csv",
        Train,
        1,
        &[":3:6: invalid UTF-8"],
    ),
    case("utf8_predict.txt", Predict, 1, &[":2:1: invalid UTF-8"]),
    case(
        "utf16_with_bom.tsv",
        Train,
        1,
        &[":1:1: the file is UTF-16"],
    ),
    // Byte-order marks: dropped at the start, refused anywhere else.
    case("bom_in_header.tsv", Train, 0, &["topic: 2 classes"]),
    case("bom_in_header.csv", Train, 0, &["topic: 2 classes"]),
    case("bom_in_header.csv", Predict, 0, &["predicted 2 texts"]),
    case(
        "bom_middle_line.tsv",
        Train,
        1,
        &[":3:1: byte-order mark (U+FEFF)"],
    ),
    case(
        "bom_joined_files.tsv",
        Train,
        1,
        &[":3:1: byte-order mark", "joined"],
    ),
    case(
        "bom_joined_files.tsv",
        Predict,
        1,
        &[":3:1: byte-order mark"],
    ),
    case(
        "bom_middle_record.csv",
        Train,
        1,
        &[":3:1: byte-order mark"],
    ),
    case(
        "bom_twice_at_start.tsv",
        Train,
        1,
        &[":1:1: byte-order mark (U+FEFF)"],
    ),
    // Line ends: LF and CRLF mixed are fine, CR alone is refused.
    case(
        "crlf_mixed_with_lf.tsv",
        Train,
        0,
        &["topic: 2 classes, 3 labelled"],
    ),
    case("cr_only.tsv", Train, 1, &[":1:11: carriage return (CR)"]),
    case("cr_only.jsonl", Train, 1, &[":1:28: carriage return (CR)"]),
    case(
        "fuzz_csv_bare_cr_lines.csv",
        Train,
        1,
        &[":1:11: carriage return (CR)"],
    ),
    case(
        "csv_crlf_error_line.csv",
        Train,
        1,
        &[":5: row has 3 fields, the header has 2"],
    ),
    // Ragged rows and quoting.
    case(
        "row_short.tsv",
        Train,
        0,
        &["1 row with no label for any task, skipped"],
    ),
    case("row_short.tsv", Predict, 0, &["predicted 3 texts"]),
    case(
        "row_long.csv",
        Train,
        1,
        &[":3: row has 3 fields, the header has 2"],
    ),
    case(
        "csv_unterminated_quote.csv",
        Train,
        1,
        &[":3: a quoted field opened here is never closed"],
    ),
    case(
        "csv_quote_in_header.csv",
        Train,
        1,
        &[":1: a quoted field opened here is never closed"],
    ),
    case("csv_stray_quotes.csv", Train, 0, &["topic: 2 classes"]),
    case(
        "tsv_quotes_are_text.tsv",
        Train,
        0,
        &["train 3 used of 3 read", "topic: 3 classes"],
    ),
    // Labels and texts.
    case(
        "one_class.tsv",
        Train,
        0,
        &["task \"topic\" has a single class (\"x\"): nothing to learn"],
    ),
    case(
        "header_only.csv",
        Train,
        1,
        &["header_only.csv: task \"topic\" has no label in any row"],
    ),
    case("empty.csv", Train, 1, &["empty.csv: empty file"]),
    case("empty.jsonl", Train, 1, &["empty.jsonl: empty file"]),
    case(
        "blank_lines_only.jsonl",
        Train,
        1,
        &["blank_lines_only.jsonl: empty file"],
    ),
    case(
        "all_texts_empty.tsv",
        Train,
        1,
        &["no row with both a text and a label"],
    ),
    case(
        "all_texts_blank.tsv",
        Train,
        1,
        &["no row with both a text and a label"],
    ),
    case(
        "some_texts_empty.tsv",
        Train,
        0,
        &["2 empty texts (no tokens), skipped"],
    ),
    case(
        "header_duplicate.csv",
        Train,
        1,
        &[":1: column \"topic\" appears twice"],
    ),
    case(
        "header_duplicate_after_trim.tsv",
        Train,
        1,
        &[":1: column \"topic\" appears twice"],
    ),
    case(
        "header_empty_name.tsv",
        Train,
        1,
        &[":1: field 3 of the header is empty"],
    ),
    case(
        "eval_missing_task_column.tsv",
        Eval,
        1,
        &["no column \"mood\" (columns: text, topic)"],
    ),
    case(
        "eval_task_all_missing.tsv",
        Eval,
        0,
        &["== mood: 0 labelled rows", "no labelled rows"],
    ),
    case(
        "eval_unseen_label.tsv",
        Eval,
        0,
        &["1 row with a label unknown to the model, counted as errors"],
    ),
    case(
        "valid_unseen_label.tsv",
        Valid,
        1,
        &[":3: task \"mood\": label \"sad\" never appeared in training"],
    ),
    // NUL bytes.
    case("nul_in_text.tsv", Train, 1, &[":2:2: NUL byte"]),
    case("nul_in_field.csv", Train, 1, &[":3:3: NUL byte"]),
    case("nul_in_field.csv", Predict, 1, &[":3:3: NUL byte"]),
    case("nul_predict.txt", Predict, 1, &[":2:2: NUL byte"]),
    // JSON Lines.
    case(
        "json_field_array.jsonl",
        Train,
        1,
        &[":1: field \"text\" holds an array"],
    ),
    case(
        "json_field_array.jsonl",
        Predict,
        1,
        &[":1: field \"text\" holds an array"],
    ),
    case(
        "json_field_object.jsonl",
        Train,
        1,
        &[":1: field \"topic\" holds an object"],
    ),
    case("json_number_labels.jsonl", Train, 0, &["topic: 3 classes"]),
    case(
        "json_top_number.jsonl",
        Train,
        1,
        &[":2: expected a JSON object, found a number"],
    ),
    case(
        "json_top_string.jsonl",
        Train,
        1,
        &[":1: expected a JSON object, found a string"],
    ),
    case(
        "json_top_null.jsonl",
        Train,
        1,
        &[":1: expected a JSON object, found null"],
    ),
    case(
        "json_duplicate_key.jsonl",
        Train,
        1,
        &[":1:35: key \"topic\" appears twice"],
    ),
    case(
        "json_duplicate_key.jsonl",
        Predict,
        1,
        &[":1:35: key \"topic\" appears twice"],
    ),
    case(
        "json_trailing_comma.jsonl",
        Train,
        1,
        &[":1:28: not valid JSON: trailing comma"],
    ),
    case(
        "json_unterminated_string.jsonl",
        Train,
        1,
        &[":1:15: not valid JSON: expected `,` or `}`"],
    ),
    case(
        "json_deep_nesting.jsonl",
        Train,
        1,
        &[":1:136: not valid JSON: recursion limit exceeded"],
    ),
    case(
        "json_missing_text.jsonl",
        Train,
        2,
        &["no column \"text\" (columns: topic, body); choose the text column"],
    ),
];

/// CSV records after CRLF line ends (and blank lines) are numbered by the
/// line they start on: the csv reader alone numbers them a line early.
#[test]
fn crlf_csv_records_keep_their_lines() {
    let dir = scratch("hostile-crlf-lines");
    let file = "csv_crlf_records.csv";
    copy_into(&dir, &corpus("data").join(file), file);
    let model = corpus("models").join("good.safetensors");
    let run = polyhead(&dir, &["predict", "--model", model.to_str().unwrap(), file]).ok();
    let lines: Vec<i64> = common::json_lines(&run.stdout)
        .iter()
        .map(|r| r["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 6]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `predict --model FILE` on each damaged model: fragments of the error.
const MODEL_CASES: &[(&str, &str)] = &[
    (
        "labels_vs_config.safetensors",
        "metadata \"labels\" disagrees with the tasks and classes in \"config\"",
    ),
    ("bias_bit_flipped.safetensors", "but the weights hash to"),
    (
        "empty.safetensors",
        "invalid safetensors file: header too small",
    ),
    (
        "truncated.safetensors",
        "invalid safetensors file: incomplete metadata",
    ),
    (
        "cut_in_header.safetensors",
        "invalid safetensors file: invalid header length",
    ),
    (
        "header_length_1tib.safetensors",
        "invalid safetensors file: header too large",
    ),
    (
        "header_length_past_end.safetensors",
        "invalid safetensors file: invalid header length",
    ),
    (
        "header_not_json.safetensors",
        "invalid safetensors file: invalid JSON in header",
    ),
    (
        "header_key_altered.safetensors",
        "missing field `data_offsets`",
    ),
    (
        "header_offset_altered.safetensors",
        "invalid offset for tensor `conv.bias`",
    ),
    ("not_safetensors.bin", "invalid safetensors file"),
    (
        "shape_vs_config.safetensors",
        "tensor conv.weight has shape [3, 4, 2], the metadata implies [4, 4, 2]",
    ),
    (
        "embedding_transposed.safetensors",
        "tensor embedding.weight is F32 [4, 10], expected F32 [rows, 4]",
    ),
    ("tensor_missing.safetensors", "tensor conv.bias is missing"),
    ("tensor_extra.safetensors", "unexpected tensor extra.weight"),
    (
        "tensor_nan.safetensors",
        "tensor conv.bias holds a non-finite value",
    ),
    (
        "tensor_inf.safetensors",
        "tensor conv.bias holds a non-finite value",
    ),
    (
        "dtype_f16.safetensors",
        "tensor conv.bias is F16, expected F32",
    ),
    (
        "dtype_i32.safetensors",
        "tensor conv.bias is I32, expected F32",
    ),
    (
        "vocab_object.safetensors",
        "metadata \"vocab\" is not valid: invalid type: map, expected a JSON array",
    ),
    (
        "vocab_string.safetensors",
        "metadata \"vocab\" is not valid: invalid type: string",
    ),
    (
        "vocab_bad_json.safetensors",
        "metadata \"vocab\" is not valid: EOF while parsing",
    ),
    (
        "vocab_numbers.safetensors",
        "metadata \"vocab\" is not valid: invalid type: integer `0`",
    ),
    (
        "vocab_too_long.safetensors",
        "more words than the 10 rows of tensor embedding.weight",
    ),
    (
        "vocab_too_short.safetensors",
        "metadata \"vocab\" has 9 words for 10 rows of tensor embedding.weight",
    ),
    (
        "vocab_no_specials.safetensors",
        "the vocabulary must start with \"<pad>\", \"<unk>\"",
    ),
    (
        "vocab_duplicate.safetensors",
        "word \"a\" appears twice in the vocabulary",
    ),
    (
        "metadata_none.safetensors",
        "metadata has no \"format\" entry",
    ),
    (
        "metadata_no_config.safetensors",
        "metadata has no \"config\" entry",
    ),
    (
        "metadata_no_vocab.safetensors",
        "metadata has no \"vocab\" entry",
    ),
    (
        "metadata_no_version.safetensors",
        "metadata has no \"format_version\" entry",
    ),
    (
        "format_version_future.safetensors",
        "format version 2 is not supported (this build reads 1)",
    ),
    (
        "format_version_text.safetensors",
        "metadata \"format_version\" is not a number",
    ),
    (
        "format_other.safetensors",
        "metadata \"format\" is \"pytorch\", not \"polyhead\"",
    ),
    (
        "config_bad_json.safetensors",
        "metadata \"config\" is not valid: EOF while parsing",
    ),
    (
        "config_huge_sizes.safetensors",
        "tensor embedding.weight is F32 [10, 4], expected F32 [rows, 65536]",
    ),
    (
        "config_size_zero.safetensors",
        "config kernel_size = 0 is out of range",
    ),
    ("config_no_tasks.safetensors", "config has no tasks"),
    (
        "config_task_twice.safetensors",
        "config lists task \"topic\" twice",
    ),
    (
        "config_class_twice.safetensors",
        "task topic lists class \"x\" twice",
    ),
];

/// `train --resume` with each damaged run state: exit code and fragment.
/// The stored states carry the 64-bit checksum of earlier versions (16 hex
/// digits), so the good one resuming and the flipped bit being caught also
/// check that runs begun by those versions still resume safely.
const STATE_CASES: &[(&str, i32, &str)] = &[
    (
        "empty.state.safetensors",
        1,
        "invalid safetensors file: header too small",
    ),
    (
        "truncated.state.safetensors",
        1,
        "invalid safetensors file: incomplete metadata",
    ),
    (
        "header_altered.state.safetensors",
        1,
        "invalid JSON in header: missing field `dtype`",
    ),
    (
        "params_short.state.safetensors",
        1,
        "tensor params holds 94 values: no vocabulary size",
    ),
    (
        "adam_v_nan.state.safetensors",
        1,
        "tensor adam.v holds a non-finite value",
    ),
    (
        "adam_v_negative.state.safetensors",
        1,
        "tensor adam.v holds a negative value",
    ),
    (
        "tensor_extra.state.safetensors",
        1,
        "unexpected tensor extra",
    ),
    (
        "run_mix_short.state.safetensors",
        1,
        "mix_total must be a list of 2 values, one per task",
    ),
    (
        "run_losses_short.state.safetensors",
        1,
        "weighting.epoch_losses[..] must be a list of 2 values",
    ),
    (
        "run_epoch_zero.state.safetensors",
        1,
        "epoch must be a number from 1",
    ),
    (
        "run_batches_past_epoch.state.safetensors",
        1,
        "4611686018427387904 batches of epoch 2 are done, but an epoch has 2",
    ),
    (
        "run_not_json.state.safetensors",
        1,
        "metadata \"run\" is not valid",
    ),
    (
        "step_huge.state.safetensors",
        1,
        "18446744073709551615 Adam steps recorded, more than the batches trained",
    ),
    (
        "step_not_number.state.safetensors",
        1,
        "metadata \"step\" is not a number",
    ),
    (
        "options_not_strings.state.safetensors",
        1,
        "metadata \"options\": --epochs is not a string",
    ),
    (
        "format_other.state.safetensors",
        1,
        "not a polyhead run state of format version 1",
    ),
    (
        "vocab_too_long.state.safetensors",
        1,
        "more words than the 10 words the parameter count implies",
    ),
    (
        "fingerprint_other.state.safetensors",
        2,
        "--resume: the training data (--train/--data, --vocab-size, --min-count) differs",
    ),
    ("params_bit_flipped.state.safetensors", 1, "checksum"),
];

/// The options of the stored run (as in make_corpus.py's RUN_ARGS).
const RUN_ARGS: &[&str] = &[
    "train",
    "--train",
    "train.tsv",
    "--epochs",
    "2",
    "--embed-dim",
    "4",
    "--filters",
    "3",
    "--kernel-size",
    "2",
    "--hidden",
    "2",
    "--batch-size",
    "2",
    "--seed",
    "1",
    "-q",
];

/// The single error line of a failed run; panics (with the whole stderr)
/// when the run panicked or printed more than one error line.
fn error_line(run: &Run) -> &str {
    assert!(!run.stderr.contains("panicked"), "panic: {}", run.stderr);
    assert!(!run.stderr.contains("stack backtrace"), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("polyhead: warning:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{}", run.stderr);
    assert!(errors[0].starts_with("polyhead: "), "{}", errors[0]);
    errors[0]
}

/// Checks `run` against the expectation; returns a description of what
/// differs, if anything.
fn verdict(name: &str, run: &Run, exit: i32, expect: &[&str]) -> Option<String> {
    if run.code != exit {
        return Some(format!(
            "{name}: exit {} instead of {exit}\n{}",
            run.code, run.stderr
        ));
    }
    let haystack = if exit == 0 {
        format!("{}{}", run.stdout, run.stderr)
    } else {
        let line = error_line(run);
        if !line.contains(name) {
            return Some(format!("{name}: the error does not name the file: {line}"));
        }
        line.to_string()
    };
    expect
        .iter()
        .find(|needle| !haystack.contains(*needle))
        .map(|needle| format!("{name}: {needle:?} not in:\n{haystack}"))
}

fn copy_into(dir: &Path, from: &Path, name: &str) {
    std::fs::copy(from, dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

fn run_data_case(dir: &Path, case: &Case) -> Run {
    let model = corpus("models").join("good.safetensors");
    copy_into(dir, &corpus("data").join(case.file), case.file);
    let small = [
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
    ];
    match case.command {
        Train => {
            let mut args = vec!["train", "--data", case.file, "--out", "m.safetensors"];
            args.extend(small);
            polyhead(dir, &args)
        }
        Valid => {
            copy_into(dir, &corpus("state").join("train.tsv"), "train.tsv");
            let mut args = vec!["train", "--train", "train.tsv", "--valid", case.file];
            args.extend(["--out", "m.safetensors"]);
            args.extend(small);
            polyhead(dir, &args)
        }
        Eval => polyhead(
            dir,
            &[
                "eval",
                "--model",
                model.to_str().unwrap(),
                "--data",
                case.file,
            ],
        ),
        Predict => polyhead(
            dir,
            &["predict", "--model", model.to_str().unwrap(), case.file],
        ),
    }
}

#[test]
fn malformed_tables_and_texts() {
    let mut failures = Vec::new();
    for (i, case) in DATA_CASES.iter().enumerate() {
        let dir = scratch(&format!("hostile-data-{i}"));
        std::fs::write(dir.join("m.safetensors"), EARLIER_MODEL).unwrap();
        let run = run_data_case(&dir, case);
        let name = format!("{} ({:?})", case.file, case.command);
        if let Some(failure) = verdict(case.file, &run, case.exit, case.expect) {
            failures.push(format!("{name}: {failure}"));
        }
        let out = std::fs::read(dir.join("m.safetensors")).unwrap();
        if case.exit != 0 && out != EARLIER_MODEL {
            failures.push(format!("{name}: the earlier --out file was changed"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn damaged_model_files() {
    let dir = scratch("hostile-models");
    let models = corpus("models");
    copy_into(&dir, &models.join("predict.txt"), "predict.txt");
    let good = models.join("good.safetensors");
    let run = polyhead(
        &dir,
        &["predict", "--model", good.to_str().unwrap(), "predict.txt"],
    );
    assert_eq!(
        run.ok().stdout.lines().count(),
        1,
        "the good model predicts"
    );

    let mut failures = Vec::new();
    for (file, fragment) in MODEL_CASES {
        let model = models.join(file);
        let model = model.to_str().unwrap();
        let run = polyhead(&dir, &["predict", "--model", model, "predict.txt"]);
        if let Some(failure) = verdict(file, &run, 1, &["not a usable polyhead model", fragment]) {
            failures.push(failure);
        }
        if !run.stdout.is_empty() {
            failures.push(format!("{file}: predictions printed from a damaged model"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));

    // eval and a fresh --resume read models through the same loader.
    let damaged = models.join("tensor_nan.safetensors");
    let run = polyhead(
        &dir,
        &[
            "eval",
            "--model",
            damaged.to_str().unwrap(),
            "--data",
            "predict.txt",
            "--format",
            "tsv",
        ],
    );
    assert!(verdict("tensor_nan.safetensors", &run, 1, &["non-finite"]).is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_path_that_is_not_a_file() {
    let dir = scratch("hostile-model-path");
    std::fs::create_dir(dir.join("folder.safetensors")).unwrap();
    std::fs::write(dir.join("in.txt"), "a b\n").unwrap();
    let run = polyhead(
        &dir,
        &["predict", "--model", "folder.safetensors", "in.txt"],
    );
    let failure = verdict(
        "folder.safetensors",
        &run,
        1,
        &["it is a directory, not a file"],
    );
    assert!(failure.is_none(), "{failure:?}");

    // A named pipe would block the opening until a writer came.
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.safetensors"))
        .status();
    if fifo.is_ok_and(|s| s.success()) {
        let run = polyhead(&dir, &["predict", "--model", "pipe.safetensors", "in.txt"]);
        let failure = verdict("pipe.safetensors", &run, 1, &["it is not a regular file"]);
        assert!(failure.is_none(), "{failure:?}");
    } else {
        println!("model_path_that_is_not_a_file: named pipe skipped: no mkfifo");
    }

    if Path::new("/dev/zero").exists() {
        let run = polyhead(&dir, &["predict", "--model", "/dev/zero", "in.txt"]);
        let failure = verdict("/dev/zero", &run, 1, &["it is not a regular file"]);
        assert!(failure.is_none(), "{failure:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Copies the stored run into a fresh folder with `state` as its state.
fn resumable_run(name: &str, state: &str) -> PathBuf {
    let dir = scratch(name);
    let stored = corpus("state");
    copy_into(&dir, &stored.join("train.tsv"), "train.tsv");
    copy_into(&dir, &stored.join("m.safetensors"), "m.safetensors");
    copy_into(&dir, &stored.join(state), "m.state.safetensors");
    dir
}

#[test]
fn damaged_run_states() {
    let dir = resumable_run("hostile-state-base", "base.state.safetensors");
    let before = std::fs::read(dir.join("m.safetensors")).unwrap();
    let mut args = RUN_ARGS.to_vec();
    args.extend(["--resume", "m.safetensors"]);
    polyhead(&dir, &args).ok();
    assert_ne!(
        std::fs::read(dir.join("m.safetensors")).unwrap(),
        before,
        "the stored run resumes and trains its second epoch"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let mut failures = Vec::new();
    for (i, (file, exit, fragment)) in STATE_CASES.iter().enumerate() {
        let dir = resumable_run(&format!("hostile-state-{i}"), file);
        let model = std::fs::read(dir.join("m.safetensors")).unwrap();
        let state = std::fs::read(dir.join("m.state.safetensors")).unwrap();
        let run = polyhead(&dir, &args);
        if let Some(failure) = verdict("m.state.safetensors", &run, *exit, &[fragment]) {
            failures.push(format!("{file}: {failure}"));
        }
        if std::fs::read(dir.join("m.safetensors")).unwrap() != model
            || std::fs::read(dir.join("m.state.safetensors")).unwrap() != state
        {
            failures.push(format!(
                "{file}: a failed resume changed the model or state"
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn missing_run_state() {
    let dir = resumable_run("hostile-state-missing", "base.state.safetensors");
    std::fs::remove_file(dir.join("m.state.safetensors")).unwrap();
    let mut args = RUN_ARGS.to_vec();
    args.extend(["--resume", "m.safetensors"]);
    let run = polyhead(&dir, &args);
    let failure = verdict(
        "m.state.safetensors",
        &run,
        1,
        &["cannot read the run state"],
    );
    assert!(failure.is_none(), "{failure:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every stored file is exercised by a case above (or is one of the good
/// inputs they share), so the corpus cannot quietly rot.
#[test]
fn every_corpus_file_has_a_case() {
    let named: BTreeSet<&str> = DATA_CASES
        .iter()
        .map(|c| c.file)
        .chain(MODEL_CASES.iter().map(|(f, _)| *f))
        .chain(STATE_CASES.iter().map(|(f, _, _)| *f))
        .chain([
            "make_corpus.py",
            "csv_crlf_records.csv",
            "good.safetensors",
            "predict.txt",
            "train.tsv",
            "m.safetensors",
            "base.state.safetensors",
        ])
        .collect();
    let mut stored = 0;
    let mut unnamed = Vec::new();
    for folder in ["", "data", "models", "state"] {
        for entry in std::fs::read_dir(corpus(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !named.contains(name.as_str()) {
                unnamed.push(name);
            }
            stored += 1;
        }
    }
    assert!(
        unnamed.is_empty(),
        "corpus files without a case: {unnamed:?}"
    );
    let malformed =
        DATA_CASES.iter().filter(|c| c.exit != 0).count() + MODEL_CASES.len() + STATE_CASES.len();
    assert!(malformed >= 40, "{malformed} malformed inputs");
    assert!(stored >= 40, "{stored} files");
}
