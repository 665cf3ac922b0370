//! Host-side index math for the kernels, written once: launch shapes,
//! shared-memory sizes, the structs passed by value, and the GEMM
//! descriptors of the task heads.
//!
//! Every constant here mirrors one in `kernels/*.cu` (named in its doc).
//! The kernels check the shapes they depend on and write nothing when a
//! launch disagrees, so a mismatch shows up as poisoned output in the
//! tests, never as a stray write.

use cudarc::driver::DeviceRepr;

use crate::model::Shape;

/// Threads of the fused forward kernels (`kThreads`).
pub const FORWARD_THREADS: u32 = 256;
/// Filters per block of the tensor-core forward (`kTileFilters`).
pub const MMA_TILE_FILTERS: usize = 128;
const MMA_TILE_WINDOWS: usize = 128;
const MMA_ROW_STRIDE: usize = 72;
/// Filters per block of the fp32 forward (`kTileFilters32`).
pub const FMA_TILE_FILTERS: usize = 64;
const FMA_TILE_WINDOWS: usize = 64;
const FMA_EMB_STRIDE: usize = 33;
const FMA_WEIGHT_STRIDE: usize = 65;
const FMA_SLICE: usize = 32;

/// Threads of `conv_weight_grad_f32` and `embedding_position_grads_f32`.
pub const WEIGHT_THREADS: u32 = 128;
pub const POSITION_THREADS: u32 = 128;
/// Keys per block of `embedding_sort_chunks` (`kSortChunk`) and its threads.
pub const SORT_CHUNK: usize = 2048;
pub const SORT_THREADS: u32 = 1024;
/// Sorted keys per warp in `embedding_grad_pieces` (`kPieceTile`).
pub const PIECE_TILE: usize = 32;
/// Warps per block of `embedding_grad_pieces` and `embedding_grad_runs`.
pub const PIECE_WARPS: usize = 4;
pub const RUN_WARPS: usize = 8;
/// `grouped_gemm_f32`: tile edge, groups per launch, threads.
pub const GEMM_TILE: usize = 32;
pub const GEMM_GROUPS: usize = 8;
pub const GEMM_THREADS: u32 = 256;
/// Tasks per launch of the loss and of `combine_tasks_f32`.
pub const MAX_TASKS_PER_LAUNCH: usize = 32;
pub const LOSS_THREADS: u32 = 256;
pub const GRAM_THREADS: u32 = 256;

/// Embedding width rounded up to whole 16-byte vectors of halves.
pub fn dim_pad(dim: usize) -> usize {
    dim.div_ceil(16) * 16
}

/// Dynamic shared memory of `encoder_forward_{bf16,f16}` (`mma_shared_bytes`).
pub fn mma_shared_bytes(kernel: usize) -> usize {
    ((MMA_TILE_WINDOWS + kernel - 1) * MMA_ROW_STRIDE + 2 * MMA_TILE_FILTERS * MMA_ROW_STRIDE) * 2
        + 4 * MMA_TILE_FILTERS * 8
}

/// Dynamic shared memory of `encoder_forward_f32` (`fma_shared_bytes`).
pub fn fma_shared_bytes(kernel: usize) -> usize {
    ((FMA_TILE_WINDOWS + kernel - 1) * FMA_EMB_STRIDE
        + FMA_SLICE * FMA_WEIGHT_STRIDE
        + 16 * FMA_TILE_FILTERS * 2)
        * 4
}

/// Dynamic shared memory of `embedding_position_grads_f32`.
pub fn position_grads_shared_bytes(filters: usize, width: usize) -> usize {
    (3 * filters + width + 1) * 4
}

/// Blocks for a grid-stride kernel over `len` elements.
pub fn grid_stride_blocks(len: usize, threads: u32, multiprocessors: i32) -> u32 {
    let needed = len.div_ceil(threads as usize).max(1);
    needed.min(multiprocessors.max(1) as usize * 8) as u32
}

/// Merge passes after the chunk sort: runs double from [`SORT_CHUNK`]
/// until one run holds all `total` keys.
pub fn merge_runs(total: usize) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut run = SORT_CHUNK;
    while run < total {
        runs.push(run);
        run *= 2;
    }
    runs
}

/// Where the half-precision working copy puts the embedding and conv
/// weight (`ph::WorkingLayout` in `kernels/common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkingLayout {
    pub emb_len: i64,
    pub conv_len: i64,
    pub dim: i32,
    pub dim_pad: i32,
    pub filters: i32,
    pub kernel: i32,
}

// SAFETY: plain-old-data, laid out as the C struct of the same name.
unsafe impl DeviceRepr for WorkingLayout {}

impl WorkingLayout {
    /// The layout for `shape`, which must put the embedding first and the
    /// conv weight right after it (as `Shape::new` does).
    pub fn new(shape: &Shape) -> WorkingLayout {
        let d = &shape.dims;
        assert_eq!(
            shape.embedding.offset, 0,
            "the embedding must open the parameters"
        );
        assert_eq!(
            shape.conv_weight.offset, shape.embedding.len,
            "conv weight must follow"
        );
        WorkingLayout {
            emb_len: shape.embedding.len as i64,
            conv_len: shape.conv_weight.len as i64,
            dim: d.embed as i32,
            dim_pad: dim_pad(d.embed) as i32,
            filters: d.filters as i32,
            kernel: d.kernel as i32,
        }
    }

    /// Halves in the embedding's working copy: `[V, Dp]`.
    pub fn emb_halves(&self) -> usize {
        (self.emb_len / self.dim as i64) as usize * self.dim_pad as usize
    }

    /// Halves in the conv weight's working copy: `[k, F, Dp]`.
    pub fn conv_halves(&self) -> usize {
        (self.kernel * self.filters * self.dim_pad) as usize
    }

    /// Parameters mirrored in the working copy (a prefix of the buffer).
    pub fn mirrored(&self) -> usize {
        (self.emb_len + self.conv_len) as usize
    }
}

/// Adam's per-step scalars (`AdamScalars` in `kernels/adam.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    pub step_size: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub correction2_sqrt: f32,
    pub grad_scale: f32,
    /// LazyAdam's block (elements, and elements per row), and the mark of
    /// the rows a batch used; ignored unless the launch passes marks.
    pub lazy_len: i64,
    pub lazy_width: i32,
    pub stamp: i32,
}

// SAFETY: plain-old-data, laid out as the C struct of the same name.
unsafe impl DeviceRepr for AdamScalars {}

/// Per-task columns and scales for the loss (`TaskTable`, `kernels/loss.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskTable {
    pub class_offset: [i32; MAX_TASKS_PER_LAUNCH],
    pub classes: [i32; MAX_TASKS_PER_LAUNCH],
    pub grad_scale: [f32; MAX_TASKS_PER_LAUNCH],
    pub count: i32,
}

// SAFETY: plain-old-data, laid out as the C struct of the same name.
unsafe impl DeviceRepr for TaskTable {}

/// Coefficients of one `combine_tasks_f32` launch (`TaskCoeffs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskCoeffs {
    pub coeff: [f32; MAX_TASKS_PER_LAUNCH],
    pub count: i32,
}

// SAFETY: plain-old-data, laid out as the C struct of the same name.
unsafe impl DeviceRepr for TaskCoeffs {}

/// One product of `grouped_gemm_f32`: `C = epilogue(A B)` with element
/// strides for every operand (`GemmDesc` in `kernels/heads.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmDesc {
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub a: [i64; 3],
    pub b: [i64; 3],
    pub c: [i64; 3],
    /// Offset of the bias vector, or -1.
    pub bias: i64,
    /// Offset of the gate (same strides as C), or -1.
    pub gate: i64,
    pub relu: i64,
    pub reserved: i64,
}

/// Up to [`GEMM_GROUPS`] products for one launch (`GemmBatch`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmBatch {
    pub group: [GemmDesc; GEMM_GROUPS],
    pub count: i64,
}

// SAFETY: plain-old-data, laid out as the C structs of the same names.
unsafe impl DeviceRepr for GemmBatch {}

impl GemmBatch {
    /// Splits `descs` into launches of at most [`GEMM_GROUPS`], each with
    /// its grid `(ceil(max n / 32), ceil(max m / 32), groups)`.
    pub fn launches(descs: &[GemmDesc]) -> Vec<(GemmBatch, (u32, u32, u32))> {
        descs
            .chunks(GEMM_GROUPS)
            .map(|chunk| {
                let mut group = [GemmDesc::default(); GEMM_GROUPS];
                group[..chunk.len()].copy_from_slice(chunk);
                let max_m = chunk.iter().map(|d| d.m).max().unwrap_or(0) as usize;
                let max_n = chunk.iter().map(|d| d.n).max().unwrap_or(0) as usize;
                let grid = (
                    max_n.div_ceil(GEMM_TILE).max(1) as u32,
                    max_m.div_ceil(GEMM_TILE).max(1) as u32,
                    chunk.len() as u32,
                );
                (
                    GemmBatch {
                        group,
                        count: chunk.len() as i64,
                    },
                    grid,
                )
            })
            .collect()
    }
}

/// `(offset, row stride, column stride)` of one operand.
type Strided = [i64; 3];

fn gemm(m: usize, n: usize, k: usize, a: Strided, b: Strided, c: Strided) -> GemmDesc {
    GemmDesc {
        m: m as i64,
        n: n as i64,
        k: k as i64,
        a,
        b,
        c,
        bias: -1,
        gate: -1,
        ..Default::default()
    }
}

fn at(offset: usize, row: usize, col: usize) -> Strided {
    [offset as i64, row as i64, col as i64]
}

/// The task heads' products, as descriptors over the backend's buffers.
/// Buffers: `h [rows, F]`, `hidden [rows, sum H]`, `logits` and `dlogits
/// [rows, sum C]`, `hidden_grad [rows, sum H]`, `dh_tasks [tasks, rows, F]`,
/// `params` and `grads` (flat), `ones` (one 1.0).
pub struct HeadGemms<'a> {
    pub shape: &'a Shape,
    pub rows: usize,
}

impl HeadGemms<'_> {
    fn sizes(&self) -> (usize, usize, usize) {
        (
            self.shape.dims.filters,
            self.shape.sum_hidden(),
            self.shape.sum_classes(),
        )
    }

    /// `hidden = relu(h W1^T + c1)`: A = h, B = params, C = hidden, bias = params.
    pub fn hidden(&self) -> GemmDesc {
        let (f, sum_h, _) = self.sizes();
        let s = self.shape;
        let mut d = gemm(
            self.rows,
            sum_h,
            f,
            at(0, f, 1),
            at(s.hidden_weights.offset, 1, f),
            at(0, sum_h, 1),
        );
        d.bias = s.hidden_biases.offset as i64;
        d.relu = 1;
        d
    }

    /// Per task `logits_i = hidden_i W2_i^T + c2_i`: A = hidden, B = params,
    /// C = logits, bias = params.
    pub fn logits(&self) -> Vec<GemmDesc> {
        let (_, sum_h, sum_c) = self.sizes();
        let s = self.shape;
        (0..s.tasks())
            .map(|i| {
                let head = s.dims.heads[i];
                let spans = s.heads[i];
                let mut d = gemm(
                    self.rows,
                    head.classes,
                    head.hidden,
                    at(s.hidden_offset(i), sum_h, 1),
                    at(spans.out_weight.offset, 1, head.hidden),
                    at(s.class_offset(i), sum_c, 1),
                );
                d.bias = spans.out_bias.offset as i64;
                d
            })
            .collect()
    }

    /// Per task `dW2_i = dlogits_i^T hidden_i`: A = dlogits, B = hidden,
    /// C = grads.
    pub fn out_weight_grads(&self) -> Vec<GemmDesc> {
        let (_, sum_h, sum_c) = self.sizes();
        let s = self.shape;
        (0..s.tasks())
            .map(|i| {
                let head = s.dims.heads[i];
                gemm(
                    head.classes,
                    head.hidden,
                    self.rows,
                    at(s.class_offset(i), 1, sum_c),
                    at(s.hidden_offset(i), sum_h, 1),
                    at(s.heads[i].out_weight.offset, head.hidden, 1),
                )
            })
            .collect()
    }

    /// Per task `dc2_i = 1^T dlogits_i`: A = ones, B = dlogits, C = grads.
    pub fn out_bias_grads(&self) -> Vec<GemmDesc> {
        let (_, _, sum_c) = self.sizes();
        let s = self.shape;
        (0..s.tasks())
            .map(|i| {
                gemm(
                    1,
                    s.dims.heads[i].classes,
                    self.rows,
                    at(0, 0, 0),
                    at(s.class_offset(i), sum_c, 1),
                    at(s.heads[i].out_bias.offset, 0, 1),
                )
            })
            .collect()
    }

    /// Per task `hidden_grad_i = (dlogits_i W2_i) * (hidden_i > 0)`:
    /// A = dlogits, B = params, C = hidden_grad, gate = hidden.
    pub fn hidden_grads(&self) -> Vec<GemmDesc> {
        let (_, sum_h, sum_c) = self.sizes();
        let s = self.shape;
        (0..s.tasks())
            .map(|i| {
                let head = s.dims.heads[i];
                let mut d = gemm(
                    self.rows,
                    head.hidden,
                    head.classes,
                    at(s.class_offset(i), sum_c, 1),
                    at(s.heads[i].out_weight.offset, head.hidden, 1),
                    at(s.hidden_offset(i), sum_h, 1),
                );
                d.gate = s.hidden_offset(i) as i64;
                d
            })
            .collect()
    }

    /// `dW1 = hidden_grad^T h` for all tasks at once: A = hidden_grad,
    /// B = h, C = grads.
    pub fn hidden_weight_grads(&self) -> GemmDesc {
        let (f, sum_h, _) = self.sizes();
        gemm(
            sum_h,
            f,
            self.rows,
            at(0, 1, sum_h),
            at(0, f, 1),
            at(self.shape.hidden_weights.offset, f, 1),
        )
    }

    /// `dc1 = 1^T hidden_grad`: A = ones, B = hidden_grad, C = grads.
    pub fn hidden_bias_grads(&self) -> GemmDesc {
        let (_, sum_h, _) = self.sizes();
        gemm(
            1,
            sum_h,
            self.rows,
            at(0, 0, 0),
            at(0, sum_h, 1),
            at(self.shape.hidden_biases.offset, 0, 1),
        )
    }

    /// Per task `dh_i = hidden_grad_i W1_i`: A = hidden_grad, B = params,
    /// C = dh_tasks.
    pub fn task_feature_grads(&self) -> Vec<GemmDesc> {
        let (f, sum_h, _) = self.sizes();
        let s = self.shape;
        (0..s.tasks())
            .map(|i| {
                let hoff = s.hidden_offset(i);
                gemm(
                    self.rows,
                    f,
                    s.dims.heads[i].hidden,
                    at(hoff, sum_h, 1),
                    at(s.hidden_weights.offset + hoff * f, f, 1),
                    at(i * self.rows * f, f, 1),
                )
            })
            .collect()
    }
}

/// Highest element index + 1 a descriptor reads or writes in each operand,
/// to check buffer sizes before a launch: (A, B, C and gate).
pub fn gemm_extent(d: &GemmDesc) -> (usize, usize, usize) {
    let last = |s: &Strided, rows: i64, cols: i64| -> usize {
        if rows == 0 || cols == 0 {
            return 0;
        }
        (s[0] + (rows - 1) * s[1] + (cols - 1) * s[2] + 1) as usize
    };
    (
        last(&d.a, d.m, d.k),
        last(&d.b, d.k, d.n),
        last(&d.c, d.m, d.n),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::model::{Dims, HeadDims};

    /// What `grouped_gemm_f32` computes for one descriptor, in plain loops.
    fn emulate(d: &GemmDesc, a: &[f32], b: &[f32], bias: &[f32], gate: &[f32], c: &mut [f32]) {
        for i in 0..d.m {
            for j in 0..d.n {
                let mut acc = 0.0f32;
                for k in 0..d.k {
                    let x = a[(d.a[0] + i * d.a[1] + k * d.a[2]) as usize];
                    let y = b[(d.b[0] + k * d.b[1] + j * d.b[2]) as usize];
                    acc += x * y;
                }
                let at = i * d.c[1] + j * d.c[2];
                if d.bias >= 0 {
                    acc += bias[(d.bias + j) as usize];
                }
                if d.relu != 0 {
                    acc = acc.max(0.0);
                }
                if d.gate >= 0 && gate[(d.gate + at) as usize] <= 0.0 {
                    acc = 0.0;
                }
                c[(d.c[0] + at) as usize] = acc;
            }
        }
    }

    fn random(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn head_descriptors_compute_what_the_cpu_backend_computes() {
        let shape = Shape::new(Dims {
            vocab: 11,
            embed: 5,
            filters: 37,
            kernel: 3,
            heads: vec![
                HeadDims {
                    hidden: 33,
                    classes: 7,
                },
                HeadDims {
                    hidden: 9,
                    classes: 2,
                },
                HeadDims {
                    hidden: 40,
                    classes: 35,
                },
            ],
        });
        let rows = 45;
        let (f, sum_h, sum_c, tasks) = (
            shape.dims.filters,
            shape.sum_hidden(),
            shape.sum_classes(),
            shape.tasks(),
        );
        let mut seed = 7;
        let params = random(shape.len, &mut seed);
        let h: Vec<f32> = random(rows * f, &mut seed)
            .iter()
            .map(|x| x.max(0.0))
            .collect();
        let gemms = HeadGemms {
            shape: &shape,
            rows,
        };

        // Forward.
        let mut cpu = CpuBackend::new();
        let (mut hidden, mut logits) = (vec![0.0; rows * sum_h], vec![0.0; rows * sum_c]);
        cpu.heads_forward(&shape, &params, &h, rows, &mut hidden, &mut logits)
            .unwrap();
        let mut hidden_e = vec![f32::NAN; rows * sum_h];
        emulate(&gemms.hidden(), &h, &params, &params, &[], &mut hidden_e);
        close(&hidden_e, &hidden, "hidden");
        let mut logits_e = vec![f32::NAN; rows * sum_c];
        for d in gemms.logits() {
            emulate(&d, &hidden, &params, &params, &[], &mut logits_e);
        }
        close(&logits_e, &logits, "logits");

        // Backward.
        let dlogits = random(rows * sum_c, &mut seed);
        let mut grads = vec![0.0; shape.len];
        let mut dh_tasks = vec![0.0; tasks * rows * f];
        cpu.heads_backward(
            &shape,
            &params,
            &h,
            &hidden,
            &dlogits,
            rows,
            &mut grads,
            &mut dh_tasks,
        )
        .unwrap();
        let ones = [1.0f32];
        let mut grads_e = vec![f32::NAN; shape.len];
        let mut hidden_grad = vec![f32::NAN; rows * sum_h];
        let mut dh_e = vec![f32::NAN; tasks * rows * f];
        for d in gemms.out_weight_grads() {
            emulate(&d, &dlogits, &hidden, &[], &[], &mut grads_e);
        }
        for d in gemms.out_bias_grads() {
            emulate(&d, &ones, &dlogits, &[], &[], &mut grads_e);
        }
        for d in gemms.hidden_grads() {
            emulate(&d, &dlogits, &params, &[], &hidden, &mut hidden_grad);
        }
        emulate(
            &gemms.hidden_weight_grads(),
            &hidden_grad,
            &h,
            &[],
            &[],
            &mut grads_e,
        );
        emulate(
            &gemms.hidden_bias_grads(),
            &ones,
            &hidden_grad,
            &[],
            &[],
            &mut grads_e,
        );
        for d in gemms.task_feature_grads() {
            emulate(&d, &hidden_grad, &params, &[], &[], &mut dh_e);
        }
        let heads = shape.hidden_weights.offset..shape.len;
        close(&grads_e[heads.clone()], &grads[heads], "head grads");
        close(&dh_e, &dh_tasks, "dh_tasks");

        // Extents stay inside the buffers the backend passes.
        for d in gemms.logits() {
            let (a, b, c) = gemm_extent(&d);
            assert!(a <= rows * sum_h && b <= shape.len && c <= rows * sum_c);
        }
        for d in gemms.task_feature_grads() {
            let (a, b, c) = gemm_extent(&d);
            assert!(a <= rows * sum_h && b <= shape.len && c <= tasks * rows * f);
        }
    }

    #[test]
    fn launches_group_at_most_eight_products_with_a_grid_covering_the_largest() {
        let descs: Vec<GemmDesc> = (0..11)
            .map(|i| GemmDesc {
                m: 10 + i,
                n: 70 - i,
                k: 3,
                ..Default::default()
            })
            .collect();
        let launches = GemmBatch::launches(&descs);
        assert_eq!(launches.len(), 2);
        assert_eq!(launches[0].0.count, 8);
        assert_eq!(launches[0].1, (3, 1, 8));
        assert_eq!(launches[1].0.count, 3);
        assert_eq!(launches[1].1, (2, 1, 3));
        assert_eq!(std::mem::size_of::<GemmDesc>(), 128);
        assert_eq!(std::mem::size_of::<GemmBatch>(), 8 * 128 + 8);
        assert_eq!(std::mem::size_of::<WorkingLayout>(), 32);
        assert_eq!(std::mem::size_of::<AdamScalars>(), 40);
        assert_eq!(std::mem::size_of::<TaskTable>(), 3 * 32 * 4 + 4);
        assert_eq!(std::mem::size_of::<TaskCoeffs>(), 32 * 4 + 4);
    }

    #[test]
    fn shared_memory_and_merge_passes_match_the_kernels() {
        // Bench shape: k = 5. The tensor-core kernel needs an opt-in above 48 KB.
        assert_eq!(mma_shared_bytes(5), (132 * 72 + 2 * 128 * 72) * 2 + 4096);
        assert!(mma_shared_bytes(5) > 48 * 1024 && mma_shared_bytes(5) < 100 * 1024);
        assert!(fma_shared_bytes(5) < 48 * 1024);
        assert_eq!(dim_pad(128), 128);
        assert_eq!(dim_pad(100), 112);
        assert_eq!(merge_runs(2048), Vec::<usize>::new());
        assert_eq!(merge_runs(32768), vec![2048, 4096, 8192, 16384]);
        assert_eq!(merge_runs(5000), vec![2048, 4096]);
    }
}
