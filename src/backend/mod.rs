//! The Backend trait: the model's fused operations, implemented once per
//! device.
//!
//! The trait sits at the level of whole fused steps (embedding gather +
//! convolution + ReLU + max-pool, its sparse backward, the task heads, the
//! loss, Adam), not single arithmetic ops: that is what lets the CUDA
//! backend fuse and the CPU backend stay simple. `model::Network` drives
//! these calls and never names a backend.
//!
//! Conventions shared by every implementation:
//! - Matrices are row-major; `rows` is the number of texts in the batch.
//! - `params` and `grads` are the flat buffers laid out by [`Shape`].
//! - Every output buffer is fully written by the call that produces it
//!   (tests poison outputs beforehand); nothing is accumulated across calls.
//! - Tokens: `[rows, width]` int32, 0 = padding, 1 = unknown; `width >= k`.
//!   `lengths[b]` is the number of real tokens of text `b` (it may be less
//!   than `k`, even 0); positions at or past it hold 0. Text `b` has
//!   `max(len_b, k) - k + 1` windows; no other window is part of its max.
//! - Ties in the max-pool go to the earliest window; `h = relu(max_t z)`
//!   passes gradient only where `h > 0`.

pub mod cpu;
pub mod cuda;

use anyhow::Result;

use crate::model::Shape;

/// One batch of token ids as the backend sees it.
pub struct TokenBatch<'a, B: Backend + ?Sized> {
    /// `[rows, width]`, row-major.
    pub tokens: &'a B::Ints,
    /// `[rows]`: real tokens per text.
    pub lengths: &'a B::Ints,
    pub rows: usize,
    pub width: usize,
}

/// A training set held on the device for a whole run, so that a batch is
/// assembled there from row indices ([`Backend::gather_batch`]) instead of
/// being copied from the host at every step.
pub struct DeviceTexts<B: Backend + ?Sized> {
    /// Token ids of all texts, back to back.
    pub tokens: B::Ints,
    /// `[rows + 1]`: text `r` is `tokens[offsets[r]..offsets[r + 1]]`.
    pub offsets: B::Ints,
    /// `[tasks, rows]`: class index or -1 for a missing label.
    pub labels: B::Ints,
    pub rows: usize,
    pub tasks: usize,
}

/// Where dropout's mask comes from: element `j` of a step's mask is 0 when
/// `dropout_bits(key, j) < threshold` and `keep_scale` otherwise. Integer
/// arithmetic only, so every backend draws the same mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutDraw {
    pub key: u64,
    /// `rate * 2^24`, rounded down.
    pub threshold: u32,
    /// `1 / (1 - rate)`.
    pub keep_scale: f32,
}

impl DropoutDraw {
    pub fn new(key: u64, rate: f32) -> DropoutDraw {
        DropoutDraw {
            key,
            threshold: (rate as f64 * DROPOUT_ONE as f64) as u32,
            keep_scale: 1.0 / (1.0 - rate),
        }
    }

    pub fn mask_value(&self, index: u64) -> f32 {
        if dropout_bits(self.key, index) < self.threshold {
            0.0
        } else {
            self.keep_scale
        }
    }
}

/// `dropout_bits` draws from `0..DROPOUT_ONE`.
pub const DROPOUT_ONE: u32 = 1 << 24;

/// 24 random bits for element `index` of the mask drawn with `key`: the
/// SplitMix64 output function of `key + (index + 1) * golden ratio`, a
/// counter-based draw that any thread can make on its own.
pub fn dropout_bits(key: u64, index: u64) -> u32 {
    let mut z = key.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as u32
}

/// Hyper-parameters of one Adam step (PyTorch's formulation, no weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1-based step number, for bias correction.
    pub step: u64,
    /// Multiplies every gradient before use (1 / loss scale for fp16).
    pub grad_scale: f32,
}

impl AdamStep {
    /// `lr / (1 - beta1^t)`, the bias correction in float64 as PyTorch
    /// computes it in Python; every backend uses this value.
    pub fn step_size(&self) -> f32 {
        let correction1 = 1.0 - f64::from(self.beta1).powf(self.step as f64);
        (f64::from(self.lr) / correction1) as f32
    }

    /// `sqrt(1 - beta2^t)`, likewise.
    pub fn correction2_sqrt(&self) -> f32 {
        (1.0 - f64::from(self.beta2).powf(self.step as f64)).sqrt() as f32
    }
}

/// LazyAdam's restriction: in the `[rows, width]` block at the start of the
/// parameter buffer (the embedding table), only rows `r` with
/// `marks[r] == stamp` (the rows the batch used) are updated; the moments
/// of the others neither decay nor move their weights.
pub struct LazyRows<'a, B: Backend + ?Sized> {
    pub marks: &'a B::Ints,
    pub stamp: i32,
    pub rows: usize,
    pub width: usize,
}

pub trait Backend {
    /// A float32 buffer on the device.
    type Floats;
    /// An int32 buffer on the device.
    type Ints;

    /// One line naming the device and the code path in use.
    fn describe(&self) -> String;

    /// A zero-filled buffer of `len` floats.
    fn floats(&self, len: usize) -> Result<Self::Floats>;
    /// A zero-filled buffer of `len` ints.
    fn ints(&self, len: usize) -> Result<Self::Ints>;
    /// Copies `src` into the first `src.len()` elements of `dst`.
    fn upload_floats(&self, dst: &mut Self::Floats, src: &[f32]) -> Result<()>;
    /// Copies the first `dst.len()` elements of `src` into `dst`.
    fn download_floats(&self, src: &Self::Floats, dst: &mut [f32]) -> Result<()>;
    fn upload_ints(&self, dst: &mut Self::Ints, src: &[i32]) -> Result<()>;
    fn download_ints(&self, src: &Self::Ints, dst: &mut [i32]) -> Result<()>;
    /// Waits until all queued work has finished (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    /// Whether training needs dynamic loss scaling (fp16 working copies).
    fn needs_loss_scaling(&self) -> bool {
        false
    }

    /// Embedding gather + convolution + bias + ReLU + masked max over time.
    ///
    /// Writes `h [rows, F]` (the pooled features) and `win [rows, F]` (the
    /// window `t` that won the max, for the backward pass).
    fn encoder_forward(
        &mut self,
        shape: &Shape,
        params: &Self::Floats,
        batch: &TokenBatch<'_, Self>,
        h: &mut Self::Floats,
        win: &mut Self::Ints,
    ) -> Result<()>;

    /// The sparse backward of [`Backend::encoder_forward`].
    ///
    /// `dh [rows, F]` is dL/dh; it is masked here by `h > 0`. Overwrites the
    /// conv weight and bias spans of `grads` and the embedding span: after
    /// the call that span holds exactly this batch's gradient (rows no text
    /// used are zero; row 0 is always zero). Deterministic: the result does
    /// not depend on thread count or scheduling.
    fn encoder_backward(
        &mut self,
        shape: &Shape,
        params: &Self::Floats,
        batch: &TokenBatch<'_, Self>,
        h: &Self::Floats,
        win: &Self::Ints,
        dh: &Self::Floats,
        grads: &mut Self::Floats,
    ) -> Result<()>;

    /// All task heads: `hidden [rows, sum H] = relu(h W1^T + c1)` as one GEMM
    /// over the concatenated first layers, then per task
    /// `logits[:, class_offset(i)..][..C_i] = hidden_i W2_i^T + c2_i`.
    fn heads_forward(
        &mut self,
        shape: &Shape,
        params: &Self::Floats,
        h: &Self::Floats,
        rows: usize,
        hidden: &mut Self::Floats,
        logits: &mut Self::Floats,
    ) -> Result<()>;

    /// Fused softmax + masked cross-entropy + gradient of the logits.
    ///
    /// `labels [tasks, rows]`: class index, or -1 for a missing label.
    /// `class_weights [sum C]` (task `i`'s classes at `class_offset(i)`)
    /// weighs each labelled row by its gold class, `w_b`; 1 everywhere for
    /// the plain loss. `grad_scale[i]` multiplies task `i`'s logit gradient
    /// (the caller passes `w_i / sum_b w_b` over the labelled rows of task
    /// `i`, or 0 when none). Writes `dlogits [rows, sum C]` =
    /// `(softmax - onehot) * w_b * grad_scale[i]` (zero rows where the label
    /// is missing) and `loss_sums [tasks]`: `sum_b w_b * CE_b` over task
    /// `i`'s labelled rows.
    fn softmax_cross_entropy(
        &mut self,
        shape: &Shape,
        logits: &Self::Floats,
        labels: &Self::Ints,
        class_weights: &Self::Floats,
        rows: usize,
        grad_scale: &[f32],
        dlogits: &mut Self::Floats,
        loss_sums: &mut Self::Floats,
    ) -> Result<()>;

    /// Backward of [`Backend::heads_forward`]. Overwrites every head span of
    /// `grads` and writes each task's own gradient with respect to `h` into
    /// `dh_tasks [tasks, rows, F]` (task-major), so loss-weighting methods
    /// can combine them.
    fn heads_backward(
        &mut self,
        shape: &Shape,
        params: &Self::Floats,
        h: &Self::Floats,
        hidden: &Self::Floats,
        dlogits: &Self::Floats,
        rows: usize,
        grads: &mut Self::Floats,
        dh_tasks: &mut Self::Floats,
    ) -> Result<()>;

    /// `dh = sum_i coeffs[i] * dh_tasks[i]`, each block `len` floats long.
    fn combine_tasks(
        &mut self,
        dh_tasks: &Self::Floats,
        coeffs: &[f32],
        len: usize,
        dh: &mut Self::Floats,
    ) -> Result<()>;

    /// The Gram matrix `G[i][j] = <dh_tasks[i], dh_tasks[j]>` (row-major,
    /// `tasks x tasks`), summed in float64.
    fn task_gram(&mut self, dh_tasks: &Self::Floats, tasks: usize, len: usize) -> Result<Vec<f64>>;

    /// Assembles a batch from a data set on the device: for `b < rows`, with
    /// `r = order[start + b]`, text `r` padded with 0 to `width` goes to
    /// `tokens[b]`, its length to `lengths[b]` and its label for task `i` to
    /// `labels[i * rows + b]`. Every gathered text must fit in `width`.
    #[allow(clippy::too_many_arguments)]
    fn gather_batch(
        &mut self,
        data: &DeviceTexts<Self>,
        order: &Self::Ints,
        start: usize,
        rows: usize,
        width: usize,
        tokens: &mut Self::Ints,
        lengths: &mut Self::Ints,
        labels: &mut Self::Ints,
    ) -> Result<()>;

    /// Writes the first `len` elements of dropout's mask (see [`DropoutDraw`]).
    fn dropout_mask(
        &mut self,
        mask: &mut Self::Floats,
        len: usize,
        draw: &DropoutDraw,
    ) -> Result<()>;

    /// `x[i] *= mask[i]` for `i < len` (dropout on `h` and on its gradient).
    fn multiply(&mut self, x: &mut Self::Floats, mask: &Self::Floats, len: usize) -> Result<()>;

    /// One Adam step over the whole flat buffer (fp32 master weights and
    /// moments), PyTorch's formulation:
    /// `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;`
    /// `p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`,
    /// except that a moment below the smallest normal float is stored as 0
    /// (unused embedding rows would otherwise decay into slow subnormals).
    /// With `lazy`, the rows of its block that are not marked are left as
    /// they are (LazyAdam).
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &mut self,
        params: &mut Self::Floats,
        grads: &Self::Floats,
        m: &mut Self::Floats,
        v: &mut Self::Floats,
        len: usize,
        step: &AdamStep,
        lazy: Option<&LazyRows<'_, Self>>,
    ) -> Result<()>;

    /// `marks[tokens[i]] = stamp` for `i < count`: the embedding rows a
    /// batch used, for [`LazyRows`]. Every token must index `marks`.
    fn mark_rows(
        &mut self,
        tokens: &Self::Ints,
        count: usize,
        marks: &mut Self::Ints,
        stamp: i32,
    ) -> Result<()>;

    /// Whether every one of the first `len` values is finite.
    fn all_finite(&mut self, x: &Self::Floats, len: usize) -> Result<bool>;
}
