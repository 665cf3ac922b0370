// Sparse backward of the fused encoder: conv weight and bias gradients from
// the winning windows only, and the embedding gradient as a deterministic
// segmented reduction by token. No floating-point atomics anywhere, so two
// runs give the same bits.
//
// Layouts (row-major, fp32 unless noted):
//   tokens [B, L] int32, lengths [B] int32, h [B, F], win [B, F] int32,
//   dh [B, F]; emb [V, D] and conv_w [F, D, k] are the fp32 parameters;
//   w_r [k, F, D] is conv_w repacked (conv_repack_f32, encoder_forward.cu).
//   The gate g[b, f] = dh[b, f] if h[b, f] > 0 else 0 (ReLU after the max);
//   a filter whose window lies outside its text's windows gets no gradient.
//
// Why sparse (DESIGN.md, "Why custom kernels pay here"): the max-pool passes
// gradient to ONE window per (text, filter), so the whole backward touches
// B * F * k * D values, about L / 2 times less than the forward, where a
// framework's dense convolution backward costs twice the forward.
//
// conv_weight_grad_f32: grid (F, k), block 128. Block (f, j) owns
//   dW[f, :, j] and loops over the batch in order: warp 0 compacts the texts
//   with a non-zero gate into shared memory (ballot + popc keeps batch
//   order), then thread d sums g * E[token at win + j, d] over that list.
//   Block (f, 0) also writes db[f] = sum_b g[b, f], in batch order.
//
// embedding_position_grads_f32: grid B, block 128. Block b gives each real
//   position p of text b its gradient
//   pg[b, p, :] = sum over filters f with win[b, f] <= p < win[b, f] + k of
//   g[b, f] * W[f, :, p - win[b, f]]. The filters are first bucketed by
//   window in shared memory (counting, with ranks in filter order), so a
//   position visits only the <= k buckets that cover it, in a fixed order.
//
// The embedding gradient is then a reduction of those rows by token id:
//   embedding_sort_chunks  key = token << 32 | (b * L + p) per position
//     (positions past a text's end or with token 0 get token 0xffffffff and
//     sort last); each 2048-key chunk is bitonic-sorted in shared memory.
//   embedding_merge_runs   merges sorted runs pairwise (each key finds its
//     place by binary search in the partner run), doubling the run length
//     per launch until one run remains: log2(B * L / 2048) launches.
//   Keys are unique, so the sorted order, and every sum below, is fixed.
//   embedding_grad_pieces  a warp per 32 sorted keys sums each run of equal
//     tokens inside its tile in order and stores the sum at the run's first
//     sorted position ("piece").
//   embedding_grad_runs    the warp at each run's first key adds the
//     pieces that continue the run at the following tile starts, in order,
//     and writes the token's row. The host zeroes the embedding gradient
//     first, so rows no text used stay zero and row 0 is never written.

#include "common.cuh"

namespace {

enum : int {
    kWeightThreads = 128,
    kListCapacity = 1024,  // texts compacted per pass
    kPositionThreads = 128,
    kSortChunk = 2048,
    kSortThreads = 1024,
    kPieceTile = 32,
};

constexpr unsigned long long kInvalidToken = 0xffffffffull;

__device__ __forceinline__ float gate(const float* h, const float* dh, i64 i) {
    return h[i] > 0.0f ? dh[i] : 0.0f;
}

// The window of (b, f) if it is one of text b's windows, else -1.
__device__ __forceinline__ int valid_window(const int* win, i64 i, int nwin) {
    int t = win[i];
    return (t >= 0 && t < nwin) ? t : -1;
}

}  // namespace

// No __launch_bounds__: with it ptxas 12.9 spills on sm_80 at 40 registers.
extern "C" __global__ void conv_weight_grad_f32(const float* __restrict__ emb,
                         const int* __restrict__ tokens,
                         const int* __restrict__ lengths,
                         const float* __restrict__ h,
                         const int* __restrict__ win,
                         const float* __restrict__ dh,
                         int rows,
                         int width,
                         int vocab,
                         int dim,
                         int filters,
                         int kernel,
                         float* __restrict__ conv_w_grad,
                         float* __restrict__ conv_b_grad) {
    __shared__ float list_g[kListCapacity];
    __shared__ int list_token[kListCapacity];
    __shared__ int list_len;

    if (blockDim.x != kWeightThreads) return;  // the host launches exactly this shape
    const int f = blockIdx.x, j = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31;

    for (int d_base = 0; d_base < dim; d_base += 4 * kWeightThreads) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        float bias_acc = 0.0f;

        for (int b0 = 0; b0 < rows; b0 += kListCapacity) {
            __syncthreads();  // the previous list is consumed
            if (tid < 32) {
                int count = 0;
                for (int base = b0; base < min(rows, b0 + kListCapacity); base += 32) {
                    int b = base + lane;
                    float g = 0.0f;
                    int token = 0;
                    if (b < rows) {
                        i64 i = (i64)b * filters + f;
                        int len = ph::text_length(lengths, width, b);
                        int t = valid_window(win, i, ph::window_count(len, kernel));
                        if (t >= 0) {
                            g = gate(h, dh, i);
                            token = ph::token_at(tokens, width, len, vocab, b, t + j);
                        }
                    }
                    unsigned mask = __ballot_sync(0xffffffffu, g != 0.0f);
                    if (g != 0.0f) {
                        int slot = count + __popc(mask & ((1u << lane) - 1u));
                        list_g[slot] = g;
                        list_token[slot] = token;
                    }
                    count += __popc(mask);
                }
                if (lane == 0) list_len = count;
            }
            __syncthreads();

            const int n = list_len;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                int d = d_base + tid + q * kWeightThreads;
                if (d < dim) {
                    float sum = acc[q];
#pragma unroll 4
                    for (int i = 0; i < n; ++i)
                        sum = fmaf(list_g[i], emb[(i64)list_token[i] * dim + d], sum);
                    acc[q] = sum;
                }
            }
            if (j == 0 && d_base == 0 && tid == 0) {
                for (int i = 0; i < n; ++i) bias_acc += list_g[i];
            }
        }

#pragma unroll
        for (int q = 0; q < 4; ++q) {
            int d = d_base + tid + q * kWeightThreads;
            if (d < dim) conv_w_grad[((i64)f * dim + d) * kernel + j] = acc[q];
        }
        if (j == 0 && d_base == 0 && tid == 0) conv_b_grad[f] = bias_acc;
    }
}

// Dynamic shared memory: (3 * F + L + 1) ints (host: position_grads_shared_bytes).
// No __launch_bounds__: with it ptxas 12.9 spills 8 bytes at 32 registers.
extern "C" __global__ void embedding_position_grads_f32(const float* __restrict__ w_r,
                                 const int* __restrict__ tokens,
                                 const int* __restrict__ lengths,
                                 const float* __restrict__ h,
                                 const int* __restrict__ win,
                                 const float* __restrict__ dh,
                                 int width,
                                 int vocab,
                                 int dim,
                                 int filters,
                                 int kernel,
                                 float* __restrict__ position_grads) {
    extern __shared__ __align__(16) unsigned char shared[];
    float* gates = reinterpret_cast<float*>(shared);
    int* windows = reinterpret_cast<int*>(gates + filters);
    int* order = windows + filters;
    int* start = order + filters;  // [nwin + 1], nwin <= width

    if (blockDim.x != kPositionThreads) return;
    const int b = blockIdx.x, tid = threadIdx.x;
    const int len = ph::text_length(lengths, width, b);
    const int nwin = ph::window_count(len, kernel);

    for (int f = tid; f < filters; f += kPositionThreads) {
        i64 i = (i64)b * filters + f;
        int t = valid_window(win, i, nwin);
        float g = t >= 0 ? gate(h, dh, i) : 0.0f;
        gates[f] = g;
        windows[f] = g != 0.0f ? t : -1;
    }
    __syncthreads();

    // Bucket w holds the active filters with window w, in filter order:
    // start[w] = #active filters with a smaller window, rank = #active
    // filters before f with the same window.
    for (int w = tid; w <= nwin; w += kPositionThreads) {
        int count = 0;
        for (int f = 0; f < filters; ++f) count += (windows[f] >= 0 && windows[f] < w);
        start[w] = count;
    }
    __syncthreads();
    for (int f = tid; f < filters; f += kPositionThreads) {
        int w = windows[f];
        if (w < 0) continue;
        int rank = 0;
        for (int other = 0; other < f; ++other) rank += windows[other] == w;
        order[start[w] + rank] = f;
    }
    __syncthreads();

    for (i64 idx = tid; idx < (i64)len * dim; idx += kPositionThreads) {
        int p = (int)(idx / dim), d = (int)(idx - (i64)p * dim);
        if (ph::token_at(tokens, width, len, vocab, b, p) == 0) continue;  // no gradient kept
        int w_lo = max(0, p - kernel + 1), w_hi = min(p, nwin - 1);
        float acc = 0.0f;
        for (int w = w_lo; w <= w_hi; ++w) {
            const float* w_shift = w_r + (i64)(p - w) * filters * dim + d;
            for (int i = start[w]; i < start[w + 1]; ++i) {
                int f = order[i];
                acc = fmaf(gates[f], w_shift[(i64)f * dim], acc);
            }
        }
        position_grads[((i64)b * width + p) * dim + d] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(kSortThreads)
    embedding_sort_chunks(const int* __restrict__ tokens,
                          const int* __restrict__ lengths,
                          int rows,
                          int width,
                          int vocab,
                          unsigned long long* __restrict__ keys) {
    __shared__ unsigned long long chunk[kSortChunk];

    if (blockDim.x != kSortThreads) return;
    const i64 total = (i64)rows * width;
    const i64 base = (i64)blockIdx.x * kSortChunk;

    for (int i = threadIdx.x; i < kSortChunk; i += kSortThreads) {
        i64 e = base + i;
        unsigned long long key = ~0ull;  // past the end: sorts after everything
        if (e < total) {
            int b = (int)(e / width), p = (int)(e - (i64)b * width);
            int len = ph::text_length(lengths, width, b);
            int token = ph::token_at(tokens, width, len, vocab, b, p);
            unsigned long long tag = token > 0 ? (unsigned long long)token : kInvalidToken;
            key = (tag << 32) | (unsigned long long)e;
        }
        chunk[i] = key;
    }
    __syncthreads();

    for (int size = 2; size <= kSortChunk; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < kSortChunk; i += kSortThreads) {
                int partner = i ^ stride;
                if (partner > i) {
                    unsigned long long a = chunk[i], c = chunk[partner];
                    bool ascending = (i & size) == 0;
                    if ((a > c) == ascending) {
                        chunk[i] = c;
                        chunk[partner] = a;
                    }
                }
            }
            __syncthreads();
        }
    }

    for (int i = threadIdx.x; i < kSortChunk; i += kSortThreads) {
        if (base + i < total) keys[base + i] = chunk[i];
    }
}

// Runs of `run` keys (the last may be shorter) merged pairwise from src into
// dst. A key of the left run lands after the partner's smaller keys, one of
// the right run after the partner's smaller-or-equal keys: a stable merge.
extern "C" __global__ void embedding_merge_runs(const unsigned long long* __restrict__ src,
                                                unsigned long long* __restrict__ dst,
                                                long long total,
                                                long long run) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / run;
        i64 own_start = r * run;
        i64 partner_start = (r ^ 1) * run;
        i64 merged_start = (r & ~1ll) * run;
        unsigned long long key = src[i];

        i64 lo = 0, hi = 0;
        if (partner_start < total) hi = min(run, total - partner_start);
        const bool left = (r & 1) == 0;
        while (lo < hi) {  // count partner keys before `key`
            i64 mid = (lo + hi) >> 1;
            unsigned long long other = src[partner_start + mid];
            bool before = left ? other < key : other <= key;
            if (before) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        dst[merged_start + (i - own_start) + lo] = key;
    }
}

// Block of 128 threads = 4 warps, each owning one tile of 32 sorted keys.
extern "C" __global__ void embedding_grad_pieces(const unsigned long long* __restrict__ keys,
                                                 const float* __restrict__ position_grads,
                                                 long long total,
                                                 int dim,
                                                 float* __restrict__ pieces) {
    const int lane = threadIdx.x & 31;
    const i64 tile = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const i64 s0 = tile * kPieceTile;
    if (s0 >= total) return;

    unsigned long long key = s0 + lane < total ? keys[s0 + lane] : ~0ull;
    const unsigned token_l = (unsigned)(key >> 32);
    const unsigned entry_l = (unsigned)(key & 0xffffffffu);

    for (int d0 = 0; d0 < dim; d0 += 128) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int piece_start = 0;
        for (int i0 = 0; i0 < kPieceTile; i0 += 4) {
            // Load four rows before adding them in order: four loads in flight.
            float rows4[4][4];
            unsigned tok4[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                tok4[u] = __shfl_sync(0xffffffffu, token_l, i0 + u);
                unsigned e = __shfl_sync(0xffffffffu, entry_l, i0 + u);
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    int d = d0 + lane + 32 * q;
                    rows4[u][q] = (tok4[u] != kInvalidToken && d < dim)
                                      ? position_grads[(i64)e * dim + d]
                                      : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int i = i0 + u;
                const unsigned next = __shfl_sync(0xffffffffu, token_l, (i + 1) & 31);
                if (tok4[u] == kInvalidToken) continue;  // sorted last: only padding follows
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[q] += rows4[u][q];
                if (i == kPieceTile - 1 || next != tok4[u]) {
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        int d = d0 + lane + 32 * q;
                        if (d < dim) pieces[(s0 + piece_start) * dim + d] = acc[q];
                        acc[q] = 0.0f;
                    }
                    piece_start = i + 1;
                }
            }
        }
    }
}

// Block of 256 threads = 8 warps, each looking at one sorted position.
extern "C" __global__ void embedding_grad_runs(const unsigned long long* __restrict__ keys,
                                               const float* __restrict__ pieces,
                                               long long total,
                                               int dim,
                                               float* __restrict__ emb_grad) {
    const int lane = threadIdx.x & 31;
    const i64 i = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= total) return;
    const unsigned token = (unsigned)(keys[i] >> 32);
    if (token == kInvalidToken) return;
    if (i > 0 && (unsigned)(keys[i - 1] >> 32) == token) return;  // not the run's first key

    // Tile starts after i that still hold this token: they form a prefix of
    // the following tiles, found 32 at a time with one ballot.
    const i64 first_tile = (i / kPieceTile + 1) * kPieceTile;
    i64 continued = 0;
    while (true) {
        i64 s = first_tile + (continued + lane) * kPieceTile;
        bool same = s < total && (unsigned)(keys[s] >> 32) == token;
        unsigned mask = __ballot_sync(0xffffffffu, same);
        int prefix = mask == 0xffffffffu ? 32 : __ffs(~mask) - 1;
        continued += prefix;
        if (prefix < 32) break;
    }

    for (int d = lane; d < dim; d += 32) {
        float acc = pieces[i * dim + d];
        for (i64 c = 0; c < continued; ++c) acc += pieces[(first_tile + c * kPieceTile) * dim + d];
        emb_grad[(i64)token * dim + d] = acc;
    }
}
