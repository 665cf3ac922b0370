//! Fused softmax + masked cross-entropy + gradient of the logits.
//!
//! One pass per (task, row) computes the maximum, the log-sum-exp, the loss
//! term and the whole gradient `(softmax - onehot) * scale`; a missing
//! label (-1) gives a zero gradient row and no loss; a labelled row counts
//! with its gold class's weight. Per task, the loss is
//! summed in float64 in row order, so it does not depend on threads. The
//! work is `rows * sum C` exponentials: small next to the encoder, so it
//! runs on one thread.

use anyhow::{ensure, Result};

use crate::model::Shape;

/// See [`crate::backend::Backend::softmax_cross_entropy`].
pub fn softmax_cross_entropy(
    shape: &Shape,
    logits: &[f32],
    labels: &[i32],
    class_weights: &[f32],
    rows: usize,
    grad_scale: &[f32],
    dlogits: &mut [f32],
    loss_sums: &mut [f32],
) -> Result<()> {
    let sum_c = shape.sum_classes();
    for (i, head) in shape.dims.heads.iter().enumerate() {
        for (b, &label) in labels[i * rows..(i + 1) * rows].iter().enumerate() {
            ensure!(
                label >= -1 && (label as i64) < head.classes as i64,
                "label {label} of task {i}, row {b} is not -1 (missing) or one of its {} classes",
                head.classes
            );
        }
    }

    for (i, head) in shape.dims.heads.iter().enumerate() {
        let classes = head.classes;
        let offset = shape.class_offset(i);
        let scale = grad_scale[i];
        let mut total = 0.0f64;
        for b in 0..rows {
            let o = &logits[b * sum_c + offset..][..classes];
            let g = &mut dlogits[b * sum_c + offset..][..classes];
            let label = labels[i * rows + b];
            if label < 0 {
                g.fill(0.0);
                continue;
            }
            let label = label as usize;
            let weight = class_weights[offset + label];
            let max = o.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f32 = o.iter().map(|&x| (x - max).exp()).sum();
            let log_sum = sum.ln();
            total += f64::from(weight * (log_sum - (o[label] - max)));
            for (c, (gc, &x)) in g.iter_mut().zip(o).enumerate() {
                let p = (x - max - log_sum).exp();
                let target = if c == label { 1.0 } else { 0.0 };
                *gc = (p - target) * weight * scale;
            }
        }
        loss_sums[i] = total as f32;
    }
    Ok(())
}
