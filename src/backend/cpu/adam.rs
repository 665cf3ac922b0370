//! Adam and the other element-wise passes over flat buffers.
//!
//! Adam touches every parameter every step (the embedding table dominates:
//! `V * D` floats of weights, gradient and two moments), so it is bound by
//! memory bandwidth: one pass, vectorised for the chosen path and split
//! over threads in fixed chunks. Every element is updated on its own, so
//! the result never depends on the thread count.

use rayon::prelude::*;

use super::simd::{multiversion, SimdPath};
use crate::backend::AdamStep;

/// Elements per parallel task: large enough to amortise scheduling, small
/// enough to balance two threads over a few hundred thousand parameters.
const CHUNK: usize = 1 << 14;

/// The per-step constants of Adam, derived once.
struct AdamConstants {
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    grad_scale: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    correction2_sqrt: f32,
    eps: f32,
}

impl AdamConstants {
    fn new(step: &AdamStep) -> AdamConstants {
        AdamConstants {
            beta1: step.beta1,
            beta2: step.beta2,
            one_minus_beta1: 1.0 - step.beta1,
            one_minus_beta2: 1.0 - step.beta2,
            grad_scale: step.grad_scale,
            step_size: step.step_size(),
            correction2_sqrt: step.correction2_sqrt(),
            eps: step.eps,
        }
    }
}

/// One Adam step over `params`, `grads`, `m` and `v` (equal lengths), in
/// PyTorch's formulation (see [`crate::backend::Backend::adam`]).
pub fn adam(
    path: SimdPath,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: &AdamStep,
) {
    let constants = AdamConstants::new(step);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| adam_chunk(path, p, g, m, v, &constants));
}

/// [`adam`] over the rows `r` of `[rows, width]` buffers with
/// `marks[r] == stamp` only (LazyAdam); the other rows are not touched, so
/// the cost follows the rows a batch used, not the vocabulary.
#[allow(clippy::too_many_arguments)]
pub fn adam_marked_rows(
    path: SimdPath,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    width: usize,
    marks: &[i32],
    stamp: i32,
    step: &AdamStep,
) {
    let constants = AdamConstants::new(step);
    let rows_per_task = (CHUNK / width.max(1)).max(1);
    let floats_per_task = rows_per_task * width;
    params
        .par_chunks_mut(floats_per_task)
        .zip(grads.par_chunks(floats_per_task))
        .zip(m.par_chunks_mut(floats_per_task))
        .zip(v.par_chunks_mut(floats_per_task))
        .zip(marks.par_chunks(rows_per_task))
        .for_each(|((((p, g), m), v), marks)| {
            let rows = p
                .chunks_mut(width)
                .zip(g.chunks(width))
                .zip(m.chunks_mut(width))
                .zip(v.chunks_mut(width));
            for ((((p, g), m), v), &mark) in rows.zip(marks) {
                if mark == stamp {
                    adam_chunk(path, p, g, m, v, &constants);
                }
            }
        });
}

/// `x`, or 0 when it is below the smallest normal float.
///
/// The moments of embedding rows that no batch uses decay by `beta1` and
/// `beta2` every step and would sink into subnormal numbers, which x86
/// cores compute with microcode assists: on a 36k-word vocabulary that
/// cost more than a third of the training time. Flushing them changes
/// nothing that matters (`m / (sqrt(v) + eps)` of such values is below
/// 1e-30) and is the same on every backend.
#[inline(always)]
pub fn flushed(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

multiversion! {
    fn adam_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConstants) {
        let moments = m.iter_mut().zip(v.iter_mut());
        for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(moments) {
            let g = g * k.grad_scale;
            *m = flushed(k.beta1 * *m + k.one_minus_beta1 * g);
            *v = flushed(k.beta2 * *v + k.one_minus_beta2 * (g * g));
            let denom = v.sqrt() / k.correction2_sqrt + k.eps;
            *p -= k.step_size * *m / denom;
        }
    }
}

/// `x[i] *= mask[i]`.
pub fn multiply(path: SimdPath, x: &mut [f32], mask: &[f32]) {
    x.par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .for_each(|(x, mask)| multiply_chunk(path, x, mask));
}

multiversion! {
    fn multiply_chunk(x: &mut [f32], mask: &[f32]) {
        for (x, &m) in x.iter_mut().zip(mask) {
            *x *= m;
        }
    }
}

/// `out = sum_i coeffs[i] * blocks[i]`, tasks added in order; `blocks`
/// holds `coeffs.len()` blocks of `out.len()` floats.
pub fn combine(path: SimdPath, blocks: &[f32], coeffs: &[f32], out: &mut [f32]) {
    let len = out.len();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let start = i * CHUNK;
        out.fill(0.0);
        for (task, &c) in coeffs.iter().enumerate() {
            let block = &blocks[task * len + start..][..out.len()];
            scaled_add(path, out, c, block);
        }
    });
}

multiversion! {
    fn scaled_add(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }
}

/// `G[i][j] = <blocks[i], blocks[j]>` in float64, each block `len` long.
/// Sums run in a fixed order (chunks of `CHUNK`, added in order).
pub fn gram(path: SimdPath, blocks: &[f32], tasks: usize, len: usize) -> Vec<f64> {
    let mut gram = vec![0.0; tasks * tasks];
    for i in 0..tasks {
        for j in 0..=i {
            let a = &blocks[i * len..(i + 1) * len];
            let b = &blocks[j * len..(j + 1) * len];
            let partial: Vec<f64> = a
                .par_chunks(CHUNK)
                .zip(b.par_chunks(CHUNK))
                .map(|(a, b)| dot64(path, a, b))
                .collect();
            let sum = partial.iter().sum();
            gram[i * tasks + j] = sum;
            gram[j * tasks + i] = sum;
        }
    }
    gram
}

multiversion! {
    fn dot64(a: &[f32], b: &[f32]) -> f64 {
        // Four partial sums let the compiler vectorise in a fixed order.
        let mut lanes = [0.0f64; 4];
        let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
        let tail: f64 = a4
            .remainder()
            .iter()
            .zip(b4.remainder())
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        for (x, y) in a4.zip(b4) {
            for lane in 0..4 {
                lanes[lane] += f64::from(x[lane]) * f64::from(y[lane]);
            }
        }
        lanes.iter().sum::<f64>() + tail
    }
}

/// Whether every value is finite.
pub fn all_finite(path: SimdPath, x: &[f32]) -> bool {
    x.par_chunks(CHUNK).all(|chunk| chunk_finite(path, chunk))
}

multiversion! {
    fn chunk_finite(x: &[f32]) -> bool {
        // A value is not finite when its exponent bits are all set. An OR
        // of integers with no early exit vectorises.
        const EXPONENT: u32 = 0x7f80_0000;
        let bad = x.iter().fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXPONENT == EXPONENT));
        bad == 0
    }
}
