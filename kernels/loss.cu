// Fused softmax + masked cross-entropy + gradient of the logits, per task.
//
// Layouts: logits and dlogits [B, sum C] (task i's classes at columns
// class_offset(i) .. + C_i), labels [tasks, B] int32 (-1 = missing),
// class_weights [sum C] (per task, per class),
// loss_sums [tasks].
//
// Why fused (DESIGN.md): softmax, the loss, the label mask and the logit
// gradient read the same few numbers per row; one pass writes the gradient
// directly and never stores probabilities.
//
// softmax_cross_entropy_f32: grid = tasks in this launch (at most 32, the
//   host loops over larger task lists), block 256 threads. Thread r handles
//   rows r, r + 256, ...: a row without a label (or with a label outside
//   [0, C), which the data layer never produces) gets a zero gradient;
//   otherwise, with w = class_weights[class_offset + label],
//   dlogits = (softmax - onehot) * w * grad_scale[task] and the row's
//   weighted loss (fp32) is added to a per-thread float64 sum. The block then sums
//   the 256 partial sums with a fixed tree, so the result is deterministic.

#include "common.cuh"

enum : int { kMaxTasks = 32, kLossThreads = 256 };

struct TaskTable {
    int class_offset[kMaxTasks];
    int classes[kMaxTasks];
    float grad_scale[kMaxTasks];
    int count;
};

extern "C" __global__ void __launch_bounds__(kLossThreads)
    softmax_cross_entropy_f32(const float* __restrict__ logits,
                              const int* __restrict__ labels,
                              const float* __restrict__ class_weights,
                              int rows,
                              int sum_classes,
                              int first_task,
                              const TaskTable table,
                              float* __restrict__ dlogits,
                              float* __restrict__ loss_sums) {
    __shared__ double partial[kLossThreads];

    if (blockDim.x != kLossThreads || blockIdx.x >= table.count) return;
    const int local = blockIdx.x;
    const int task = first_task + local;
    const int offset = table.class_offset[local], classes = table.classes[local];
    const float scale = table.grad_scale[local];

    double total = 0.0;
    for (int b = threadIdx.x; b < rows; b += kLossThreads) {
        const float* o = logits + (i64)b * sum_classes + offset;
        float* g = dlogits + (i64)b * sum_classes + offset;
        const int label = labels[(i64)task * rows + b];
        if (label < 0 || label >= classes) {
            for (int c = 0; c < classes; ++c) g[c] = 0.0f;
            continue;
        }
        float max = PH_NEG_INF;
        for (int c = 0; c < classes; ++c) max = fmaxf(max, o[c]);
        float sum = 0.0f;
        for (int c = 0; c < classes; ++c) sum += expf(o[c] - max);
        const float log_sum = logf(sum);
        const float weight = class_weights[offset + label];
        total += (double)(weight * (log_sum - (o[label] - max)));
        for (int c = 0; c < classes; ++c) {
            float p = expf(o[c] - max - log_sum);
            g[c] = (p - (c == label ? 1.0f : 0.0f)) * weight * scale;
        }
    }

    partial[threadIdx.x] = total;
    __syncthreads();
    for (int stride = kLossThreads / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss_sums[task] = (float)partial[0];
}
