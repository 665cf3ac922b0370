//! The model's forward and backward passes, written once over the
//! [`Backend`] trait, with the device buffers they need.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{AdamStep, Backend, DeviceTexts, DropoutDraw, LazyRows, TokenBatch};
use crate::data::dataset::Encoded;
use crate::model::Shape;

/// A batch of texts on the host, padded to a common width.
#[derive(Clone, Debug, Default)]
pub struct HostBatch {
    /// `[rows, width]`, 0 past each text's end.
    pub tokens: Vec<i32>,
    /// `[rows]`: real tokens per text.
    pub lengths: Vec<i32>,
    /// `[tasks, rows]`: class index or -1 for a missing label.
    pub labels: Vec<i32>,
    pub rows: usize,
    pub width: usize,
}

impl HostBatch {
    /// Fills the batch from `texts` (token ids), padding each to the longest
    /// text and at least to `min_width` (the kernel width).
    pub fn fill<'a>(&mut self, texts: impl Iterator<Item = &'a [i32]> + Clone, min_width: usize) {
        self.rows = texts.clone().count();
        self.width = texts
            .clone()
            .map(<[i32]>::len)
            .max()
            .unwrap_or(0)
            .max(min_width);
        self.tokens.clear();
        self.tokens.resize(self.rows * self.width, 0);
        self.lengths.clear();
        for (b, text) in texts.enumerate() {
            self.tokens[b * self.width..][..text.len()].copy_from_slice(text);
            self.lengths.push(text.len() as i32);
        }
        self.labels.clear();
    }
}

/// Adam's settings (the step counter lives in the network).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// LazyAdam: an embedding row is updated only in the steps whose batch
    /// uses it (TensorFlow's LazyAdam); every other parameter gets Adam.
    /// Not PyTorch's Adam: rows a batch skips keep their momentum unspent.
    pub lazy_embedding: bool,
}

impl Default for AdamConfig {
    fn default() -> AdamConfig {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            lazy_embedding: false,
        }
    }
}

/// What one training step reports back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepLosses {
    /// Per task: sum of class-weighted cross-entropy over the labelled rows
    /// of the batch.
    pub sums: Vec<f32>,
    /// Per task: the sum of the labelled rows' class weights (the number of
    /// labelled rows when every class weighs 1).
    pub counts: Vec<f64>,
    /// Gram matrix of the tasks' weighted gradients with respect to `h`
    /// (`tasks x tasks`), when the mix asked for it.
    pub gram: Vec<f64>,
}

impl StepLosses {
    /// Per task: mean cross-entropy over its labelled rows, if any.
    pub fn means(&self) -> Vec<Option<f64>> {
        self.sums
            .iter()
            .zip(&self.counts)
            .map(|(&s, &n)| (n > 0.0).then(|| s as f64 / n))
            .collect()
    }
}

/// How the tasks' gradients with respect to `h` are combined into the
/// encoder's gradient.
pub trait GradientMix {
    /// Whether [`GradientMix::coefficients`] needs the Gram matrix.
    fn needs_gram(&self) -> bool;
    /// `c_i` in `dh = sum_i c_i dh_i`.
    fn coefficients(&mut self, gram: &[f64]) -> Vec<f64>;
}

/// Plain summation: `dh = sum_i dh_i`.
pub struct Sum;

impl GradientMix for Sum {
    fn needs_gram(&self) -> bool {
        false
    }

    fn coefficients(&mut self, gram: &[f64]) -> Vec<f64> {
        vec![1.0; (gram.len() as f64).sqrt() as usize]
    }
}

/// Dynamic loss scaling, for fp16 working copies.
///
/// The loss is multiplied by `scale` before the backward pass so that small
/// gradients survive half precision, and Adam divides it out again. A step
/// whose gradient is not finite is skipped and the scale halved; after
/// [`LossScale::GROWTH_INTERVAL`] good steps in a row it doubles. The scale
/// is always a power of two, so scaling and unscaling are exact in fp32 and
/// a run with scaling takes the same steps as one without, apart from the
/// skipped ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f32,
    /// Finite steps since the scale last changed.
    pub good_steps: u32,
}

impl LossScale {
    pub const INITIAL: f32 = 65536.0;
    pub const GROWTH_INTERVAL: u32 = 2000;
    pub const MIN: f32 = 1.0 / 16_777_216.0;
    pub const MAX: f32 = 16_777_216.0;

    pub fn initial() -> LossScale {
        LossScale {
            scale: LossScale::INITIAL,
            good_steps: 0,
        }
    }

    /// Records whether this step's gradient was finite; returns whether the
    /// step is to be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(LossScale::MIN);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= LossScale::GROWTH_INTERVAL {
            self.scale = (self.scale * 2.0).min(LossScale::MAX);
            self.good_steps = 0;
        }
        true
    }

    /// Whether a stored scale is one this type could have produced.
    pub fn is_valid(&self) -> bool {
        let power_of_two =
            self.scale.is_finite() && self.scale > 0.0 && self.scale.to_bits() & 0x007f_ffff == 0;
        power_of_two
            && (LossScale::MIN..=LossScale::MAX).contains(&self.scale)
            && self.good_steps < LossScale::GROWTH_INTERVAL
    }
}

impl StepLosses {
    /// `sum_i w_i * mean CE_i`; a task without labels in the batch adds 0.
    pub fn weighted(&self, weights: &[f32]) -> f64 {
        self.sums
            .iter()
            .zip(&self.counts)
            .zip(weights)
            .filter(|((_, &n), _)| n > 0.0)
            .map(|((&s, &n), &w)| w as f64 * s as f64 / n)
            .sum()
    }
}

struct Workspace<B: Backend> {
    tokens: B::Ints,
    lengths: B::Ints,
    labels: B::Ints,
    class_weights: B::Floats,
    h: B::Floats,
    win: B::Ints,
    hidden: B::Floats,
    logits: B::Floats,
    dlogits: B::Floats,
    loss_sums: B::Floats,
    dh_tasks: B::Floats,
    dh: B::Floats,
    mask: B::Floats,
}

/// The parameters, their gradients and Adam moments, and the per-step
/// buffers, all on one backend. Buffers are sized once for the largest batch.
pub struct Network<B: Backend> {
    pub backend: B,
    pub shape: Shape,
    params: B::Floats,
    grads: B::Floats,
    m: B::Floats,
    v: B::Floats,
    /// Adam steps taken so far.
    pub step: u64,
    /// Multiplies the loss before the backward pass (a power of two; 1
    /// unless fp16 loss scaling is on). The gradient buffer holds scaled
    /// gradients and Adam divides the scale out.
    pub loss_scale: f32,
    max_rows: usize,
    max_width: usize,
    /// Per embedding row, the step that last used it (LazyAdam).
    row_marks: B::Ints,
    /// Tokens (`rows * width`) of the batch in the workspace.
    batch_tokens: usize,
    ws: Workspace<B>,
    host_logits: Vec<f32>,
    /// Weight of each class of each task in the loss (`[sum C]`), on the host.
    class_weights: Vec<f32>,
    /// Coefficients of plain summation of the tasks' gradients.
    unit_coeffs: Vec<f32>,
}

impl<B: Backend> Network<B> {
    /// Puts `params` (flat, in `shape`'s layout) on the backend with fresh
    /// optimiser state, and buffers for batches up to `max_rows` texts of up
    /// to `max_width` tokens.
    pub fn new(
        backend: B,
        shape: Shape,
        params: &[f32],
        max_rows: usize,
        max_width: usize,
    ) -> Result<Network<B>> {
        ensure!(
            params.len() == shape.len,
            "{} parameters for a model of {}",
            params.len(),
            shape.len
        );
        let max_width = max_width.max(shape.dims.kernel);
        let (f, tasks) = (shape.dims.filters, shape.tasks());
        let ws = Workspace {
            tokens: backend.ints(max_rows * max_width)?,
            lengths: backend.ints(max_rows)?,
            labels: backend.ints(max_rows * tasks)?,
            class_weights: {
                let mut ones = backend.floats(shape.sum_classes())?;
                backend.upload_floats(&mut ones, &vec![1.0; shape.sum_classes()])?;
                ones
            },
            h: backend.floats(max_rows * f)?,
            win: backend.ints(max_rows * f)?,
            hidden: backend.floats(max_rows * shape.sum_hidden())?,
            logits: backend.floats(max_rows * shape.sum_classes())?,
            dlogits: backend.floats(max_rows * shape.sum_classes())?,
            loss_sums: backend.floats(tasks)?,
            dh_tasks: backend.floats(tasks * max_rows * f)?,
            dh: backend.floats(max_rows * f)?,
            mask: backend.floats(max_rows * f)?,
        };
        let mut device_params = backend.floats(shape.len)?;
        backend.upload_floats(&mut device_params, params)?;
        Ok(Network {
            grads: backend.floats(shape.len)?,
            m: backend.floats(shape.len)?,
            v: backend.floats(shape.len)?,
            params: device_params,
            step: 0,
            loss_scale: 1.0,
            row_marks: backend.ints(shape.dims.vocab)?,
            batch_tokens: 0,
            max_rows,
            max_width,
            host_logits: vec![0.0; max_rows * shape.sum_classes()],
            unit_coeffs: vec![1.0; shape.tasks()],
            class_weights: vec![1.0; shape.sum_classes()],
            ws,
            backend,
            shape,
        })
    }

    pub fn params_to_host(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.shape.len];
        self.backend.download_floats(&self.params, &mut out)?;
        Ok(out)
    }

    /// Sets the loss weight of every class of every task (`[sum C]`, task
    /// `i`'s classes from `shape.class_offset(i)`); all 1 by default.
    pub fn set_class_weights(&mut self, weights: &[f32]) -> Result<()> {
        ensure!(
            weights.len() == self.shape.sum_classes(),
            "class weights of wrong size"
        );
        ensure!(
            weights.iter().all(|w| w.is_finite() && *w >= 0.0),
            "class weights must be >= 0"
        );
        self.class_weights.copy_from_slice(weights);
        self.backend
            .upload_floats(&mut self.ws.class_weights, weights)
    }

    /// Replaces the parameters (the optimiser state is kept).
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        ensure!(params.len() == self.shape.len, "parameters of wrong size");
        self.backend.upload_floats(&mut self.params, params)
    }

    /// Adam's first and second moments, for saving a resumable state.
    pub fn moments_to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut m = vec![0.0; self.shape.len];
        let mut v = vec![0.0; self.shape.len];
        self.backend.download_floats(&self.m, &mut m)?;
        self.backend.download_floats(&self.v, &mut v)?;
        Ok((m, v))
    }

    /// Restores Adam's moments and step counter.
    pub fn set_moments(&mut self, m: &[f32], v: &[f32], step: u64) -> Result<()> {
        ensure!(
            m.len() == self.shape.len && v.len() == self.shape.len,
            "moments of wrong size"
        );
        self.backend.upload_floats(&mut self.m, m)?;
        self.backend.upload_floats(&mut self.v, v)?;
        self.step = step;
        Ok(())
    }

    fn upload_batch(&mut self, batch: &HostBatch) -> Result<()> {
        self.check_batch(batch.rows, batch.width)?;
        self.backend
            .upload_ints(&mut self.ws.tokens, &batch.tokens)?;
        self.backend
            .upload_ints(&mut self.ws.lengths, &batch.lengths)?;
        Ok(())
    }

    fn check_batch(&self, rows: usize, width: usize) -> Result<()> {
        ensure!(
            rows <= self.max_rows && width <= self.max_width,
            "batch of {rows}x{width} exceeds the buffers ({}x{})",
            self.max_rows,
            self.max_width
        );
        Ok(())
    }

    /// Puts a training set on the backend for the whole run; batches are
    /// then gathered there ([`Network::backward_rows`]).
    pub fn upload_texts(&self, data: &Encoded) -> Result<DeviceTexts<B>> {
        let rows = data.rows();
        let tasks = self.shape.tasks();
        ensure!(
            data.labels.len() == tasks,
            "labels for {tasks} tasks expected"
        );
        ensure!(
            data.tokens.len() < i32::MAX as usize,
            "{} tokens: more than one device buffer can index",
            data.tokens.len()
        );
        let offsets: Vec<i32> = data.offsets.iter().map(|&o| o as i32).collect();
        let labels: Vec<i32> = data.labels.iter().flatten().copied().collect();
        let mut texts = DeviceTexts {
            tokens: self.backend.ints(data.tokens.len().max(1))?,
            offsets: self.backend.ints(offsets.len())?,
            labels: self.backend.ints(labels.len().max(1))?,
            rows,
            tasks,
        };
        self.backend.upload_ints(&mut texts.tokens, &data.tokens)?;
        self.backend.upload_ints(&mut texts.offsets, &offsets)?;
        self.backend.upload_ints(&mut texts.labels, &labels)?;
        Ok(texts)
    }

    /// An epoch's row order, on the backend.
    pub fn upload_order(&self, order: &[usize]) -> Result<B::Ints> {
        let order: Vec<i32> = order.iter().map(|&r| r as i32).collect();
        let mut device = self.backend.ints(order.len().max(1))?;
        self.backend.upload_ints(&mut device, &order)?;
        Ok(device)
    }

    /// Encoder and heads for the batch in the workspace; dropout, when
    /// asked for (training), masks `h` between the two.
    fn encode_and_heads(
        &mut self,
        rows: usize,
        width: usize,
        dropout: Option<&DropoutDraw>,
    ) -> Result<()> {
        let Workspace {
            tokens,
            lengths,
            h,
            win,
            hidden,
            logits,
            mask,
            ..
        } = &mut self.ws;
        let batch = TokenBatch {
            tokens,
            lengths,
            rows,
            width,
        };
        self.backend
            .encoder_forward(&self.shape, &self.params, &batch, h, win)?;
        if let Some(draw) = dropout {
            let len = rows * self.shape.dims.filters;
            self.backend.dropout_mask(mask, len, draw)?;
            self.backend.multiply(h, mask, len)?;
        }
        self.backend
            .heads_forward(&self.shape, &self.params, h, rows, hidden, logits)
    }

    /// Logits `[rows, sum C]` of every task for `batch` (no dropout).
    pub fn logits(&mut self, batch: &HostBatch) -> Result<&[f32]> {
        self.upload_batch(batch)?;
        self.encode_and_heads(batch.rows, batch.width, None)?;
        let n = batch.rows * self.shape.sum_classes();
        self.backend
            .download_floats(&self.ws.logits, &mut self.host_logits[..n])?;
        Ok(&self.host_logits[..n])
    }

    /// Pooled features `h [rows, F]` for `batch`.
    pub fn features(&mut self, batch: &HostBatch) -> Result<Vec<f32>> {
        self.upload_batch(batch)?;
        self.encode_and_heads(batch.rows, batch.width, None)?;
        let mut h = vec![0.0; batch.rows * self.shape.dims.filters];
        self.backend.download_floats(&self.ws.h, &mut h)?;
        Ok(h)
    }

    /// Forward, loss and backward for one batch, leaving the gradient of
    /// `sum_i task_weights[i] * mean CE_i` in the gradient buffer. Returns
    /// the per-task losses. No parameter changes.
    pub fn backward(
        &mut self,
        batch: &HostBatch,
        task_weights: &[f32],
        mix: &mut dyn GradientMix,
        dropout: Option<&DropoutDraw>,
    ) -> Result<StepLosses> {
        let tasks = self.shape.tasks();
        ensure!(
            batch.labels.len() == tasks * batch.rows,
            "labels do not match the batch"
        );
        self.upload_batch(batch)?;
        self.backend
            .upload_ints(&mut self.ws.labels, &batch.labels)?;
        let counts = self.label_weights(batch.rows, |i, b| batch.labels[i * batch.rows + b]);
        self.backward_loaded(batch.rows, batch.width, counts, task_weights, mix, dropout)
    }

    /// [`Network::backward`] for the rows `order[start..start + rows.len()]`
    /// of a data set already on the backend: the batch is gathered there,
    /// so a step copies no tokens from the host. `rows` is that slice of
    /// the order on the host and `host` the data set itself, for the batch
    /// width and the label counts.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_rows(
        &mut self,
        texts: &DeviceTexts<B>,
        host: &Encoded,
        order: &B::Ints,
        start: usize,
        rows: &[usize],
        task_weights: &[f32],
        mix: &mut dyn GradientMix,
        dropout: Option<&DropoutDraw>,
    ) -> Result<StepLosses> {
        ensure!(
            texts.rows == host.rows() && texts.tasks == self.shape.tasks(),
            "the device data set does not match the host one"
        );
        ensure!(
            rows.iter().all(|&r| r < host.rows()),
            "a row index past the data set"
        );
        let width = rows
            .iter()
            .map(|&r| host.text(r).len())
            .max()
            .unwrap_or(0)
            .max(self.shape.dims.kernel);
        self.check_batch(rows.len(), width)?;
        let Workspace {
            tokens,
            lengths,
            labels,
            ..
        } = &mut self.ws;
        self.backend.gather_batch(
            texts,
            order,
            start,
            rows.len(),
            width,
            tokens,
            lengths,
            labels,
        )?;
        let counts = self.label_weights(rows.len(), |i, b| host.labels[i][rows[b]]);
        self.backward_loaded(rows.len(), width, counts, task_weights, mix, dropout)
    }

    /// Per task: the sum of the class weights of the labelled rows, with
    /// `label(i, b)` the label of row `b` for task `i`.
    fn label_weights(&self, rows: usize, label: impl Fn(usize, usize) -> i32) -> Vec<f64> {
        (0..self.shape.tasks())
            .map(|i| {
                let offset = self.shape.class_offset(i);
                (0..rows)
                    .map(|b| label(i, b))
                    .filter(|&y| y >= 0)
                    .map(|y| self.class_weights[offset + y as usize] as f64)
                    .sum()
            })
            .collect()
    }

    /// Forward, loss and backward of the batch in the workspace.
    fn backward_loaded(
        &mut self,
        rows: usize,
        width: usize,
        counts: Vec<f64>,
        task_weights: &[f32],
        mix: &mut dyn GradientMix,
        dropout: Option<&DropoutDraw>,
    ) -> Result<StepLosses> {
        let tasks = self.shape.tasks();
        let len = rows * self.shape.dims.filters;
        self.batch_tokens = rows * width;
        self.encode_and_heads(rows, width, dropout)?;
        let scales: Vec<f32> = counts
            .iter()
            .zip(task_weights)
            .map(|(&n, &w)| {
                if n > 0.0 {
                    (w as f64 * self.loss_scale as f64 / n) as f32
                } else {
                    0.0
                }
            })
            .collect();

        let Workspace {
            tokens,
            lengths,
            labels,
            class_weights,
            h,
            win,
            hidden,
            logits,
            dlogits,
            loss_sums,
            dh_tasks,
            dh,
            mask,
        } = &mut self.ws;
        self.backend.softmax_cross_entropy(
            &self.shape,
            logits,
            labels,
            class_weights,
            rows,
            &scales,
            dlogits,
            loss_sums,
        )?;
        let mut sums = vec![0.0; tasks];
        self.backend.download_floats(loss_sums, &mut sums)?;

        self.backend.heads_backward(
            &self.shape,
            &self.params,
            h,
            hidden,
            dlogits,
            rows,
            &mut self.grads,
            dh_tasks,
        )?;
        let gram = if mix.needs_gram() {
            // The methods see the gradients of the unscaled loss.
            let unscale = 1.0 / (self.loss_scale as f64 * self.loss_scale as f64);
            let mut gram = self.backend.task_gram(dh_tasks, tasks, len)?;
            gram.iter_mut().for_each(|g| *g *= unscale);
            let coeffs: Vec<f32> = mix.coefficients(&gram).iter().map(|&c| c as f32).collect();
            self.backend.combine_tasks(dh_tasks, &coeffs, len, dh)?;
            gram
        } else {
            self.backend
                .combine_tasks(dh_tasks, &self.unit_coeffs, len, dh)?;
            Vec::new()
        };
        if dropout.is_some() {
            self.backend.multiply(dh, mask, len)?;
        }

        let tokens = TokenBatch {
            tokens,
            lengths,
            rows,
            width,
        };
        self.backend.encoder_backward(
            &self.shape,
            &self.params,
            &tokens,
            h,
            win,
            dh,
            &mut self.grads,
        )?;
        Ok(StepLosses { sums, counts, gram })
    }

    /// The gradient buffer, on the host (multiplied by the loss scale).
    pub fn grads_to_host(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.shape.len];
        self.backend.download_floats(&self.grads, &mut out)?;
        Ok(out)
    }

    /// Applies one Adam step with the gradient left by [`Network::backward`].
    pub fn adam_step(&mut self, adam: &AdamConfig) -> Result<()> {
        self.step += 1;
        let step = AdamStep {
            lr: adam.lr,
            beta1: adam.beta1,
            beta2: adam.beta2,
            eps: adam.eps,
            step: self.step,
            grad_scale: 1.0 / self.loss_scale,
        };
        if !adam.lazy_embedding {
            let (p, g, m, v) = (&mut self.params, &self.grads, &mut self.m, &mut self.v);
            return self.backend.adam(p, g, m, v, self.shape.len, &step, None);
        }

        // Rows are marked with the step number, so marks never need
        // clearing (they repeat only after 2^31 - 1 steps).
        ensure!(
            self.shape.embedding.offset == 0,
            "the embedding must come first"
        );
        let stamp = ((self.step - 1) % (i32::MAX as u64 - 1)) as i32 + 1;
        let tokens = &self.ws.tokens;
        self.backend
            .mark_rows(tokens, self.batch_tokens, &mut self.row_marks, stamp)?;
        let lazy = LazyRows {
            marks: &self.row_marks,
            stamp,
            rows: self.shape.dims.vocab,
            width: self.shape.dims.embed,
        };
        let (p, g, m, v) = (&mut self.params, &self.grads, &mut self.m, &mut self.v);
        self.backend
            .adam(p, g, m, v, self.shape.len, &step, Some(&lazy))
    }

    /// Whether every gradient is finite.
    pub fn grads_finite(&mut self) -> Result<bool> {
        self.backend.all_finite(&self.grads, self.shape.len)
    }
}
