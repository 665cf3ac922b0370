//! The sparse backward of the encoder.
//!
//! The max-pool passes gradient to one window per (text, filter): with
//! `g[b, f] = dL/dh[b, f]` where `h > 0` (else 0) and `t = win[b, f]`,
//! - `d conv.bias[f] = sum_b g[b, f]`;
//! - `d conv.weight[f, :, j] = sum_b g[b, f] * emb[x[b, t + j]]`;
//! - `d emb[x[b, t + j]] += g[b, f] * conv.weight[f, :, j]`.
//!
//! That is `B * F * k * D` multiply-adds for each of the weight and the
//! embedding, about `L / 2` times less than the forward.
//!
//! Determinism without atomics: every output element is summed by one
//! thread in a fixed order. The weight gradient is split over blocks of
//! filters, each summing the texts in order. The embedding gradient is
//! reduced by token: the positions that receive gradient are counting-sorted
//! by token id (stable, so in (text, position) order), rows of the table are
//! split over threads, and each token's row sums its positions in that
//! order, each position its taps `j` in order and each tap its filters in
//! order. Per text, the filters are bucketed by winning window first, so a
//! position finds the filters that reach it without scanning all `F`.

use std::ops::Range;

use rayon::prelude::*;

use super::simd::{multiversion, SimdPath};
use super::stream;
use super::Texts;
use crate::model::Shape;

/// Texts per part of the weight gradient. Parts are summed separately (in
/// parallel) and then added in order; the size is fixed so that the sums
/// do not depend on the thread count.
const TEXTS_PER_PART: usize = 32;
/// Embedding rows per parallel task of the embedding gradient.
const ROWS_PER_TASK: usize = 64;

thread_local! {
    /// Each thread's sum for the embedding row it is working on.
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers reused from call to call (grown, never shrunk).
#[derive(Default)]
pub struct BackwardScratch {
    /// `g [rows, F]`: `dh` where `h > 0`, else 0.
    gate: Vec<f32>,
    /// The conv weight as `[k, F, D]`: tap `j` of filter `f` is contiguous.
    taps: Vec<f32>,
    /// Per part of the batch, its weight gradient as `[F, k, D]`.
    weight_parts: Vec<f32>,
    /// Per text (stride `width + 1`): where window `t`'s filters start in
    /// `window_filters`.
    window_start: Vec<u32>,
    /// Per text (stride `F`): the filters with gradient, by window, then id.
    window_filters: Vec<u32>,
    /// Per token id: positions counted, then the next free slot.
    token_slot: Vec<u32>,
    /// `b * width + p` for every position with gradient, grouped by token.
    occurrences: Vec<u32>,
    /// The tokens with gradient, ascending, and their runs of `occurrences`.
    used: Vec<TokenRun>,
}

#[derive(Clone, Copy)]
struct TokenRun {
    token: u32,
    begin: u32,
    end: u32,
}

/// The gradient spans the backward overwrites.
pub struct EncoderGrads<'a> {
    pub embedding: &'a mut [f32],
    pub conv_weight: &'a mut [f32],
    pub conv_bias: &'a mut [f32],
}

/// What the per-block routines read.
struct Inputs<'a> {
    texts: Texts<'a>,
    emb: &'a [f32],
    gate: &'a [f32],
    win: &'a [i32],
    taps: &'a [f32],
    window_start: &'a [u32],
    window_filters: &'a [u32],
    occurrences: &'a [u32],
    dim: usize,
    filters: usize,
    kernel: usize,
}

/// Overwrites `grads` with this batch's encoder gradient. `win` must hold
/// valid windows (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    path: SimdPath,
    shape: &Shape,
    params: &[f32],
    texts: Texts<'_>,
    h: &[f32],
    win: &[i32],
    dh: &[f32],
    scratch: &mut BackwardScratch,
    grads: EncoderGrads<'_>,
) {
    let d = &shape.dims;
    let (dim, filters, kernel) = (d.embed, d.filters, d.kernel);
    let (rows, width) = (texts.rows, texts.width);
    let weight = &params[shape.conv_weight.range()];

    let gate = super::grow(&mut scratch.gate, rows * filters);
    for ((g, &hv), &dv) in gate
        .iter_mut()
        .zip(&h[..rows * filters])
        .zip(&dh[..rows * filters])
    {
        *g = if hv > 0.0 { dv } else { 0.0 };
    }

    grads.conv_bias.fill(0.0);
    for row in gate.chunks_exact(filters) {
        add_row(path, grads.conv_bias, row);
    }

    let taps = super::grow(&mut scratch.taps, kernel * filters * dim);
    for (j, tap) in taps.chunks_exact_mut(filters * dim).enumerate() {
        for (f, out) in tap.chunks_exact_mut(dim).enumerate() {
            for (dd, o) in out.iter_mut().enumerate() {
                *o = weight[(f * dim + dd) * kernel + j];
            }
        }
    }

    let window_start = super::grow(&mut scratch.window_start, rows * (width + 1));
    let window_filters = super::grow(&mut scratch.window_filters, rows * filters);
    window_start
        .par_chunks_mut(width + 1)
        .zip(window_filters.par_chunks_mut(filters))
        .enumerate()
        .for_each(|(b, (start, by_window))| {
            let row = b * filters..(b + 1) * filters;
            bucket_by_window(&gate[row.clone()], &win[row], start, by_window);
        });

    let token_slot = super::grow(&mut scratch.token_slot, d.vocab);
    let occurrences = group_by_token(
        texts,
        kernel,
        window_start,
        token_slot,
        &mut scratch.occurrences,
        &mut scratch.used,
    );

    let inputs = Inputs {
        texts,
        emb: &params[shape.embedding.range()],
        gate,
        win,
        taps,
        window_start,
        window_filters,
        occurrences,
        dim,
        filters,
        kernel,
    };

    // Parts of the batch in parallel, each text's rows read once; then
    // every filter adds the parts in order.
    let part_len = filters * kernel * dim;
    let parts = rows.div_ceil(TEXTS_PER_PART);
    let weight_parts = super::grow(&mut scratch.weight_parts, parts * part_len);
    weight_parts.par_chunks_mut(part_len).enumerate().for_each(|(i, acc)| {
        let first = i * TEXTS_PER_PART;
        weight_grad_part(path, &inputs, first..rows.min(first + TEXTS_PER_PART), acc);
    });
    let weight_parts = &*weight_parts;
    grads.conv_weight.par_chunks_mut(dim * kernel).enumerate().for_each(|(f, out)| {
        ROW.with_borrow_mut(|sum| {
            let sum = super::grow(sum, kernel * dim);
            sum_weight_parts(path, weight_parts, parts, f, kernel, sum, out);
        });
    });

    // Every row of the table is written once, with streaming stores: the
    // rows no text used as zeros, the others as their sums.
    let used = &scratch.used[..];
    grads.embedding.par_chunks_mut(ROWS_PER_TASK * dim).enumerate().for_each(|(i, out)| {
        let first = i * ROWS_PER_TASK;
        let end = first + out.len() / dim;
        let lo = used.partition_point(|run| (run.token as usize) < first);
        let hi = used.partition_point(|run| (run.token as usize) < end);
        ROW.with_borrow_mut(|row| {
            let row = super::grow(row, dim);
            embedding_rows(path, &inputs, &used[lo..hi], first, out, row);
        });
        stream::fence();
    });
}

/// Buckets one text's filters with gradient by winning window: afterwards
/// window `t`'s filters are `by_window[start[t]..start[t + 1]]`, ascending.
fn bucket_by_window(gate: &[f32], win: &[i32], start: &mut [u32], by_window: &mut [u32]) {
    start.fill(0);
    for (&g, &t) in gate.iter().zip(win) {
        if g != 0.0 {
            start[t as usize + 1] += 1;
        }
    }
    for t in 1..start.len() {
        start[t] += start[t - 1];
    }
    // Fill using start[t] as window t's cursor; it ends at window t + 1's
    // start, so shifting right by one restores the starts.
    for (f, (&g, &t)) in gate.iter().zip(win).enumerate() {
        if g != 0.0 {
            by_window[start[t as usize] as usize] = f as u32;
            start[t as usize] += 1;
        }
    }
    start.copy_within(..start.len() - 1, 1);
    start[0] = 0;
}

/// Whether position `p` of text `b` lies in a window that has a filter
/// with gradient.
fn receives_gradient(texts: Texts<'_>, kernel: usize, start: &[u32], b: usize, p: usize) -> bool {
    let windows = texts.windows(b, kernel);
    let first = p.saturating_sub(kernel - 1);
    let last = p.min(windows - 1);
    first <= last && start[last + 1] > start[first]
}

/// Counting sort of the positions with gradient by token id (stable, so in
/// (text, position) order). Fills `used` and returns the sorted positions.
fn group_by_token<'s>(
    texts: Texts<'_>,
    kernel: usize,
    window_start: &[u32],
    token_slot: &mut [u32],
    occurrences: &'s mut Vec<u32>,
    used: &mut Vec<TokenRun>,
) -> &'s [u32] {
    let width = texts.width;
    let positions = |b: usize| {
        let start = &window_start[b * (width + 1)..][..width + 1];
        texts
            .text(b)
            .iter()
            .enumerate()
            .filter(move |&(p, &token)| token != 0 && receives_gradient(texts, kernel, start, b, p))
            .map(move |(p, &token)| (b * width + p, token as usize))
    };

    token_slot.fill(0);
    for b in 0..texts.rows {
        for (_, token) in positions(b) {
            token_slot[token] += 1;
        }
    }

    used.clear();
    let mut total = 0u32;
    for (token, slot) in token_slot.iter_mut().enumerate() {
        let count = *slot;
        if count > 0 {
            used.push(TokenRun {
                token: token as u32,
                begin: total,
                end: total + count,
            });
            *slot = total;
            total += count;
        }
    }

    let occurrences = super::grow(occurrences, total as usize);
    for b in 0..texts.rows {
        for (position, token) in positions(b) {
            occurrences[token_slot[token] as usize] = position as u32;
            token_slot[token] += 1;
        }
    }
    occurrences
}

/// Asks for the cache lines of `row` ahead of their use.
#[inline(always)]
fn prefetch_row(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch is only a hint: it never faults, and the
        // address is inside `row`. SSE is part of x86-64.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
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
    /// `sum += row`, element-wise.
    fn add_row(sum: &mut [f32], row: &[f32]) {
        for (s, &r) in sum.iter_mut().zip(row) {
            *s += r;
        }
    }
}

multiversion! {
    /// The weight gradient of the texts `texts` alone, into `acc` as
    /// `[F, k, D]`. While a text is worked on, the next one's embedding rows
    /// are prefetched: they come from memory, and fetching them one miss at
    /// a time would leave the arithmetic waiting.
    fn weight_grad_part(inputs: &Inputs<'_>, texts: Range<usize>, acc: &mut [f32]) {
        let (dim, kernel, filters) = (inputs.dim, inputs.kernel, inputs.filters);
        acc.fill(0.0);
        let end = texts.end;
        for b in texts {
            let text = inputs.texts.text(b);
            let next = if b + 1 < end { inputs.texts.text(b + 1) } else { &[] };
            let mut prefetched = 0;
            for f in 0..filters {
                // Spread the next text's rows over this text's filters.
                let until = next.len() * (f + 1) / filters;
                for &token in &next[prefetched..until] {
                    prefetch_row(&inputs.emb[token as usize * dim..][..dim]);
                }
                prefetched = until;

                let g = inputs.gate[b * filters + f];
                if g == 0.0 {
                    continue;
                }
                let t = inputs.win[b * filters + f] as usize;
                for j in 0..kernel {
                    // Positions past the text's end are PAD: zero rows.
                    let Some(&token) = text.get(t + j) else { break };
                    let x = &inputs.emb[token as usize * dim..][..dim];
                    axpy(&mut acc[(f * kernel + j) * dim..][..dim], g, x);
                }
            }
        }
    }
}

multiversion! {
    /// Filter `f`'s gradient `[D, k]` into `out`: its `[k, D]` sums of the
    /// `count` parts added in order in `sum`, then transposed.
    fn sum_weight_parts(
        parts: &[f32],
        count: usize,
        f: usize,
        kernel: usize,
        sum: &mut [f32],
        out: &mut [f32],
    ) {
        let len = sum.len();
        let dim = len / kernel;
        sum.fill(0.0);
        for part in parts.chunks_exact(parts.len() / count.max(1)).take(count) {
            for (s, &v) in sum.iter_mut().zip(&part[f * len..][..len]) {
                *s += v;
            }
        }
        for (j, tap) in sum.chunks_exact(dim).enumerate() {
            for (dd, &v) in tap.iter().enumerate() {
                out[dd * kernel + j] = v;
            }
        }
    }
}

multiversion! {
    /// Writes the embedding-gradient rows `first..` held by `out`: the sum of
    /// each token of `runs` (all within those rows, ascending), zeros for the
    /// others. `row` is scratch of `D` floats.
    fn embedding_rows(
        inputs: &Inputs<'_>,
        runs: &[TokenRun],
        first: usize,
        out: &mut [f32],
        row: &mut [f32],
    ) {
        let (dim, kernel, filters) = (inputs.dim, inputs.kernel, inputs.filters);
        let width = inputs.texts.width;
        let mut next = 0;
        for run in runs {
            let local = run.token as usize - first;
            stream::store(&mut out[next * dim..local * dim], None);
            row.fill(0.0);
            for &position in &inputs.occurrences[run.begin as usize..run.end as usize] {
                let (b, p) = (position as usize / width, position as usize % width);
                let start = &inputs.window_start[b * (width + 1)..][..width + 1];
                let by_window = &inputs.window_filters[b * filters..][..filters];
                let windows = inputs.texts.windows(b, kernel);
                for j in 0..kernel.min(p + 1) {
                    let t = p - j;
                    if t >= windows {
                        continue;
                    }
                    for &f in &by_window[start[t] as usize..start[t + 1] as usize] {
                        let g = inputs.gate[b * filters + f as usize];
                        let w = &inputs.taps[(j * filters + f as usize) * dim..][..dim];
                        axpy(row, g, w);
                    }
                }
            }
            stream::store(&mut out[local * dim..][..dim], Some(row));
            next = local + 1;
        }
        stream::store(&mut out[next * dim..], None);
    }
}
