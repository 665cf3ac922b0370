// Shared helpers for polyhead's kernels.
//
// Every kernel file includes only this header: no CUDA toolkit headers, so
// the same source compiles with nvcc, with NVRTC at build time and with
// NVRTC at run time, without include paths. Half-precision values are kept
// as raw 16-bit patterns (`unsigned short`) and converted with PTX `cvt`
// (sm_80 and later), which is all the model needs.
//
// Conventions (see src/backend/mod.rs for the contract):
//   - tokens [rows, width] int32, lengths [rows]; a text has
//     max(len, k) - k + 1 windows; positions at or past len read token 0;
//   - token ids outside [0, vocab) are read as 0 (padding) so that a bad id
//     can never make a kernel read outside the embedding table;
//   - precision tags: 0 = fp32, 1 = bf16, 2 = fp16.
#pragma once

typedef unsigned short half_bits;
typedef long long i64;

#define PH_INT_MAX 0x7fffffff
#define PH_NEG_INF __int_as_float(0xff800000)

namespace ph {

enum : int { kBf16 = 1, kFp16 = 2 };

__device__ __forceinline__ bool is_finite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// Round-to-nearest-even conversion of one float to a 16-bit pattern.
template <int P>
__device__ __forceinline__ half_bits to_half(float x);

template <>
__device__ __forceinline__ half_bits to_half<kBf16>(float x) {
    half_bits out;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(out) : "f"(x));
    return out;
}

template <>
__device__ __forceinline__ half_bits to_half<kFp16>(float x) {
    half_bits out;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out) : "f"(x));
    return out;
}

// The token at position p of text b: 0 past the text's end or when the id
// is out of range.
__device__ __forceinline__ int token_at(const int* tokens, int width, int len, int vocab,
                                        int b, int p) {
    if (p >= len) return 0;
    int token = tokens[(i64)b * width + p];
    return (token >= 0 && token < vocab) ? token : 0;
}

// Real tokens of text b, clamped to [0, width].
__device__ __forceinline__ int text_length(const int* lengths, int width, int b) {
    int len = lengths[b];
    return len < 0 ? 0 : (len > width ? width : len);
}

// Windows of a text with `len` real tokens: max(len, k) - k + 1.
__device__ __forceinline__ int window_count(int len, int kernel) {
    return (len > kernel ? len : kernel) - kernel + 1;
}

// Max-pool order: a larger value wins; equal values go to the earlier
// window. A total order, so any reduction tree gives the same winner.
__device__ __forceinline__ bool beats(float v, int t, float best_v, int best_t) {
    return v > best_v || (v == best_v && t < best_t);
}

// Where flat parameter index i of the embedding or conv weight lands in the
// half-precision working copy used by the fused forward:
//   embedding [V, D]    -> emb_h [V, Dp]       (rows padded to Dp, pads stay 0)
//   conv_w    [F, D, k] -> w_h   [k, F, Dp]    (one [F, Dp] matrix per shift j)
// Dp = D rounded up to 16, so every row is whole 16-byte vectors.
struct WorkingLayout {
    i64 emb_len;   // V * D
    i64 conv_len;  // F * D * k
    int dim;       // D
    int dim_pad;   // Dp
    int filters;   // F
    int kernel;    // k
};

template <int P>
__device__ __forceinline__ void store_working(const WorkingLayout& l, i64 i, float value,
                                              half_bits* emb_h, half_bits* w_h) {
    if (i < l.emb_len) {
        i64 row = i / l.dim;
        int d = (int)(i - row * l.dim);
        emb_h[row * l.dim_pad + d] = to_half<P>(value);
    } else if (i < l.emb_len + l.conv_len) {
        i64 r = i - l.emb_len;
        int per_filter = l.dim * l.kernel;
        int f = (int)(r / per_filter);
        int rem = (int)(r - (i64)f * per_filter);
        int d = rem / l.kernel;
        int j = rem - d * l.kernel;
        w_h[((i64)j * l.filters + f) * l.dim_pad + d] = to_half<P>(value);
    }
}

}  // namespace ph
