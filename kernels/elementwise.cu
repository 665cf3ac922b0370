// Small element-wise and reduction kernels around the encoder: dropout
// masks, combining per-task gradients, their Gram matrix, and the finite
// check behind fp16's dynamic loss scaling.
//
// Layouts: flat fp32 buffers; dh_tasks [tasks, len] (task-major blocks of
// `len` floats, len = B * F).
//
// Why here: multi-task loss weighting (DESIGN.md, "Multi-task training")
// works on the per-task gradients w.r.t. h, a small [B, F] block per task,
// so combining them and their Gram matrix are a few microseconds each; the
// finite check reads the gradient once and answers with one int.
//
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

#include "common.cuh"

enum : int { kMaxCoeffs = 32, kGramThreads = 256 };

struct TaskCoeffs {
    float coeff[kMaxCoeffs];
    int count;
};

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
