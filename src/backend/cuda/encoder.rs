//! Launchers for the fused encoder forward and its sparse backward
//! (`kernels/encoder_forward.cu`, `kernels/encoder_backward.cu`).

use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::layout::{self, FORWARD_THREADS};
use super::{as_i32, grown, CudaBackend, Precision};
use crate::backend::TokenBatch;
use crate::model::Shape;

/// Sizes as the kernels take them: width, vocabulary, D, F, k.
struct Sizes {
    width: i32,
    vocab: i32,
    dim: i32,
    filters: i32,
    kernel: i32,
}

fn sizes(shape: &Shape, batch: &TokenBatch<'_, CudaBackend>) -> Result<Sizes> {
    let d = &shape.dims;
    Ok(Sizes {
        width: as_i32("batch width", batch.width)?,
        vocab: as_i32("vocabulary", d.vocab)?,
        dim: as_i32("embedding width", d.embed)?,
        filters: as_i32("filters", d.filters)?,
        kernel: as_i32("kernel width", d.kernel)?,
    })
}

pub(super) fn forward(
    be: &mut CudaBackend,
    shape: &Shape,
    params: &CudaSlice<f32>,
    batch: &TokenBatch<'_, CudaBackend>,
    h: &mut CudaSlice<f32>,
    win: &mut CudaSlice<i32>,
) -> Result<()> {
    let s = sizes(shape, batch)?;
    let d = &shape.dims;
    let bias = params.slice(shape.conv_bias.range());

    if be.precision == Precision::Fp32 {
        be.repack_conv(shape, params)?;
        let function = be.function("encoder_forward", "encoder_forward_f32")?;
        let shared = layout::fma_shared_bytes(d.kernel);
        be.allow_shared(&function, shared, "encoder_forward_f32")?;
        let filter_blocks = d.filters.div_ceil(layout::FMA_TILE_FILTERS);
        ensure!(
            filter_blocks <= 65535,
            "{} filters exceed the forward's grid",
            d.filters
        );
        let cfg = LaunchConfig {
            grid_dim: (batch.rows as u32, filter_blocks as u32, 1),
            block_dim: (FORWARD_THREADS, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let emb = params.slice(shape.embedding.range());
        let Some(repacked) = be.scratch.conv_repacked.as_ref() else {
            anyhow::bail!("repacked conv weight missing")
        };
        // SAFETY: emb is the [V, D] span, repacked holds k * F * D floats,
        // bias F; tokens, lengths, h and win were checked against rows,
        // width and F by the caller; the kernel maps token ids outside
        // [0, V) to 0; shared memory is fma_shared_bytes(k), the size the
        // kernel checks; argument order matches encoder_forward_f32.
        unsafe {
            be.stream
                .launch_builder(&function)
                .arg(&emb)
                .arg(repacked)
                .arg(&bias)
                .arg(batch.tokens)
                .arg(batch.lengths)
                .arg(&s.width)
                .arg(&s.vocab)
                .arg(&s.dim)
                .arg(&s.filters)
                .arg(&s.kernel)
                .arg(&mut *h)
                .arg(&mut *win)
                .launch(cfg)
        }
        .context("encoder_forward_f32")?;
        return Ok(());
    }

    be.ensure_working_copy(shape, params)?;
    let name = format!("encoder_forward_{}", be.precision.suffix());
    let function = be.function("encoder_forward", &name)?;
    let shared = layout::mma_shared_bytes(d.kernel);
    be.allow_shared(&function, shared, &name)?;
    let filter_blocks = d.filters.div_ceil(layout::MMA_TILE_FILTERS);
    ensure!(
        filter_blocks <= 65535,
        "{} filters exceed the forward's grid",
        d.filters
    );
    let cfg = LaunchConfig {
        grid_dim: (batch.rows as u32, filter_blocks as u32, 1),
        block_dim: (FORWARD_THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    let Some(working) = be.working.as_ref() else {
        anyhow::bail!("working copy missing")
    };
    let dim_pad = working.layout.dim_pad;
    // SAFETY: working.emb is [V, Dp] and working.conv [k, F, Dp] halves
    // for this shape (ensure_working_copy checked the layout); bias has F
    // floats; tokens, lengths, h and win were checked against rows, width
    // and F; token ids outside [0, V) read row 0; shared memory is
    // mma_shared_bytes(k), the size the kernel checks; argument order
    // matches encoder_forward_<p>.
    unsafe {
        be.stream
            .launch_builder(&function)
            .arg(&working.emb)
            .arg(&working.conv)
            .arg(&bias)
            .arg(batch.tokens)
            .arg(batch.lengths)
            .arg(&s.width)
            .arg(&s.vocab)
            .arg(&dim_pad)
            .arg(&s.filters)
            .arg(&s.kernel)
            .arg(&mut *h)
            .arg(&mut *win)
            .launch(cfg)
    }
    .context(name)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &mut CudaBackend,
    shape: &Shape,
    params: &CudaSlice<f32>,
    batch: &TokenBatch<'_, CudaBackend>,
    h: &CudaSlice<f32>,
    win: &CudaSlice<i32>,
    dh: &CudaSlice<f32>,
    grads: &mut CudaSlice<f32>,
) -> Result<()> {
    let s = sizes(shape, batch)?;
    let d = &shape.dims;
    let rows = as_i32("rows", batch.rows)?;
    ensure!(
        d.kernel <= 65535,
        "kernel width {} exceeds the backward's grid",
        d.kernel
    );
    let emb = params.slice(shape.embedding.range());

    // Conv weight and bias: one block per (filter, shift).
    let function = be.function("encoder_backward", "conv_weight_grad_f32")?;
    let cfg = LaunchConfig {
        grid_dim: (d.filters as u32, d.kernel as u32, 1),
        block_dim: (layout::WEIGHT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    {
        let (mut before_bias, mut from_bias) = grads.split_at_mut(shape.conv_bias.offset);
        let mut weight_grad = before_bias.slice_mut(shape.conv_weight.range());
        let mut bias_grad = from_bias.slice_mut(..d.filters);
        // SAFETY: emb is the [V, D] span; tokens, lengths, h, win and dh
        // were checked against rows, width and F by the caller;
        // weight_grad is the [F, D, k] span and bias_grad the [F] span of
        // grads; argument order matches conv_weight_grad_f32.
        unsafe {
            be.stream
                .launch_builder(&function)
                .arg(&emb)
                .arg(batch.tokens)
                .arg(batch.lengths)
                .arg(h)
                .arg(win)
                .arg(dh)
                .arg(&rows)
                .arg(&s.width)
                .arg(&s.vocab)
                .arg(&s.dim)
                .arg(&s.filters)
                .arg(&s.kernel)
                .arg(&mut weight_grad)
                .arg(&mut bias_grad)
                .launch(cfg)
        }
        .context("conv_weight_grad_f32")?;
    }

    // Embedding: the span holds exactly this batch's gradient.
    be.stream
        .memset_zeros(&mut grads.slice_mut(shape.embedding.range()))?;
    let total = batch.rows * batch.width;
    if total == 0 {
        return Ok(());
    }

    // 1. Gradient per (text, position).
    be.repack_conv(shape, params)?;
    let function = be.function("encoder_backward", "embedding_position_grads_f32")?;
    let shared = layout::position_grads_shared_bytes(d.filters, batch.width);
    be.allow_shared(&function, shared, "embedding_position_grads_f32")?;
    let sort = be.function("encoder_backward", "embedding_sort_chunks")?;
    let merge = be.function("encoder_backward", "embedding_merge_runs")?;
    let pieces_fn = be.function("encoder_backward", "embedding_grad_pieces")?;
    let runs_fn = be.function("encoder_backward", "embedding_grad_runs")?;
    let multiprocessors = be.info.multiprocessors;
    let stream = be.stream.clone();
    let scratch = &mut be.scratch;
    let position_grads = grown(&stream, &mut scratch.position_grads, total * d.embed)?;
    let Some(repacked) = scratch.conv_repacked.as_ref() else {
        anyhow::bail!("repacked conv weight missing")
    };
    let cfg = LaunchConfig {
        grid_dim: (batch.rows as u32, 1, 1),
        block_dim: (layout::POSITION_THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: repacked holds k * F * D floats; tokens, lengths, h, win, dh
    // were checked against rows, width and F; position_grads holds rows *
    // width * D floats; shared memory is (3F + width + 1) ints as the
    // kernel lays out; argument order matches embedding_position_grads_f32.
    unsafe {
        stream
            .launch_builder(&function)
            .arg(repacked)
            .arg(batch.tokens)
            .arg(batch.lengths)
            .arg(h)
            .arg(win)
            .arg(dh)
            .arg(&s.width)
            .arg(&s.vocab)
            .arg(&s.dim)
            .arg(&s.filters)
            .arg(&s.kernel)
            .arg(&mut *position_grads)
            .launch(cfg)
    }
    .context("embedding_position_grads_f32")?;

    // 2. Sort (token, position) keys: chunks in shared memory, then merges.
    let keys = grown(&stream, &mut scratch.keys, total)?;
    let keys_other = grown(&stream, &mut scratch.keys_other, total)?;
    let cfg = LaunchConfig {
        grid_dim: (total.div_ceil(layout::SORT_CHUNK) as u32, 1, 1),
        block_dim: (layout::SORT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: tokens and lengths were checked against rows and width; keys
    // holds rows * width entries; argument order matches embedding_sort_chunks.
    unsafe {
        stream
            .launch_builder(&sort)
            .arg(batch.tokens)
            .arg(batch.lengths)
            .arg(&rows)
            .arg(&s.width)
            .arg(&s.vocab)
            .arg(&mut *keys)
            .launch(cfg)
    }
    .context("embedding_sort_chunks")?;

    let total_i = total as i64;
    let mut sorted_in_keys = true;
    for run in layout::merge_runs(total) {
        let blocks = layout::grid_stride_blocks(total, 256, multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (src, dst) = if sorted_in_keys {
            (&*keys, &mut *keys_other)
        } else {
            (&*keys_other, &mut *keys)
        };
        let run_i = run as i64;
        // SAFETY: src and dst hold `total` keys each; argument order
        // matches embedding_merge_runs.
        unsafe {
            stream
                .launch_builder(&merge)
                .arg(src)
                .arg(dst)
                .arg(&total_i)
                .arg(&run_i)
                .launch(cfg)
        }
        .context("embedding_merge_runs")?;
        sorted_in_keys = !sorted_in_keys;
    }
    let sorted = if sorted_in_keys { &*keys } else { &*keys_other };

    // 3. Sum each token's run of positions in order, tile by tile, then
    //    join the tiles of runs that cross them.
    let pieces = grown(&stream, &mut scratch.pieces, total * d.embed)?;
    let tiles = total.div_ceil(layout::PIECE_TILE);
    let cfg = LaunchConfig {
        grid_dim: (tiles.div_ceil(layout::PIECE_WARPS) as u32, 1, 1),
        block_dim: (32 * layout::PIECE_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: sorted holds `total` keys whose positions index
    // position_grads (rows * width * D floats); pieces has the same size;
    // argument order matches embedding_grad_pieces.
    unsafe {
        stream
            .launch_builder(&pieces_fn)
            .arg(sorted)
            .arg(&*position_grads)
            .arg(&total_i)
            .arg(&s.dim)
            .arg(&mut *pieces)
            .launch(cfg)
    }
    .context("embedding_grad_pieces")?;

    let cfg = LaunchConfig {
        grid_dim: (total.div_ceil(layout::RUN_WARPS) as u32, 1, 1),
        block_dim: (32 * layout::RUN_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut emb_grad = grads.slice_mut(shape.embedding.range());
    // SAFETY: sorted holds `total` keys with token ids in (0, V) (others
    // carry the invalid tag and are skipped); pieces holds total * D
    // floats; emb_grad is the [V, D] span; argument order matches
    // embedding_grad_runs.
    unsafe {
        stream
            .launch_builder(&runs_fn)
            .arg(sorted)
            .arg(&*pieces)
            .arg(&total_i)
            .arg(&s.dim)
            .arg(&mut emb_grad)
            .launch(cfg)
    }
    .context("embedding_grad_runs")?;
    Ok(())
}
