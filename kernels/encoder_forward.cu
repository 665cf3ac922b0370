// Fused encoder forward: embedding gather + Conv1D + bias + ReLU + masked
// max over time, writing only the pooled features and the winning windows.
//
// Layouts (row-major):
//   tokens  [B, L] int32, lengths [B] int32
//   bf16/fp16 path: emb_h [V, Dp] and w_h [k, F, Dp], the half-precision
//     working copy (Dp = D rounded up to 16, pads zero; see common.cuh)
//   fp32 path: emb [V, D] straight from the parameters, and w_r [k, F, D],
//     the conv weight repacked by conv_repack_f32 below
//   bias [F] fp32
//   out: h [B, F] fp32 = relu(max_t z[b, t, f]), win [B, F] int32 = argmax
//   (earliest window on ties), over the valid windows t < max(len, k) - k + 1.
//
// Why fused (DESIGN.md, "Why custom kernels pay here"): at the bench shape
// (B 256, L 128, D 128, F 128, k 5) the convolution is ~20 MFLOP per text
// and its [B, L, F] output is 16 MB of fp32 that nothing else needs. Here
// it lives only in registers: per (text, filter) just the running max and
// its window leave the block. Tiles wholly past a text's end are skipped,
// so short texts cost less, which a dense framework convolution cannot do.
//
// Tensor-core path (encoder_forward_bf16 / _f16):
//   grid (B, ceil(F / 128)); block 256 threads = 8 warps, 4 along windows x
//   2 along filters. The block owns one text and 128 filters and walks the
//   text in tiles of 128 windows. The convolution is an implicit GEMM:
//   Z[t, f] = bias[f] + sum_j sum_d E[t + j, d] * W_j[d, f], i.e. k shifted
//   GEMMs over one gathered copy of the text. Per tile:
//     - the text's embedding rows [m0, m0 + 128 + k - 1) are gathered into
//       shared memory once per 64-wide slice of D (cp.async, zero-filled
//       past the text), then each shift j reuses them with a row offset;
//     - W_j's 128 x 64 slice is double-buffered through shared memory with
//       cp.async, loaded one stage ahead of the MMAs;
//     - a warp computes 32 windows x 64 filters with mma.sync m16n8k16
//       (bf16 or fp16 in, fp32 accumulate): 2 x 8 fragments, 64 fp32
//       accumulators per thread, initialised with the bias;
//     - warps whose 32 windows lie wholly past the text's end skip the MMAs.
//   Epilogue: each thread takes the max over its 4 windows per column, a
//   butterfly over the 8 lanes sharing a column, then the 4 warps along the
//   windows combine through shared memory into a running max held by thread
//   f (< 128) across tiles. The order "larger value, then earlier window" is
//   total, so the winner does not depend on the reduction tree.
//   Shared memory rows are padded by 16 bytes (72 halves): the 8 rows one
//   fragment load touches then fall in 8 distinct 4-bank groups.
//
// fp32 path (encoder_forward_f32, for --precision fp32 parity):
//   grid (B, ceil(F / 64)); block 256 threads as 16 x 16; tile 64 windows x
//   64 filters, each thread 4 windows x 4 filters with plain FMAs over
//   32-wide slices of D staged in shared memory. Same masking and epilogue.

#include "common.cuh"

namespace {

// ---------------------------------------------------------------------------
// Tensor-core path. Host code mirrors these constants (src/backend/cuda).

enum : int {
    kThreads = 256,
    kTileWindows = 128,           // MT
    kTileFilters = 128,           // NT
    kSlice = 64,                  // D columns per stage
    kRowStride = kSlice + 8,      // halves per shared row (16-byte pad)
};

__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned address;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }"
        : "=r"(address)
        : "l"(p));
    return address;
}

// 16-byte asynchronous copy global -> shared; zero-fills when !valid.
__device__ __forceinline__ void copy16_async(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void commit_async() {
    asm volatile("cp.async.commit_group;\n" ::);
}

// Waits until at most one committed group is still in flight.
__device__ __forceinline__ void wait_async_but_one() {
    asm volatile("cp.async.wait_group 1;\n" ::);
}

__device__ __forceinline__ unsigned dynamic_shared_bytes() {
    unsigned bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
    return bytes;
}

__device__ __forceinline__ unsigned load32(const half_bits* p) {
    return *reinterpret_cast<const unsigned*>(p);
}

template <int P>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                          unsigned b1);

template <>
__device__ __forceinline__ void mma_16816<ph::kBf16>(float (&d)[4], const unsigned (&a)[4],
                                                     unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<ph::kFp16>(float (&d)[4], const unsigned (&a)[4],
                                                     unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared bytes the tensor-core kernel needs for conv width `kernel`
// (host: encoder::mma_shared_bytes).
__device__ __forceinline__ unsigned mma_shared_bytes(int kernel) {
    return (unsigned)(((kTileWindows + kernel - 1) * kRowStride +
                       2 * kTileFilters * kRowStride) * 2 +
                      4 * kTileFilters * 8);
}

template <int P>
__device__ __forceinline__ void encoder_forward_mma(const half_bits* __restrict__ emb_h,
                                    const half_bits* __restrict__ w_h,
                                    const float* __restrict__ bias,
                                    const int* __restrict__ tokens,
                                    const int* __restrict__ lengths,
                                    int width,
                                    int vocab,
                                    int dim_pad,
                                    int filters,
                                    int kernel,
                                    float* __restrict__ h,
                                    int* __restrict__ win) {
    extern __shared__ __align__(16) unsigned char shared[];
    const int tile_rows = kTileWindows + kernel - 1;
    half_bits* e_sh = reinterpret_cast<half_bits*>(shared);
    half_bits* w_sh = e_sh + tile_rows * kRowStride;
    float* red_val = reinterpret_cast<float*>(w_sh + 2 * kTileFilters * kRowStride);
    int* red_win = reinterpret_cast<int*>(red_val + 4 * kTileFilters);

    // A launch that disagrees with this kernel's layout writes nothing
    // rather than touch memory it does not own (the host checks the same
    // conditions before launching; a trap here costs registers).
    if (blockDim.x != kThreads || dynamic_shared_bytes() < mma_shared_bytes(kernel) ||
        (dim_pad & 15) != 0) {
        return;
    }

    const int b = blockIdx.x;
    const int f0 = blockIdx.y * kTileFilters;
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int wm = warp & 3, wn = warp >> 2;  // warp's 32-window row, 64-filter column
    const int g = lane >> 2, t4 = lane & 3;   // fragment row group, thread in group

    const int len = ph::text_length(lengths, width, b);
    const int span = len > kernel ? len : kernel;
    const int nwin = span - kernel + 1;
    const int slices = (dim_pad + kSlice - 1) / kSlice;
    const int stages = slices * kernel;  // stage s: slice s / k, shift s % k

    float run_v = PH_NEG_INF;
    int run_t = PH_INT_MAX;

    for (int m0 = 0; m0 < nwin; m0 += kTileWindows) {
        const bool warp_active = m0 + wm * 32 < nwin;
        const bool upper_active = m0 + wm * 32 + 16 < nwin;

        float acc[2][8][4];
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                int f = f0 + wn * 64 + ni * 8 + 2 * t4 + c;
                float init = f < filters ? bias[f] : 0.0f;
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    acc[mi][ni][c] = init;
                    acc[mi][ni][2 + c] = init;
                }
            }
        }

        auto load_embedding = [&](int slice) {
            const int d0 = slice * kSlice;
            const int vecs = min(kSlice, dim_pad - d0) / 8;
            for (int idx = tid; idx < tile_rows * vecs; idx += kThreads) {
                int r = idx / vecs, v = idx - r * vecs;
                int p = m0 + r;
                bool inside = p < span;
                int token = inside ? ph::token_at(tokens, width, len, vocab, b, p) : 0;
                copy16_async(e_sh + r * kRowStride + v * 8,
                             emb_h + (i64)token * dim_pad + d0 + v * 8, inside);
            }
        };
        auto load_weights = [&](int stage, int buf) {
            const int slice = stage / kernel, j = stage - slice * kernel;
            const int d0 = slice * kSlice;
            const int vecs = min(kSlice, dim_pad - d0) / 8;
            half_bits* dst = w_sh + buf * kTileFilters * kRowStride;
            for (int idx = tid; idx < kTileFilters * vecs; idx += kThreads) {
                int n = idx / vecs, v = idx - n * vecs;
                int f = f0 + n;
                bool inside = f < filters;
                copy16_async(dst + n * kRowStride + v * 8,
                             w_h + ((i64)j * filters + (inside ? f : 0)) * dim_pad + d0 + v * 8,
                             inside);
            }
        };

        __syncthreads();  // the previous tile is done with e_sh, w_sh and red_*
        load_embedding(0);
        load_weights(0, 0);
        commit_async();

        for (int s = 0; s < stages; ++s) {
            const int next = s + 1;
            const bool prefetch = next < stages && next % kernel != 0;
            if (prefetch) load_weights(next, next & 1);
            commit_async();  // possibly empty; keeps the group count regular
            wait_async_but_one();
            __syncthreads();

            const int slice = s / kernel, j = s - slice * kernel;
            const int depth = min(kSlice, dim_pad - slice * kSlice);
            const half_bits* w_buf = w_sh + (s & 1) * kTileFilters * kRowStride;
            if (warp_active) {
#pragma unroll
                for (int kk = 0; kk < kSlice; kk += 16) {
                    if (kk < depth) {
                        // One 16-window A fragment at a time (the B fragments are
                        // re-read from shared memory for the second): holding both
                        // made ptxas spill on sm_80 at the 128-register cap.
#pragma unroll
                        for (int mi = 0; mi < 2; ++mi) {
                            if (mi == 1 && !upper_active) break;
                            // Window row (wm*32 + mi*16 + g) reads embedding row +j.
                            const half_bits* e0 =
                                e_sh + (wm * 32 + mi * 16 + g + j) * kRowStride + kk + 2 * t4;
                            const half_bits* e1 = e0 + 8 * kRowStride;
                            const unsigned a[4] = {load32(e0), load32(e1), load32(e0 + 8),
                                                   load32(e1 + 8)};
#pragma unroll
                            for (int ni = 0; ni < 8; ++ni) {
                                const half_bits* w =
                                    w_buf + (wn * 64 + ni * 8 + g) * kRowStride + kk + 2 * t4;
                                mma_16816<P>(acc[mi][ni], a, load32(w), load32(w + 8));
                            }
                        }
                    }
                }
            }
            __syncthreads();  // everyone is done reading this stage's buffers

            if (next < stages && !prefetch) {
                // A new slice of D starts: regather the text, then its weights.
                load_embedding(next / kernel);
                load_weights(next, next & 1);
                commit_async();
            }
        }

        // Epilogue: masked max per column within the thread, then across the
        // 8 lanes that share a column, then across the 4 warps along windows.
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                float best_v = PH_NEG_INF;
                int best_t = PH_INT_MAX;
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        int t = m0 + wm * 32 + mi * 16 + g + 8 * half;
                        float v = acc[mi][ni][2 * half + c];
                        if (t < nwin && ph::beats(v, t, best_v, best_t)) {
                            best_v = v;
                            best_t = t;
                        }
                    }
                }
#pragma unroll
                for (int offset = 4; offset < 32; offset <<= 1) {
                    float other_v = __shfl_xor_sync(0xffffffffu, best_v, offset);
                    int other_t = __shfl_xor_sync(0xffffffffu, best_t, offset);
                    if (ph::beats(other_v, other_t, best_v, best_t)) {
                        best_v = other_v;
                        best_t = other_t;
                    }
                }
                if (g == 0) {
                    int col = wn * 64 + ni * 8 + 2 * t4 + c;
                    red_val[wm * kTileFilters + col] = best_v;
                    red_win[wm * kTileFilters + col] = best_t;
                }
            }
        }
        __syncthreads();
        if (tid < kTileFilters) {
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                float v = red_val[w * kTileFilters + tid];
                int t = red_win[w * kTileFilters + tid];
                if (ph::beats(v, t, run_v, run_t)) {
                    run_v = v;
                    run_t = t;
                }
            }
        }
    }

    const int f = f0 + tid;
    if (tid < kTileFilters && f < filters) {
        h[(i64)b * filters + f] = fmaxf(run_v, 0.0f);
        win[(i64)b * filters + f] = run_t == PH_INT_MAX ? 0 : run_t;
    }
}

// ---------------------------------------------------------------------------
// fp32 path. Host code mirrors these constants.

enum : int {
    kTileWindows32 = 64,
    kTileFilters32 = 64,
    kSlice32 = 32,
    kEmbStride32 = kSlice32 + 1,  // odd strides: rows and columns hit distinct banks
    kWeightStride32 = kTileFilters32 + 1,
};

__device__ __forceinline__ unsigned fma_shared_bytes(int kernel) {
    return (unsigned)(((kTileWindows32 + kernel - 1) * kEmbStride32 +
                       kSlice32 * kWeightStride32 + 16 * kTileFilters32 * 2) *
                      4);
}

__device__ __forceinline__ void encoder_forward_fma(const float* __restrict__ emb,
                                    const float* __restrict__ w_r,
                                    const float* __restrict__ bias,
                                    const int* __restrict__ tokens,
                                    const int* __restrict__ lengths,
                                    int width,
                                    int vocab,
                                    int dim,
                                    int filters,
                                    int kernel,
                                    float* __restrict__ h,
                                    int* __restrict__ win) {
    extern __shared__ __align__(16) unsigned char shared[];
    const int tile_rows = kTileWindows32 + kernel - 1;
    float* e_sh = reinterpret_cast<float*>(shared);
    float* w_sh = e_sh + tile_rows * kEmbStride32;
    float* red_val = w_sh + kSlice32 * kWeightStride32;
    int* red_win = reinterpret_cast<int*>(red_val + 16 * kTileFilters32);

    if (blockDim.x != kThreads || dynamic_shared_bytes() < fma_shared_bytes(kernel)) {
        return;  // see encoder_forward_mma
    }

    const int b = blockIdx.x;
    const int f0 = blockIdx.y * kTileFilters32;
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;  // filters tx + 16q, windows ty + 16i

    const int len = ph::text_length(lengths, width, b);
    const int span = len > kernel ? len : kernel;
    const int nwin = span - kernel + 1;

    float run_v = PH_NEG_INF;
    int run_t = PH_INT_MAX;

    for (int m0 = 0; m0 < nwin; m0 += kTileWindows32) {
        float acc[4][4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            int f = f0 + tx + 16 * q;
            float init = f < filters ? bias[f] : 0.0f;
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[i][q] = init;
        }
        const bool active = m0 + ty < nwin;

        for (int d0 = 0; d0 < dim; d0 += kSlice32) {
            __syncthreads();  // e_sh free
            for (int idx = tid; idx < tile_rows * kSlice32; idx += kThreads) {
                int r = idx / kSlice32, dd = idx - r * kSlice32;
                int p = m0 + r, d = d0 + dd;
                float value = 0.0f;
                if (p < span && d < dim) {
                    int token = ph::token_at(tokens, width, len, vocab, b, p);
                    value = emb[(i64)token * dim + d];
                }
                e_sh[r * kEmbStride32 + dd] = value;
            }
            for (int j = 0; j < kernel; ++j) {
                __syncthreads();  // w_sh free (and e_sh written)
                for (int idx = tid; idx < kTileFilters32 * kSlice32; idx += kThreads) {
                    int n = idx / kSlice32, dd = idx - n * kSlice32;
                    int f = f0 + n, d = d0 + dd;
                    float value = 0.0f;
                    if (f < filters && d < dim) value = w_r[((i64)j * filters + f) * dim + d];
                    w_sh[dd * kWeightStride32 + n] = value;
                }
                __syncthreads();
                if (active) {
#pragma unroll 8
                    for (int dd = 0; dd < kSlice32; ++dd) {
                        float a[4], w[4];
#pragma unroll
                        for (int i = 0; i < 4; ++i)
                            a[i] = e_sh[(ty + 16 * i + j) * kEmbStride32 + dd];
#pragma unroll
                        for (int q = 0; q < 4; ++q) w[q] = w_sh[dd * kWeightStride32 + tx + 16 * q];
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
#pragma unroll
                            for (int q = 0; q < 4; ++q) acc[i][q] = fmaf(a[i], w[q], acc[i][q]);
                        }
                    }
                }
            }
        }

#pragma unroll
        for (int q = 0; q < 4; ++q) {
            float best_v = PH_NEG_INF;
            int best_t = PH_INT_MAX;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int t = m0 + ty + 16 * i;
                if (t < nwin && ph::beats(acc[i][q], t, best_v, best_t)) {
                    best_v = acc[i][q];
                    best_t = t;
                }
            }
            red_val[ty * kTileFilters32 + tx + 16 * q] = best_v;
            red_win[ty * kTileFilters32 + tx + 16 * q] = best_t;
        }
        __syncthreads();
        if (tid < kTileFilters32) {
            for (int y = 0; y < 16; ++y) {
                float v = red_val[y * kTileFilters32 + tid];
                int t = red_win[y * kTileFilters32 + tid];
                if (ph::beats(v, t, run_v, run_t)) {
                    run_v = v;
                    run_t = t;
                }
            }
        }
    }

    const int f = f0 + tid;
    if (tid < kTileFilters32 && f < filters) {
        h[(i64)b * filters + f] = fmaxf(run_v, 0.0f);
        win[(i64)b * filters + f] = run_t == PH_INT_MAX ? 0 : run_t;
    }
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points.

#define ENCODER_FORWARD_MMA(NAME, P)                                                       \
    extern "C" __global__ void __launch_bounds__(kThreads, 2)                              \
        NAME(const half_bits* __restrict__ emb_h, const half_bits* __restrict__ w_h,       \
             const float* __restrict__ bias, const int* __restrict__ tokens,               \
             const int* __restrict__ lengths, int width, int vocab, int dim_pad,           \
             int filters, int kernel, float* __restrict__ h, int* __restrict__ win) {      \
        encoder_forward_mma<P>(emb_h, w_h, bias, tokens, lengths, width, vocab, dim_pad,   \
                               filters, kernel, h, win);                                   \
    }

ENCODER_FORWARD_MMA(encoder_forward_bf16, ph::kBf16)
ENCODER_FORWARD_MMA(encoder_forward_f16, ph::kFp16)

// No __launch_bounds__ here: with it, ptxas 12.9 spills 12 bytes at 48
// registers; without, it uses 48 registers and spills nothing.
extern "C" __global__ void encoder_forward_f32(const float* __restrict__ emb,
                        const float* __restrict__ w_r,
                        const float* __restrict__ bias,
                        const int* __restrict__ tokens,
                        const int* __restrict__ lengths,
                        int width,
                        int vocab,
                        int dim,
                        int filters,
                        int kernel,
                        float* __restrict__ h,
                        int* __restrict__ win) {
    encoder_forward_fma(emb, w_r, bias, tokens, lengths, width, vocab, dim, filters, kernel, h,
                        win);
}

// w_r [k, F, D] <- conv_w [F, D, k]: one thread per element of w_r, so the
// reads are strided and the writes coalesced; 82k elements at the bench
// shape, negligible next to the forward.
extern "C" __global__ void conv_repack_f32(const float* __restrict__ conv_w,
                                           float* __restrict__ w_r,
                                           int dim,
                                           int filters,
                                           int kernel) {
    const i64 total = (i64)kernel * filters * dim;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        i64 jf = i / dim;
        int d = (int)(i - jf * dim);
        int j = (int)(jf / filters);
        int f = (int)(jf - (i64)j * filters);
        w_r[i] = conv_w[((i64)f * dim + d) * kernel + j];
    }
}
