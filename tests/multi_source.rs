//! Tasks labelled by different files that never share a text: rows from
//! all files are mixed with per-task masks, and one model learns them all.

mod common;

use common::{json_lines, polyhead, polyhead_in, scratch};
use polyhead::model::Model;

const NEWS: &str = "text\ttopic\n\
    the striker scored twice\tsports\n\
    parliament passed the budget\tpolitics\n\
    the keeper saved a penalty\tsports\n\
    the senate debated the bill\tpolitics\n";

const REVIEWS: &str = "text,label\n\
    \"loved it, great phone\",pos\n\
    broken on arrival,neg\n\
    works perfectly,pos\n";

#[test]
fn two_files_two_tasks_one_model() {
    let dir = scratch("multi");
    std::fs::write(dir.join("news.tsv"), NEWS).unwrap();
    std::fs::write(dir.join("reviews.csv"), REVIEWS).unwrap();
    for sampling in ["proportional", "temperature:2"] {
        let run = polyhead(
            &dir,
            &[
                "train",
                "--train",
                "news.tsv",
                "--train",
                "sentiment=reviews.csv",
                "--epochs",
                "3",
                "--batch-size",
                "2",
                "--task-sampling",
                sampling,
                "--out",
                "m.safetensors",
            ],
        )
        .ok();
        assert!(
            run.stderr.contains("train 7 used of 7 read"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("topic: 2 classes, 4 labelled"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("sentiment: 2 classes, 3 labelled"),
            "{}",
            run.stderr
        );
    }
    let model = Model::load(&dir.join("m.safetensors")).unwrap();
    assert_eq!(model.config.task_names(), ["topic", "sentiment"]);
    assert_eq!(model.config.tasks[1].classes, ["neg", "pos"]);
    assert!(
        model.vocab.contains(&"phone".to_string()) && model.vocab.contains(&"senate".to_string())
    );

    let run = polyhead_in(
        &dir,
        &["predict", "--model", "m.safetensors"],
        Some(b"great striker\n"),
    )
    .ok();
    let record = &json_lines(&run.stdout)[0];
    assert!(record["tasks"]["topic"]["label"].is_string());
    assert!(record["tasks"]["sentiment"]["label"].is_string());
}

#[test]
fn task_file_with_several_label_columns_must_name_the_task() {
    let dir = scratch("multi-ambiguous");
    std::fs::write(dir.join("both.tsv"), "text\ta\tb\nx y\t1\t2\n").unwrap();
    let run = polyhead(
        &dir,
        &["train", "--train", "mood=both.tsv", "--epochs", "1"],
    )
    .fails(2);
    assert!(
        run.stderr.contains("both.tsv: no column \"mood\""),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_sampling_mode_is_a_usage_error() {
    let dir = scratch("multi-sampling");
    std::fs::write(dir.join("news.tsv"), NEWS).unwrap();
    let run = polyhead(
        &dir,
        &["train", "--train", "news.tsv", "--task-sampling", "uniform"],
    )
    .fails(2);
    assert!(run.stderr.contains("--task-sampling"), "{}", run.stderr);
}

/// Validation data that labels only some tasks: the others have no score
/// (shown as "-", null in the metrics), never NaN.
#[test]
fn a_task_without_validation_labels_has_no_score() {
    let dir = scratch("multi-partial-valid");
    std::fs::write(dir.join("news.tsv"), NEWS).unwrap();
    std::fs::write(dir.join("reviews.csv"), REVIEWS).unwrap();
    let args = [
        "train",
        "--train",
        "topic=news.tsv",
        "--train",
        "sentiment=reviews.csv",
        "--valid",
        "topic=news.tsv",
        "--epochs",
        "1",
        "--metrics-out",
        "m.jsonl",
    ];
    let run = polyhead(&dir, &args).ok();
    let line = run.stderr.lines().find(|l| l.starts_with("epoch")).unwrap();
    assert!(line.contains("sentiment acc - F1 -"), "{line}");
    assert!(!line.contains("NaN"), "{line}");
    let metrics = std::fs::read_to_string(dir.join("m.jsonl")).unwrap();
    let epoch = &json_lines(&metrics)[0];
    assert!(epoch["valid"]["sentiment"]["accuracy"].is_null(), "{epoch}");
    assert!(epoch["valid"]["topic"]["accuracy"].is_number(), "{epoch}");
}
