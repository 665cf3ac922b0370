//! End-to-end behaviour of `train`, `eval` and `predict` on the small
//! inputs in tests/fixtures/cases, each drawn from a failure users of
//! similar tools reported.

mod common;

use common::{case, json_lines, polyhead, polyhead_in, scratch};

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Texts shorter than the convolution width train and predict: padded to
/// the width, one window each.
#[test]
fn case_01_texts_shorter_than_the_kernel() {
    let dir = scratch("case01");
    let data = case("case-01");
    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            path(&data.join("train.tsv")),
            "--epochs",
            "2",
            "--seed",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("train 16 used of 16 read"),
        "{}",
        run.stderr
    );

    let run = polyhead(
        &dir,
        &[
            "predict",
            "--model",
            "m.safetensors",
            "--probs",
            path(&data.join("predict.txt")),
        ],
    )
    .ok();
    let records = json_lines(&run.stdout);
    assert_eq!(records.len(), 5);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["line"], i + 1);
        for task in ["topic", "sentiment"] {
            let probs = r["tasks"][task]["probabilities"].as_array().unwrap();
            let sum: f64 = probs.iter().map(|p| p.as_f64().unwrap()).sum();
            assert!((sum - 1.0).abs() < 1e-9 && probs.iter().all(|p| p.as_f64().unwrap() > 0.0));
        }
    }
}

/// Empty cells, `null` and absent keys are missing labels, never classes.
#[test]
fn case_03_missing_labels() {
    let dir = scratch("case03");
    let data = case("case-03");
    for (file, read, used, topic, sentiment) in
        [("train.tsv", 11, 10, 9, 8), ("train.jsonl", 8, 7, 6, 5)]
    {
        let run = polyhead(
            &dir,
            &[
                "train",
                "--data",
                path(&data.join(file)),
                "--epochs",
                "2",
                "--seed",
                "1",
                "--batch-size",
                "1",
                "--out",
                "m.safetensors",
                "--metrics-out",
                "metrics.jsonl",
            ],
        )
        .ok();
        assert!(
            run.stderr
                .contains(&format!("train {used} used of {read} read")),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains(&format!("topic: 3 classes, {topic} labelled")),
            "{}",
            run.stderr
        );
        assert!(run
            .stderr
            .contains(&format!("sentiment: 2 classes, {sentiment} labelled")));
        assert!(
            run.stderr.contains("no label for any task"),
            "{}",
            run.stderr
        );

        let metrics = json_lines(&std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap());
        for epoch in &metrics {
            assert!(epoch["train_loss"].as_f64().unwrap().is_finite());
        }
        let model = polyhead::model::Model::load(&dir.join("m.safetensors")).unwrap();
        let classes: Vec<Vec<String>> = model
            .config
            .tasks
            .iter()
            .map(|t| t.classes.clone())
            .collect();
        assert_eq!(
            classes,
            [vec!["politics", "sports", "tech"], vec!["neg", "pos"]]
        );
    }
}

/// A label with a space is one class; an eval file without a task column
/// is an error naming it; a label unknown to the model is counted.
#[test]
fn case_07_missing_column_and_odd_labels() {
    let dir = scratch("case07");
    let data = case("case-07");
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            path(&data.join("train.tsv")),
            "--epochs",
            "2",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let model = polyhead::model::Model::load(&dir.join("m.safetensors")).unwrap();
    assert!(model.config.tasks[0]
        .classes
        .contains(&"sci fi".to_string()));

    let missing = data.join("test_missing_sentiment_column.tsv");
    let run = polyhead(
        &dir,
        &["eval", "--model", "m.safetensors", "--data", path(&missing)],
    )
    .fails(1);
    assert!(
        run.stderr.contains("test_missing_sentiment_column.tsv"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("sentiment") && run.stderr.contains("text, topic"),
        "{}",
        run.stderr
    );

    let run = polyhead(
        &dir,
        &[
            "eval",
            "--model",
            "m.safetensors",
            "--data",
            path(&missing),
            "--tasks",
            "topic",
        ],
    )
    .ok();
    assert!(
        run.stdout.contains("== topic: 2 labelled rows"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("NaN"));

    let unseen = data.join("test_unseen_label.tsv");
    let run = polyhead(
        &dir,
        &["eval", "--model", "m.safetensors", "--data", path(&unseen)],
    )
    .ok();
    assert!(
        run.stdout
            .contains("1 row with a label unknown to the model"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("== sentiment: 2 labelled rows"),
        "{}",
        run.stdout
    );
}

/// Every input line gets a record, in order; empty and all-unknown lines
/// are flagged, not skipped.
#[test]
fn case_08_empty_and_unknown_lines_at_prediction() {
    let dir = scratch("case08");
    let data = case("case-08");
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            path(&data.join("train.tsv")),
            "--epochs",
            "2",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let run = polyhead(
        &dir,
        &[
            "predict",
            "--model",
            "m.safetensors",
            path(&data.join("predict.txt")),
        ],
    )
    .ok();
    let records = json_lines(&run.stdout);
    assert_eq!(records.len(), 6);
    let flags: Vec<String> = records.iter().map(|r| r["flags"].to_string()).collect();
    assert_eq!(
        flags,
        [
            "[]",
            "[\"empty\"]",
            "[\"empty\"]",
            "[\"all_oov\"]",
            "[\"empty\"]",
            "[]"
        ]
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["line"], i + 1);
        assert!(r["tasks"]["topic"]["label"].is_string());
    }
    assert!(
        run.stderr.contains("3 empty, 1 all unknown words"),
        "{}",
        run.stderr
    );

    // The same model on the same empty input always answers the same.
    let again = polyhead(
        &dir,
        &[
            "predict",
            "--model",
            "m.safetensors",
            path(&data.join("predict.txt")),
        ],
    );
    assert_eq!(again.stdout, run.stdout);
}

/// A BOM and CRLF change nothing: same vocabulary, labels and weights.
#[test]
fn case_10_bom_and_crlf() {
    let dir = scratch("case10");
    let data = case("case-10");
    for (file, out) in [
        ("train_lf.tsv", "a.safetensors"),
        ("train_bom_crlf.tsv", "b.safetensors"),
    ] {
        polyhead(
            &dir,
            &[
                "train",
                "--data",
                path(&data.join(file)),
                "--seed",
                "3",
                "--epochs",
                "2",
                "--out",
                out,
            ],
        )
        .ok();
    }
    let a = polyhead::model::Model::load(&dir.join("a.safetensors")).unwrap();
    let b = polyhead::model::Model::load(&dir.join("b.safetensors")).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.vocab, b.vocab);
    let bits =
        |m: &polyhead::model::Model| m.params.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(bits(&a) == bits(&b), "the two models' weights differ");
    let model = a;
    assert_eq!(model.config.tasks[1].classes, ["neg", "pos"]);
    assert!(model
        .vocab
        .iter()
        .all(|w| !w.contains('\r') && !w.contains('\u{feff}')));
}

/// RFC 4180 quoting and JSON escapes: four records each, and prediction
/// gives one output per record, not per physical line.
#[test]
fn case_11_csv_quoting_and_jsonl_escapes() {
    let dir = scratch("case11");
    let data = case("case-11");
    for file in ["train.csv", "train.jsonl"] {
        let run = polyhead(
            &dir,
            &[
                "train",
                "--data",
                path(&data.join(file)),
                "--epochs",
                "1",
                "--out",
                "m.safetensors",
            ],
        )
        .ok();
        assert!(run.stderr.contains("of 4 read"), "{file}: {}", run.stderr);
        let run = polyhead(
            &dir,
            &[
                "predict",
                "--model",
                "m.safetensors",
                path(&data.join(file)),
            ],
        )
        .ok();
        assert_eq!(json_lines(&run.stdout).len(), 4, "{file}");
    }

    std::fs::write(
        dir.join("open.csv"),
        "text,topic\nfine,sports\n\"never closed,tech\nmore,tech\n",
    )
    .unwrap();
    let run = polyhead(
        &dir,
        &["train", "--data", "open.csv", "--out", "x.safetensors"],
    )
    .fails(1);
    assert!(run.stderr.contains("open.csv:3"), "{}", run.stderr);
    assert!(!dir.join("x.safetensors").exists());
}

/// The vocabulary cap keeps the most frequent words, ties in byte order;
/// unknown words become <unk> in place, never dropped.
#[test]
fn case_13_vocabulary_limit_and_unknown_ids() {
    let dir = scratch("case13");
    let data = case("case-13");
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            path(&data.join("train.tsv")),
            "--max-vocab",
            "4",
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let model = polyhead::model::Model::load(&dir.join("m.safetensors")).unwrap();
    assert_eq!(
        model.vocab,
        ["<pad>", "<unk>", "goal", "team", "vote", "chip"]
    );
    assert_eq!(model.shape.dims.vocab, 6);

    let run = polyhead_in(
        &dir,
        &["predict", "--model", "m.safetensors", "--explain-tokens"],
        Some(b"goal zebra unknownword team\n"),
    )
    .ok();
    let record = &json_lines(&run.stdout)[0];
    assert_eq!(
        record["tokens"],
        serde_json::json!(["goal", "<unk>", "<unk>", "team"])
    );
    assert_eq!(record["ids"], serde_json::json!([2, 1, 1, 3]));
    assert!(
        run.stderr.contains("50.0% of tokens unknown"),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = scratch("usage");
    let run = polyhead(&dir, &["train", "--epochs", "0"]).fails(2);
    assert!(run.stderr.contains("--epochs"), "{}", run.stderr);
    let run = polyhead(&dir, &["train", "--no-such-flag"]).fails(2);
    assert!(run.stderr.contains("--no-such-flag"));
    let run = polyhead(&dir, &["train", "--data", "nowhere"]).fails(2);
    assert!(run.stderr.contains("nowhere"));
    let run = polyhead(
        &dir,
        &["predict", "--model", "m.safetensors", "--top-k", "0"],
    )
    .fails(2);
    assert!(run.stderr.contains("--top-k"));
}

#[test]
fn missing_model_file_is_a_runtime_error_naming_it() {
    let dir = scratch("nomodel");
    let run = polyhead_in(
        &dir,
        &["predict", "--model", "absent.safetensors"],
        Some(b"hi\n"),
    )
    .fails(1);
    assert!(run.stderr.contains("absent.safetensors"), "{}", run.stderr);
}
