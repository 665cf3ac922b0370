//! Reading back the per-epoch metrics that `train --metrics-out` writes,
//! one JSON object per line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::comparison::Named;

/// One task's validation scores; `None` where the run wrote `null` (a
/// split without a labelled row for the task).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TaskScores {
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
}

/// One line of the metrics file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: Option<f64>,
    #[serde(default)]
    pub seconds: Option<f64>,
    #[serde(default)]
    pub examples_per_second: Option<f64>,
    #[serde(default)]
    pub valid_loss: Option<f64>,
    #[serde(default)]
    pub valid: Named<TaskScores>,
    #[serde(default)]
    pub loss_weights: Named<Option<f64>>,
    #[serde(default)]
    pub gradient_mix: Named<Option<f64>>,
}

/// Reads a metrics file: every non-blank line one epoch, epochs strictly
/// increasing (a file holding two runs one after the other is refused).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_metrics(&text, &path.display().to_string())
}

/// [`read_metrics`] on text already read; `source` names it in errors.
pub fn parse_metrics(text: &str, source: &str) -> Result<Vec<EpochMetrics>> {
    let mut epochs: Vec<EpochMetrics> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let metrics: EpochMetrics = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(err) => bail!(
                "{source}:{number}:{}: not a metrics line: {}",
                err.column(),
                without_position(&err)
            ),
        };
        if let Some(previous) = epochs.last() {
            if metrics.epoch <= previous.epoch {
                bail!(
                    "{source}:{number}: epoch {} follows epoch {}: the file holds more than one \
                     run (train --metrics-out starts a fresh file unless resuming)",
                    metrics.epoch,
                    previous.epoch
                );
            }
        }
        epochs.push(metrics);
    }
    if epochs.is_empty() {
        bail!("{source}: no metrics lines (expected the JSON lines of train --metrics-out)");
    }
    Ok(epochs)
}

/// serde_json's message without its " at line 1 column N" (the line is
/// always 1 here; the caller reports the file's line and the column).
fn without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = concat!(
        r#"{"epoch":1,"train_loss":1.5,"seconds":2.0,"examples_per_second":10.0,"#,
        r#""valid_loss":1.2,"valid":{"topic":{"accuracy":0.5,"macro_f1":null}},"#,
        r#""loss_weights":{"topic":1.0},"gradient_mix":{"topic":1.0}}"#
    );

    #[test]
    fn reads_lines_in_order_with_nulls() {
        let second = LINE.replace("\"epoch\":1", "\"epoch\":2");
        let text = format!("{LINE}\n\n{second}\n");
        let epochs = parse_metrics(&text, "m.jsonl").unwrap();
        assert_eq!(epochs.len(), 2);
        assert_eq!(epochs[1].epoch, 2);
        let topic = epochs[0].valid.get("topic").unwrap();
        assert_eq!((topic.accuracy, topic.macro_f1), (Some(0.5), None));
    }

    #[test]
    fn malformed_line_names_file_line_and_column() {
        let text = format!("{LINE}\n{{\"epoch\": 2, \"train_loss\": oops}}\n");
        let err = parse_metrics(&text, "m.jsonl").unwrap_err().to_string();
        assert!(err.starts_with("m.jsonl:2:"), "{err}");
        assert!(err.contains("not a metrics line"), "{err}");
        assert!(!err.contains("at line 1"), "{err}");
    }

    #[test]
    fn missing_epoch_is_an_error() {
        let err = parse_metrics("{\"train_loss\": 1}\n", "m.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("m.jsonl:1:") && err.contains("epoch"),
            "{err}"
        );
    }

    #[test]
    fn two_runs_in_one_file_are_refused() {
        let text = format!("{LINE}\n{LINE}\n");
        let err = parse_metrics(&text, "m.jsonl").unwrap_err().to_string();
        assert!(
            err.starts_with("m.jsonl:2: epoch 1 follows epoch 1"),
            "{err}"
        );
        assert!(parse_metrics("\n \n", "m.jsonl").is_err());
    }
}
