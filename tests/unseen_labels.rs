//! A gold label the model never saw in training is a class of its own in
//! `eval` and in `train --allow-unseen-labels`: F1 0 in macro-F1, its
//! support in weighted F1, and the supports add up to the labelled rows.

mod common;

use common::{json_lines, polyhead, scratch};
use serde_json::Value;

const SUNNY: [&str; 5] = ["sunny", "bright", "warm", "golden", "clear"];
const RAINY: [&str; 5] = ["rainy", "dark", "cold", "grey", "stormy"];

/// A text of four of `words`, starting at `i`, around shared filler.
fn text(words: &[&str; 5], i: usize) -> String {
    let pick = |k: usize| words[(i + k) % words.len()];
    format!(
        "the {} day was {} and {} {}",
        pick(0),
        pick(1),
        pick(2),
        pick(3)
    )
}

fn table(rows: &[(String, &str)]) -> String {
    let mut out = String::from("text\tweather\n");
    for (text, label) in rows {
        out += &format!("{text}\t{label}\n");
    }
    out
}

/// The scores of task `weather` in `eval --json` output.
fn eval_scores(run_stdout: &str) -> Value {
    let report: Value = serde_json::from_str(run_stdout.trim()).expect("eval --json output");
    report["tasks"]["weather"].clone()
}

/// 40 validation rows: 23 `sunny`, 16 `rainy`, and one `meh`, a label
/// training never had, whose text reads rainy. A model that gets every
/// known row right and calls the `meh` row rainy scores:
/// accuracy 39/40; F1 sunny 1, rainy 2*16 / (16 + 17) = 32/33, meh 0;
/// macro-F1 (1 + 32/33 + 0) / 3 = 0.6566; weighted F1
/// (23 * 1 + 16 * 32/33 + 1 * 0) / 40 = 0.9629.
#[test]
fn an_unseen_gold_label_counts_as_a_class_with_f1_zero() {
    let dir = scratch("unseen-class");
    let train: Vec<(String, &str)> = (0..48)
        .flat_map(|i| [(text(&SUNNY, i), "sunny"), (text(&RAINY, i), "rainy")])
        .collect();
    let mut valid: Vec<(String, &str)> = Vec::new();
    valid.extend((0..23).map(|i| (text(&SUNNY, i + 1), "sunny")));
    valid.extend((0..16).map(|i| (text(&RAINY, i + 2), "rainy")));
    valid.insert(17, (text(&RAINY, 0), "meh"));
    assert_eq!(valid.len(), 40);
    std::fs::write(dir.join("train.tsv"), table(&train)).unwrap();
    std::fs::write(dir.join("valid.tsv"), table(&valid)).unwrap();

    let accuracy = 39.0 / 40.0;
    let rainy_f1 = 32.0 / 33.0;
    let macro_f1 = (1.0 + rainy_f1 + 0.0) / 3.0;
    let weighted_f1 = (23.0 + 16.0 * rainy_f1) / 40.0;
    assert_eq!(format!("{macro_f1:.4}"), "0.6566");

    polyhead(
        &dir,
        &[
            "train",
            "--train",
            "train.tsv",
            "--valid",
            "valid.tsv",
            "--allow-unseen-labels",
            "--embed-dim",
            "16",
            "--filters",
            "16",
            "--hidden",
            "16",
            "--kernel-size",
            "3",
            "--epochs",
            "12",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--seed",
            "3",
            "--out",
            "m.safetensors",
            "--metrics-out",
            "metrics.jsonl",
        ],
    )
    .ok();
    let epochs = json_lines(&std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap());
    let last = &epochs.last().unwrap()["valid"]["weather"];
    let last_accuracy = last["accuracy"].as_f64().unwrap();
    assert_eq!(
        last_accuracy, accuracy,
        "the model must get every known row"
    );
    let last_macro = last["macro_f1"].as_f64().unwrap();
    assert!((last_macro - macro_f1).abs() < 1e-12, "{last_macro}");

    let run = polyhead(
        &dir,
        &["eval", "--model", "m.safetensors", "--data", "valid.tsv"],
    )
    .ok();
    let figures =
        format!("accuracy {accuracy:.4}  macro-F1 {macro_f1:.4}  weighted-F1 {weighted_f1:.4}");
    assert!(run.stdout.contains(&figures), "{figures}\n{}", run.stdout);
    let meh_line = run.stdout.lines().find(|l| l.starts_with("meh ")).unwrap();
    assert!(meh_line.contains("unseen in training"), "{}", run.stdout);

    let run = polyhead(
        &dir,
        &[
            "eval",
            "--model",
            "m.safetensors",
            "--data",
            "valid.tsv",
            "--json",
        ],
    )
    .ok();
    let scores = eval_scores(&run.stdout);
    assert_eq!(scores["labelled"], 40);
    assert_eq!(scores["unknown_labels"], 1);
    assert!((scores["macro_f1"].as_f64().unwrap() - macro_f1).abs() < 1e-12);
    assert!((scores["weighted_f1"].as_f64().unwrap() - weighted_f1).abs() < 1e-12);

    let classes = scores["classes"].as_array().unwrap();
    let named: Vec<(&str, u64, bool)> = classes
        .iter()
        .map(|c| {
            let name = c["class"].as_str().unwrap();
            (name, c["support"].as_u64().unwrap(), c["unseen"] == true)
        })
        .collect();
    assert_eq!(
        named,
        vec![("rainy", 16, false), ("sunny", 23, false), ("meh", 1, true)]
    );
    assert_eq!(classes[2]["f1"], 0.0);

    let confusion: Vec<Vec<u64>> = serde_json::from_value(scores["confusion"].clone()).unwrap();
    let total: u64 = confusion.iter().flatten().sum();
    assert_eq!(total, 40, "{confusion:?}");
    assert_eq!(confusion[2], vec![1, 0, 0], "meh is predicted rainy");
}
