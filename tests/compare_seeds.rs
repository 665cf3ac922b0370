//! `polyhead compare`: both arms trained over several seeds, the JSON
//! table's statistics checked against a direct computation from its own
//! per-seed values, and the flags it refuses.

mod common;

use std::path::{Path, PathBuf};

use common::{case, polyhead, scratch};
use serde_json::Value;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Splits case 16's 48 labelled rows: every fourth row to validation.
fn split_case_16(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(case("case-16").join("train.tsv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let (mut train, mut valid) = (vec![header], vec![header]);
    for (i, line) in lines.enumerate() {
        if i % 4 == 3 {
            valid.push(line);
        } else {
            train.push(line);
        }
    }
    let (train_path, valid_path) = (dir.join("train.tsv"), dir.join("valid.tsv"));
    std::fs::write(&train_path, train.join("\n") + "\n").unwrap();
    std::fs::write(&valid_path, valid.join("\n") + "\n").unwrap();
    (train_path, valid_path)
}

fn values(stat: &Value) -> Vec<f64> {
    stat["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no values in {stat}"))
        .iter()
        .map(|v| v.as_f64().expect("a defined value"))
        .collect()
}

/// Recomputes mean and sample standard deviation from the values.
fn check_stat(stat: &Value, seeds: usize, what: &str) -> Vec<f64> {
    let xs = values(stat);
    assert_eq!(xs.len(), seeds, "{what}: one value per seed");
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let got_mean = stat["mean"].as_f64().unwrap();
    let got_std = stat["std"].as_f64().unwrap();
    assert!(
        (got_mean - mean).abs() < 1e-12,
        "{what}: mean {got_mean} vs {mean}"
    );
    assert!(
        (got_std - var.sqrt()).abs() < 1e-12,
        "{what}: std {got_std} vs {}",
        var.sqrt()
    );
    xs
}

#[test]
fn two_seeds_give_mean_and_sample_std_for_every_task_and_arm() {
    let dir = scratch("compare-seeds");
    let (train, valid) = split_case_16(&dir);
    let run = polyhead(
        &dir,
        &[
            "compare",
            "--train",
            path(&train),
            "--valid",
            path(&valid),
            "--test",
            path(&valid),
            "--seeds",
            "2",
            "--seed",
            "7",
            "--epochs",
            "2",
            "--embed-dim",
            "16",
            "--filters",
            "16",
            "--hidden",
            "8",
            "--batch-size",
            "8",
            "--json",
            "cmp.json",
        ],
    )
    .ok();
    for expected in [
        "validation",
        "test",
        "multi-task",
        "single-task",
        "topic",
        "sentiment",
    ] {
        assert!(run.stdout.contains(expected), "{expected}:\n{}", run.stdout);
    }
    assert!(run.stderr.contains("seed 8 single-task"), "{}", run.stderr);

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cmp.json")).unwrap()).unwrap();
    assert_eq!(json["settings"]["seeds"], serde_json::json!([7, 8]));
    assert_eq!(json["settings"]["epochs"], 2);
    assert_eq!(json["settings"]["lr"], 0.001);
    let seconds = check_stat(&json["multi_task_seconds"], 2, "multi-task seconds");
    assert!(seconds.iter().all(|&s| s > 0.0), "{seconds:?}");

    let tasks = json["tasks"].as_object().unwrap();
    let names: Vec<&str> = tasks.keys().map(String::as_str).collect();
    assert_eq!(names, ["topic", "sentiment"]);
    let mut spread = 0.0;
    for (name, task) in tasks {
        let seconds = check_stat(&task["single_task_seconds"], 2, name);
        assert!(seconds.iter().all(|&s| s > 0.0), "{name}: {seconds:?}");
        for split in ["valid", "test"] {
            for metric in ["accuracy", "macro_f1"] {
                let arms = &task[split][metric];
                let what = format!("{name} {split} {metric}");
                let multi = check_stat(&arms["multi_task"], 2, &format!("{what} multi"));
                let single = check_stat(&arms["single_task"], 2, &format!("{what} single"));
                let diff = check_stat(&arms["difference"], 2, &format!("{what} difference"));
                for i in 0..2 {
                    assert!((0.0..=1.0).contains(&multi[i]) && (0.0..=1.0).contains(&single[i]));
                    assert!((diff[i] - (multi[i] - single[i])).abs() < 1e-12, "{what}");
                }
                spread += arms["multi_task"]["std"].as_f64().unwrap();
                spread += arms["single_task"]["std"].as_f64().unwrap();
            }
        }
        // The test split is the validation file again: the same scores.
        assert_eq!(task["valid"], task["test"], "{name}");
    }
    // Two epochs on 36 rows leave the seeds apart: the check above compared
    // some non-zero spreads, not only zeros.
    assert!(spread > 0.0, "every standard deviation is zero");
}

/// Arms and seeds are independent of the order and number of other runs:
/// a one-seed comparison repeats the first seed of a longer one.
#[test]
fn a_seed_gives_the_same_scores_whatever_else_runs() {
    let dir = scratch("compare-repeat");
    let (train, valid) = split_case_16(&dir);
    let mut scores = Vec::new();
    for (seeds, out) in [("1", "one.json"), ("2", "two.json")] {
        polyhead(
            &dir,
            &[
                "compare",
                "--train",
                path(&train),
                "--valid",
                path(&valid),
                "--seeds",
                seeds,
                "--epochs",
                "1",
                "--embed-dim",
                "16",
                "--filters",
                "16",
                "--hidden",
                "8",
                "--quiet",
                "--json",
                out,
            ],
        )
        .ok();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(out)).unwrap()).unwrap();
        scores.push(json);
    }
    for task in ["topic", "sentiment"] {
        for arm in ["multi_task", "single_task"] {
            let one = &scores[0]["tasks"][task]["valid"]["macro_f1"][arm];
            let two = &scores[1]["tasks"][task]["valid"]["macro_f1"][arm];
            assert_eq!(one["values"][0], two["values"][0], "{task} {arm}");
            assert!(one["std"].is_null(), "one seed has no sample std: {one}");
        }
    }
}

#[test]
fn refuses_flags_that_do_not_apply_and_data_without_validation() {
    let dir = scratch("compare-flags");
    let (train, _) = split_case_16(&dir);
    let base = ["compare", "--train", path(&train), "--epochs", "1"];
    for (extra, message) in [
        (
            &["--out", "m.safetensors"][..],
            "--out is not used by compare",
        ),
        (
            &["--metrics-out", "m.jsonl"][..],
            "--metrics-out is not used",
        ),
        (&["--monitor", "valid_loss"][..], "--monitor"),
        (&["--seeds", "0"][..], "--seeds must be at least 1"),
        (
            &["--weighting", "nope"][..],
            "--weighting: unknown weighting",
        ),
        (&[][..], "compare needs a validation split"),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let run = polyhead(&dir, &args).fails(2);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
}
