//! The CUDA backend: the model's fused operations as our own kernels
//! (`kernels/*.cu`), launched with cudarc on one stream.
//!
//! - Everything runs on the device's default stream, in call order, so no
//!   event tracking is needed between kernels; downloads wait for it.
//! - fp32 master weights, gradients and Adam moments always; with
//!   [`Precision::Bf16`] or [`Precision::Fp16`] the fused forward reads a
//!   half-precision working copy of the embedding and conv weight, which
//!   Adam rewrites as it updates them (and which is rebuilt from the fp32
//!   parameters whenever anything else may have written them).
//! - No floating-point atomics: two runs with one seed give the same bits.
//! - Kernel modules load on first use; see [`kernels`] for how PTX is
//!   chosen or compiled.

mod encoder;
mod heads;
mod kernels;
mod layout;
mod probe;

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};

use super::{AdamStep, Backend, DeviceTexts, DropoutDraw, LazyRows, TokenBatch};
use crate::model::Shape;
use layout::{AdamScalars, TaskCoeffs, TaskTable, WorkingLayout, MAX_TASKS_PER_LAUNCH};

pub use kernels::KERNEL_BUILD;
pub use probe::{
    describe_cuda, describe_device, nvrtc_present, probe, probe_device, CudaUnavailable, DeviceInfo,
};

/// Arithmetic of the fused encoder forward. Master weights, gradients and
/// optimiser state are fp32 in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Plain fp32 FMAs: matches the CPU backend to rounding.
    Fp32,
    /// bf16 inputs on tensor cores, fp32 accumulation.
    Bf16,
    /// fp16 inputs on tensor cores, fp32 accumulation (train with loss scaling).
    Fp16,
}

impl Precision {
    /// The `<dtype>` suffix of kernel entry points.
    fn suffix(self) -> &'static str {
        match self {
            Precision::Fp32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "f16",
        }
    }

    /// Parses `fp32`, `bf16` or `fp16`.
    pub fn parse(text: &str) -> Option<Precision> {
        match text {
            "fp32" | "f32" => Some(Precision::Fp32),
            "bf16" => Some(Precision::Bf16),
            "fp16" | "f16" => Some(Precision::Fp16),
            _ => None,
        }
    }
}

/// Opens CUDA device `device` at the precision asked for (`None`: bf16
/// where the GPU has it, sm_80 and later, else fp32); an unknown precision
/// is a usage error naming `flag`.
pub fn open(device: usize, precision: Option<&str>, flag: &str) -> Result<CudaBackend> {
    let precision = match precision {
        Some(text) => match Precision::parse(text) {
            Some(p) => p,
            None => {
                let msg = format!("{flag}: expected fp32, bf16 or fp16, got {text:?}");
                return Err(anyhow::Error::new(crate::cmd::UsageError(msg)));
            }
        },
        None => match probe_device(device) {
            Ok(info) if info.sm() >= 80 => Precision::Bf16,
            Ok(_) => Precision::Fp32,
            Err(e) => anyhow::bail!("--gpu {device}: {e}"),
        },
    };
    CudaBackend::new(device, precision).map_err(|e| e.context(format!("--gpu {device}")))
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

/// The half-precision copy of the embedding and conv weight the fused
/// forward reads.
struct WorkingCopy {
    layout: WorkingLayout,
    /// `[V, Dp]`
    emb: CudaSlice<u16>,
    /// `[k, F, Dp]`
    conv: CudaSlice<u16>,
}

/// Device buffers reused across calls, grown on demand.
#[derive(Default)]
struct Scratch {
    /// Conv weight as `[k, F, D]` fp32.
    conv_repacked: Option<CudaSlice<f32>>,
    /// Embedding gradient per (text, position): `[rows * width, D]`.
    position_grads: Option<CudaSlice<f32>>,
    /// Per-run partial sums of the embedding gradient: `[rows * width, D]`.
    pieces: Option<CudaSlice<f32>>,
    /// Sort keys, ping and pong: `[rows * width]`.
    keys: Option<CudaSlice<u64>>,
    keys_other: Option<CudaSlice<u64>>,
    /// Gradient of the hidden units: `[rows, sum H]`.
    hidden_grad: Option<CudaSlice<f32>>,
    /// A single 1.0 (bias gradients are products with a ones vector).
    ones: Option<CudaSlice<f32>>,
    flag: Option<CudaSlice<i32>>,
    gram: Option<CudaSlice<f64>>,
}

/// A zero-filled buffer of at least `len` elements in `slot`.
/// A zero-filled device buffer; running out of device memory is one line
/// that says how much was asked, how much is free, and what to lower.
fn allocate<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    len: usize,
) -> Result<CudaSlice<T>> {
    stream.alloc_zeros::<T>(len.max(1)).map_err(|error| {
        let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
        let wanted = mib(len * std::mem::size_of::<T>());
        match stream.context().mem_get_info() {
            Ok((free, total)) if len * std::mem::size_of::<T>() > free => anyhow!(
                "the GPU has too little memory: a buffer of {wanted:.1} MiB does not fit in \
                 the {:.1} MiB free (of {:.1} MiB); lower --batch-size, --max-len or \
                 --vocab-size",
                mib(free),
                mib(total)
            ),
            _ => anyhow!("cannot allocate {wanted:.1} MiB on the GPU: {error}"),
        }
    })
}

fn grown<'a, T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None; // free the old one first
        *slot = Some(allocate(stream, len)?);
    }
    match slot.as_mut() {
        Some(buffer) => Ok(buffer),
        None => bail!("scratch buffer vanished"),
    }
}

/// Fails with the operation and sizes when a buffer is too short.
fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    ensure!(
        have >= need,
        "{what}: buffer holds {have} elements, the call needs {need}"
    );
    Ok(())
}

fn as_i32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).with_context(|| format!("{what} = {value} does not fit the kernels' int"))
}

/// Runs the model's fused operations on one CUDA device.
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    precision: Precision,
    kernels: kernels::Kernels,
    scratch: Scratch,
    working: Option<WorkingCopy>,
    /// Device address of the parameter buffer the working copy currently
    /// mirrors; 0 when it must be rebuilt before the next forward.
    fresh_for: Cell<u64>,
}

impl CudaBackend {
    /// Opens CUDA device `device`. Fails with a one-line reason when there
    /// is no driver, no such device, a device older than sm_80, or the
    /// kernels need NVRTC and it is missing.
    pub fn new(device: usize, precision: Precision) -> Result<CudaBackend> {
        let info = probe_device(device)?;
        let ctx = CudaContext::new(device)
            .map_err(|e| anyhow::anyhow!("opening CUDA device {device}: {e:?}"))?;
        // SAFETY: this backend issues all its work on one stream, so
        // cudarc's cross-stream events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let kernels = kernels::Kernels::new(ctx, info.sm());
        Ok(CudaBackend {
            stream,
            info,
            precision,
            kernels,
            scratch: Scratch::default(),
            working: None,
            fresh_for: Cell::new(0),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn address<T>(&self, buffer: &CudaSlice<T>) -> u64 {
        buffer.device_ptr(&self.stream).0
    }

    /// Records that `buffer` is being written by something other than Adam:
    /// if the working copy mirrors it, it is stale from now on.
    fn written<T>(&self, buffer: &CudaSlice<T>) {
        if self.fresh_for.get() == self.address(buffer) {
            self.fresh_for.set(0);
        }
    }

    fn function(&mut self, family: &'static str, name: &str) -> Result<CudaFunction> {
        self.kernels.function(family, name)
    }

    /// Allows `function` to use `bytes` of dynamic shared memory, which
    /// above 48 KB needs an explicit opt-in.
    fn allow_shared(&self, function: &CudaFunction, bytes: usize, what: &str) -> Result<()> {
        let limit = self.info.max_shared_per_block as usize;
        ensure!(
            bytes <= limit,
            "{what} needs {bytes} bytes of shared memory; device {} allows {limit}",
            self.info.ordinal
        );
        if bytes > 48 * 1024 {
            use cudarc::driver::sys::CUfunction_attribute as A;
            function
                .set_attribute(
                    A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|e| anyhow::anyhow!("{what}: shared memory opt-in failed: {e:?}"))?;
        }
        Ok(())
    }

    /// Builds the half-precision working copy from `params` unless it
    /// already mirrors them.
    fn ensure_working_copy(&mut self, shape: &Shape, params: &CudaSlice<f32>) -> Result<()> {
        let layout = WorkingLayout::new(shape);
        if self.working.as_ref().is_none_or(|w| w.layout != layout) {
            self.working = None;
            self.fresh_for.set(0);
            let emb = allocate::<u16>(&self.stream, layout.emb_halves())?;
            let conv = allocate::<u16>(&self.stream, layout.conv_halves())?;
            self.working = Some(WorkingCopy { layout, emb, conv });
        }
        let address = self.address(params);
        if self.fresh_for.get() == address {
            return Ok(());
        }

        let name = format!("working_copy_{}", self.precision.suffix());
        let function = self.function("adam", &name)?;
        let blocks = layout::grid_stride_blocks(layout.mirrored(), 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let Some(working) = self.working.as_mut() else {
            bail!("working copy missing")
        };
        check_len("working copy", params.len(), layout.mirrored())?;
        // SAFETY: params holds at least emb_len + conv_len floats (checked);
        // emb and conv were sized by the same layout (emb_halves,
        // conv_halves); argument order matches working_copy_<p>.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(params)
                .arg(&layout)
                .arg(&mut working.emb)
                .arg(&mut working.conv)
                .launch(cfg)
        }
        .context(name)?;
        self.fresh_for.set(address);
        Ok(())
    }

    /// Writes the conv weight as `[k, F, D]` into scratch.
    fn repack_conv(&mut self, shape: &Shape, params: &CudaSlice<f32>) -> Result<()> {
        let d = &shape.dims;
        let function = self.function("encoder_forward", "conv_repack_f32")?;
        let len = shape.conv_weight.len;
        let blocks = layout::grid_stride_blocks(len, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let repacked = grown(&self.stream, &mut self.scratch.conv_repacked, len)?;
        let conv = params.slice(shape.conv_weight.range());
        let (dim, filters, kernel) = (d.embed as i32, d.filters as i32, d.kernel as i32);
        // SAFETY: conv is the [F, D, k] span of params; repacked holds
        // k * F * D floats; argument order matches conv_repack_f32.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(&conv)
                .arg(repacked)
                .arg(&dim)
                .arg(&filters)
                .arg(&kernel)
                .launch(cfg)
        }
        .context("conv_repack_f32")?;
        Ok(())
    }
}

/// Checks shared by the encoder's forward and backward.
fn check_encoder(
    shape: &Shape,
    params: &CudaSlice<f32>,
    batch: &TokenBatch<'_, CudaBackend>,
) -> Result<()> {
    let d = &shape.dims;
    ensure!(
        d.embed > 0 && d.filters > 0 && d.kernel > 0 && d.vocab > 0,
        "the encoder needs positive sizes, got V {} D {} F {} k {}",
        d.vocab,
        d.embed,
        d.filters,
        d.kernel
    );
    ensure!(
        batch.width >= d.kernel,
        "batch width {} is below the kernel width {}",
        batch.width,
        d.kernel
    );
    check_len("parameters", params.len(), shape.len)?;
    check_len("tokens", batch.tokens.len(), batch.rows * batch.width)?;
    check_len("lengths", batch.lengths.len(), batch.rows)?;
    as_i32("rows x width", batch.rows * batch.width)?;
    as_i32("vocabulary", d.vocab)?;
    as_i32("rows x filters", batch.rows * d.filters)?;
    Ok(())
}

impl Backend for CudaBackend {
    type Floats = CudaSlice<f32>;
    type Ints = CudaSlice<i32>;

    fn describe(&self) -> String {
        format!(
            "cuda:{} {} {} ({})",
            self.info.ordinal,
            describe_device(&self.info),
            self.precision,
            KERNEL_BUILD
        )
    }

    fn needs_loss_scaling(&self) -> bool {
        self.precision == Precision::Fp16
    }

    fn floats(&self, len: usize) -> Result<CudaSlice<f32>> {
        let buffer = allocate(&self.stream, len)?;
        self.written(&buffer);
        Ok(buffer)
    }

    fn ints(&self, len: usize) -> Result<CudaSlice<i32>> {
        allocate(&self.stream, len)
    }

    fn upload_floats(&self, dst: &mut CudaSlice<f32>, src: &[f32]) -> Result<()> {
        ensure!(
            src.len() <= dst.len(),
            "upload of {} floats into {}",
            src.len(),
            dst.len()
        );
        self.written(dst);
        if !src.is_empty() {
            self.stream
                .memcpy_htod(src, &mut dst.slice_mut(..src.len()))?;
        }
        Ok(())
    }

    fn download_floats(&self, src: &CudaSlice<f32>, dst: &mut [f32]) -> Result<()> {
        ensure!(
            dst.len() <= src.len(),
            "download of {} floats from {}",
            dst.len(),
            src.len()
        );
        if !dst.is_empty() {
            self.stream.memcpy_dtoh(&src.slice(..dst.len()), dst)?;
        }
        self.stream
            .synchronize()
            .context("waiting for the device")?;
        Ok(())
    }

    fn upload_ints(&self, dst: &mut CudaSlice<i32>, src: &[i32]) -> Result<()> {
        ensure!(
            src.len() <= dst.len(),
            "upload of {} ints into {}",
            src.len(),
            dst.len()
        );
        if !src.is_empty() {
            self.stream
                .memcpy_htod(src, &mut dst.slice_mut(..src.len()))?;
        }
        Ok(())
    }

    fn download_ints(&self, src: &CudaSlice<i32>, dst: &mut [i32]) -> Result<()> {
        ensure!(
            dst.len() <= src.len(),
            "download of {} ints from {}",
            dst.len(),
            src.len()
        );
        if !dst.is_empty() {
            self.stream.memcpy_dtoh(&src.slice(..dst.len()), dst)?;
        }
        self.stream
            .synchronize()
            .context("waiting for the device")?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().context("waiting for the device")
    }

    fn encoder_forward(
        &mut self,
        shape: &Shape,
        params: &CudaSlice<f32>,
        batch: &TokenBatch<'_, Self>,
        h: &mut CudaSlice<f32>,
        win: &mut CudaSlice<i32>,
    ) -> Result<()> {
        check_encoder(shape, params, batch)?;
        let rows_filters = batch.rows * shape.dims.filters;
        check_len("h", h.len(), rows_filters)?;
        check_len("win", win.len(), rows_filters)?;
        self.written(h);
        if batch.rows == 0 {
            return Ok(());
        }
        encoder::forward(self, shape, params, batch, h, win)
    }

    fn encoder_backward(
        &mut self,
        shape: &Shape,
        params: &CudaSlice<f32>,
        batch: &TokenBatch<'_, Self>,
        h: &CudaSlice<f32>,
        win: &CudaSlice<i32>,
        dh: &CudaSlice<f32>,
        grads: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_encoder(shape, params, batch)?;
        let rows_filters = batch.rows * shape.dims.filters;
        check_len("h", h.len(), rows_filters)?;
        check_len("win", win.len(), rows_filters)?;
        check_len("dh", dh.len(), rows_filters)?;
        check_len("gradients", grads.len(), shape.len)?;
        self.written(grads);
        encoder::backward(self, shape, params, batch, h, win, dh, grads)
    }

    fn heads_forward(
        &mut self,
        shape: &Shape,
        params: &CudaSlice<f32>,
        h: &CudaSlice<f32>,
        rows: usize,
        hidden: &mut CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.written(hidden);
        self.written(logits);
        heads::forward(self, shape, params, h, rows, hidden, logits)
    }

    fn softmax_cross_entropy(
        &mut self,
        shape: &Shape,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<i32>,
        class_weights: &CudaSlice<f32>,
        rows: usize,
        grad_scale: &[f32],
        dlogits: &mut CudaSlice<f32>,
        loss_sums: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (tasks, sum_c) = (shape.tasks(), shape.sum_classes());
        ensure!(
            grad_scale.len() == tasks,
            "{} gradient scales for {tasks} tasks",
            grad_scale.len()
        );
        check_len("logits", logits.len(), rows * sum_c)?;
        check_len("dlogits", dlogits.len(), rows * sum_c)?;
        check_len("labels", labels.len(), tasks * rows)?;
        check_len("class weights", class_weights.len(), sum_c)?;
        check_len("loss sums", loss_sums.len(), tasks)?;
        let (rows_i, sum_c_i) = (as_i32("rows", rows)?, as_i32("classes", sum_c)?);
        as_i32("tasks x rows", tasks * rows)?;
        self.written(dlogits);
        self.written(loss_sums);

        let function = self.function("loss", "softmax_cross_entropy_f32")?;
        for first in (0..tasks).step_by(MAX_TASKS_PER_LAUNCH) {
            let count = (tasks - first).min(MAX_TASKS_PER_LAUNCH);
            let mut table = TaskTable {
                class_offset: [0; MAX_TASKS_PER_LAUNCH],
                classes: [0; MAX_TASKS_PER_LAUNCH],
                grad_scale: [0.0; MAX_TASKS_PER_LAUNCH],
                count: count as i32,
            };
            for t in 0..count {
                table.class_offset[t] = shape.class_offset(first + t) as i32;
                table.classes[t] = shape.dims.heads[first + t].classes as i32;
                table.grad_scale[t] = grad_scale[first + t];
            }
            let first_i = first as i32;
            let cfg = LaunchConfig {
                grid_dim: (count as u32, 1, 1),
                block_dim: (layout::LOSS_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: logits and dlogits hold rows * sum C floats, labels
            // tasks * rows ints, class_weights sum C and loss_sums tasks
            // floats (all checked);
            // every class range lies inside sum C by Shape; argument order
            // matches softmax_cross_entropy_f32.
            unsafe {
                self.stream
                    .launch_builder(&function)
                    .arg(logits)
                    .arg(labels)
                    .arg(class_weights)
                    .arg(&rows_i)
                    .arg(&sum_c_i)
                    .arg(&first_i)
                    .arg(&table)
                    .arg(&mut *dlogits)
                    .arg(&mut *loss_sums)
                    .launch(cfg)
            }
            .context("softmax_cross_entropy_f32")?;
        }
        Ok(())
    }

    fn heads_backward(
        &mut self,
        shape: &Shape,
        params: &CudaSlice<f32>,
        h: &CudaSlice<f32>,
        hidden: &CudaSlice<f32>,
        dlogits: &CudaSlice<f32>,
        rows: usize,
        grads: &mut CudaSlice<f32>,
        dh_tasks: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.written(grads);
        self.written(dh_tasks);
        heads::backward(
            self, shape, params, h, hidden, dlogits, rows, grads, dh_tasks,
        )
    }

    fn combine_tasks(
        &mut self,
        dh_tasks: &CudaSlice<f32>,
        coeffs: &[f32],
        len: usize,
        dh: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("per-task gradients", dh_tasks.len(), coeffs.len() * len)?;
        check_len("dh", dh.len(), len)?;
        self.written(dh);
        if len == 0 {
            return Ok(());
        }
        let function = self.function("elementwise", "combine_tasks_f32")?;
        let blocks = layout::grid_stride_blocks(len, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let len_i = len as i64;
        // With no task at all, one launch with count 0 writes zeros.
        let firsts: Vec<usize> = if coeffs.is_empty() {
            vec![0]
        } else {
            (0..coeffs.len()).step_by(MAX_TASKS_PER_LAUNCH).collect()
        };
        for first in firsts {
            let count = coeffs.len().saturating_sub(first).min(MAX_TASKS_PER_LAUNCH);
            let mut table = TaskCoeffs {
                coeff: [0.0; MAX_TASKS_PER_LAUNCH],
                count: count as i32,
            };
            table.coeff[..count].copy_from_slice(&coeffs[first..first + count]);
            let (first_i, accumulate) = (first as i32, i32::from(first > 0));
            // SAFETY: dh_tasks holds (first + count) * len floats and dh
            // len floats (checked); argument order matches combine_tasks_f32.
            unsafe {
                self.stream
                    .launch_builder(&function)
                    .arg(dh_tasks)
                    .arg(&len_i)
                    .arg(&first_i)
                    .arg(&table)
                    .arg(&accumulate)
                    .arg(&mut *dh)
                    .launch(cfg)
            }
            .context("combine_tasks_f32")?;
        }
        Ok(())
    }

    fn task_gram(
        &mut self,
        dh_tasks: &CudaSlice<f32>,
        tasks: usize,
        len: usize,
    ) -> Result<Vec<f64>> {
        check_len("per-task gradients", dh_tasks.len(), tasks * len)?;
        if tasks == 0 {
            return Ok(Vec::new());
        }
        ensure!(
            tasks <= 65535,
            "{tasks} tasks exceed the Gram kernel's grid"
        );
        let function = self.function("elementwise", "task_gram_f64")?;
        let gram = grown(&self.stream, &mut self.scratch.gram, tasks * tasks)?;
        let cfg = LaunchConfig {
            grid_dim: (tasks as u32, tasks as u32, 1),
            block_dim: (layout::GRAM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let len_i = len as i64;
        // SAFETY: dh_tasks holds tasks * len floats (checked), gram at
        // least tasks^2 doubles; argument order matches task_gram_f64.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(dh_tasks)
                .arg(&len_i)
                .arg(&mut *gram)
                .launch(cfg)
        }
        .context("task_gram_f64")?;
        let mut out = vec![0.0f64; tasks * tasks];
        self.stream
            .memcpy_dtoh(&gram.slice(..tasks * tasks), &mut out)?;
        self.stream.synchronize()?;
        Ok(out)
    }

    fn gather_batch(
        &mut self,
        data: &DeviceTexts<Self>,
        order: &CudaSlice<i32>,
        start: usize,
        rows: usize,
        width: usize,
        tokens: &mut CudaSlice<i32>,
        lengths: &mut CudaSlice<i32>,
        labels: &mut CudaSlice<i32>,
    ) -> Result<()> {
        check_len("order", order.len(), start + rows)?;
        check_len("offsets", data.offsets.len(), data.rows + 1)?;
        check_len("data labels", data.labels.len(), data.tasks * data.rows)?;
        check_len("tokens", tokens.len(), rows * width)?;
        check_len("lengths", lengths.len(), rows)?;
        check_len("labels", labels.len(), data.tasks * rows)?;
        self.written(tokens);
        self.written(lengths);
        self.written(labels);
        if rows == 0 {
            return Ok(());
        }
        let function = self.function("elementwise", "gather_batch_i32")?;
        let cfg = LaunchConfig {
            grid_dim: (as_i32("rows", rows)? as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let data_rows = as_i32("data rows", data.rows)?;
        let tasks = as_i32("tasks", data.tasks)?;
        // start + b stays within i32 for every block.
        as_i32("start + rows", start + rows)?;
        let (start, rows_i) = (start as i32, rows as i32);
        let width_i = as_i32("width", width)?;
        // SAFETY: every buffer holds what the launch reads or writes
        // (checked above; order's entries index the data set, which the
        // network checks on the host); argument order matches
        // gather_batch_i32.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(&data.tokens)
                .arg(&data.offsets)
                .arg(&data.labels)
                .arg(&data_rows)
                .arg(&tasks)
                .arg(order)
                .arg(&start)
                .arg(&rows_i)
                .arg(&width_i)
                .arg(tokens)
                .arg(lengths)
                .arg(labels)
                .launch(cfg)
        }
        .context("gather_batch_i32")?;
        Ok(())
    }

    fn dropout_mask(
        &mut self,
        mask: &mut CudaSlice<f32>,
        len: usize,
        draw: &DropoutDraw,
    ) -> Result<()> {
        check_len("mask", mask.len(), len)?;
        self.written(mask);
        if len == 0 {
            return Ok(());
        }
        let function = self.function("elementwise", "dropout_mask_f32")?;
        let blocks = layout::grid_stride_blocks(len, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let len_i = len as i64;
        // SAFETY: mask holds at least len floats (checked); argument order
        // matches dropout_mask_f32.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(mask)
                .arg(&len_i)
                .arg(&draw.key)
                .arg(&draw.threshold)
                .arg(&draw.keep_scale)
                .launch(cfg)
        }
        .context("dropout_mask_f32")?;
        Ok(())
    }

    fn multiply(
        &mut self,
        x: &mut CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        len: usize,
    ) -> Result<()> {
        check_len("x", x.len(), len)?;
        check_len("mask", mask.len(), len)?;
        self.written(x);
        if len == 0 {
            return Ok(());
        }
        let function = self.function("elementwise", "multiply_f32")?;
        let blocks = layout::grid_stride_blocks(len, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let len_i = len as i64;
        // SAFETY: x and mask hold at least len floats (checked); argument
        // order matches multiply_f32.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(x)
                .arg(mask)
                .arg(&len_i)
                .launch(cfg)
        }
        .context("multiply_f32")?;
        Ok(())
    }

    fn adam(
        &mut self,
        params: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        len: usize,
        step: &AdamStep,
        lazy: Option<&LazyRows<'_, Self>>,
    ) -> Result<()> {
        for (what, have) in [
            ("parameters", params.len()),
            ("gradients", grads.len()),
            ("first moments", m.len()),
            ("second moments", v.len()),
        ] {
            check_len(what, have, len)?;
        }
        ensure!(step.step >= 1, "Adam steps count from 1");
        self.written(m);
        self.written(v);
        if len == 0 {
            return Ok(());
        }

        // The bias corrections exactly as the CPU backend computes them.
        let mut scalars = AdamScalars {
            step_size: step.step_size(),
            beta1: step.beta1,
            beta2: step.beta2,
            eps: step.eps,
            correction2_sqrt: step.correction2_sqrt(),
            grad_scale: step.grad_scale,
            lazy_len: 0,
            lazy_width: 1,
            stamp: 0,
        };
        let mut marks: u64 = 0;
        if let Some(lazy) = lazy {
            let block = lazy.rows * lazy.width;
            ensure!(block <= len, "the lazy block is longer than the buffer");
            check_len("marks", lazy.marks.len(), lazy.rows)?;
            scalars.lazy_len = block as i64;
            scalars.lazy_width = as_i32("embedding width", lazy.width.max(1))?;
            scalars.stamp = lazy.stamp;
            marks = self.address(lazy.marks);
        }

        // Write the working copy as we go when its layout is known and this
        // call covers every parameter it mirrors.
        let with_copy = self.precision != Precision::Fp32
            && self
                .working
                .as_ref()
                .is_some_and(|w| len >= w.layout.mirrored());
        let name = if with_copy {
            format!("adam_{}", self.precision.suffix())
        } else {
            "adam_f32".to_string()
        };
        let function = self.function("adam", &name)?;
        let blocks = layout::grid_stride_blocks(len, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let len_i = len as i64;
        let address = self.address(params);

        match self.working.as_mut().filter(|_| with_copy) {
            Some(working) => {
                let layout = working.layout;
                // SAFETY: params, grads, m, v hold at least len floats
                // (checked); len covers the mirrored prefix, and emb/conv
                // were sized from `layout`; argument order matches adam_<p>.
                unsafe {
                    self.stream
                        .launch_builder(&function)
                        .arg(&mut *params)
                        .arg(grads)
                        .arg(&mut *m)
                        .arg(&mut *v)
                        .arg(&len_i)
                        .arg(&scalars)
                        .arg(&marks)
                        .arg(&layout)
                        .arg(&mut working.emb)
                        .arg(&mut working.conv)
                        .launch(cfg)
                }
                .context(name)?;
                self.fresh_for.set(address);
            }
            None => {
                let unused = WorkingLayout {
                    emb_len: 0,
                    conv_len: 0,
                    dim: 1,
                    dim_pad: 16,
                    filters: 1,
                    kernel: 1,
                };
                let null: u64 = 0;
                // SAFETY: params, grads, m, v hold at least len floats
                // (checked); adam_f32 never touches the working-copy
                // pointers, passed as null; argument order matches adam_f32.
                unsafe {
                    self.stream
                        .launch_builder(&function)
                        .arg(&mut *params)
                        .arg(grads)
                        .arg(&mut *m)
                        .arg(&mut *v)
                        .arg(&len_i)
                        .arg(&scalars)
                        .arg(&marks)
                        .arg(&unused)
                        .arg(&null)
                        .arg(&null)
                        .launch(cfg)
                }
                .context(name)?;
                if self.fresh_for.get() == address {
                    self.fresh_for.set(0);
                }
            }
        }
        Ok(())
    }

    fn mark_rows(
        &mut self,
        tokens: &CudaSlice<i32>,
        count: usize,
        marks: &mut CudaSlice<i32>,
        stamp: i32,
    ) -> Result<()> {
        check_len("tokens", tokens.len(), count)?;
        if count == 0 {
            return Ok(());
        }
        let function = self.function("elementwise", "mark_rows_i32")?;
        let blocks = layout::grid_stride_blocks(count, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let count_i = count as i64;
        let rows = as_i32("embedding rows", marks.len())?;
        // SAFETY: tokens holds count ints (checked); the kernel writes only
        // marks[0..rows]; argument order matches mark_rows_i32.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(tokens)
                .arg(&count_i)
                .arg(&mut *marks)
                .arg(&rows)
                .arg(&stamp)
                .launch(cfg)
        }
        .context("mark_rows_i32")?;
        Ok(())
    }

    fn all_finite(&mut self, x: &CudaSlice<f32>, len: usize) -> Result<bool> {
        check_len("x", x.len(), len)?;
        if len == 0 {
            return Ok(true);
        }
        let function = self.function("elementwise", "all_finite_f32")?;
        let blocks = layout::grid_stride_blocks(len, 256, self.info.multiprocessors);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let len_i = len as i64;
        let flag = grown(&self.stream, &mut self.scratch.flag, 1)?;
        self.stream.memset_zeros(flag)?;
        // SAFETY: x holds at least len floats (checked), flag one int;
        // argument order matches all_finite_f32.
        unsafe {
            self.stream
                .launch_builder(&function)
                .arg(x)
                .arg(&len_i)
                .arg(&mut *flag)
                .launch(cfg)
        }
        .context("all_finite_f32")?;
        let mut out = [0i32];
        self.stream.memcpy_dtoh(&flag.slice(..1), &mut out)?;
        self.stream.synchronize()?;
        Ok(out[0] == 0)
    }
}
