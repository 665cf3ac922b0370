//! `polyhead report`: a self-contained page with one chart per figure
//! asked for, every text escaped, and clear errors for bad inputs.

mod common;

use std::path::Path;

use common::{polyhead, scratch};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A task name that HTML must not take as markup.
const ODD_TASK: &str = "top<ic>&co";

/// Writes train and valid tables whose first task column is [`ODD_TASK`].
fn write_data(dir: &Path) {
    let rows = [
        (
            "the striker scored twice and the crowd went wild",
            "sports",
            "pos",
        ),
        (
            "our keeper let in four goals in a dismal defeat",
            "sports",
            "neg",
        ),
        (
            "the coach praised a gritty team performance",
            "sports",
            "pos",
        ),
        (
            "injuries wrecked the season for the home side",
            "sports",
            "neg",
        ),
        (
            "parliament passed the budget after a long debate",
            "politics",
            "pos",
        ),
        (
            "the minister resigned amid a funding scandal",
            "politics",
            "neg",
        ),
        ("voters welcomed the new housing policy", "politics", "pos"),
        (
            "the senate blocked the reform once again",
            "politics",
            "neg",
        ),
        ("the new phone has a brilliant screen", "tech", "pos"),
        (
            "the laptop overheats and the battery dies fast",
            "tech",
            "neg",
        ),
        ("this app makes sharing photos a joy", "tech", "pos"),
        ("the update broke my wifi and bluetooth", "tech", "neg"),
    ];
    let header = format!("text\t{ODD_TASK}\tsentiment\n");
    let mut train = header.clone();
    let mut valid = header;
    for (i, (text, topic, sentiment)) in rows.iter().enumerate() {
        let line = format!("{text}\t{topic}\t{sentiment}\n");
        train += &line;
        if i % 3 == 0 {
            valid += &line;
        }
    }
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("valid.tsv"), valid).unwrap();
}

fn small_model<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend([
        "--embed-dim",
        "16",
        "--filters",
        "16",
        "--hidden",
        "8",
        "--batch-size",
        "4",
    ]);
    all
}

fn svg_count(html: &str) -> usize {
    html.matches("<svg").count()
}

#[test]
fn full_report_has_every_chart_and_escapes_task_names() {
    let dir = scratch("report-full");
    write_data(&dir);
    polyhead(
        &dir,
        &small_model(&[
            "train",
            "--train",
            "train.tsv",
            "--valid",
            "valid.tsv",
            "--epochs",
            "3",
            "--weighting",
            "uncertainty",
            "--metrics-out",
            "m.jsonl",
            "--out",
            "m.safetensors",
            "--quiet",
        ]),
    )
    .ok();
    polyhead(
        &dir,
        &small_model(&[
            "compare",
            "--train",
            "train.tsv",
            "--valid",
            "valid.tsv",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--quiet",
            "--json",
            "cmp.json",
        ]),
    )
    .ok();

    let run = polyhead(
        &dir,
        &[
            "report",
            "--metrics",
            "m.jsonl",
            "--model",
            "m.safetensors",
            "--data",
            "valid.tsv",
            "--compare",
            "cmp.json",
            "--title",
            "run <1>",
            "--out",
            "r.html",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("report written to r.html"),
        "{}",
        run.stderr
    );
    let html = std::fs::read_to_string(dir.join("r.html")).unwrap();

    // Loss; validation accuracy and macro-F1; loss weights and gradient
    // mix; per-class F1 for each of the two tasks; the comparison's
    // macro-F1 and accuracy differences.
    assert_eq!(svg_count(&html), 1 + 2 + 2 + 2 + 2, "{html}");
    for caption in [
        "Training and validation loss per epoch",
        "Validation accuracy per task",
        "Validation macro-F1 per task",
        "Loss weight per task",
        "Gradient mix per task",
        "F1 per class: top&lt;ic&gt;&amp;co",
        "F1 per class: sentiment",
        "Validation macro-F1: multi-task minus single-task",
        "Scores on the validation split",
        "gold \\ predicted",
        "Wall time per model",
        "run &lt;1&gt;",
    ] {
        assert!(html.contains(caption), "missing {caption:?}");
    }
    assert!(html.contains("top&lt;ic&gt;&amp;co"));
    assert!(!html.contains(ODD_TASK), "a raw task name in the page");
    assert!(!html.contains("<ic>"));
    assert!(!html.contains("http"), "the page names a URL");
    assert!(!html.contains("<script") && !html.contains("<link"));
    assert!(html.contains("sentiment") && html.contains("politics"));
    // Uncertainty weighting moves the weights off 1: no "equal" note there.
    let weights = html.split("Loss weight per task").nth(1).unwrap();
    let weights = &weights[..weights.find("</figure>").unwrap()];
    assert!(
        !weights.contains("1 for every task throughout"),
        "{weights}"
    );
    assert!(html.trim_end().ends_with("</html>"));
}

#[test]
fn metrics_alone_give_five_charts() {
    let dir = scratch("report-metrics");
    let line = |epoch: usize, loss: f64| {
        let valid = format!(
            "{{\"a<b\":{{\"accuracy\":0.{epoch},\"macro_f1\":null}},\
             \"c\":{{\"accuracy\":0.5,\"macro_f1\":0.4}}}}"
        );
        let ones = "{\"a<b\":1.0,\"c\":1.0}";
        format!(
            "{{\"epoch\":{epoch},\"train_loss\":{loss},\"seconds\":1.5,\
             \"examples_per_second\":100.0,\"valid_loss\":{},\"valid\":{valid},\
             \"loss_weights\":{ones},\"gradient_mix\":{ones}}}",
            loss + 0.1
        )
    };
    let text = [line(1, 2.0), line(2, 1.5), line(3, 1.2)].join("\n") + "\n";
    std::fs::write(dir.join("m.jsonl"), text).unwrap();
    polyhead(&dir, &["report", "--metrics", "m.jsonl", "--out", "r.html"]).ok();
    let html = std::fs::read_to_string(dir.join("r.html")).unwrap();
    assert_eq!(svg_count(&html), 5);
    assert!(html.contains("a&lt;b") && !html.contains("a<b"));
    assert!(html.contains("the tasks&#39; losses are weighted equally"));
    assert!(html.contains("the plain sum of the tasks&#39; gradients"));
    assert!(!html.contains("http"));
    // Every chart has data drawn in it.
    for svg in html.split("<svg").skip(1) {
        let svg = &svg[..svg.find("</svg>").unwrap()];
        assert!(svg.contains("<polyline"), "an empty chart: {svg}");
    }
}

#[test]
fn bad_inputs_name_the_file_and_line() {
    let dir = scratch("report-bad");
    let good = r#"{"epoch":1,"train_loss":1.0,"valid":{},"loss_weights":{},"gradient_mix":{}}"#;
    std::fs::write(dir.join("bad.jsonl"), format!("{good}\n{{\"epoch\": 2,\n")).unwrap();
    let run = polyhead(&dir, &["report", "--metrics", "bad.jsonl"]).fails(1);
    assert!(run.stderr.contains("bad.jsonl:2:"), "{}", run.stderr);
    assert!(run.stderr.contains("not a metrics line"), "{}", run.stderr);

    let run = polyhead(&dir, &["report", "--metrics", "absent.jsonl"]).fails(1);
    assert!(
        run.stderr.contains("cannot read absent.jsonl"),
        "{}",
        run.stderr
    );

    std::fs::write(dir.join("cmp.json"), "{\n  \"settings\": 3\n}\n").unwrap();
    let run = polyhead(&dir, &["report", "--compare", "cmp.json"]).fails(1);
    assert!(run.stderr.contains("cmp.json:2:"), "{}", run.stderr);
    assert!(run.stderr.contains("compare --json"), "{}", run.stderr);

    std::fs::write(dir.join("x.safetensors"), "not a model").unwrap();
    let run = polyhead(&dir, &["report", "--model", "x.safetensors"]).fails(1);
    assert!(run.stderr.contains("x.safetensors"), "{}", run.stderr);

    let run = polyhead(&dir, &["report"]).fails(2);
    assert!(run.stderr.contains("nothing to report"), "{}", run.stderr);
    let run = polyhead(&dir, &["report", "--data", "valid.tsv"]).fails(2);
    assert!(run.stderr.contains("--model"), "{}", run.stderr);
    assert!(!dir.join("report.html").exists());
}

#[test]
fn data_without_any_task_column_is_refused() {
    let dir = scratch("report-columns");
    write_data(&dir);
    polyhead(
        &dir,
        &small_model(&[
            "train",
            "--train",
            "train.tsv",
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
            "--quiet",
        ]),
    )
    .ok();
    std::fs::write(dir.join("texts.tsv"), "text\tother\nhello there\tx\n").unwrap();
    let run = polyhead(
        &dir,
        &[
            "report",
            "--model",
            "m.safetensors",
            "--data",
            path(&dir.join("texts.tsv")),
        ],
    )
    .fails(2);
    assert!(run.stderr.contains("texts.tsv"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("no column for any of the model's tasks"),
        "{}",
        run.stderr
    );
}
