//! The CPU backend: the model's fused operations over host memory.
//!
//! Where the time goes, and where it is handled:
//! - `conv`: the fused encoder forward (gather, convolution, bias, ReLU,
//!   masked max over time), about 95 % of a step's arithmetic. An implicit
//!   GEMM over each text's own windows on the micro-kernels of [`kernel`].
//! - `conv_backward`: its sparse backward, through the winning windows
//!   only, reduced by token so the result does not depend on threads.
//! - `heads`: all task heads; the first layers are one product.
//! - `loss`: fused softmax + cross-entropy + logit gradient.
//! - `adam`: Adam and the other element-wise passes.
//! - `stream`: streaming stores for the embedding gradient.
//! - [`simd`]: the code path (AVX-512F, AVX2+FMA or scalar), chosen at run
//!   time; `POLYHEAD_CPU_PATH` forces one.
//!
//! Parallel work goes to the current rayon pool (run a call inside
//! `ThreadPool::install` to choose the thread count). Every output element
//! is produced by one thread in a fixed order, so results are bit-identical
//! for any thread count. Scratch buffers live in the backend and grow once.
//!
//! Inputs are checked before any work: a token outside the vocabulary, a
//! length outside the batch width, a window that is not one of its text's
//! or a buffer too short for the call is a clear error, never a panic.

mod adam;
mod conv;
mod conv_backward;
mod heads;
pub mod kernel;
mod loss;
pub mod simd;
mod stream;

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

use super::{AdamStep, Backend, DeviceTexts, DropoutDraw, LazyRows, TokenBatch};
use crate::model::Shape;

pub use simd::{simd_path, SimdPath};

/// Runs the model's fused operations on the CPU.
pub struct CpuBackend {
    path: SimdPath,
    conv: conv::ConvScratch,
    backward: conv_backward::BackwardScratch,
    heads: heads::HeadsScratch,
}

impl CpuBackend {
    /// A backend on the path `POLYHEAD_CPU_PATH` names, else the fastest
    /// this CPU supports. An unusable `POLYHEAD_CPU_PATH` is reported on
    /// stderr and the fastest path used; [`CpuBackend::try_new`] makes it an
    /// error instead.
    pub fn new() -> CpuBackend {
        CpuBackend::try_new().unwrap_or_else(|e| {
            let path = SimdPath::detect();
            crate::say!("polyhead: {e}; using {}", path.name());
            CpuBackend::with_path(path)
        })
    }

    /// Like [`CpuBackend::new`], but an unusable `POLYHEAD_CPU_PATH` is an
    /// error.
    pub fn try_new() -> Result<CpuBackend> {
        Ok(CpuBackend::with_path(SimdPath::from_env()?))
    }

    /// A backend on the given path.
    pub fn with_path(path: SimdPath) -> CpuBackend {
        CpuBackend {
            path,
            conv: conv::ConvScratch::default(),
            backward: conv_backward::BackwardScratch::default(),
            heads: heads::HeadsScratch::default(),
        }
    }

    /// The code path this backend runs.
    pub fn path(&self) -> SimdPath {
        self.path
    }
}

impl Default for CpuBackend {
    fn default() -> CpuBackend {
        CpuBackend::new()
    }
}

/// Grows `buf` to at least `len` elements (never shrinks it) and returns its
/// first `len`.
fn grow<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// Buffers for each worker of the current rayon pool, grown by the calling
/// thread before the parallel part of a call. So every allocation happens
/// in the first call (or when sizes grow), whichever worker later gets which
/// piece of work; each worker then locks only its own slot.
struct PerWorker<T> {
    slots: Vec<std::sync::Mutex<T>>,
}

impl<T: Default> PerWorker<T> {
    fn new() -> PerWorker<T> {
        PerWorker { slots: Vec::new() }
    }

    /// Makes a slot for every worker of the current pool and lets `grow`
    /// size each.
    fn prepare(&mut self, grow: impl Fn(&mut T)) {
        let workers = rayon::current_num_threads().max(1);
        while self.slots.len() < workers {
            self.slots.push(std::sync::Mutex::new(T::default()));
        }
        for slot in &mut self.slots[..workers] {
            grow(slot.get_mut().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Runs `f` on the current worker's slot.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let index = rayon::current_thread_index().unwrap_or(0) % self.slots.len();
        let mut slot = self.slots[index].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut slot)
    }
}

/// Number of convolution windows of a text with `len` real tokens.
pub fn windows(len: usize, kernel: usize) -> usize {
    len.max(kernel) - kernel + 1
}

/// A checked batch of texts: every length within `0..=width`, every real
/// token within the vocabulary.
#[derive(Clone, Copy)]
struct Texts<'a> {
    tokens: &'a [i32],
    lengths: &'a [i32],
    rows: usize,
    width: usize,
}

impl<'a> Texts<'a> {
    fn check(batch: &TokenBatch<'a, CpuBackend>, shape: &Shape) -> Result<Texts<'a>> {
        let (rows, width) = (batch.rows, batch.width);
        let (vocab, kernel) = (shape.dims.vocab, shape.dims.kernel);
        ensure!(
            width >= kernel,
            "batch width {width} is less than the kernel width {kernel}"
        );
        check_len("tokens", batch.tokens, rows * width)?;
        check_len("lengths", batch.lengths, rows)?;
        for (b, &len) in batch.lengths[..rows].iter().enumerate() {
            ensure!(
                (0..=width as i64).contains(&i64::from(len)),
                "text {b}: length {len} is outside 0..={width}"
            );
            let text = &batch.tokens[b * width..][..len as usize];
            if let Some(p) = text.iter().position(|&t| t < 0 || t as usize >= vocab) {
                let token = text[p];
                anyhow::bail!(
                    "text {b}, position {p}: token id {token} is outside the vocabulary of {vocab}"
                );
            }
        }
        Ok(Texts {
            tokens: batch.tokens,
            lengths: batch.lengths,
            rows,
            width,
        })
    }

    /// Real tokens of text `b`.
    fn len(self, b: usize) -> usize {
        self.lengths[b] as usize
    }

    /// The real tokens of text `b`.
    fn text(self, b: usize) -> &'a [i32] {
        &self.tokens[b * self.width..][..self.len(b)]
    }

    /// Windows of text `b`.
    fn windows(self, b: usize, kernel: usize) -> usize {
        windows(self.len(b), kernel)
    }
}

/// A zeroed buffer, or an error saying how much memory was asked for
/// (rather than the abort of a failed allocation).
fn zeroed<T: Clone + Default>(len: usize) -> Result<Vec<T>> {
    let mut buffer = Vec::new();
    if buffer.try_reserve_exact(len).is_err() {
        let mib = len as f64 * std::mem::size_of::<T>() as f64 / (1 << 20) as f64;
        bail!(
            "cannot allocate {mib:.0} MiB for a buffer of {len} values; lower the sizes \
             (--batch-size, --max-len, --vocab-size, --embed-dim, --filters, --kernel-size)"
        );
    }
    buffer.resize(len, T::default());
    Ok(buffer)
}

fn check_len<T>(name: &str, buffer: &[T], needed: usize) -> Result<()> {
    ensure!(
        buffer.len() >= needed,
        "{name} holds {} values, the call needs {needed}",
        buffer.len()
    );
    Ok(())
}

fn check_shape(shape: &Shape, params: &[f32]) -> Result<()> {
    let d = &shape.dims;
    ensure!(
        d.embed > 0 && d.filters > 0 && d.kernel > 0 && d.vocab > 0,
        "model dimensions must be positive (vocabulary {}, D {}, F {}, k {})",
        d.vocab,
        d.embed,
        d.filters,
        d.kernel
    );
    check_len("params", params, shape.len)
}

/// Every `win[b, f]` must be a window of text `b`.
fn check_windows(texts: Texts<'_>, win: &[i32], filters: usize, kernel: usize) -> Result<()> {
    for b in 0..texts.rows {
        let windows = texts.windows(b, kernel);
        let row = &win[b * filters..][..filters];
        if let Some(f) = row.iter().position(|&t| t < 0 || t as usize >= windows) {
            anyhow::bail!(
                "win[{b}, {f}] = {} is not one of text {b}'s {windows} windows",
                row[f]
            );
        }
    }
    Ok(())
}

/// The embedding, conv weight and conv bias spans of `grads`, which
/// `Shape` lays out in that order.
fn encoder_grads<'a>(shape: &Shape, grads: &'a mut [f32]) -> conv_backward::EncoderGrads<'a> {
    let (emb, weight, bias) = (shape.embedding, shape.conv_weight, shape.conv_bias);
    assert!(
        emb.offset + emb.len <= weight.offset && weight.offset + weight.len <= bias.offset,
        "the encoder's spans are out of order"
    );
    let (front, rest) = grads.split_at_mut(weight.offset);
    let (conv_weight, rest) = rest.split_at_mut(weight.len);
    let conv_bias = &mut rest[bias.offset - weight.offset - weight.len..][..bias.len];
    conv_backward::EncoderGrads {
        embedding: &mut front[emb.range()],
        conv_weight,
        conv_bias,
    }
}

impl Backend for CpuBackend {
    type Floats = Vec<f32>;
    type Ints = Vec<i32>;

    fn describe(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            self.path.name(),
            rayon::current_num_threads()
        )
    }

    fn floats(&self, len: usize) -> Result<Vec<f32>> {
        zeroed(len)
    }

    fn ints(&self, len: usize) -> Result<Vec<i32>> {
        zeroed(len)
    }

    fn upload_floats(&self, dst: &mut Vec<f32>, src: &[f32]) -> Result<()> {
        ensure!(
            src.len() <= dst.len(),
            "upload of {} floats into {}",
            src.len(),
            dst.len()
        );
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download_floats(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        ensure!(
            dst.len() <= src.len(),
            "download of {} floats from {}",
            dst.len(),
            src.len()
        );
        dst.copy_from_slice(&src[..dst.len()]);
        Ok(())
    }

    fn upload_ints(&self, dst: &mut Vec<i32>, src: &[i32]) -> Result<()> {
        ensure!(
            src.len() <= dst.len(),
            "upload of {} ints into {}",
            src.len(),
            dst.len()
        );
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download_ints(&self, src: &Vec<i32>, dst: &mut [i32]) -> Result<()> {
        ensure!(
            dst.len() <= src.len(),
            "download of {} ints from {}",
            dst.len(),
            src.len()
        );
        dst.copy_from_slice(&src[..dst.len()]);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn encoder_forward(
        &mut self,
        shape: &Shape,
        params: &Vec<f32>,
        batch: &TokenBatch<'_, Self>,
        h: &mut Vec<f32>,
        win: &mut Vec<i32>,
    ) -> Result<()> {
        check_shape(shape, params)?;
        let texts = Texts::check(batch, shape)?;
        let out = batch.rows * shape.dims.filters;
        check_len("h", h, out)?;
        check_len("win", win, out)?;
        conv::forward(self.path, shape, params, texts, &mut self.conv, h, win);
        Ok(())
    }

    fn encoder_backward(
        &mut self,
        shape: &Shape,
        params: &Vec<f32>,
        batch: &TokenBatch<'_, Self>,
        h: &Vec<f32>,
        win: &Vec<i32>,
        dh: &Vec<f32>,
        grads: &mut Vec<f32>,
    ) -> Result<()> {
        check_shape(shape, params)?;
        let texts = Texts::check(batch, shape)?;
        let d = &shape.dims;
        let out = batch.rows * d.filters;
        check_len("h", h, out)?;
        check_len("win", win, out)?;
        check_len("dh", dh, out)?;
        check_len("grads", grads, shape.len)?;
        check_windows(texts, win, d.filters, d.kernel)?;
        let grads = encoder_grads(shape, grads);
        conv_backward::backward(
            self.path,
            shape,
            params,
            texts,
            h,
            win,
            dh,
            &mut self.backward,
            grads,
        );
        Ok(())
    }

    fn heads_forward(
        &mut self,
        shape: &Shape,
        params: &Vec<f32>,
        h: &Vec<f32>,
        rows: usize,
        hidden: &mut Vec<f32>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        check_shape(shape, params)?;
        check_len("h", h, rows * shape.dims.filters)?;
        check_len("hidden", hidden, rows * shape.sum_hidden())?;
        check_len("logits", logits, rows * shape.sum_classes())?;
        heads::forward(
            self.path,
            shape,
            params,
            h,
            rows,
            &mut self.heads,
            hidden,
            logits,
        );
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        shape: &Shape,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        class_weights: &Vec<f32>,
        rows: usize,
        grad_scale: &[f32],
        dlogits: &mut Vec<f32>,
        loss_sums: &mut Vec<f32>,
    ) -> Result<()> {
        let tasks = shape.tasks();
        check_len("class_weights", class_weights, shape.sum_classes())?;
        check_len("logits", logits, rows * shape.sum_classes())?;
        check_len("dlogits", dlogits, rows * shape.sum_classes())?;
        check_len("labels", labels, tasks * rows)?;
        check_len("grad_scale", grad_scale, tasks)?;
        check_len("loss_sums", loss_sums, tasks)?;
        let weights = &class_weights[..shape.sum_classes()];
        loss::softmax_cross_entropy(
            shape, logits, labels, weights, rows, grad_scale, dlogits, loss_sums,
        )
    }

    fn heads_backward(
        &mut self,
        shape: &Shape,
        params: &Vec<f32>,
        h: &Vec<f32>,
        hidden: &Vec<f32>,
        dlogits: &Vec<f32>,
        rows: usize,
        grads: &mut Vec<f32>,
        dh_tasks: &mut Vec<f32>,
    ) -> Result<()> {
        check_shape(shape, params)?;
        let filters = shape.dims.filters;
        check_len("h", h, rows * filters)?;
        check_len("hidden", hidden, rows * shape.sum_hidden())?;
        check_len("dlogits", dlogits, rows * shape.sum_classes())?;
        check_len("grads", grads, shape.len)?;
        check_len("dh_tasks", dh_tasks, shape.tasks() * rows * filters)?;
        heads::backward(
            self.path,
            shape,
            params,
            h,
            hidden,
            dlogits,
            rows,
            &mut self.heads,
            grads,
            dh_tasks,
        );
        Ok(())
    }

    fn combine_tasks(
        &mut self,
        dh_tasks: &Vec<f32>,
        coeffs: &[f32],
        len: usize,
        dh: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("dh_tasks", dh_tasks, coeffs.len() * len)?;
        check_len("dh", dh, len)?;
        adam::combine(self.path, dh_tasks, coeffs, &mut dh[..len]);
        Ok(())
    }

    fn task_gram(&mut self, dh_tasks: &Vec<f32>, tasks: usize, len: usize) -> Result<Vec<f64>> {
        check_len("dh_tasks", dh_tasks, tasks * len)?;
        Ok(adam::gram(self.path, dh_tasks, tasks, len))
    }

    fn gather_batch(
        &mut self,
        data: &DeviceTexts<Self>,
        order: &Vec<i32>,
        start: usize,
        rows: usize,
        width: usize,
        tokens: &mut Vec<i32>,
        lengths: &mut Vec<i32>,
        labels: &mut Vec<i32>,
    ) -> Result<()> {
        check_len("order", order, start + rows)?;
        check_len("offsets", &data.offsets, data.rows + 1)?;
        check_len("data labels", &data.labels, data.tasks * data.rows)?;
        check_len("tokens", tokens, rows * width)?;
        check_len("lengths", lengths, rows)?;
        check_len("labels", labels, data.tasks * rows)?;
        for (b, &row) in order[start..start + rows].iter().enumerate() {
            ensure!(
                (0..data.rows as i64).contains(&(row as i64)),
                "row {row} of a data set of {}",
                data.rows
            );
            let row = row as usize;
            let (from, to) = (data.offsets[row] as usize, data.offsets[row + 1] as usize);
            ensure!(
                from <= to && to <= data.tokens.len() && to - from <= width,
                "text {row} does not fit a batch of width {width}"
            );
            let text = &data.tokens[from..to];
            let out = &mut tokens[b * width..(b + 1) * width];
            out[..text.len()].copy_from_slice(text);
            out[text.len()..].fill(0);
            lengths[b] = text.len() as i32;
            for task in 0..data.tasks {
                labels[task * rows + b] = data.labels[task * data.rows + row];
            }
        }
        Ok(())
    }

    fn dropout_mask(&mut self, mask: &mut Vec<f32>, len: usize, draw: &DropoutDraw) -> Result<()> {
        check_len("mask", mask, len)?;
        mask[..len]
            .par_chunks_mut(4096)
            .enumerate()
            .for_each(|(chunk, values)| {
                let first = (chunk * 4096) as u64;
                for (j, value) in values.iter_mut().enumerate() {
                    *value = draw.mask_value(first + j as u64);
                }
            });
        Ok(())
    }

    fn multiply(&mut self, x: &mut Vec<f32>, mask: &Vec<f32>, len: usize) -> Result<()> {
        check_len("x", x, len)?;
        check_len("mask", mask, len)?;
        adam::multiply(self.path, &mut x[..len], &mask[..len]);
        Ok(())
    }

    fn adam(
        &mut self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        len: usize,
        step: &AdamStep,
        lazy: Option<&LazyRows<'_, Self>>,
    ) -> Result<()> {
        ensure!(step.step >= 1, "Adam steps count from 1, got {}", step.step);
        check_len("params", params, len)?;
        check_len("grads", grads, len)?;
        check_len("m", m, len)?;
        check_len("v", v, len)?;
        let Some(lazy) = lazy else {
            let (p, g, m, v) = (
                &mut params[..len],
                &grads[..len],
                &mut m[..len],
                &mut v[..len],
            );
            adam::adam(self.path, p, g, m, v, step);
            return Ok(());
        };

        let block = lazy.rows * lazy.width;
        ensure!(block <= len, "the lazy block is longer than the buffer");
        check_len("marks", lazy.marks, lazy.rows)?;
        let (p_rows, p_rest) = params[..len].split_at_mut(block);
        let (g_rows, g_rest) = grads[..len].split_at(block);
        let (m_rows, m_rest) = m[..len].split_at_mut(block);
        let (v_rows, v_rest) = v[..len].split_at_mut(block);
        let marks = &lazy.marks[..lazy.rows];
        adam::adam_marked_rows(
            self.path, p_rows, g_rows, m_rows, v_rows, lazy.width, marks, lazy.stamp, step,
        );
        adam::adam(self.path, p_rest, g_rest, m_rest, v_rest, step);
        Ok(())
    }

    fn mark_rows(
        &mut self,
        tokens: &Vec<i32>,
        count: usize,
        marks: &mut Vec<i32>,
        stamp: i32,
    ) -> Result<()> {
        check_len("tokens", tokens, count)?;
        for &token in &tokens[..count] {
            let row = usize::try_from(token).ok().filter(|&r| r < marks.len());
            let Some(row) = row else {
                bail!(
                    "token id {token} outside the {} embedding rows",
                    marks.len()
                );
            };
            marks[row] = stamp;
        }
        Ok(())
    }

    fn all_finite(&mut self, x: &Vec<f32>, len: usize) -> Result<bool> {
        check_len("x", x, len)?;
        Ok(adam::all_finite(self.path, &x[..len]))
    }
}
