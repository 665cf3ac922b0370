//! The training loop, evaluation and metrics.

pub mod metrics;
pub mod weighting;

use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, DropoutDraw};
use crate::data::dataset::Encoded;
use crate::model::network::{AdamConfig, HostBatch, LossScale, Network};
use crate::rng::Rng;
use metrics::Confusion;
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
    /// Emit a checkpoint every this many steps (besides each epoch end).
    pub checkpoint_every: Option<usize>,
    /// Keep the best model by this metric, and maybe stop early.
    pub monitor: Option<Monitor>,
    /// How batches mix rows of different input files.
    pub sampling: Sampling,
    /// Loss weight of every class of every task (`[sum C]`); `None`: all 1.
    pub class_weights: Option<Vec<f32>>,
}

/// Batch composition across training files.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// Every row once per epoch, shuffled: files count by their size.
    Proportional,
    /// File `i` is drawn with probability proportional to `n_i^(1/T)`;
    /// rows are taken from each file's own shuffled sequence (reshuffled
    /// when used up), and an epoch has as many rows as the data.
    Temperature(f64),
}

impl Sampling {
    pub fn parse(text: &str) -> Option<Sampling> {
        match text.split_once(':') {
            None if text == "proportional" => Some(Sampling::Proportional),
            Some(("temperature", t)) => {
                let t: f64 = t.parse().ok()?;
                (t > 0.0 && t.is_finite()).then_some(Sampling::Temperature(t))
            }
            _ => None,
        }
    }
}

/// The rows of one epoch, in training order.
fn epoch_order(rows: &[usize], sources: &[u32], sampling: Sampling, rng: &mut Rng) -> Vec<usize> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &r in rows {
        let s = sources.get(r).copied().unwrap_or(0) as usize;
        if groups.len() <= s {
            groups.resize(s + 1, Vec::new());
        }
        groups[s].push(r);
    }
    groups.retain(|g| !g.is_empty());
    let temperature = match sampling {
        Sampling::Temperature(t) if groups.len() > 1 => t,
        _ => {
            let mut order = rows.to_vec();
            rng.shuffle(&mut order);
            return order;
        }
    };
    let weights: Vec<f64> = groups
        .iter()
        .map(|g| (g.len() as f64).powf(1.0 / temperature))
        .collect();
    let total: f64 = weights.iter().sum();
    for g in &mut groups {
        rng.shuffle(g);
    }
    let mut next = vec![0usize; groups.len()];
    let mut order = Vec::with_capacity(rows.len());
    for _ in 0..rows.len() {
        let mut pick = rng.next_f64() * total;
        let mut s = 0;
        while s + 1 < weights.len() && pick >= weights[s] {
            pick -= weights[s];
            s += 1;
        }
        if next[s] == groups[s].len() {
            rng.shuffle(&mut groups[s]);
            next[s] = 0;
        }
        order.push(groups[s][next[s]]);
        next[s] += 1;
    }
    order
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
    /// Loss weight of each task in the epoch's steps (their mean over the
    /// steps for the methods that move them every step; see
    /// [`Weighting::end_epoch`]).
    #[serde(serialize_with = "ordered_map")]
    pub loss_weights: Vec<(String, f64)>,
    /// Mean coefficient of each task's gradient in the encoder's gradient
    /// over the epoch (1 unless a gradient-based weighting is in use).
    #[serde(serialize_with = "ordered_map")]
    pub gradient_mix: Vec<(String, f64)>,
    /// The fp16 loss scale at the end of the epoch, when scaling is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
    /// Steps skipped because the scaled gradient overflowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<usize>,
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
    EpochStart {
        epoch: usize,
        batches: usize,
    },
    Batch {
        done: usize,
        loss: f64,
    },
    EpochEnd(&'a EpochReport),
    /// The monitored metric improved this epoch: the model is the best yet.
    Best(&'a EpochReport),
    /// A point to save from: every `checkpoint_every` steps and after each
    /// epoch.
    Checkpoint(&'a RunState),
    /// Early stopping ended the run after this epoch.
    Stopped {
        epoch: usize,
    },
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

/// Where a run stands: everything needed to continue it exactly (with the
/// parameters and Adam moments held by the network).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub seed: u64,
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batches_done: usize,
    /// Sum of the done batches' losses, and of their gradient coefficients.
    pub loss_total: f64,
    pub mix_total: Vec<f64>,
    pub weighting: Weighting,
    /// Best monitored value so far and its epoch.
    pub best: Option<(usize, f64)>,
    /// Epochs since the best one.
    pub since_best: usize,
    /// Dynamic loss scaling, when the backend needs it (fp16).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
    /// Steps skipped in this epoch because the scaled gradient overflowed.
    #[serde(default)]
    pub skipped_steps: usize,
}

impl RunState {
    pub fn new(config: &TrainConfig, seed: u64) -> RunState {
        let base = config.task_weights.iter().map(|&w| w as f64).collect();
        let lr = config.adam.lr as f64;
        RunState {
            seed,
            epoch: 1,
            batches_done: 0,
            loss_total: 0.0,
            mix_total: vec![0.0; config.task_weights.len()],
            weighting: Weighting::new(config.weighting, base, lr, Rng::derived(seed, 3, 0)),
            best: None,
            since_best: 0,
            loss_scale: None,
            skipped_steps: 0,
        }
    }
}

/// What is watched for early stopping and for keeping the best model.
#[derive(Clone, Debug, PartialEq)]
pub struct Monitor {
    /// Task index, or `None` for the validation loss.
    pub task: Option<usize>,
    /// `accuracy` or `macro_f1` (ignored for the loss).
    pub metric: String,
    /// Stop after this many epochs without improvement.
    pub patience: Option<usize>,
}

impl Monitor {
    fn value(&self, report: &EpochReport) -> Option<f64> {
        match self.task {
            None => report.valid_loss.map(|l| -l),
            Some(i) => report.valid.get(i).map(|(_, s)| {
                if self.metric == "accuracy" {
                    s.accuracy
                } else {
                    s.macro_f1
                }
            }),
        }
    }
}

/// Trains `net` on `train` up to `config.epochs` epochs from `state`,
/// evaluating on `valid` after each, and tells `observe` what happens (the
/// caller saves models and checkpoints). Rows without any label are
/// skipped. Each epoch's order and each step's dropout come from the seed
/// and their number alone, so a resumed run repeats an uninterrupted one.
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend>(
    net: &mut Network<B>,
    train: &Encoded,
    valid: Option<&Encoded>,
    task_names: &[String],
    config: &TrainConfig,
    state: &mut RunState,
    observe: &mut dyn FnMut(&mut Network<B>, Event<'_>) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let shape = net.shape.clone();
    let tasks = shape.tasks();
    let rows: Vec<usize> = (0..train.rows())
        .filter(|&r| (0..tasks).any(|i| train.labels[i][r] >= 0))
        .collect();
    if rows.is_empty() {
        bail!("no training row has a label for any task");
    }
    let batches = rows.len().div_ceil(config.batch_size);
    if let Some(weights) = &config.class_weights {
        net.set_class_weights(weights)?;
    }
    if state.loss_scale.is_none() && net.backend.needs_loss_scaling() {
        state.loss_scale = Some(LossScale::initial());
    }
    // The training set goes to the backend once; a step gathers its batch
    // there from the epoch's row order.
    let texts = net.upload_texts(train)?;
    let mut reports = Vec::new();

    while state.epoch <= config.epochs {
        let epoch = state.epoch;
        observe(net, Event::EpochStart { epoch, batches })?;
        let mut rng = Rng::derived(state.seed, 1, epoch as u64);
        let order = epoch_order(&rows, &train.sources, config.sampling, &mut rng);
        let device_order = net.upload_order(&order)?;
        let started = Instant::now();
        let first = state.batches_done;

        for (step, chunk) in order.chunks(config.batch_size).enumerate().skip(first) {
            let dropout = (config.dropout > 0.0).then(|| {
                let key = Rng::derived(state.seed, 2, net.step).next_u64();
                DropoutDraw::new(key, config.dropout)
            });

            let weighting = &mut state.weighting;
            let weights: Vec<f32> = weighting.loss_weights().iter().map(|&w| w as f32).collect();
            net.loss_scale = state.loss_scale.map_or(1.0, |s| s.scale);
            let losses = net.backward_rows(
                &texts,
                train,
                &device_order,
                step * config.batch_size,
                chunk,
                &weights,
                weighting,
                dropout.as_ref(),
            )?;
            let loss = losses.weighted(&weights);
            if !loss.is_finite() {
                bail!(
                    "the training loss became {loss} at epoch {epoch}, step {} (batch {} of {}); \
                     files already written keep the last good checkpoint (try a lower --lr)",
                    net.step + 1,
                    step + 1,
                    batches
                );
            }
            weighting.observe(&losses.means(), &losses.gram);
            for (total, c) in state.mix_total.iter_mut().zip(&weighting.last_coeffs) {
                *total += c;
            }
            let apply = match &mut state.loss_scale {
                Some(scale) => scale.update(net.grads_finite()?),
                None => true,
            };
            if apply {
                net.adam_step(&config.adam)?;
            } else {
                state.skipped_steps += 1;
            }
            state.loss_total += loss;
            state.batches_done = step + 1;
            let mean = state.loss_total / (step + 1) as f64;
            observe(
                net,
                Event::Batch {
                    done: step + 1,
                    loss: mean,
                },
            )?;
            if config
                .checkpoint_every
                .is_some_and(|n| net.step.is_multiple_of(n as u64))
                && step + 1 < batches
            {
                observe(net, Event::Checkpoint(state))?;
            }
        }
        net.backend.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        let examples = rows.len() - (first * config.batch_size).min(rows.len());
        let loss_weights = state.weighting.end_epoch();
        let named = |values: Vec<f64>| -> Vec<(String, f64)> {
            task_names.iter().cloned().zip(values).collect()
        };

        let (valid_loss, valid_scores) = match valid {
            Some(v) => {
                let eval = evaluate(net, v, config.eval_batch)?;
                let scores = eval
                    .confusions
                    .iter()
                    .zip(task_names)
                    .map(|(c, name)| {
                        let s = c.scores(&[]);
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
            train_loss: state.loss_total / batches as f64,
            seconds,
            examples_per_second: examples as f64 / seconds,
            valid_loss,
            valid: valid_scores,
            loss_weights: named(loss_weights),
            gradient_mix: named(state.mix_total.iter().map(|t| t / batches as f64).collect()),
            loss_scale: state.loss_scale.map(|s| s.scale),
            skipped_steps: state.loss_scale.map(|_| state.skipped_steps),
        };

        state.epoch += 1;
        state.batches_done = 0;
        state.loss_total = 0.0;
        state.skipped_steps = 0;
        state.mix_total.iter_mut().for_each(|t| *t = 0.0);
        let mut stop = false;
        if let Some(monitor) = &config.monitor {
            if let Some(value) = monitor.value(&report) {
                if state.best.is_none_or(|(_, best)| value > best) {
                    state.best = Some((epoch, value));
                    state.since_best = 0;
                    observe(net, Event::Best(&report))?;
                } else {
                    state.since_best += 1;
                    stop = monitor.patience.is_some_and(|p| state.since_best >= p);
                }
            }
        }
        observe(net, Event::EpochEnd(&report))?;
        observe(net, Event::Checkpoint(state))?;
        reports.push(report);
        if stop {
            observe(net, Event::Stopped { epoch })?;
            break;
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_sampling_favours_small_files() {
        // 900 rows from file 0, 100 from file 1.
        let rows: Vec<usize> = (0..1000).collect();
        let sources: Vec<u32> = (0..1000).map(|r| u32::from(r >= 900)).collect();
        let count_small = |sampling| {
            let order = epoch_order(&rows, &sources, sampling, &mut Rng::new(3));
            assert_eq!(order.len(), 1000);
            order.iter().filter(|&&r| r >= 900).count()
        };
        assert_eq!(count_small(Sampling::Proportional), 100);
        // T = 2: p_small = sqrt(100) / (sqrt(900) + sqrt(100)) = 0.25.
        let small = count_small(Sampling::Temperature(2.0));
        assert!((200..300).contains(&small), "{small}");
        // T = 1 is proportional in expectation.
        let small = count_small(Sampling::Temperature(1.0));
        assert!((60..140).contains(&small), "{small}");
    }

    #[test]
    fn sampling_modes_parse() {
        assert_eq!(
            Sampling::parse("proportional"),
            Some(Sampling::Proportional)
        );
        assert_eq!(
            Sampling::parse("temperature:2"),
            Some(Sampling::Temperature(2.0))
        );
        assert_eq!(Sampling::parse("temperature:0"), None);
        assert_eq!(Sampling::parse("uniform"), None);
    }
}
