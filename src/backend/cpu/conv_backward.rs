//! The sparse backward of the encoder.
//!
//! The max-pool passes gradient to one window per (text, filter): with
//! `g[b, f] = dL/dh[b, f]` where `h > 0` (else 0) and `t = win[b, f]`,
//! - `d conv.bias[f] = sum_b g[b, f]`;
//! - `d conv.weight[f, :, j] = sum_b g[b, f] * emb[x[b, t + j]]`;
//! - `d emb[x[b, t + j]] += g[b, f] * conv.weight[f, :, j]`.
//!
//! That is `B * F * k * D` multiply-adds for each of the weight and the
//! embedding, about `L / 2` times less than the forward. What costs is
//! memory: the embedding rows the weight gradient reads lie anywhere in a
//! table far larger than the caches, and the whole `V x D` embedding
//! gradient must be rewritten.
//!
//! So both gradients come from one pass in token order. The positions that
//! receive gradient are counting-sorted by token id (stable, so in (text,
//! position) order). For each token, its embedding row is read once (rows
//! come in ascending address order, which the hardware prefetches well),
//! each of its positions adds `g * conv.weight[f, :, j]` to the token's
//! gradient row and `g * emb[token]` to filter `f`'s weight gradient for
//! every (tap `j`, filter `f`) that reaches it. Per text, the filters are
//! bucketed by winning window first, so a position finds the filters that
//! reach it without scanning all `F`. Every row of the embedding gradient is
//! written exactly once, with streaming stores: the token's sum, or zeros.
//!
//! Determinism without atomics: the table's rows are cut into a fixed
//! number of parts of about equal work (the cut depends on the batch only).
//! Each part writes its own rows and sums its own copy of the weight
//! gradient, tokens in order; the copies are then added in part order. So
//! the result does not depend on the thread count or the scheduling.

use rayon::prelude::*;

use super::simd::{multiversion, SimdPath};
use super::stream;
use super::{PerWorker, Texts};
use crate::model::Shape;

/// Parts of the token-order pass: enough for two threads to balance, few
/// enough that summing the parts' weight gradients stays cheap.
const PARTS: usize = 8;
/// In balancing the parts, one position with gradient counts as much work
/// as writing this many rows of the embedding gradient.
const ROWS_PER_POSITION: usize = 8;

/// Buffers reused from call to call (grown, never shrunk).
pub struct BackwardScratch {
    /// Per worker, `k * D` floats: the sum of the embedding row it is
    /// working on, or of a filter's weight gradient.
    rows: PerWorker<Vec<f32>>,
    /// `g [rows, F]`: `dh` where `h > 0`, else 0.
    gate: Vec<f32>,
    /// The conv weight as `[k, F, D]`: tap `j` of filter `f` is contiguous.
    taps: Vec<f32>,
    /// Per part of the token-order pass, its weight gradient as `[F, k, D]`.
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

impl Default for BackwardScratch {
    fn default() -> BackwardScratch {
        BackwardScratch {
            rows: PerWorker::new(),
            gate: Vec::new(),
            taps: Vec::new(),
            weight_parts: Vec::new(),
            window_start: Vec::new(),
            window_filters: Vec::new(),
            token_slot: Vec::new(),
            occurrences: Vec::new(),
            used: Vec::new(),
        }
    }
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

/// What the per-part routines read.
struct Inputs<'a> {
    texts: Texts<'a>,
    emb: &'a [f32],
    gate: &'a [f32],
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
    scratch.rows.prepare(|row| {
        super::grow(row, kernel * dim);
    });

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
        taps,
        window_start,
        window_filters,
        occurrences,
        dim,
        filters,
        kernel,
    };

    let used = &scratch.used[..];
    let workers = &scratch.rows;
    let bounds = part_bounds(used, d.vocab);
    let mut outputs: [&mut [f32]; PARTS] = Default::default();
    let mut rest = grads.embedding;
    for (p, out) in outputs.iter_mut().enumerate() {
        let rows_here = bounds.rows[p + 1] - bounds.rows[p];
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(rows_here * dim);
        *out = head;
        rest = tail;
    }

    let part_len = filters * kernel * dim;
    let weight_parts = super::grow(&mut scratch.weight_parts, PARTS * part_len);
    outputs
        .par_iter_mut()
        .zip(weight_parts.par_chunks_mut(part_len))
        .enumerate()
        .for_each(|(p, (out, weight_acc))| {
            let part = Part {
                runs: &used[bounds.runs[p]..bounds.runs[p + 1]],
                first_row: bounds.rows[p],
            };
            workers.with(|row| {
                let row = &mut row[..dim];
                token_part(path, &inputs, &part, out, weight_acc, row);
            });
            stream::fence();
        });

    let weight_parts = &*weight_parts;
    grads
        .conv_weight
        .par_chunks_mut(dim * kernel)
        .enumerate()
        .for_each(|(f, out)| {
            workers.with(|sum| {
                let sum = &mut sum[..kernel * dim];
                sum_weight_parts(path, weight_parts, f, kernel, sum, out);
            });
        });
}

/// Where the parts of the token-order pass start: `runs[p]` in `used`,
/// `rows[p]` in the embedding table (`rows[PARTS]` is the vocabulary).
struct PartBounds {
    runs: [usize; PARTS + 1],
    rows: [usize; PARTS + 1],
}

/// One part's tokens and its first row of the table.
struct Part<'a> {
    runs: &'a [TokenRun],
    first_row: usize,
}

/// Cuts the table's rows into [`PARTS`] ranges of about equal work (rows
/// to write plus positions to sum), each starting at a used token or at a
/// row no token uses, so each token's work falls in one part.
fn part_bounds(used: &[TokenRun], vocab: usize) -> PartBounds {
    let positions = used.last().map_or(0, |run| run.end as usize);
    let total = vocab + ROWS_PER_POSITION * positions;
    let mut bounds = PartBounds {
        runs: [used.len(); PARTS + 1],
        rows: [vocab; PARTS + 1],
    };
    bounds.runs[0] = 0;
    bounds.rows[0] = 0;
    let mut run = 0;
    for p in 1..PARTS {
        // The work before row r is r + ROWS_PER_POSITION * (positions of
        // tokens below r); find the first row where it reaches p / PARTS.
        let target = total * p / PARTS;
        while run < used.len()
            && used[run].token as usize + ROWS_PER_POSITION * used[run].end as usize <= target
        {
            run += 1;
        }
        let before = if run == 0 {
            0
        } else {
            used[run - 1].end as usize
        };
        let row = target.saturating_sub(ROWS_PER_POSITION * before);
        let row_cap = if run < used.len() {
            used[run].token as usize
        } else {
            vocab
        };
        let floor = if run == 0 {
            0
        } else {
            used[run - 1].token as usize + 1
        };
        let row = row.clamp(floor, row_cap).max(bounds.rows[p - 1]);
        bounds.rows[p] = row;
        bounds.runs[p] = run;
    }
    bounds
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
    /// Filter `f`'s gradient `[D, k]` into `out`: its `[k, D]` sums of the
    /// parts added in order in `sum`, then transposed.
    fn sum_weight_parts(parts: &[f32], f: usize, kernel: usize, sum: &mut [f32], out: &mut [f32]) {
        let len = sum.len();
        let dim = len / kernel;
        sum.fill(0.0);
        for part in parts.chunks_exact(parts.len() / PARTS) {
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
    /// One part of the token-order pass: writes the part's rows of the
    /// embedding gradient (`out`, from row `part.first_row`) and sums its
    /// share of the weight gradient into `weight_acc` (`[F, k, D]`). `row`
    /// is scratch of `D` floats.
    fn token_part(
        inputs: &Inputs<'_>,
        part: &Part<'_>,
        out: &mut [f32],
        weight_acc: &mut [f32],
        row: &mut [f32],
    ) {
        let (dim, kernel, filters) = (inputs.dim, inputs.kernel, inputs.filters);
        let width = inputs.texts.width;
        weight_acc.fill(0.0);
        let mut next = 0;
        for run in part.runs {
            let local = run.token as usize - part.first_row;
            stream::store(&mut out[next * dim..local * dim], None);
            let embedding = &inputs.emb[run.token as usize * dim..][..dim];
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
                        let f = f as usize;
                        let g = inputs.gate[b * filters + f];
                        axpy(row, g, &inputs.taps[(j * filters + f) * dim..][..dim]);
                        axpy(&mut weight_acc[(f * kernel + j) * dim..][..dim], g, embedding);
                    }
                }
            }
            stream::store(&mut out[local * dim..][..dim], Some(row));
            next = local + 1;
        }
        stream::store(&mut out[next * dim..], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of `counts[i]` positions for tokens `tokens[i]` (ascending).
    fn runs(tokens: &[u32], counts: &[u32]) -> Vec<TokenRun> {
        let mut begin = 0;
        tokens
            .iter()
            .zip(counts)
            .map(|(&token, &count)| {
                let run = TokenRun {
                    token,
                    begin,
                    end: begin + count,
                };
                begin += count;
                run
            })
            .collect()
    }

    fn check(used: &[TokenRun], vocab: usize) -> PartBounds {
        let bounds = part_bounds(used, vocab);
        assert_eq!((bounds.rows[0], bounds.rows[PARTS]), (0, vocab));
        assert_eq!((bounds.runs[0], bounds.runs[PARTS]), (0, used.len()));
        for p in 0..PARTS {
            assert!(bounds.rows[p] <= bounds.rows[p + 1], "{:?}", bounds.rows);
            // Part p's runs are exactly the tokens within its rows.
            for run in &used[bounds.runs[p]..bounds.runs[p + 1]] {
                let token = run.token as usize;
                assert!(bounds.rows[p] <= token && token < bounds.rows[p + 1]);
            }
        }
        bounds
    }

    #[test]
    fn parts_cover_the_table_and_split_the_work() {
        check(&[], 1);
        check(&[], 1000);
        check(&runs(&[0], &[5]), 1);
        check(&runs(&[3, 4, 9], &[1, 100, 2]), 10);

        // Frequent tokens first, as a frequency-sorted vocabulary has them.
        let tokens: Vec<u32> = (1..5000).collect();
        let counts: Vec<u32> = tokens.iter().map(|&t| 1 + 3000 / t).collect();
        let used = runs(&tokens, &counts);
        let vocab = 30000;
        let bounds = check(&used, vocab);
        let work = |p: usize| {
            let positions: u32 = used[bounds.runs[p]..bounds.runs[p + 1]]
                .iter()
                .map(|run| run.end - run.begin)
                .sum();
            bounds.rows[p + 1] - bounds.rows[p] + ROWS_PER_POSITION * positions as usize
        };
        let total: usize = (0..PARTS).map(work).sum();
        for p in 0..PARTS {
            // No part carries much more than its share (one token's
            // positions cannot be split).
            let biggest_token = ROWS_PER_POSITION * 3001;
            assert!(work(p) <= total / PARTS + biggest_token + 1, "part {p}");
        }
    }
}
