//! The CPU backend: the fused operations over host memory, parallel over
//! texts (or filters, or parameters) with rayon.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::{AdamStep, Backend, TokenBatch};
use crate::model::Shape;

/// Runs the model's fused operations on the CPU.
#[derive(Default)]
pub struct CpuBackend {
    /// Convolution weight repacked as `[k * D, F]` (row `j * D + d`).
    packed_weight: Vec<f32>,
    /// Per text and position, the gradient reaching that position's
    /// embedding: `[rows, width, D]`.
    position_grads: Vec<f32>,
    /// `(token, text, position)` of every position that received gradient.
    touched: Vec<(u32, u32, u32)>,
    /// Embedding rows given gradient by the previous backward call.
    dirty_rows: Vec<u32>,
    /// Conv weight gradient as `[F, k, D]` before it is written out.
    conv_grad: Vec<f32>,
    /// Gradient of the pre-activation hidden units, `[rows, sum H]`.
    hidden_grad: Vec<f32>,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
}

fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Number of convolution windows of a text with `len` real tokens.
pub fn windows(len: usize, kernel: usize) -> usize {
    len.max(kernel) - kernel + 1
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Backend for CpuBackend {
    type Floats = Vec<f32>;
    type Ints = Vec<i32>;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn floats(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn ints(&self, len: usize) -> Result<Vec<i32>> {
        Ok(vec![0; len])
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
        let d = &shape.dims;
        let (dim, filters, kernel) = (d.embed, d.filters, d.kernel);
        let emb = &params[shape.embedding.range()];
        let weight = &params[shape.conv_weight.range()];
        let bias = &params[shape.conv_bias.range()];

        let packed = grow(&mut self.packed_weight, kernel * dim * filters);
        for f in 0..filters {
            for dd in 0..dim {
                for j in 0..kernel {
                    packed[(j * dim + dd) * filters + f] = weight[(f * dim + dd) * kernel + j];
                }
            }
        }
        let packed = &*packed;

        let width = batch.width;
        h[..batch.rows * filters]
            .par_chunks_mut(filters)
            .zip(win[..batch.rows * filters].par_chunks_mut(filters))
            .enumerate()
            .for_each_init(
                || {
                    (
                        vec![0.0f32; (width.max(kernel)) * dim],
                        vec![0.0f32; filters],
                    )
                },
                |(gathered, z), (b, (h_row, win_row))| {
                    let len = (batch.lengths[b].max(0) as usize).min(width);
                    let positions = len.max(kernel);
                    for p in 0..positions {
                        let token = if p < len {
                            batch.tokens[b * width + p] as usize
                        } else {
                            0
                        };
                        gathered[p * dim..(p + 1) * dim]
                            .copy_from_slice(&emb[token * dim..(token + 1) * dim]);
                    }
                    h_row.fill(f32::NEG_INFINITY);
                    win_row.fill(0);
                    for t in 0..windows(len, kernel) {
                        z.copy_from_slice(bias);
                        let window = &gathered[t * dim..(t + kernel) * dim];
                        for (kk, &x) in window.iter().enumerate() {
                            let row = &packed[kk * filters..(kk + 1) * filters];
                            for (zf, &w) in z.iter_mut().zip(row) {
                                *zf += x * w;
                            }
                        }
                        for f in 0..filters {
                            if z[f] > h_row[f] {
                                h_row[f] = z[f];
                                win_row[f] = t as i32;
                            }
                        }
                    }
                    for v in h_row.iter_mut() {
                        *v = v.max(0.0);
                    }
                },
            );
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
        let d = &shape.dims;
        let (dim, filters, kernel) = (d.embed, d.filters, d.kernel);
        let (rows, width) = (batch.rows, batch.width);
        let emb = &params[shape.embedding.range()];
        let weight = &params[shape.conv_weight.range()];
        let gate = |b: usize, f: usize| {
            let i = b * filters + f;
            if h[i] > 0.0 {
                dh[i]
            } else {
                0.0
            }
        };
        let token_at = |b: usize, p: usize| {
            let len = (batch.lengths[b].max(0) as usize).min(width);
            if p < len {
                batch.tokens[b * width + p] as usize
            } else {
                0
            }
        };

        // Weight and bias: each filter sums over the batch in order.
        let conv_grad = grow(&mut self.conv_grad, filters * kernel * dim);
        conv_grad
            .par_chunks_mut(kernel * dim)
            .enumerate()
            .for_each(|(f, acc)| {
                acc.fill(0.0);
                for b in 0..rows {
                    let g = gate(b, f);
                    if g == 0.0 {
                        continue;
                    }
                    let t = win[b * filters + f] as usize;
                    for j in 0..kernel {
                        let token = token_at(b, t + j);
                        let e = &emb[token * dim..(token + 1) * dim];
                        for (a, &x) in acc[j * dim..(j + 1) * dim].iter_mut().zip(e) {
                            *a += g * x;
                        }
                    }
                }
            });
        let conv_weight_grad = &mut grads[shape.conv_weight.range()];
        for f in 0..filters {
            for j in 0..kernel {
                for dd in 0..dim {
                    conv_weight_grad[(f * dim + dd) * kernel + j] =
                        conv_grad[(f * kernel + j) * dim + dd];
                }
            }
        }
        let bias_grad = &mut grads[shape.conv_bias.range()];
        for (f, out) in bias_grad.iter_mut().enumerate() {
            *out = (0..rows).map(|b| gate(b, f)).sum();
        }

        // Embedding: gradient per (text, position), then summed per token
        // in (text, position) order.
        let position_grads = grow(&mut self.position_grads, rows * width * dim);
        position_grads
            .par_chunks_mut(width * dim)
            .enumerate()
            .for_each(|(b, out)| {
                out.fill(0.0);
                for f in 0..filters {
                    let g = gate(b, f);
                    if g == 0.0 {
                        continue;
                    }
                    let t = win[b * filters + f] as usize;
                    for j in 0..kernel {
                        if t + j >= width {
                            break;
                        }
                        let row = &mut out[(t + j) * dim..(t + j + 1) * dim];
                        for (dd, r) in row.iter_mut().enumerate() {
                            *r += g * weight[(f * dim + dd) * kernel + j];
                        }
                    }
                }
            });

        let emb_grad = &mut grads[shape.embedding.range()];
        for &row in &self.dirty_rows {
            emb_grad[row as usize * dim..(row as usize + 1) * dim].fill(0.0);
        }
        self.touched.clear();
        for b in 0..rows {
            let len = (batch.lengths[b].max(0) as usize).min(width);
            for p in 0..len {
                let token = batch.tokens[b * width + p];
                if token > 0 {
                    self.touched.push((token as u32, b as u32, p as u32));
                }
            }
        }
        self.touched.sort_unstable();
        self.dirty_rows.clear();
        let position_grads = &*position_grads;
        for (i, &(token, b, p)) in self.touched.iter().enumerate() {
            if i == 0 || self.touched[i - 1].0 != token {
                self.dirty_rows.push(token);
            }
            let src = &position_grads[(b as usize * width + p as usize) * dim..][..dim];
            let dst = &mut emb_grad[token as usize * dim..(token as usize + 1) * dim];
            for (o, &s) in dst.iter_mut().zip(src) {
                *o += s;
            }
        }
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
        let filters = shape.dims.filters;
        let (sum_h, sum_c) = (shape.sum_hidden(), shape.sum_classes());
        let w1 = &params[shape.hidden_weights.range()];
        let c1 = &params[shape.hidden_biases.range()];
        hidden[..rows * sum_h]
            .par_chunks_mut(sum_h)
            .zip(logits[..rows * sum_c].par_chunks_mut(sum_c))
            .enumerate()
            .for_each(|(b, (hid, out))| {
                let x = &h[b * filters..(b + 1) * filters];
                for (u, a) in hid.iter_mut().enumerate() {
                    *a = (c1[u] + dot(&w1[u * filters..(u + 1) * filters], x)).max(0.0);
                }
                for (i, (spans, head)) in shape.heads.iter().zip(&shape.dims.heads).enumerate() {
                    let a = &hid[shape.hidden_offset(i)..][..head.hidden];
                    let w2 = &params[spans.out_weight.range()];
                    let c2 = &params[spans.out_bias.range()];
                    let o = &mut out[shape.class_offset(i)..][..head.classes];
                    for (c, oc) in o.iter_mut().enumerate() {
                        *oc = c2[c] + dot(&w2[c * head.hidden..(c + 1) * head.hidden], a);
                    }
                }
            });
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        shape: &Shape,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        rows: usize,
        grad_scale: &[f32],
        dlogits: &mut Vec<f32>,
        loss_sums: &mut Vec<f32>,
    ) -> Result<()> {
        let sum_c = shape.sum_classes();
        for (i, head) in shape.dims.heads.iter().enumerate() {
            let offset = shape.class_offset(i);
            let mut total = 0.0f64;
            for b in 0..rows {
                let o = &logits[b * sum_c + offset..][..head.classes];
                let g = &mut dlogits[b * sum_c + offset..][..head.classes];
                let label = labels[i * rows + b];
                if label < 0 {
                    g.fill(0.0);
                    continue;
                }
                let max = o.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let sum: f32 = o.iter().map(|&x| (x - max).exp()).sum();
                let log_sum = sum.ln();
                total += (log_sum - (o[label as usize] - max)) as f64;
                for (c, gc) in g.iter_mut().enumerate() {
                    let p = (o[c] - max - log_sum).exp();
                    let target = if c == label as usize { 1.0 } else { 0.0 };
                    *gc = (p - target) * grad_scale[i];
                }
            }
            loss_sums[i] = total as f32;
        }
        Ok(())
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
        let filters = shape.dims.filters;
        let (sum_h, sum_c) = (shape.sum_hidden(), shape.sum_classes());

        // Second layers, and the gradient reaching each hidden unit.
        let hidden_grad = grow(&mut self.hidden_grad, rows * sum_h);
        for (i, (spans, head)) in shape.heads.iter().zip(&shape.dims.heads).enumerate() {
            let (hoff, coff) = (shape.hidden_offset(i), shape.class_offset(i));
            let w2 = &params[spans.out_weight.range()];
            for c in 0..head.classes {
                let mut bias = 0.0;
                for b in 0..rows {
                    bias += dlogits[b * sum_c + coff + c];
                }
                grads[spans.out_bias.offset + c] = bias;
                for u in 0..head.hidden {
                    let mut acc = 0.0;
                    for b in 0..rows {
                        acc += dlogits[b * sum_c + coff + c] * hidden[b * sum_h + hoff + u];
                    }
                    grads[spans.out_weight.offset + c * head.hidden + u] = acc;
                }
            }
            for b in 0..rows {
                for u in 0..head.hidden {
                    let a = hidden[b * sum_h + hoff + u];
                    let mut acc = 0.0;
                    if a > 0.0 {
                        for c in 0..head.classes {
                            acc += dlogits[b * sum_c + coff + c] * w2[c * head.hidden + u];
                        }
                    }
                    hidden_grad[b * sum_h + hoff + u] = acc;
                }
            }
        }

        // First layers, all tasks at once.
        let hidden_grad = &*hidden_grad;
        let w1_grad = &mut grads[shape.hidden_weights.range()];
        w1_grad
            .par_chunks_mut(filters)
            .enumerate()
            .for_each(|(u, row)| {
                row.fill(0.0);
                for b in 0..rows {
                    let g = hidden_grad[b * sum_h + u];
                    if g != 0.0 {
                        for (r, &x) in row.iter_mut().zip(&h[b * filters..(b + 1) * filters]) {
                            *r += g * x;
                        }
                    }
                }
            });
        let c1_grad = &mut grads[shape.hidden_biases.range()];
        for (u, out) in c1_grad.iter_mut().enumerate() {
            *out = (0..rows).map(|b| hidden_grad[b * sum_h + u]).sum();
        }

        // Each task's gradient with respect to h.
        let w1 = &params[shape.hidden_weights.range()];
        for (i, head) in shape.dims.heads.iter().enumerate() {
            let hoff = shape.hidden_offset(i);
            let block = &mut dh_tasks[i * rows * filters..(i + 1) * rows * filters];
            block
                .par_chunks_mut(filters)
                .enumerate()
                .for_each(|(b, out)| {
                    out.fill(0.0);
                    for u in hoff..hoff + head.hidden {
                        let g = hidden_grad[b * sum_h + u];
                        if g != 0.0 {
                            for (o, &w) in out.iter_mut().zip(&w1[u * filters..(u + 1) * filters]) {
                                *o += g * w;
                            }
                        }
                    }
                });
        }
        Ok(())
    }

    fn combine_tasks(
        &mut self,
        dh_tasks: &Vec<f32>,
        coeffs: &[f32],
        len: usize,
        dh: &mut Vec<f32>,
    ) -> Result<()> {
        let out = &mut dh[..len];
        out.fill(0.0);
        for (i, &c) in coeffs.iter().enumerate() {
            for (o, &g) in out.iter_mut().zip(&dh_tasks[i * len..(i + 1) * len]) {
                *o += c * g;
            }
        }
        Ok(())
    }

    fn task_gram(&mut self, dh_tasks: &Vec<f32>, tasks: usize, len: usize) -> Result<Vec<f64>> {
        let mut gram = vec![0.0; tasks * tasks];
        for i in 0..tasks {
            for j in 0..=i {
                let a = &dh_tasks[i * len..(i + 1) * len];
                let b = &dh_tasks[j * len..(j + 1) * len];
                let s: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
                gram[i * tasks + j] = s;
                gram[j * tasks + i] = s;
            }
        }
        Ok(gram)
    }

    fn multiply(&mut self, x: &mut Vec<f32>, mask: &Vec<f32>, len: usize) -> Result<()> {
        for (v, &m) in x[..len].iter_mut().zip(&mask[..len]) {
            *v *= m;
        }
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
    ) -> Result<()> {
        let t = step.step as i32;
        let correction1 = 1.0 - step.beta1.powi(t);
        let correction2_sqrt = (1.0 - step.beta2.powi(t)).sqrt();
        let step_size = step.lr / correction1;
        const CHUNK: usize = 1 << 14;
        params[..len]
            .par_chunks_mut(CHUNK)
            .zip(m[..len].par_chunks_mut(CHUNK))
            .zip(v[..len].par_chunks_mut(CHUNK))
            .zip(grads[..len].par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let g = g[i] * step.grad_scale;
                    m[i] = step.beta1 * m[i] + (1.0 - step.beta1) * g;
                    v[i] = step.beta2 * v[i] + (1.0 - step.beta2) * g * g;
                    let denom = v[i].sqrt() / correction2_sqrt + step.eps;
                    p[i] -= step_size * m[i] / denom;
                }
            });
        Ok(())
    }

    fn all_finite(&mut self, x: &Vec<f32>, len: usize) -> Result<bool> {
        Ok(x[..len].par_iter().all(|v| v.is_finite()))
    }
}

/// The vectorised code path the CPU kernels use on this machine.
pub fn simd_path() -> &'static str {
    "scalar"
}
