//! The fused encoder forward: embedding gather, convolution, bias, ReLU and
//! the masked max over time, with the winning window kept for the backward.
//!
//! Per text, the embedding rows of its `max(len, k)` positions are gathered
//! into one contiguous buffer (PAD rows stay zero). Window `t` is then the
//! `k * D` consecutive floats starting at row `t`, so the convolution is the
//! product `[windows, k * D] x [k * D, F]` whose `A` rows overlap, one every
//! `D` floats. The weight is packed once per call as `[k * D, F]` column
//! panels (row `j * D + d` holds `conv.weight[:, d, j]`), and the
//! micro-kernel's max epilogue reduces each panel over all windows in
//! registers: the `[windows, F]` activations never reach memory. Only the
//! text's own windows are computed, so short texts cost proportionally less.
//!
//! Texts are independent, so rayon spreads them over the threads; each
//! worker gathers into its own buffer, which grows once and is reused.

use rayon::prelude::*;

use super::kernel::{self, Operands, MAX_NR};
use super::simd::SimdPath;
use super::{PerWorker, Texts};
use crate::model::Shape;

/// The convolution weight and bias packed for the micro-kernels, and each
/// worker's buffers.
pub struct ConvScratch {
    panels: Vec<f32>,
    bias: Vec<f32>,
    texts: PerWorker<TextScratch>,
}

impl Default for ConvScratch {
    fn default() -> ConvScratch {
        ConvScratch {
            panels: Vec::new(),
            bias: Vec::new(),
            texts: PerWorker::new(),
        }
    }
}

/// One worker's buffers for the text it is working on.
#[derive(Default)]
struct TextScratch {
    /// The gathered embedding rows, `[positions, D]`.
    gathered: Vec<f32>,
    /// The micro-kernel's partial sums, `[windows, NR]`.
    partial: Vec<f32>,
}

/// Writes `h [rows, F]` and `win [rows, F]` for every text of `texts`.
pub fn forward(
    path: SimdPath,
    shape: &Shape,
    params: &[f32],
    texts: Texts<'_>,
    scratch: &mut ConvScratch,
    h: &mut [f32],
    win: &mut [i32],
) {
    let d = &shape.dims;
    let (dim, filters, kernel) = (d.embed, d.filters, d.kernel);
    let emb = &params[shape.embedding.range()];
    let weight = &params[shape.conv_weight.range()];
    let bias = &params[shape.conv_bias.range()];

    let depth = kernel * dim;
    kernel::pack(path, depth, filters, &mut scratch.panels, |row, f| {
        let (j, dd) = (row / dim, row % dim);
        weight[(f * dim + dd) * kernel + j]
    });
    kernel::pack_bias(path, filters, &mut scratch.bias, |f| bias[f]);
    let (panels, packed_bias) = (&scratch.panels[..], &scratch.bias[..]);
    let nr = kernel::panel_width(path);
    let widest = texts.width.max(kernel);
    scratch.texts.prepare(|buffers| {
        super::grow(&mut buffers.gathered, widest * dim);
        super::grow(&mut buffers.partial, widest * nr);
    });
    let workers = &scratch.texts;

    let rows = texts.rows;
    h[..rows * filters]
        .par_chunks_mut(filters)
        .zip(win[..rows * filters].par_chunks_mut(filters))
        .enumerate()
        .for_each(|(b, (h_row, win_row))| {
            workers.with(|scratch| {
                let positions = texts.len(b).max(kernel);
                let gathered = &mut scratch.gathered[..positions * dim];
                gather(texts.text(b), emb, dim, gathered);

                let windows = positions - kernel + 1;
                let (mut best, mut arg) = ([0.0f32; MAX_NR], [0i32; MAX_NR]);
                let outputs = h_row.chunks_mut(nr).zip(win_row.chunks_mut(nr));
                for (p, (h_part, win_part)) in outputs.enumerate() {
                    let op = Operands {
                        a: gathered,
                        lda: dim,
                        k: depth,
                        panel: &panels[p * depth * nr..][..depth * nr],
                        bias: &packed_bias[p * nr..][..nr],
                    };
                    let partial = &mut scratch.partial[..windows * nr];
                    kernel::max_rows(path, op, windows, partial, &mut best[..nr], &mut arg[..nr]);
                    for (f, (out, at)) in h_part.iter_mut().zip(win_part.iter_mut()).enumerate() {
                        // relu(max_t z); `best` is finite (every text has a
                        // window) unless the parameters are not.
                        *out = best[f].max(0.0);
                        *at = arg[f];
                    }
                }
            })
        });
}

/// Copies the embedding row of each token of `text` into `out` (`dim`
/// floats per position) and zeroes the positions past the text's end.
fn gather(text: &[i32], emb: &[f32], dim: usize, out: &mut [f32]) {
    let mut rows = out.chunks_exact_mut(dim);
    for (&token, row) in text.iter().zip(&mut rows) {
        row.copy_from_slice(&emb[token as usize * dim..][..dim]);
    }
    for row in rows {
        row.fill(0.0);
    }
}
