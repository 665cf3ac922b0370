//! Launchers for the task heads: every product is a descriptor of
//! `grouped_gemm_f32` (see [`super::layout::HeadGemms`] for the index math).

use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

use super::layout::{gemm_extent, GemmBatch, GemmDesc, HeadGemms, GEMM_THREADS};
use super::{check_len, grown, CudaBackend};
use crate::model::Shape;

/// Launches `descs` (in groups of up to eight) over the given buffers,
/// after checking that every index a descriptor can form is inside them.
#[allow(clippy::too_many_arguments)]
fn launch_gemms(
    stream: &Arc<CudaStream>,
    function: &CudaFunction,
    descs: &[GemmDesc],
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    gate: &CudaSlice<f32>,
    c: &mut CudaSlice<f32>,
) -> Result<()> {
    for d in descs {
        if d.m == 0 || d.n == 0 {
            continue;
        }
        let (a_end, b_end, c_end) = gemm_extent(d);
        ensure!(
            a_end <= a.len() && b_end <= b.len() && c_end <= c.len(),
            "head product {}x{}x{} reaches past its buffers",
            d.m,
            d.n,
            d.k
        );
        ensure!(
            d.bias < 0 || (d.bias + d.n) as usize <= bias.len(),
            "head bias out of range"
        );
        ensure!(
            d.gate < 0 || (c_end as i64 - d.c[0] + d.gate) as usize <= gate.len(),
            "head gate out of range"
        );
    }
    for (batch, grid) in GemmBatch::launches(descs) {
        ensure!(
            grid.1 <= 65535,
            "head product with {} rows exceeds the grid",
            grid.1 * 32
        );
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (GEMM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every index each descriptor forms was checked against the
        // buffer it addresses just above; argument order matches
        // grouped_gemm_f32; the batch is passed by value (1032 bytes).
        unsafe {
            stream
                .launch_builder(function)
                .arg(a)
                .arg(b)
                .arg(bias)
                .arg(gate)
                .arg(&mut *c)
                .arg(&batch)
                .launch(cfg)
        }
        .context("grouped_gemm_f32")?;
    }
    Ok(())
}

pub(super) fn forward(
    be: &mut CudaBackend,
    shape: &Shape,
    params: &CudaSlice<f32>,
    h: &CudaSlice<f32>,
    rows: usize,
    hidden: &mut CudaSlice<f32>,
    logits: &mut CudaSlice<f32>,
) -> Result<()> {
    check_len("parameters", params.len(), shape.len)?;
    check_len("h", h.len(), rows * shape.dims.filters)?;
    check_len("hidden", hidden.len(), rows * shape.sum_hidden())?;
    check_len("logits", logits.len(), rows * shape.sum_classes())?;
    if rows == 0 {
        return Ok(());
    }
    let gemms = HeadGemms { shape, rows };
    let function = be.function("heads", "grouped_gemm_f32")?;
    launch_gemms(
        &be.stream,
        &function,
        &[gemms.hidden()],
        h,
        params,
        params,
        params,
        hidden,
    )?;
    launch_gemms(
        &be.stream,
        &function,
        &gemms.logits(),
        hidden,
        params,
        params,
        params,
        logits,
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &mut CudaBackend,
    shape: &Shape,
    params: &CudaSlice<f32>,
    h: &CudaSlice<f32>,
    hidden: &CudaSlice<f32>,
    dlogits: &CudaSlice<f32>,
    rows: usize,
    grads: &mut CudaSlice<f32>,
    dh_tasks: &mut CudaSlice<f32>,
) -> Result<()> {
    let (filters, sum_h, sum_c) = (shape.dims.filters, shape.sum_hidden(), shape.sum_classes());
    check_len("parameters", params.len(), shape.len)?;
    check_len("gradients", grads.len(), shape.len)?;
    check_len("h", h.len(), rows * filters)?;
    check_len("hidden", hidden.len(), rows * sum_h)?;
    check_len("dlogits", dlogits.len(), rows * sum_c)?;
    check_len(
        "per-task gradients",
        dh_tasks.len(),
        shape.tasks() * rows * filters,
    )?;

    let gemms = HeadGemms { shape, rows };
    let function = be.function("heads", "grouped_gemm_f32")?;
    if be.scratch.ones.is_none() {
        be.scratch.ones = Some(be.stream.clone_htod(&[1.0f32])?);
    }
    let stream = be.stream.clone();
    let scratch = &mut be.scratch;
    let hidden_grad = grown(&stream, &mut scratch.hidden_grad, rows * sum_h)?;
    let Some(ones) = scratch.ones.as_ref() else {
        anyhow::bail!("ones buffer missing")
    };

    // Second layers and the gradient reaching the hidden units.
    launch_gemms(
        &stream,
        &function,
        &gemms.out_weight_grads(),
        dlogits,
        hidden,
        ones,
        ones,
        grads,
    )?;
    launch_gemms(
        &stream,
        &function,
        &gemms.out_bias_grads(),
        ones,
        dlogits,
        ones,
        ones,
        grads,
    )?;
    launch_gemms(
        &stream,
        &function,
        &gemms.hidden_grads(),
        dlogits,
        params,
        ones,
        hidden,
        hidden_grad,
    )?;

    // First layers of all tasks at once, then each task's dL/dh.
    let hidden_grad = &*hidden_grad;
    launch_gemms(
        &stream,
        &function,
        &[gemms.hidden_weight_grads()],
        hidden_grad,
        h,
        ones,
        ones,
        grads,
    )?;
    launch_gemms(
        &stream,
        &function,
        &[gemms.hidden_bias_grads()],
        ones,
        hidden_grad,
        ones,
        ones,
        grads,
    )?;
    launch_gemms(
        &stream,
        &function,
        &gemms.task_feature_grads(),
        hidden_grad,
        params,
        ones,
        ones,
        dh_tasks,
    )
}
