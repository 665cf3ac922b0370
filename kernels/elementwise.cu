// Small element-wise and reduction kernels around the encoder: batch
// assembly from the device-resident data set, dropout masks, combining
// per-task gradients, their Gram matrix, and the finite check behind
// fp16's dynamic loss scaling.
//
// Layouts: flat fp32 buffers; dh_tasks [tasks, len] (task-major blocks of
// `len` floats, len = B * F).
//
// Why here: multi-task loss weighting (DESIGN.md, "Multi-task training")
// works on the per-task gradients w.r.t. h, a small [B, F] block per task,
// so combining them and their Gram matrix are a few microseconds each; the
// finite check reads the gradient once and answers with one int.
//
// gather_batch_i32      grid rows, block 128: block b copies the text
//                       r = order[start + b] of the device-resident data set
//                       (tokens back to back, offsets [rows + 1], labels
//                       [tasks, data_rows]) into tokens[b, :width], zero past
//                       its end, and writes its length and its labels into
//                       labels [tasks, rows]. The host checks that every text
//                       fits in width; a longer one would be cut, not overrun.
// dropout_mask_f32      mask[j] = 0 where dropout_bits(key, j) < threshold,
//                       else keep_scale; the same counter-based draw as
//                       src/backend/mod.rs, so both backends get one mask.
//                       Grid-stride.
// multiply_f32          x[i] *= mask[i]; grid-stride.
// combine_tasks_f32     dh[i] = (accumulate ? dh[i] : 0) + sum over this
//                       launch's tasks, in task order, of coeff[t] *
//                       dh_tasks[t][i]; up to 32 tasks per launch, the host
//                       chains launches for more. Grid-stride.
// task_gram_f64         G[i][j] = sum_x dh_tasks[i][x] * dh_tasks[j][x] in
//                       float64; grid (tasks, tasks), block 256: per-thread
//                       strided sums, then a fixed tree (deterministic).
// all_finite_f32        sets *flag = 1 if any of the first len values is
//                       NaN or infinite (the host zeroes the flag first;
//                       every writer stores the same 1, so no atomics).
// mark_rows_i32         marks[tokens[i]] = stamp for i < count: the
//                       embedding rows a batch used, for LazyAdam; ids past
//                       `rows` are ignored. Every writer of a row stores the
//                       same stamp. Grid-stride.

#include "common.cuh"

enum : int { kMaxCoeffs = 32, kGramThreads = 256 };

struct TaskCoeffs {
    float coeff[kMaxCoeffs];
    int count;
};

extern "C" __global__ void gather_batch_i32(const int* __restrict__ data_tokens,
                                            const int* __restrict__ offsets,
                                            const int* __restrict__ data_labels,
                                            int data_rows,
                                            int tasks,
                                            const int* __restrict__ order,
                                            int start,
                                            int rows,
                                            int width,
                                            int* __restrict__ tokens,
                                            int* __restrict__ lengths,
                                            int* __restrict__ labels) {
    const int b = blockIdx.x;
    if (b >= rows) return;
    const int row = order[start + b];
    const int from = offsets[row];
    const int len = min(offsets[row + 1] - from, width);
    int* out = tokens + (i64)b * width;
    for (int t = threadIdx.x; t < width; t += blockDim.x)
        out[t] = t < len ? data_tokens[from + t] : 0;
    if (threadIdx.x == 0) lengths[b] = len;
    for (int i = threadIdx.x; i < tasks; i += blockDim.x)
        labels[(i64)i * rows + b] = data_labels[(i64)i * data_rows + row];
}

__device__ __forceinline__ unsigned dropout_bits(unsigned long long key,
                                                 unsigned long long index) {
    unsigned long long z = key + (index + 1ull) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (unsigned)(z >> 40);
}

extern "C" __global__ void dropout_mask_f32(float* __restrict__ mask,
                                            long long len,
                                            unsigned long long key,
                                            unsigned threshold,
                                            float keep_scale) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (i64)gridDim.x * blockDim.x)
        mask[i] = dropout_bits(key, (unsigned long long)i) < threshold ? 0.0f : keep_scale;
}

extern "C" __global__ void multiply_f32(float* __restrict__ x,
                                        const float* __restrict__ mask,
                                        long long len) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (i64)gridDim.x * blockDim.x)
        x[i] *= mask[i];
}

extern "C" __global__ void combine_tasks_f32(const float* __restrict__ dh_tasks,
                                             long long len,
                                             int first_task,
                                             const TaskCoeffs coeffs,
                                             int accumulate,
                                             float* __restrict__ dh) {
    const float* base = dh_tasks + (i64)first_task * len;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (i64)gridDim.x * blockDim.x) {
        float acc = accumulate ? dh[i] : 0.0f;
        for (int t = 0; t < coeffs.count; ++t) acc += coeffs.coeff[t] * base[(i64)t * len + i];
        dh[i] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(kGramThreads)
    task_gram_f64(const float* __restrict__ dh_tasks, long long len, double* __restrict__ gram) {
    __shared__ double partial[kGramThreads];
    if (blockDim.x != kGramThreads) return;
    const int i = blockIdx.x, j = blockIdx.y, tasks = gridDim.x;
    const float* a = dh_tasks + (i64)i * len;
    const float* b = dh_tasks + (i64)j * len;

    double sum = 0.0;
    for (i64 x = threadIdx.x; x < len; x += kGramThreads) sum += (double)a[x] * (double)b[x];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = kGramThreads / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) gram[(i64)i * tasks + j] = partial[0];
}

extern "C" __global__ void all_finite_f32(const float* __restrict__ x,
                                          long long len,
                                          int* __restrict__ flag) {
    bool bad = false;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (i64)gridDim.x * blockDim.x)
        bad |= !ph::is_finite(x[i]);
    if (bad) *flag = 1;
}

extern "C" __global__ void mark_rows_i32(const int* __restrict__ tokens,
                                         long long count,
                                         int* __restrict__ marks,
                                         int rows,
                                         int stamp) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (i64)gridDim.x * blockDim.x) {
        const unsigned row = (unsigned)tokens[i];
        if (row < (unsigned)rows) marks[row] = stamp;
    }
}
