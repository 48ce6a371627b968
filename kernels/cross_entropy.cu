// Cross-entropy with ignore index (label < 0), one block per row of logits [rows, V]:
// loss[row] = (logsumexp(x) - x[label]) / count, grad[row] = (softmax(x) - onehot(label)) / count
// in the logits' dtype (no f32 copy of the logits). `count` (labels >= 0, at least 1) is computed on
// the device by cross_entropy_count, so nothing waits for the host. A label >= V gives a NaN loss.
#include "common.cuh"

extern "C" __global__ void cross_entropy_count(const long long* __restrict__ labels, int rows,
                                               float* __restrict__ count) {
    __shared__ float scratch[32];
    float c = 0.f;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) c += labels[i] >= 0 ? 1.f : 0.f;
    c = block_sum(c, scratch);
    if (threadIdx.x == 0) *count = fmaxf(c, 1.f);
}

template <typename T>
__device__ void cross_entropy(const T* __restrict__ x, const long long* __restrict__ labels,
                              const float* __restrict__ count, float* __restrict__ loss,
                              T* __restrict__ grad, int vocab) {
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * vocab;
    long long label = labels[blockIdx.x];
    int tid = threadIdx.x, bd = blockDim.x;
    if (label < 0) {
        if (grad)
            for (int i = tid; i < vocab; i += bd) grad[base + i] = from_f<T>(0.f);
        if (tid == 0) loss[blockIdx.x] = 0.f;
        return;
    }
    if (label >= vocab) {
        if (tid == 0) loss[blockIdx.x] = NAN;
        return;
    }
    float m = -INFINITY, s = 0.f;
    for (int i = tid; i < vocab; i += bd) {
        float v = to_f(x[base + i]);
        if (v > m) { s *= __expf(m - v); m = v; }
        s += __expf(v - m);
    }
    float gm = block_max(m, scratch);
    s = m == -INFINITY ? 0.f : s * __expf(m - gm);
    float sum = block_sum(s, scratch);
    float inv_count = 1.f / *count;
    if (grad) {
        float scale = inv_count / sum;
        for (int i = tid; i < vocab; i += bd) {
            float p = __expf(to_f(x[base + i]) - gm) * scale;
            if (i == label) p -= inv_count;
            grad[base + i] = from_f<T>(p);
        }
    }
    if (tid == 0) loss[blockIdx.x] = (gm + logf(sum) - to_f(x[base + label])) * inv_count;
}

#define CE_PARAMS(T) const T* x, const long long* labels, const float* count, float* loss, T* grad, int vocab
WICK_INSTANTIATE(cross_entropy, CE_PARAMS, (x, labels, count, loss, grad, vocab))
