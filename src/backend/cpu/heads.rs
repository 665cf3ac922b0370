//! The task heads, forward and backward, on the shared micro-kernels.
//!
//! Every head reads the same `h`, and the flat layout puts all first layers
//! side by side, so the forward's first layer is ONE product
//! `hidden [rows, sum H] = relu(h [rows, F] W1^T + c1)`; each task's second
//! layer then reads its columns of `hidden` in place (`lda = sum H`) and
//! writes its columns of the logits (`ldc = sum C`).
//!
//! Backward, with `G [rows, sum H]` the gradient of the first layers'
//! pre-activations:
//! - per task, `d W2 = dlogits^T hidden`, `d c2 = column sums of dlogits`
//!   and `G = (dlogits W2) * (hidden > 0)`: `C_i` is tiny, so these are
//!   row updates, not products;
//! - `d W1 = G^T h` as one product over all tasks (`G` transposed first);
//! - each task's `dh_i = G_i W1_i`, a product over its own `H_i` columns.
//!
//! Each output element is computed by one thread in a fixed order, so the
//! results do not depend on the number of threads.

use super::kernel::{self, Gemm};
use super::simd::{multiversion, SimdPath};
use crate::model::Shape;

/// Buffers reused from call to call (grown, never shrunk).
#[derive(Default)]
pub struct HeadsScratch {
    /// A packed `B` operand; reused by each product in turn.
    packed: Vec<f32>,
    /// A packed bias; zeros where a product has none.
    bias: Vec<f32>,
    /// `G [rows, sum H]`.
    hidden_grad: Vec<f32>,
    /// `G^T [sum H, rows]`.
    hidden_grad_t: Vec<f32>,
}

/// `hidden = relu(h W1^T + c1)`, then every task's logits.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    path: SimdPath,
    shape: &Shape,
    params: &[f32],
    h: &[f32],
    rows: usize,
    scratch: &mut HeadsScratch,
    hidden: &mut [f32],
    logits: &mut [f32],
) {
    let filters = shape.dims.filters;
    let (sum_h, sum_c) = (shape.sum_hidden(), shape.sum_classes());
    let w1 = &params[shape.hidden_weights.range()];
    let c1 = &params[shape.hidden_biases.range()];
    if rows == 0 {
        return;
    }

    kernel::pack(path, filters, sum_h, &mut scratch.packed, |f, u| {
        w1[u * filters + f]
    });
    kernel::pack_bias(path, sum_h, &mut scratch.bias, |u| c1[u]);
    let first = Gemm {
        a: h,
        lda: filters,
        m: rows,
        k: filters,
        n: sum_h,
        packed: &scratch.packed,
        bias: &scratch.bias,
        relu: true,
    };
    kernel::gemm_parallel(path, &first, hidden, sum_h);

    for (i, (spans, head)) in shape.heads.iter().zip(&shape.dims.heads).enumerate() {
        let (hh, classes) = (head.hidden, head.classes);
        let w2 = &params[spans.out_weight.range()];
        let c2 = &params[spans.out_bias.range()];
        kernel::pack(path, hh, classes, &mut scratch.packed, |u, c| {
            w2[c * hh + u]
        });
        kernel::pack_bias(path, classes, &mut scratch.bias, |c| c2[c]);
        let second = Gemm {
            a: &hidden[shape.hidden_offset(i)..],
            lda: sum_h,
            m: rows,
            k: hh,
            n: classes,
            packed: &scratch.packed,
            bias: &scratch.bias,
            relu: false,
        };
        kernel::gemm_parallel(path, &second, &mut logits[shape.class_offset(i)..], sum_c);
    }
}

/// Overwrites every head span of `grads` and writes `dh_tasks`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    path: SimdPath,
    shape: &Shape,
    params: &[f32],
    h: &[f32],
    hidden: &[f32],
    dlogits: &[f32],
    rows: usize,
    scratch: &mut HeadsScratch,
    grads: &mut [f32],
    dh_tasks: &mut [f32],
) {
    let filters = shape.dims.filters;
    let (sum_h, sum_c) = (shape.sum_hidden(), shape.sum_classes());
    if rows == 0 {
        // No rows, no gradient: the head spans still hold this batch's
        // (zero) gradient.
        for spans in &shape.heads {
            for span in [
                spans.hidden_weight,
                spans.hidden_bias,
                spans.out_weight,
                spans.out_bias,
            ] {
                grads[span.range()].fill(0.0);
            }
        }
        return;
    }

    let hidden_grad = super::grow(&mut scratch.hidden_grad, rows * sum_h);
    for (i, (spans, head)) in shape.heads.iter().zip(&shape.dims.heads).enumerate() {
        let task = TaskRows {
            hidden,
            dlogits,
            rows,
            sum_h,
            sum_c,
            hidden_offset: shape.hidden_offset(i),
            class_offset: shape.class_offset(i),
            units: head.hidden,
            classes: head.classes,
        };
        let w2 = &params[spans.out_weight.range()];
        second_layer_grads(path, &task, &mut grads[spans.out_weight.range()]);
        column_sums(
            path,
            &dlogits[task.class_offset..],
            sum_c,
            rows,
            &mut grads[spans.out_bias.range()],
        );
        hidden_grads(path, &task, w2, hidden_grad);
    }
    let hidden_grad = &*hidden_grad;

    column_sums(
        path,
        hidden_grad,
        sum_h,
        rows,
        &mut grads[shape.hidden_biases.range()],
    );

    // d W1 = G^T h: the product's A is G^T, its B is h.
    let hidden_grad_t = super::grow(&mut scratch.hidden_grad_t, sum_h * rows);
    for (b, row) in hidden_grad.chunks_exact(sum_h).enumerate() {
        for (u, &g) in row.iter().enumerate() {
            hidden_grad_t[u * rows + b] = g;
        }
    }
    kernel::pack(path, rows, filters, &mut scratch.packed, |b, f| {
        h[b * filters + f]
    });
    kernel::pack_bias(path, filters, &mut scratch.bias, |_| 0.0);
    let w1_grad = Gemm {
        a: hidden_grad_t,
        lda: rows,
        m: sum_h,
        k: rows,
        n: filters,
        packed: &scratch.packed,
        bias: &scratch.bias,
        relu: false,
    };
    kernel::gemm_parallel(
        path,
        &w1_grad,
        &mut grads[shape.hidden_weights.range()],
        filters,
    );

    // dh_i = G_i W1_i, over task i's own hidden units.
    let w1 = &params[shape.hidden_weights.range()];
    for (i, head) in shape.dims.heads.iter().enumerate() {
        let offset = shape.hidden_offset(i);
        kernel::pack(path, head.hidden, filters, &mut scratch.packed, |u, f| {
            w1[(offset + u) * filters + f]
        });
        let dh = Gemm {
            a: &hidden_grad[offset..],
            lda: sum_h,
            m: rows,
            k: head.hidden,
            n: filters,
            packed: &scratch.packed,
            bias: &scratch.bias,
            relu: false,
        };
        let out = &mut dh_tasks[i * rows * filters..(i + 1) * rows * filters];
        kernel::gemm_parallel(path, &dh, out, filters);
    }
}

/// One task's columns of the `[rows, sum H]` activations and `[rows, sum C]`
/// logit gradients.
struct TaskRows<'a> {
    hidden: &'a [f32],
    dlogits: &'a [f32],
    rows: usize,
    sum_h: usize,
    sum_c: usize,
    hidden_offset: usize,
    class_offset: usize,
    units: usize,
    classes: usize,
}

impl TaskRows<'_> {
    #[inline(always)]
    fn hidden_row(&self, b: usize) -> &[f32] {
        &self.hidden[b * self.sum_h + self.hidden_offset..][..self.units]
    }

    #[inline(always)]
    fn dlogits_row(&self, b: usize) -> &[f32] {
        &self.dlogits[b * self.sum_c + self.class_offset..][..self.classes]
    }
}

/// `y += a * x`, written to vectorise.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

multiversion! {
    /// `d W2 [C, H] = dlogits^T hidden`, summing the rows in order.
    fn second_layer_grads(task: &TaskRows<'_>, out: &mut [f32]) {
        out.fill(0.0);
        for b in 0..task.rows {
            let a = task.hidden_row(b);
            for (c, &g) in task.dlogits_row(b).iter().enumerate() {
                axpy(&mut out[c * task.units..][..task.units], g, a);
            }
        }
    }
}

multiversion! {
    /// Task columns of `G = (dlogits W2) * (hidden > 0)`.
    fn hidden_grads(task: &TaskRows<'_>, w2: &[f32], hidden_grad: &mut [f32]) {
        for b in 0..task.rows {
            let out = &mut hidden_grad[b * task.sum_h + task.hidden_offset..][..task.units];
            out.fill(0.0);
            for (c, &g) in task.dlogits_row(b).iter().enumerate() {
                axpy(out, g, &w2[c * task.units..][..task.units]);
            }
            for (o, &a) in out.iter_mut().zip(task.hidden_row(b)) {
                if a <= 0.0 {
                    *o = 0.0;
                }
            }
        }
    }
}

multiversion! {
    /// `out[c] = sum_b x[b * stride + c]` for `c < out.len()`, rows in order.
    fn column_sums(x: &[f32], stride: usize, rows: usize, out: &mut [f32]) {
        out.fill(0.0);
        let n = out.len();
        for b in 0..rows {
            for (o, &v) in out.iter_mut().zip(&x[b * stride..][..n]) {
                *o += v;
            }
        }
    }
}
