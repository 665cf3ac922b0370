// Task heads: every GEMM of the heads' forward and backward, as one grouped
// tiled fp32 kernel driven by descriptors passed by value.
//
// Layouts: h [B, F]; hidden [B, sum H]; logits [B, sum C]; the parameters
// and gradients are the flat buffers of src/model/shape.rs, where all tasks'
// first layers form one [sum H, F] matrix and one [sum H] bias.
//
// Why grouped (DESIGN.md, "Other structure worth using"): every task reads
// the same h, so the first layers of all tasks are ONE GEMM against the
// concatenated [sum H, F] weights; the second layers and the backward
// products differ per task only in offsets, so one launch covers up to
// eight tasks (blockIdx.z picks the descriptor). The matrices are small (at
// the bench shape the largest product is 256 x 256 x 128), so a simple
// shared-memory tiled kernel is enough; fp32 throughout.
//
// grouped_gemm_f32: C[i, j] = epilogue(sum_k A[i, k] * B[k, j]) with
//   arbitrary element strides for A, B and C (so transposed operands need
//   no copies), summed over k in order (deterministic). Epilogue, in order:
//   + bias[bias_off + j] when bias_off >= 0; max(0, .) when relu; zero
//   where gate[same index as C] <= 0 when gate_off >= 0 (the ReLU
//   derivative of the hidden layer in the backward pass).
//   grid (ceil(max N / 32), ceil(max M / 32), groups); block 256 threads as
//   16 x 16, each thread 2 x 2 outputs of the block's 32 x 32 tile, K in
//   slices of 16 staged in shared memory (rows padded by one word).

#include "common.cuh"

struct GemmDesc {
    i64 m, n, k;
    i64 a_off, a_row, a_col;  // A[i, kk] = a[a_off + i * a_row + kk * a_col]
    i64 b_off, b_row, b_col;  // B[kk, j] = b[b_off + kk * b_row + j * b_col]
    i64 c_off, c_row, c_col;  // C[i, j]  = c[c_off + i * c_row + j * c_col]
    i64 bias_off;             // -1: no bias
    i64 gate_off;             // -1: no gate; else gate[gate_off + i * c_row + j * c_col]
    i64 relu;                 // 0 or 1
    i64 reserved;
};

enum : int { kMaxGroups = 8, kTile = 32, kSliceK = 16 };

struct GemmBatch {
    GemmDesc group[kMaxGroups];
    i64 count;
};

extern "C" __global__ void __launch_bounds__(256)
    grouped_gemm_f32(const float* __restrict__ a,
                     const float* __restrict__ b,
                     const float* __restrict__ bias,
                     const float* __restrict__ gate,
                     float* __restrict__ c,
                     const GemmBatch batch) {
    __shared__ float a_sh[kTile][kSliceK + 1];
    __shared__ float b_sh[kSliceK][kTile + 1];

    if (blockDim.x != 256 || blockIdx.z >= batch.count) return;
    const GemmDesc& g = batch.group[blockIdx.z];
    const i64 m0 = (i64)blockIdx.y * kTile, n0 = (i64)blockIdx.x * kTile;
    if (m0 >= g.m || n0 >= g.n) return;  // this group is smaller than the grid

    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};

    for (i64 k0 = 0; k0 < g.k; k0 += kSliceK) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            int idx = tid + 256 * u;
            int r = idx / kSliceK, kk = idx % kSliceK;
            i64 i = m0 + r, k = k0 + kk;
            a_sh[r][kk] = (i < g.m && k < g.k) ? a[g.a_off + i * g.a_row + k * g.a_col] : 0.0f;
            int kb = idx / kTile, col = idx % kTile;
            i64 kb_g = k0 + kb, j = n0 + col;
            b_sh[kb][col] =
                (kb_g < g.k && j < g.n) ? b[g.b_off + kb_g * g.b_row + j * g.b_col] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kSliceK; ++kk) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
#pragma unroll
                for (int s = 0; s < 2; ++s)
                    acc[r][s] = fmaf(a_sh[ty + 16 * r][kk], b_sh[kk][tx + 16 * s], acc[r][s]);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            i64 i = m0 + ty + 16 * r, j = n0 + tx + 16 * s;
            if (i >= g.m || j >= g.n) continue;
            i64 at = i * g.c_row + j * g.c_col;
            float v = acc[r][s];
            if (g.bias_off >= 0) v += bias[g.bias_off + j];
            if (g.relu) v = fmaxf(v, 0.0f);
            if (g.gate_off >= 0 && !(gate[g.gate_off + at] > 0.0f)) v = 0.0f;
            c[g.c_off + at] = v;
        }
    }
}
