//! The model file is self-describing: a NumPy forward pass written from the
//! model's definition (tests/python/numpy_forward.py), reading nothing but
//! the `.safetensors` file, reproduces polyhead's probabilities.

mod common;

use common::{polyhead, python, scratch};

#[test]
fn numpy_forward_matches_polyhead_within_1e5() {
    let Some(python) = python("numpy reference", &["numpy", "safetensors"]) else {
        return;
    };
    let dir = scratch("numpy");
    let valid =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/clothing-reviews/valid.tsv");
    polyhead(
        &dir,
        &[
            "train",
            "--epochs",
            "1",
            "--quiet",
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
            "--probs",
            "--explain-tokens",
            valid.to_str().unwrap(),
        ],
    )
    .ok();
    std::fs::write(dir.join("predictions.jsonl"), &run.stdout).unwrap();
    assert_eq!(run.stdout.lines().count(), 814);

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/numpy_forward.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["m.safetensors", "predictions.jsonl"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "NumPy disagrees: {report}");
    assert!(report.contains("814 texts, 3 tasks"), "{report}");
}
