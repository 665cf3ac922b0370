//! Loss weighting across tasks.
//!
//! Every parameter below the pooled features `h` is shared by all tasks,
//! so a task's whole influence on the encoder passes through its gradient
//! with respect to `h`, `g_i = dL_i/dh` (one small `[B, F]` tensor per
//! task). The gradient-based methods (GradNorm, PCGrad, MGDA-UB) therefore
//! work on the `T x T` Gram matrix `G[i][j] = <g_i, g_j>` and return
//! coefficients `c_i`; the encoder then receives `sum_i c_i g_i`. That is one
//! encoder backward per step, whatever the number of tasks. Each head's own
//! parameters always receive their own task's gradient, scaled by the
//! task's loss weight.
//!
//! Methods:
//! - `equal`: `loss = sum_i w_i L_i` with fixed weights (default all 1).
//! - `uncertainty` (Kendall et al., 2018): learned log-variances `s_i`,
//!   `loss = sum_i exp(-s_i) L_i + s_i`; the `s_i` follow Adam with the
//!   model's settings.
//! - `dwa`, dynamic weight averaging (Liu et al., 2019): from epoch 3,
//!   `w_i = T softmax_i(r_i / 2)` with `r_i` the ratio of task `i`'s mean
//!   training loss over the last two epochs; 1 before.
//! - `gradnorm` (Chen et al., 2018, alpha 1.5): learned weights `w_i`
//!   moved so that the norms `w_i |g_i|` approach `mean_j(w_j |g_j|) *
//!   r_i^alpha`, `r_i` the task's loss ratio to its first step relative to
//!   the mean ratio; renormalised to sum to `T`.
//! - `pcgrad` (Yu et al., 2020): each `g_i` is projected off every other
//!   task's gradient it conflicts with (negative inner product), in a
//!   random order; the projected gradients are summed.
//! - `mgda-ub` (Sener and Koltun, 2018): the min-norm point of the convex
//!   hull of the `g_i` (Frank-Wolfe on the Gram matrix), which is exactly
//!   the "upper bound" variant's use of gradients with respect to the shared
//!   representation.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::network::GradientMix;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    Equal,
    Uncertainty,
    Dwa,
    GradNorm,
    PcGrad,
    MgdaUb,
}

impl Method {
    pub const NAMES: [&'static str; 6] = [
        "equal",
        "uncertainty",
        "dwa",
        "gradnorm",
        "pcgrad",
        "mgda-ub",
    ];

    pub fn parse(name: &str) -> Result<Method> {
        Ok(match name {
            "equal" => Method::Equal,
            "uncertainty" => Method::Uncertainty,
            "dwa" => Method::Dwa,
            "gradnorm" => Method::GradNorm,
            "pcgrad" => Method::PcGrad,
            "mgda-ub" | "mgda" => Method::MgdaUb,
            other => bail!(
                "unknown weighting {other:?} (expected one of {})",
                Method::NAMES.join(", ")
            ),
        })
    }

    /// Whether the method moves the loss weights after every step rather
    /// than keeping them for a whole epoch.
    pub fn moves_weights_every_step(self) -> bool {
        matches!(self, Method::Uncertainty | Method::GradNorm)
    }

    /// Whether the method needs the Gram matrix of the tasks' gradients.
    pub fn needs_gram(self) -> bool {
        matches!(self, Method::GradNorm | Method::PcGrad | Method::MgdaUb)
    }
}

const GRADNORM_ALPHA: f64 = 1.5;
const DWA_TEMPERATURE: f64 = 2.0;

/// The state of one weighting method over a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Weighting {
    pub method: Method,
    /// Fixed per-task factors (`--task-weights`), applied on top of every method.
    base: Vec<f64>,
    /// `s_i` for uncertainty weighting; learned `w_i` for GradNorm.
    learned: Vec<f64>,
    adam_m: Vec<f64>,
    adam_v: Vec<f64>,
    adam_step: i32,
    lr: f64,
    /// Per-task mean training loss of the finished epochs (DWA).
    epoch_losses: Vec<Vec<f64>>,
    epoch_sum: Vec<f64>,
    epoch_count: Vec<usize>,
    /// GradNorm: each task's first loss.
    initial_losses: Vec<Option<f64>>,
    /// Sum over the epoch's steps so far of the loss weights they used, and
    /// the number of those steps (absent from states saved before they were
    /// kept: the sum then starts at the resumed step).
    #[serde(default)]
    epoch_weight_sum: Vec<f64>,
    #[serde(default)]
    epoch_steps: usize,
    rng: Rng,
    /// The coefficients of the last step's gradient combination.
    pub last_coeffs: Vec<f64>,
}

impl Weighting {
    pub fn new(method: Method, base: Vec<f64>, lr: f64, rng: Rng) -> Weighting {
        let tasks = base.len();
        let learned = match method {
            Method::GradNorm => vec![1.0; tasks],
            _ => vec![0.0; tasks],
        };
        Weighting {
            method,
            learned,
            adam_m: vec![0.0; tasks],
            adam_v: vec![0.0; tasks],
            adam_step: 0,
            lr,
            epoch_losses: Vec::new(),
            epoch_sum: vec![0.0; tasks],
            epoch_count: vec![0; tasks],
            initial_losses: vec![None; tasks],
            epoch_weight_sum: vec![0.0; tasks],
            epoch_steps: 0,
            rng,
            last_coeffs: vec![1.0; tasks],
            base,
        }
    }

    pub fn tasks(&self) -> usize {
        self.base.len()
    }

    /// The weight of each task's loss (and of its head's gradient) for the
    /// next step.
    pub fn loss_weights(&self) -> Vec<f64> {
        let tasks = self.tasks();
        let dynamic: Vec<f64> = match self.method {
            Method::Uncertainty => self.learned.iter().map(|s| (-s).exp()).collect(),
            Method::GradNorm => self.learned.clone(),
            Method::Dwa => dwa_weights(&self.epoch_losses, tasks),
            _ => vec![1.0; tasks],
        };
        dynamic.iter().zip(&self.base).map(|(w, b)| w * b).collect()
    }

    /// Coefficients `c_i` for the encoder's gradient `sum_i c_i g_i`, where
    /// `g_i` is task `i`'s gradient already scaled by its loss weight and
    /// `gram` their Gram matrix (empty unless [`Method::needs_gram`]).
    pub fn combine(&mut self, gram: &[f64]) -> Vec<f64> {
        let tasks = self.tasks();
        let coeffs = match self.method {
            Method::PcGrad => {
                let orders: Vec<Vec<usize>> = (0..tasks)
                    .map(|_| {
                        let mut order: Vec<usize> = (0..tasks).collect();
                        self.rng.shuffle(&mut order);
                        order
                    })
                    .collect();
                pcgrad_coefficients(gram, tasks, &orders)
            }
            Method::MgdaUb => min_norm_coefficients(gram, tasks),
            _ => vec![1.0; tasks],
        };
        self.last_coeffs = coeffs.clone();
        coeffs
    }

    /// Updates the learned state after a step, which used the current
    /// [`Weighting::loss_weights`]. `losses[i]` is task `i`'s unweighted
    /// mean loss in the batch (`None` without labels); `gram` is as given to
    /// [`Weighting::combine`].
    pub fn observe(&mut self, losses: &[Option<f64>], gram: &[f64]) {
        let used = self.loss_weights();
        self.epoch_weight_sum.resize(used.len(), 0.0);
        for (sum, w) in self.epoch_weight_sum.iter_mut().zip(used) {
            *sum += w;
        }
        self.epoch_steps += 1;

        for (i, loss) in losses.iter().enumerate() {
            if let Some(l) = loss {
                self.epoch_sum[i] += l;
                self.epoch_count[i] += 1;
            }
        }
        match self.method {
            Method::Uncertainty => {
                // d/ds (exp(-s) L + s) = 1 - exp(-s) L
                let grads: Vec<f64> = losses
                    .iter()
                    .zip(&self.learned)
                    .map(|(l, s)| l.map_or(0.0, |l| 1.0 - (-s).exp() * l))
                    .collect();
                self.adam_update(&grads);
            }
            Method::GradNorm => self.gradnorm_update(losses, gram),
            _ => {}
        }
    }

    /// Closes an epoch (DWA's loss history) and returns the loss weights its
    /// steps used: the same for every step, except with uncertainty and
    /// GradNorm, which move them after each step; for those, their mean over
    /// the epoch's steps.
    pub fn end_epoch(&mut self) -> Vec<f64> {
        let used = if self.method.moves_weights_every_step() && self.epoch_steps > 0 {
            let steps = self.epoch_steps as f64;
            self.epoch_weight_sum.iter().map(|s| s / steps).collect()
        } else {
            self.loss_weights()
        };
        self.epoch_weight_sum.iter_mut().for_each(|s| *s = 0.0);
        self.epoch_steps = 0;

        let means = self
            .epoch_sum
            .iter()
            .zip(&self.epoch_count)
            .map(|(s, &n)| if n == 0 { f64::NAN } else { s / n as f64 })
            .collect();
        self.epoch_losses.push(means);
        self.epoch_sum.iter_mut().for_each(|s| *s = 0.0);
        self.epoch_count.iter_mut().for_each(|n| *n = 0);
        used
    }

    fn adam_update(&mut self, grads: &[f64]) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        self.adam_step += 1;
        let c1 = 1.0 - b1.powi(self.adam_step);
        let c2 = (1.0 - b2.powi(self.adam_step)).sqrt();
        let state = self
            .adam_m
            .iter_mut()
            .zip(&mut self.adam_v)
            .zip(&mut self.learned);
        for (((m, v), x), &g) in state.zip(grads) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *x -= self.lr / c1 * *m / (v.sqrt() / c2 + eps);
        }
    }

    fn gradnorm_update(&mut self, losses: &[Option<f64>], gram: &[f64]) {
        let tasks = self.tasks();
        let present: Vec<usize> = (0..tasks).filter(|&i| losses[i].is_some()).collect();
        for &i in &present {
            self.initial_losses[i].get_or_insert(losses[i].unwrap_or(1.0).max(1e-12));
        }
        if present.len() < 2 {
            return;
        }
        // The gram holds the weighted gradients: |w_i g_i| = sqrt(G_ii).
        let norms: Vec<f64> = present
            .iter()
            .map(|&i| gram[i * tasks + i].max(0.0).sqrt())
            .collect();
        let ratios: Vec<f64> = present
            .iter()
            .map(|&i| losses[i].unwrap_or(0.0) / self.initial_losses[i].unwrap_or(1.0))
            .collect();
        let mean_norm = norms.iter().sum::<f64>() / norms.len() as f64;
        let mean_ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
        let mut grads = vec![0.0; tasks];
        for (k, &i) in present.iter().enumerate() {
            let target = mean_norm * (ratios[k] / mean_ratio).powf(GRADNORM_ALPHA);
            // d|G_i - target|/dw_i = sign(G_i - target) * |g_i|, |g_i| = G_i / w_i
            let unweighted = if self.learned[i] > 0.0 {
                norms[k] / self.learned[i]
            } else {
                0.0
            };
            grads[i] = sign(norms[k] - target) * unweighted;
        }
        self.adam_update(&grads);
        for w in &mut self.learned {
            *w = w.max(1e-3);
        }
        let sum: f64 = self.learned.iter().sum();
        for w in &mut self.learned {
            *w *= tasks as f64 / sum;
        }
    }
}

/// -1, 0 or 1 (`f64::signum` gives 1 for 0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn dwa_weights(history: &[Vec<f64>], tasks: usize) -> Vec<f64> {
    if history.len() < 2 {
        return vec![1.0; tasks];
    }
    let (last, before) = (&history[history.len() - 1], &history[history.len() - 2]);
    let ratios: Vec<f64> = (0..tasks)
        .map(|i| {
            let r = last[i] / before[i];
            if r.is_finite() {
                r
            } else {
                1.0
            }
        })
        .collect();
    let max = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = ratios
        .iter()
        .map(|r| ((r - max) / DWA_TEMPERATURE).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| tasks as f64 * e / sum).collect()
}

/// PCGrad on the Gram matrix: every projected gradient is a combination of
/// the originals, so its coefficient vector is tracked instead of the
/// vector itself. `orders[i]` is the order in which task `i` meets the
/// others.
pub fn pcgrad_coefficients(gram: &[f64], tasks: usize, orders: &[Vec<usize>]) -> Vec<f64> {
    let mut total = vec![0.0; tasks];
    for i in 0..tasks {
        let mut c = vec![0.0; tasks];
        c[i] = 1.0;
        for &j in &orders[i] {
            if j == i || gram[j * tasks + j] <= 0.0 {
                continue;
            }
            let dot: f64 = (0..tasks).map(|k| c[k] * gram[k * tasks + j]).sum();
            if dot < 0.0 {
                c[j] -= dot / gram[j * tasks + j];
            }
        }
        for k in 0..tasks {
            total[k] += c[k];
        }
    }
    total
}

/// The `alpha` on the simplex minimising `|sum_i alpha_i g_i|^2`, by
/// Frank-Wolfe with exact line search on the Gram matrix.
pub fn min_norm_coefficients(gram: &[f64], tasks: usize) -> Vec<f64> {
    let mut alpha = vec![1.0 / tasks as f64; tasks];
    for _ in 0..250 {
        // Gradient of alpha^T G alpha is 2 G alpha; move towards the vertex
        // with the smallest component.
        let g_alpha: Vec<f64> = (0..tasks)
            .map(|i| (0..tasks).map(|j| gram[i * tasks + j] * alpha[j]).sum())
            .collect();
        let t = (0..tasks)
            .min_by(|&a, &b| g_alpha[a].total_cmp(&g_alpha[b]))
            .unwrap_or(0);
        // Line search between v1 = current point and v2 = vertex t.
        let v1v1: f64 = (0..tasks).map(|i| alpha[i] * g_alpha[i]).sum();
        let v1v2 = g_alpha[t];
        let v2v2 = gram[t * tasks + t];
        let denom = v1v1 - 2.0 * v1v2 + v2v2;
        if denom <= 1e-300 {
            break;
        }
        let gamma = ((v1v1 - v1v2) / denom).clamp(0.0, 1.0);
        if gamma < 1e-12 {
            break;
        }
        for (i, a) in alpha.iter_mut().enumerate() {
            *a = (1.0 - gamma) * *a + if i == t { gamma } else { 0.0 };
        }
    }
    alpha
}

impl GradientMix for Weighting {
    fn needs_gram(&self) -> bool {
        self.method.needs_gram()
    }

    fn coefficients(&mut self, gram: &[f64]) -> Vec<f64> {
        self.combine(gram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram_of(vectors: &[Vec<f64>]) -> Vec<f64> {
        let t = vectors.len();
        let mut g = vec![0.0; t * t];
        for i in 0..t {
            for j in 0..t {
                g[i * t + j] = vectors[i].iter().zip(&vectors[j]).map(|(a, b)| a * b).sum();
            }
        }
        g
    }

    fn random_vectors(rng: &mut Rng, tasks: usize, len: usize) -> Vec<Vec<f64>> {
        (0..tasks)
            .map(|_| (0..len).map(|_| rng.normal()).collect())
            .collect()
    }

    /// PCGrad done directly on the vectors, as the paper writes it.
    fn pcgrad_direct(vectors: &[Vec<f64>], orders: &[Vec<usize>]) -> Vec<f64> {
        let len = vectors[0].len();
        let mut total = vec![0.0; len];
        for (i, order) in orders.iter().enumerate() {
            let mut g = vectors[i].clone();
            for &j in order {
                if j == i {
                    continue;
                }
                let dot: f64 = g.iter().zip(&vectors[j]).map(|(a, b)| a * b).sum();
                let norm: f64 = vectors[j].iter().map(|x| x * x).sum();
                if dot < 0.0 {
                    for (x, y) in g.iter_mut().zip(&vectors[j]) {
                        *x -= dot / norm * y;
                    }
                }
            }
            for (t, x) in total.iter_mut().zip(&g) {
                *t += x;
            }
        }
        total
    }

    #[test]
    fn pcgrad_on_the_gram_matrix_equals_pcgrad_on_vectors() {
        let mut rng = Rng::new(11);
        for tasks in 2..=5 {
            let vectors = random_vectors(&mut rng, tasks, 7);
            let orders: Vec<Vec<usize>> = (0..tasks)
                .map(|_| {
                    let mut o: Vec<usize> = (0..tasks).collect();
                    rng.shuffle(&mut o);
                    o
                })
                .collect();
            let coeffs = pcgrad_coefficients(&gram_of(&vectors), tasks, &orders);
            let direct = pcgrad_direct(&vectors, &orders);
            for d in 0..7 {
                let combined: f64 = (0..tasks).map(|i| coeffs[i] * vectors[i][d]).sum();
                assert!(
                    (combined - direct[d]).abs() < 1e-10,
                    "{combined} vs {}",
                    direct[d]
                );
            }
        }
    }

    #[test]
    fn pcgrad_leaves_agreeing_gradients_alone() {
        let vectors = vec![vec![1.0, 0.0], vec![1.0, 1.0]];
        let orders = vec![vec![0, 1], vec![1, 0]];
        assert_eq!(
            pcgrad_coefficients(&gram_of(&vectors), 2, &orders),
            vec![1.0, 1.0]
        );
    }

    #[test]
    fn min_norm_matches_the_two_task_closed_form() {
        let mut rng = Rng::new(5);
        for _ in 0..20 {
            let v = random_vectors(&mut rng, 2, 6);
            let alpha = min_norm_coefficients(&gram_of(&v), 2);
            // alpha_1 = clip(<g2 - g1, g2> / |g1 - g2|^2, 0, 1)
            let diff: Vec<f64> = v[1].iter().zip(&v[0]).map(|(a, b)| a - b).collect();
            let num: f64 = diff.iter().zip(&v[1]).map(|(a, b)| a * b).sum();
            let den: f64 = diff.iter().map(|x| x * x).sum();
            let expected = (num / den).clamp(0.0, 1.0);
            assert!(
                (alpha[0] - expected).abs() < 1e-9,
                "{} vs {expected}",
                alpha[0]
            );
            assert!((alpha[0] + alpha[1] - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn min_norm_beats_a_grid_over_the_simplex() {
        let mut rng = Rng::new(9);
        let v = random_vectors(&mut rng, 3, 4);
        let gram = gram_of(&v);
        let norm = |a: &[f64]| -> f64 {
            (0..3)
                .map(|i| (0..3).map(|j| a[i] * a[j] * gram[i * 3 + j]).sum::<f64>())
                .sum()
        };
        let alpha = min_norm_coefficients(&gram, 3);
        let steps = 200;
        let mut best = f64::INFINITY;
        for i in 0..=steps {
            for j in 0..=steps - i {
                let a = [i as f64 / steps as f64, j as f64 / steps as f64, 0.0];
                let a = [a[0], a[1], 1.0 - a[0] - a[1]];
                best = best.min(norm(&a));
            }
        }
        assert!(
            norm(&alpha) <= best + 1e-6,
            "{} vs grid {best}",
            norm(&alpha)
        );
        assert!(alpha.iter().all(|&a| a >= 0.0));
    }

    #[test]
    fn uncertainty_weights_follow_the_log_variance_gradient() {
        let mut w = Weighting::new(Method::Uncertainty, vec![1.0, 1.0], 0.1, Rng::new(1));
        assert_eq!(w.loss_weights(), vec![1.0, 1.0]);
        // d/ds = 1 - exp(-s) L: task 0's loss is above 1, so s rises and
        // its weight falls; task 1's is below 1, so its weight grows. The
        // first Adam step moves each s by lr against the gradient's sign.
        w.observe(&[Some(3.0), Some(0.5)], &[]);
        let weights = w.loss_weights();
        assert!((weights[0] - (-0.1f64).exp()).abs() < 1e-6, "{weights:?}");
        assert!((weights[1] - (0.1f64).exp()).abs() < 1e-6, "{weights:?}");
    }

    #[test]
    fn dwa_weights_from_loss_ratios() {
        let mut w = Weighting::new(Method::Dwa, vec![1.0, 1.0], 0.0, Rng::new(1));
        w.observe(&[Some(2.0), Some(1.0)], &[]);
        w.end_epoch();
        assert_eq!(w.loss_weights(), vec![1.0, 1.0]);
        w.observe(&[Some(1.0), Some(1.0)], &[]);
        w.end_epoch();
        // r = (0.5, 1.0): w_i = 2 exp(r_i / 2) / sum_j exp(r_j / 2)
        let (e0, e1) = ((0.25f64).exp(), (0.5f64).exp());
        let weights = w.loss_weights();
        assert!(
            (weights[0] - 2.0 * e0 / (e0 + e1)).abs() < 1e-12,
            "{weights:?}"
        );
        assert!((weights[0] + weights[1] - 2.0).abs() < 1e-12);
    }

    /// DWA keeps weights 1 for epochs 1 and 2, so those epochs report 1
    /// even though the weights for epoch 3 are known once epoch 2 closes;
    /// epoch 3 reports the weights its steps used.
    #[test]
    fn dwa_epochs_report_the_weights_their_steps_used() {
        let mut w = Weighting::new(Method::Dwa, vec![1.0, 1.0], 0.0, Rng::new(1));
        w.observe(&[Some(2.0), Some(1.0)], &[]);
        assert_eq!(w.end_epoch(), vec![1.0, 1.0]);
        w.observe(&[Some(1.0), Some(1.0)], &[]);
        assert_eq!(w.end_epoch(), vec![1.0, 1.0]);

        // r = (0.5, 1.0), as in dwa_weights_from_loss_ratios.
        let (e0, e1) = ((0.25f64).exp(), (0.5f64).exp());
        let third = [2.0 * e0 / (e0 + e1), 2.0 * e1 / (e0 + e1)];
        assert_ne!(w.loss_weights(), vec![1.0, 1.0]);
        w.observe(&[Some(1.0), Some(1.0)], &[]);
        w.observe(&[Some(1.0), Some(1.0)], &[]);
        let reported = w.end_epoch();
        for (got, expected) in reported.iter().zip(third) {
            assert!((got - expected).abs() < 1e-12, "{reported:?} vs {third:?}");
        }
    }

    /// Uncertainty weighting moves the weights after every step, so an
    /// epoch reports their mean over its steps: weights 1 in step 1, then
    /// exp(-0.1) and exp(0.1) in step 2 (see
    /// uncertainty_weights_follow_the_log_variance_gradient).
    #[test]
    fn uncertainty_epochs_report_the_mean_weights_of_their_steps() {
        let mut w = Weighting::new(Method::Uncertainty, vec![1.0, 1.0], 0.1, Rng::new(1));
        w.observe(&[Some(3.0), Some(0.5)], &[]);
        w.observe(&[Some(3.0), Some(0.5)], &[]);
        let reported = w.end_epoch();
        let expected = [(1.0 + (-0.1f64).exp()) / 2.0, (1.0 + (0.1f64).exp()) / 2.0];
        for (got, want) in reported.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{reported:?} vs {expected:?}");
        }

        // The next epoch counts only its own steps.
        let in_use = w.loss_weights();
        w.observe(&[Some(1.0), Some(1.0)], &[]);
        assert_eq!(w.end_epoch(), in_use);
    }

    #[test]
    fn gradnorm_raises_the_weight_of_the_task_with_the_smaller_gradient() {
        let mut w = Weighting::new(Method::GradNorm, vec![1.0, 1.0], 0.01, Rng::new(1));
        // Same loss ratios; task 0's gradient is 10x task 1's.
        let gram = vec![100.0, 0.0, 0.0, 1.0];
        w.observe(&[Some(1.0), Some(1.0)], &gram);
        let weights = w.loss_weights();
        assert!(weights[1] > 1.0 && weights[0] < 1.0, "{weights:?}");
        assert!((weights[0] + weights[1] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn gradnorm_step_matches_a_direct_computation() {
        // Three tasks, weights 1; gradient norms |g_i| = 3, 1, 2 (Gram
        // diagonal 9, 1, 4); losses 0.5, 1.0, 2.0 after first losses of 1.
        let mut w = Weighting::new(Method::GradNorm, vec![1.0; 3], 0.01, Rng::new(1));
        w.observe(
            &[Some(1.0), Some(1.0), Some(1.0)],
            &[9.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0],
        );
        let after_first = w.loss_weights();
        w.observe(
            &[Some(0.5), Some(1.0), Some(2.0)],
            &[9.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0],
        );

        // Direct: the Gram diagonal holds the weighted norms G_i = w_i |g_i|;
        // r_i = (L_i / L_i(0)) / mean; target_i = mean(G) r_i^1.5;
        // d|G_i - target_i|/dw_i = sign(G_i - target_i) |g_i|.
        let weighted = [3.0f64, 1.0, 2.0];
        let norms: Vec<f64> = (0..3).map(|i| weighted[i] / after_first[i]).collect();
        let ratios = [0.5f64, 1.0, 2.0];
        let mean_ratio = ratios.iter().sum::<f64>() / 3.0;
        let mean_g = weighted.iter().sum::<f64>() / 3.0;
        let grads: Vec<f64> = (0..3)
            .map(|i| sign(weighted[i] - mean_g * (ratios[i] / mean_ratio).powf(1.5)) * norms[i])
            .collect();
        // Adam's second step from the first step's moments, as in adam_update.
        let first_grads: Vec<f64> = (0..3)
            .map(|i| sign(weighted[i] - 2.0) * weighted[i])
            .collect();
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8, 0.01);
        let mut expected = [0.0; 3];
        for i in 0..3 {
            let m = b1 * (1.0 - b1) * first_grads[i] + (1.0 - b1) * grads[i];
            let v = b2 * (1.0 - b2) * first_grads[i].powi(2) + (1.0 - b2) * grads[i].powi(2);
            let step = lr / (1.0 - b1 * b1) * m / (v.sqrt() / (1.0 - b2 * b2).sqrt() + eps);
            expected[i] = (after_first[i] - step).max(1e-3);
        }
        let sum: f64 = expected.iter().sum();
        let expected: Vec<f64> = expected.iter().map(|x| x * 3.0 / sum).collect();
        let got = w.loss_weights();
        for i in 0..3 {
            assert!(
                (got[i] - expected[i]).abs() < 1e-12,
                "{got:?} vs {expected:?}"
            );
        }
    }
}
