//! Bad input gets one clear line naming the file, line, column or flag,
//! exit code 1 (2 for a misuse of the command line), no panic, and
//! nothing already written is lost.

mod common;

use common::{polyhead, scratch, Run};

/// Writes `files` into a fresh folder and runs `polyhead ARGS` there.
fn run_with(name: &str, files: &[(&str, &[u8])], args: &[&str]) -> Run {
    let dir = scratch(name);
    for (file, bytes) in files {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    polyhead(&dir, args)
}

fn train_on(name: &str, file: &str, bytes: &[u8]) -> Run {
    run_with(
        name,
        &[(file, bytes)],
        &[
            "train",
            "--data",
            file,
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
}

fn expect_error(run: Run, code: i32, needles: &[&str]) {
    let run = run.fails(code);
    let first = run
        .stderr
        .lines()
        .find(|l| l.starts_with("polyhead: ") && !l.contains("warning"));
    let line = first.unwrap_or_else(|| panic!("no error line in: {}", run.stderr));
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
}

const GOOD: &str = "text\ttopic\na b c\tx\nd e f\ty\n";

#[test]
fn row_with_more_fields_than_the_header() {
    let run = train_on("ragged", "r.tsv", b"text\ttopic\na b\tx\nc d\ty\tz\n");
    expect_error(run, 1, &["r.tsv:3: row has 3 fields, the header has 2"]);
}

#[test]
fn invalid_utf8_names_line_and_column() {
    let run = train_on("utf8", "u.tsv", b"text\ttopic\nab\xffcd\tx\n");
    expect_error(run, 1, &["u.tsv:2:3: invalid UTF-8"]);
}

#[test]
fn missing_text_column() {
    let run = train_on("notext", "n.tsv", b"body\ttopic\na\tx\n");
    expect_error(
        run,
        2,
        &[
            "n.tsv",
            "no column \"text\"",
            "columns: body, topic",
            "--text-column",
        ],
    );
}

/// `predict` and `eval` treat a missing text column as `train` does.
#[test]
fn missing_text_column_in_predict_and_eval() {
    let dir = scratch("notext-model");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    std::fs::write(dir.join("n.tsv"), "body\ttopic\na\tx\n").unwrap();
    let args = [
        "train",
        "--data",
        "t.tsv",
        "--epochs",
        "1",
        "--out",
        "m.safetensors",
    ];
    polyhead(&dir, &args).ok();

    for command in ["predict", "eval"] {
        let run = if command == "predict" {
            polyhead(&dir, &["predict", "--model", "m.safetensors", "n.tsv"])
        } else {
            polyhead(
                &dir,
                &["eval", "--model", "m.safetensors", "--data", "n.tsv"],
            )
        };
        expect_error(
            run,
            2,
            &[
                "n.tsv",
                "no column \"text\"",
                "columns: body, topic",
                "--text-column",
            ],
        );
    }
}

/// A column of free text or ids taken for labels is refused before
/// training builds a head with a class per row.
#[test]
fn text_like_label_column_is_refused() {
    let mut table = String::from("id\ttext\ttopic\n");
    for i in 0..150 {
        table.push_str(&format!("{i}\tsome words {i}\t{}\n", i % 3));
    }
    let run = train_on("idcolumn", "ids.tsv", table.as_bytes());
    expect_error(
        run,
        1,
        &[
            "ids.tsv",
            "task \"id\" has 150 distinct labels in 150 rows",
            "--tasks",
        ],
    );

    let dir = scratch("idcolumn-tasks");
    std::fs::write(dir.join("ids.tsv"), &table).unwrap();
    let args = [
        "train", "--data", "ids.tsv", "--tasks", "topic", "--epochs", "1",
    ];
    polyhead(&dir, &args).ok();
}

/// A long unseen label (a text in the label's place) is cut short in the
/// message, which stays one readable line.
#[test]
fn long_unseen_label_is_shortened() {
    let long = "word ".repeat(100);
    let valid = format!("text\ttopic\na b\t{long}\n");
    let run = run_with(
        "longlabel",
        &[
            ("train.tsv", GOOD.as_bytes()),
            ("valid.tsv", valid.as_bytes()),
        ],
        &[
            "train",
            "--train",
            "train.tsv",
            "--valid",
            "valid.tsv",
            "--epochs",
            "1",
        ],
    );
    let run = run.fails(1);
    assert!(
        run.stderr.contains("never appeared in training"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("word word..."), "{}", run.stderr);
    assert!(run.stderr.len() < 300, "{}", run.stderr);
}

#[test]
fn unknown_task_column() {
    let run = run_with(
        "notask",
        &[("t.tsv", GOOD.as_bytes())],
        &["train", "--data", "t.tsv", "--tasks", "topic,mood"],
    );
    expect_error(
        run,
        2,
        &[
            "--tasks",
            "t.tsv",
            "no column \"mood\"",
            "columns: text, topic",
        ],
    );
}

#[test]
fn duplicated_header_names() {
    let run = train_on("dup", "d.tsv", b"text\ttopic\ttopic\na\tx\ty\n");
    expect_error(run, 1, &["d.tsv:1", "column \"topic\" appears twice"]);
}

#[test]
fn empty_file() {
    let run = train_on("empty", "e.tsv", b"");
    expect_error(run, 1, &["e.tsv", "empty file"]);
}

#[test]
fn only_a_header() {
    let run = train_on("header", "h.tsv", b"text\ttopic\n");
    expect_error(run, 1, &["h.tsv", "task \"topic\" has no label"]);
}

#[test]
fn all_labels_of_a_task_missing() {
    let run = train_on("nolabels", "l.tsv", b"text\ttopic\tmood\na\tx\t\nb\ty\t\n");
    expect_error(run, 1, &["l.tsv", "task \"mood\" has no label in any row"]);
}

#[test]
fn json_line_that_is_not_json() {
    let run = train_on(
        "json",
        "j.jsonl",
        b"{\"text\": \"a\", \"topic\": \"x\"}\n{\"text\": oops}\n",
    );
    expect_error(run, 1, &["j.jsonl:2:", "not valid JSON"]);
}

#[test]
fn json_line_that_is_not_an_object() {
    let run = train_on(
        "jsonarr",
        "j.jsonl",
        b"{\"text\": \"a\", \"topic\": \"x\"}\n[1, 2]\n",
    );
    expect_error(run, 1, &["j.jsonl:2: expected a JSON object"]);
}

#[test]
fn unknown_extension_asks_for_format() {
    let run = train_on("ext", "data.txt", GOOD.as_bytes());
    expect_error(run, 1, &["data.txt", "--format"]);
    let run = run_with(
        "ext2",
        &[("data.txt", GOOD.as_bytes())],
        &[
            "train", "--data", "data.txt", "--format", "tsv", "--epochs", "1",
        ],
    );
    run.ok();
}

#[test]
fn label_unseen_in_training() {
    let run = run_with(
        "unseen",
        &[
            ("train.tsv", GOOD.as_bytes()),
            ("valid.tsv", b"text\ttopic\nq\tx\nr\tweather\n"),
        ],
        &[
            "train",
            "--train",
            "train.tsv",
            "--valid",
            "valid.tsv",
            "--epochs",
            "1",
        ],
    );
    expect_error(
        run,
        1,
        &["valid.tsv:3: task \"topic\": label \"weather\" never appeared in training"],
    );

    let run = run_with(
        "unseen-ok",
        &[
            ("train.tsv", GOOD.as_bytes()),
            ("valid.tsv", b"text\ttopic\nq\tx\nr\tweather\n"),
        ],
        &[
            "train",
            "--train",
            "train.tsv",
            "--valid",
            "valid.tsv",
            "--epochs",
            "1",
            "--allow-unseen-labels",
        ],
    )
    .ok();
    assert!(
        run.stderr
            .contains("1 row with a label unknown to the model"),
        "{}",
        run.stderr
    );
}

/// Missing labels are masked, so a validation file may label only some
/// tasks: the others go unscored, with a warning; one that labels none is
/// refused.
#[test]
fn validation_file_missing_a_task_column() {
    let train = b"text\ttopic\tmood\na\tx\tp\nb\ty\tq\n";
    let files: [(&str, &[u8]); 3] = [
        ("train.tsv", train),
        ("valid.tsv", GOOD.as_bytes()),
        ("none.tsv", b"text\tother\na\tz\n"),
    ];
    let args = [
        "train",
        "--train",
        "train.tsv",
        "--valid",
        "valid.tsv",
        "--epochs",
        "1",
    ];
    let run = run_with("validcol", &files, &args).ok();
    assert!(
        run.stderr
            .contains("warning: --valid: no column for task mood: not scored there"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("mood acc -"), "{}", run.stderr);

    let args = [
        "train",
        "--train",
        "train.tsv",
        "--valid",
        "none.tsv",
        "--epochs",
        "1",
    ];
    let run = run_with("validcol-none", &files, &args);
    expect_error(
        run,
        2,
        &["--valid none.tsv: no column for any task (tasks: topic, mood)"],
    );
}

#[test]
fn missing_input_file() {
    let run = run_with("nofile", &[], &["train", "--train", "absent.tsv"]);
    expect_error(run, 1, &["absent.tsv", "cannot open"]);
}

#[test]
fn line_longer_than_the_limit() {
    let mut bytes = b"text\ttopic\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 17 << 20));
    bytes.extend(b"\tx\n");
    let run = train_on("long", "long.tsv", &bytes);
    expect_error(run, 1, &["long.tsv:2: line longer than 16 MiB"]);
}

#[test]
fn failed_run_keeps_the_model_already_written() {
    let dir = scratch("keep");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            "t.tsv",
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let before = std::fs::read(dir.join("m.safetensors")).unwrap();
    std::fs::write(dir.join("bad.tsv"), "text\ttopic\na\tx\tz\n").unwrap();
    polyhead(
        &dir,
        &["train", "--data", "bad.tsv", "--out", "m.safetensors"],
    )
    .fails(1);
    assert_eq!(std::fs::read(dir.join("m.safetensors")).unwrap(), before);
}

#[test]
fn flags_out_of_range_are_usage_errors() {
    for (flag, value) in [
        ("--lr", "-1"),
        ("--dropout", "1.5"),
        ("--batch-size", "0"),
        ("--threads", "0"),
    ] {
        let run = run_with("flags", &[], &["train", &format!("{flag}={value}")]);
        expect_error(run, 2, &[flag]);
    }
    // No driver here, or no device 99 where there is one: a runtime error.
    let run = run_with("gpu", &[], &["train", "--gpu", "99"]);
    expect_error(run, 1, &["--gpu 99"]);
    let run = run_with(
        "precision",
        &[],
        &["train", "--gpu", "0", "--precision", "fp8"],
    );
    expect_error(run, 2, &["--precision"]);
}

#[test]
fn a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_model() {
    let dir = scratch("nan");
    let data = common::case("case-01").join("train.tsv");
    let data = data.to_str().unwrap();
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let before = std::fs::read(dir.join("m.safetensors")).unwrap();

    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr=1e30",
            "--out",
            "m.safetensors",
        ],
    );
    expect_error(
        run,
        1,
        &["loss became", "at epoch 1, step 2 (batch 2 of 4)"],
    );
    assert_eq!(std::fs::read(dir.join("m.safetensors")).unwrap(), before);
}

#[test]
fn output_over_an_input_file_is_refused_and_the_input_kept() {
    let dir = scratch("out-over-input");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    let run = polyhead(&dir, &["train", "--train", "t.tsv", "--out", "t.tsv"]);
    expect_error(run, 2, &["--out would overwrite the input file t.tsv"]);
    let run = polyhead(
        &dir,
        &["train", "--data", "t.tsv", "--metrics-out", "./t.tsv"],
    );
    expect_error(
        run,
        2,
        &["--metrics-out would overwrite the input file t.tsv"],
    );
    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            "t.tsv",
            "--out",
            "m.st",
            "--metrics-out",
            "m.st",
        ],
    );
    expect_error(run, 2, &["--out and --metrics-out name the same file m.st"]);
    assert_eq!(std::fs::read_to_string(dir.join("t.tsv")).unwrap(), GOOD);
}

#[test]
fn a_validation_file_without_rows_is_an_error() {
    let files: &[(&str, &[u8])] = &[("t.tsv", GOOD.as_bytes()), ("v.tsv", b"text\ttopic\n")];
    let args = [
        "train", "--train", "t.tsv", "--valid", "v.tsv", "--epochs", "1",
    ];
    expect_error(
        run_with("valid-header-only", files, &args),
        1,
        &["v.tsv: no rows under the header"],
    );
    let files: &[(&str, &[u8])] = &[
        ("t.tsv", GOOD.as_bytes()),
        ("v.tsv", b"text\ttopic\na b\t\n"),
    ];
    let run = run_with("valid-unlabelled", files, &args);
    expect_error(run, 1, &["v.tsv: no row with a label to score"]);
}

#[test]
fn zero_checkpoint_interval_or_patience_is_a_usage_error() {
    let files: &[(&str, &[u8])] = &[("t.tsv", GOOD.as_bytes())];
    for (flag, message) in [
        (
            "--checkpoint-every",
            "--checkpoint-every must be at least 1",
        ),
        (
            "--early-stop-patience",
            "--early-stop-patience must be at least 1",
        ),
    ] {
        let run = run_with(
            "zero-flags",
            files,
            &["train", "--data", "t.tsv", flag, "0"],
        );
        expect_error(run, 2, &[message]);
    }
}

/// `polyhead train 2>&1 | head -1`: the reader goes away, the run goes on
/// and writes its model.
#[test]
fn a_closed_stderr_does_not_stop_training() {
    let dir = scratch("closed-stderr");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_polyhead"))
        .env("POLYHEAD_CACHE_DIR", common::token_cache())
        .args([
            "train",
            "--data",
            "t.tsv",
            "--epochs",
            "2",
            "--out",
            "m.safetensors",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    polyhead::model::Model::load(&dir.join("m.safetensors")).unwrap();
}

#[test]
fn compare_and_report_refuse_outputs_they_would_misuse() {
    let files: &[(&str, &[u8])] = &[("t.tsv", GOOD.as_bytes())];
    let run = run_with(
        "cmp-ckpt",
        files,
        &["compare", "--data", "t.tsv", "--ckpt-dir", "ck"],
    );
    expect_error(run, 2, &["is not used by compare"]);
    let args = ["compare", "--data", "t.tsv", "--json", "absent/c.json"];
    let run = run_with("cmp-json", files, &args);
    expect_error(
        run,
        2,
        &["--json absent/c.json: not a file in an existing folder"],
    );

    let files: &[(&str, &[u8])] = &[("m.jsonl", b"{}\n"), ("keep.safetensors", b"model")];
    let args = [
        "report",
        "--metrics",
        "m.jsonl",
        "--out",
        "keep.safetensors",
    ];
    expect_error(
        run_with("report-out", files, &args),
        2,
        &["a report is an .html file"],
    );
    let args = ["report", "--compare", "r.html", "--out", "r.html"];
    let files: &[(&str, &[u8])] = &[("r.html", b"{}")];
    expect_error(
        run_with("report-same", files, &args),
        2,
        &["would overwrite the input file"],
    );
}

#[test]
fn task_lists_and_vocabulary_sizes_that_cannot_work() {
    let files: &[(&str, &[u8])] = &[("t.tsv", GOOD.as_bytes())];
    let cases: [(&[&str], &str); 3] = [
        (&["--tasks", "topic,topic"], "--tasks names \"topic\" twice"),
        (&["--tasks", "text"], "\"text\" is the text column"),
        (&["--vocab-size", "0"], "--vocab-size must be at least 1"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["train", "--data", "t.tsv"];
        args.extend(extra);
        expect_error(run_with("task-lists", files, &args), 2, &[message]);
    }
    let args = [
        "train",
        "--data",
        "t.tsv",
        "--min-count",
        "50",
        "--epochs",
        "1",
    ];
    let run = run_with("empty-vocabulary", files, &args).ok();
    assert!(
        run.stderr.contains("warning: the vocabulary is empty"),
        "{}",
        run.stderr
    );
}

/// A folder with two training files of different formats: which one was
/// meant is not guessed.
#[test]
fn two_training_files_in_one_data_folder() {
    let dir = scratch("two-train-files");
    std::fs::create_dir(dir.join("ds")).unwrap();
    std::fs::write(dir.join("ds/train.tsv"), GOOD).unwrap();
    std::fs::write(dir.join("ds/train.csv"), "text,topic\na b,x\n").unwrap();
    let run = polyhead(&dir, &["train", "--data", "ds", "--epochs", "1"]);
    expect_error(run, 2, &["both", "train.tsv", "train.csv", "keep one"]);
}

#[test]
fn training_file_given_twice_for_one_task() {
    let run = run_with(
        "twice",
        &[("t.tsv", GOOD.as_bytes())],
        &[
            "train", "--train", "t.tsv", "--train", "./t.tsv", "--epochs", "1",
        ],
    );
    expect_error(
        run,
        2,
        &["--train", "t.tsv is given twice for the same task"],
    );

    let run = run_with(
        "twice-task",
        &[("t.tsv", GOOD.as_bytes())],
        &[
            "train",
            "--train",
            "topic=t.tsv",
            "--train",
            "t.tsv",
            "--epochs",
            "1",
        ],
    );
    expect_error(run, 2, &["--train", "given twice"]);
}

#[test]
fn validation_file_that_is_a_training_file_is_warned_about() {
    let run = run_with(
        "leak",
        &[("t.tsv", GOOD.as_bytes())],
        &[
            "train", "--train", "t.tsv", "--valid", "t.tsv", "--epochs", "1",
        ],
    )
    .ok();
    assert!(
        run.stderr
            .contains("warning: --valid t.tsv is also a training file"),
        "{}",
        run.stderr
    );
}

/// A full disk under standard output is a failure naming it, never a
/// silent success with the output lost (a closed pipe stays no error).
#[test]
fn full_standard_output_is_an_error() {
    let dir = scratch("dev-full");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    let args = [
        "train",
        "--data",
        "t.tsv",
        "--epochs",
        "1",
        "--out",
        "m.safetensors",
    ];
    polyhead(&dir, &args).ok();
    std::fs::write(dir.join("texts.txt"), "a b c\n").unwrap();

    let commands: [&[&str]; 6] = [
        &["--help"],
        &["eval", "--help"],
        &["info"],
        &["eval", "--model", "m.safetensors", "--data", "t.tsv"],
        &[
            "eval",
            "--model",
            "m.safetensors",
            "--data",
            "t.tsv",
            "--json",
        ],
        &["predict", "--model", "m.safetensors", "texts.txt"],
    ];
    for args in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhead"))
            .env("POLYHEAD_CACHE_DIR", common::token_cache())
            .args(args)
            .current_dir(&dir)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("polyhead: cannot write to standard output: No space left"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Sizes that would ask for more memory than any machine has are refused
/// or fitted to the data, never an abort.
#[test]
fn huge_sizes_are_refused_or_fitted_to_the_data() {
    let run = run_with(
        "huge-batch",
        &[("t.tsv", GOOD.as_bytes())],
        &[
            "train",
            "--data",
            "t.tsv",
            "--epochs",
            "1",
            "--batch-size",
            "100000000",
        ],
    );
    run.ok();

    let dir = scratch("huge-bench");
    let run = polyhead(&dir, &["bench", "--max-len", "100000000", "--batch", "1"]);
    expect_error(run, 2, &["--max-len must be at most 65536"]);
    // Two terabytes of parameters: refused before anything is allocated.
    let run = polyhead(
        &dir,
        &["bench", "--vocab-size", "4000000000", "--threads", "1"],
    );
    expect_error(
        run,
        1,
        &[
            "parameters (vocabulary 4000000000",
            "does not fit in memory",
        ],
    );
    let run = polyhead(&dir, &["bench", "--threads", "5000"]);
    expect_error(run, 2, &["--threads must be at most 1024, got 5000"]);
}

#[test]
fn monitoring_without_a_validation_file_is_refused() {
    for (flag, value) in [
        ("--monitor", "topic:accuracy"),
        ("--early-stop-patience", "1"),
    ] {
        let run = run_with(
            "monitor-no-valid",
            &[("t.tsv", GOOD.as_bytes())],
            &["train", "--train", "t.tsv", "--epochs", "1", flag, value],
        );
        expect_error(run, 2, &[flag, "needs a validation file"]);
    }
}

#[test]
fn misdirected_paths_get_a_message_that_says_what_to_pass() {
    let dir = scratch("misdirected");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    std::fs::write(dir.join("v.tsv"), "text\ttopic\na b\tx\n").unwrap();
    std::fs::create_dir(dir.join("folder")).unwrap();

    let run = polyhead(&dir, &["train", "--train", "folder", "--epochs", "1"]);
    expect_error(
        run,
        1,
        &["folder: a folder, not a table file", "goes to --data"],
    );

    let args = [
        "train",
        "--train",
        "t.tsv",
        "--valid",
        "other=v.tsv",
        "--epochs",
        "1",
    ];
    let run = polyhead(&dir, &args);
    expect_error(
        run,
        2,
        &["--valid other=v.tsv: no task \"other\" in the training data"],
    );

    let run = polyhead(&dir, &["train", "--resume", "m.state.safetensors"]);
    expect_error(
        run,
        2,
        &["that is a state file; pass the model file (m.safetensors) or a checkpoint folder"],
    );

    let args = [
        "train",
        "--train",
        "t.tsv",
        "--valid",
        "v.tsv",
        "--metrics-out",
        "m.jsonl",
    ];
    polyhead(&dir, &args).ok();
    let run = polyhead(
        &dir,
        &["report", "--metrics", "m.jsonl", "--out", "absent/r.html"],
    );
    expect_error(run, 1, &["cannot write absent/r.html"]);
}

#[test]
fn weights_that_train_nothing_and_tasks_named_twice_are_refused() {
    let run = run_with(
        "zero-weights",
        &[("t.tsv", GOOD.as_bytes())],
        &[
            "train",
            "--data",
            "t.tsv",
            "--epochs",
            "1",
            "--task-weights",
            "topic=0",
        ],
    );
    expect_error(run, 2, &["--task-weights: every task weighs 0"]);

    let dir = scratch("eval-twice");
    std::fs::write(dir.join("t.tsv"), GOOD).unwrap();
    let args = [
        "train",
        "--data",
        "t.tsv",
        "--epochs",
        "1",
        "--out",
        "m.safetensors",
    ];
    polyhead(&dir, &args).ok();
    let args = [
        "eval",
        "--model",
        "m.safetensors",
        "--data",
        "t.tsv",
        "--tasks",
        "topic,topic",
    ];
    expect_error(polyhead(&dir, &args), 2, &["--tasks names \"topic\" twice"]);
}
