// Adam over the whole flat parameter buffer, and the half-precision working
// copy the fused forward reads.
//
// Layouts: params, grads, m, v are the flat fp32 buffers of
// src/model/shape.rs (one element per parameter, embedding first, then the
// conv weight). The working copy (bf16 or fp16) holds the embedding as
// [V, Dp] and the conv weight as [k, F, Dp] (common.cuh, WorkingLayout).
//
// Why one kernel (DESIGN.md): all parameters live in one buffer, so one
// grid-stride pass is the multi-tensor Adam: one launch per step whatever
// the number of tensors. It is memory-bound (16 bytes read and 12 written
// per parameter, V x D of them in the embedding), so it also writes the
// working copy of the embedding and conv weight as it goes instead of a
// second pass re-reading the master weights.
//
// adam_<f32|bf16|f16>: grid-stride, one thread per parameter per pass.
//   PyTorch's formulation without weight decay, with the bias corrections
//   precomputed on the host in fp32 exactly as the CPU backend does:
//   m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2 (each stored as 0 when
//   below the smallest normal float);
//   p -= step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps),
//   g = grad * grad_scale (1 / loss scale for fp16). The arithmetic uses
//   round-to-nearest intrinsics, never fused multiply-adds, so the result
//   is bit-identical to the CPU backend's.
//   With `marks` (not null), LazyAdam: of the first `lazy_len` elements
//   (the embedding, `lazy_width` per row) only rows r with
//   marks[r] == stamp are updated; the others keep weights and moments.
// working_copy_<bf16|f16>: the same copy from params alone (first use,
//   or after the parameters were written by anything but Adam).

#include "common.cuh"

struct AdamScalars {
    float step_size;         // lr / (1 - b1^t)
    float beta1, beta2, eps;
    float correction2_sqrt;  // sqrt(1 - b2^t)
    float grad_scale;
    long long lazy_len;      // LazyAdam's block: elements, and per row
    int lazy_width;
    int stamp;               // the mark of rows the batch used
};

// Moments below the smallest normal float are stored as 0, exactly as the
// CPU backend does (src/backend/cpu/adam.rs, `flushed`): unused embedding
// rows decay into subnormals there, which x86 computes slowly.
__device__ __forceinline__ float flushed(float x) {
    return fabsf(x) < 1.17549435e-38f ? 0.0f : x;
}

template <int P>
__device__ __forceinline__ void adam(float* __restrict__ params,
                                     const float* __restrict__ grads,
                                     float* __restrict__ m,
                                     float* __restrict__ v,
                                     i64 len,
                                     const AdamScalars& s,
                                     const int* __restrict__ marks,
                                     const ph::WorkingLayout& layout,
                                     half_bits* __restrict__ emb_h,
                                     half_bits* __restrict__ w_h) {
    const float one_minus_b1 = __fsub_rn(1.0f, s.beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, s.beta2);
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (i64)gridDim.x * blockDim.x) {
        if (marks != nullptr && i < s.lazy_len && marks[i / s.lazy_width] != s.stamp) continue;
        const float g = __fmul_rn(grads[i], s.grad_scale);
        const float mi =
            flushed(__fadd_rn(__fmul_rn(s.beta1, m[i]), __fmul_rn(one_minus_b1, g)));
        const float vi = flushed(
            __fadd_rn(__fmul_rn(s.beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_b2, g), g)));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.correction2_sqrt), s.eps);
        const float p = __fsub_rn(params[i], __fdiv_rn(__fmul_rn(s.step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
        if constexpr (P != 0) ph::store_working<P>(layout, i, p, emb_h, w_h);
    }
}

#define ADAM_ENTRY(NAME, P)                                                              \
    extern "C" __global__ void NAME(float* __restrict__ params,                          \
                                    const float* __restrict__ grads, float* __restrict__ m, \
                                    float* __restrict__ v, long long len,                \
                                    const AdamScalars scalars,                           \
                                    const int* __restrict__ marks,                       \
                                    const ph::WorkingLayout layout,                      \
                                    half_bits* __restrict__ emb_h,                       \
                                    half_bits* __restrict__ w_h) {                       \
        adam<P>(params, grads, m, v, len, scalars, marks, layout, emb_h, w_h);           \
    }

ADAM_ENTRY(adam_f32, 0)
ADAM_ENTRY(adam_bf16, ph::kBf16)
ADAM_ENTRY(adam_f16, ph::kFp16)

#define WORKING_COPY_ENTRY(NAME, P)                                                       \
    extern "C" __global__ void NAME(const float* __restrict__ params,                     \
                                    const ph::WorkingLayout layout,                       \
                                    half_bits* __restrict__ emb_h,                        \
                                    half_bits* __restrict__ w_h) {                        \
        const i64 total = layout.emb_len + layout.conv_len;                               \
        for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;               \
             i += (i64)gridDim.x * blockDim.x)                                            \
            ph::store_working<P>(layout, i, params[i], emb_h, w_h);                       \
    }

WORKING_COPY_ENTRY(working_copy_bf16, ph::kBf16)
WORKING_COPY_ENTRY(working_copy_f16, ph::kFp16)
