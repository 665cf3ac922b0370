//! The training loop, evaluation and metrics.

pub mod metrics;
pub mod weighting;

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::backend::Backend;
use crate::data::dataset::Encoded;
use crate::model::network::{AdamConfig, HostBatch, Network};
use crate::rng::Rng;
use metrics::{Confusion, TaskScores};
use weighting::{Method, Weighting};

/// Settings of the optimisation itself.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub adam: AdamConfig,
    /// Probability of zeroing each pooled feature during training.
    pub dropout: f32,
    /// Fixed factors `w_i` in `loss = sum_i w_i * mean CE_i`.
    pub task_weights: Vec<f32>,
    /// How the tasks' losses and gradients are weighted.
    pub weighting: Method,
    /// Batch size for evaluation (no gradients, so larger is fine).
    pub eval_batch: usize,
}

/// One task's validation figures after an epoch.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSummary {
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// What an epoch reports.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub seconds: f64,
    pub examples_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
    /// Per task name, in task order.
    #[serde(serialize_with = "ordered_map")]
    pub valid: Vec<(String, TaskSummary)>,
    /// Loss weight of each task at the end of the epoch.
    #[serde(serialize_with = "ordered_map")]
    pub loss_weights: Vec<(String, f64)>,
    /// Mean coefficient of each task's gradient in the encoder's gradient
    /// over the epoch (1 unless a gradient-based weighting is in use).
    #[serde(serialize_with = "ordered_map")]
    pub gradient_mix: Vec<(String, f64)>,
}

fn ordered_map<S: serde::Serializer, V: Serialize>(
    items: &[(String, V)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(items.len()))?;
    for (k, v) in items {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// Progress events for whoever displays the run.
pub enum Event<'a> {
    EpochStart { epoch: usize, batches: usize },
    Batch { done: usize, loss: f64 },
    EpochEnd(&'a EpochReport),
}

/// Predictions and scores of a model over one split.
pub struct Evaluation {
    /// Per task: the predicted class of every row.
    pub predictions: Vec<Vec<usize>>,
    pub confusions: Vec<Confusion>,
    /// `sum_i mean CE_i` over the rows labelled with a known class.
    pub loss: f64,
}

/// Runs the model over `data` and scores it against its labels.
pub fn evaluate<B: Backend>(
    net: &mut Network<B>,
    data: &Encoded,
    batch_size: usize,
) -> Result<Evaluation> {
    let shape = net.shape.clone();
    let tasks = shape.tasks();
    let sum_c = shape.sum_classes();
    let mut predictions = vec![Vec::with_capacity(data.rows()); tasks];
    let mut confusions: Vec<Confusion> = shape
        .dims
        .heads
        .iter()
        .map(|h| Confusion::new(h.classes))
        .collect();
    let mut loss_sums = vec![0.0f64; tasks];
    let mut loss_counts = vec![0usize; tasks];
    let mut batch = HostBatch::default();

    for start in (0..data.rows()).step_by(batch_size.max(1)) {
        let rows = start..(start + batch_size).min(data.rows());
        batch.fill(rows.clone().map(|r| data.text(r)), shape.dims.kernel);
        let logits = net.logits(&batch)?;
        for (b, row) in rows.enumerate() {
            for (i, head) in shape.dims.heads.iter().enumerate() {
                let o = &logits[b * sum_c + shape.class_offset(i)..][..head.classes];
                let best = argmax(o);
                predictions[i].push(best);
                let gold = data.labels[i][row];
                confusions[i].add(gold, best);
                if gold >= 0 && (gold as usize) < head.classes {
                    loss_sums[i] += cross_entropy(o, gold as usize);
                    loss_counts[i] += 1;
                }
            }
        }
    }
    let loss = loss_sums
        .iter()
        .zip(&loss_counts)
        .filter(|(_, &n)| n > 0)
        .map(|(s, &n)| s / n as f64)
        .sum();
    Ok(Evaluation {
        predictions,
        confusions,
        loss,
    })
}

/// Index of the largest value (the first of equals).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Softmax probabilities of one row of logits, computed in float64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn cross_entropy(logits: &[f32], gold: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let log_sum = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln();
    log_sum - (logits[gold] as f64 - max)
}

/// Trains `net` on `train` for `config.epochs` epochs, evaluating on
/// `valid` after each, and calls `observe` as it goes (after each epoch the
/// caller may save the model). Rows without any label are skipped.
pub fn train<B: Backend>(
    net: &mut Network<B>,
    train: &Encoded,
    valid: Option<&Encoded>,
    task_names: &[String],
    config: &TrainConfig,
    rng: &mut Rng,
    observe: &mut dyn FnMut(&mut Network<B>, Event<'_>) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let shape = net.shape.clone();
    let tasks = shape.tasks();
    let filters = shape.dims.filters;
    let mut order: Vec<usize> = (0..train.rows())
        .filter(|&r| (0..tasks).any(|i| train.labels[i][r] >= 0))
        .collect();
    if order.is_empty() {
        bail!("no training row has a label for any task");
    }
    let batches = order.len().div_ceil(config.batch_size);
    let mut batch = HostBatch::default();
    let mut mask = vec![0.0f32; config.batch_size * filters];
    let mut reports = Vec::with_capacity(config.epochs);
    let base = config.task_weights.iter().map(|&w| w as f64).collect();
    let mut weighting = Weighting::new(config.weighting, base, config.adam.lr as f64, rng.fork(7));

    for epoch in 1..=config.epochs {
        observe(net, Event::EpochStart { epoch, batches })?;
        rng.shuffle(&mut order);
        let started = Instant::now();
        let mut loss_total = 0.0;
        let mut mix_total = vec![0.0; tasks];

        for (step, chunk) in order.chunks(config.batch_size).enumerate() {
            batch.fill(chunk.iter().map(|&r| train.text(r)), shape.dims.kernel);
            for i in 0..tasks {
                batch
                    .labels
                    .extend(chunk.iter().map(|&r| train.labels[i][r]));
            }
            let dropout = if config.dropout > 0.0 {
                let keep = 1.0 / (1.0 - config.dropout);
                let n = chunk.len() * filters;
                for m in &mut mask[..n] {
                    *m = if rng.next_f64() < config.dropout as f64 {
                        0.0
                    } else {
                        keep
                    };
                }
                Some(&mask[..n])
            } else {
                None
            };

            let weights: Vec<f32> = weighting.loss_weights().iter().map(|&w| w as f32).collect();
            let losses = net.backward(&batch, &weights, &mut weighting, dropout)?;
            weighting.observe(&losses.means(), &losses.gram);
            for (total, c) in mix_total.iter_mut().zip(&weighting.last_coeffs) {
                *total += c;
            }
            let loss = losses.weighted(&weights);
            if !loss.is_finite() {
                bail!(
                    "the training loss became {loss} at epoch {epoch}, step {} (batch {} of {}); \
                     the model file holds the last finished epoch",
                    net.step + 1,
                    step + 1,
                    batches
                );
            }
            net.adam_step(&config.adam)?;
            loss_total += loss;
            observe(
                net,
                Event::Batch {
                    done: step + 1,
                    loss: loss_total / (step + 1) as f64,
                },
            )?;
        }
        net.backend.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        weighting.end_epoch();
        let named = |values: Vec<f64>| -> Vec<(String, f64)> {
            task_names.iter().cloned().zip(values).collect()
        };

        let (valid_loss, valid_scores) = match valid {
            Some(v) => {
                let eval = evaluate(net, v, config.eval_batch)?;
                let scores: Vec<(String, TaskSummary)> = eval
                    .confusions
                    .iter()
                    .zip(task_names)
                    .map(|(c, name)| {
                        let s: TaskScores = c.scores(&[]);
                        (
                            name.clone(),
                            TaskSummary {
                                accuracy: s.accuracy,
                                macro_f1: s.macro_f1,
                            },
                        )
                    })
                    .collect();
                (Some(eval.loss), scores)
            }
            None => (None, Vec::new()),
        };
        let report = EpochReport {
            epoch,
            train_loss: loss_total / batches as f64,
            seconds,
            examples_per_second: order.len() as f64 / seconds,
            valid_loss,
            valid: valid_scores,
            loss_weights: named(weighting.loss_weights()),
            gradient_mix: named(mix_total.iter().map(|t| t / batches as f64).collect()),
        };
        observe(net, Event::EpochEnd(&report))?;
        reports.push(report);
    }
    Ok(reports)
}
