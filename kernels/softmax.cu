// Softmax over the last dim, one block per row. Rows up to K * blockDim elements stay in registers
// (one global read, one write); longer rows (vocabularies) take an online max/sum pass and a write
// pass. Backward: dx = y * (dy - sum(dy * y)).
#include "common.cuh"

#define K 8

template <typename T>
__device__ void softmax(const T* __restrict__ x, T* __restrict__ y, int n) {
    __shared__ float scratch[32];
    const T* row = x + (size_t)blockIdx.x * n;
    T* out = y + (size_t)blockIdx.x * n;
    int tid = threadIdx.x, bd = blockDim.x;
    constexpr int V = Vec16<T>::V;
    // Vector path: rows of up to 2 * V * bd elements held as two 16-byte vectors per thread.
    if (n % V == 0 && n <= 2 * V * bd && aligned16(x) && aligned16(y)) {
        float v[2 * V];
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            int vi = (tid + k * bd) * V;
            Vec16<T> in;
            if (vi < n) in.u = *reinterpret_cast<const uint4*>(row + vi);
#pragma unroll
            for (int j = 0; j < V; j++) {
                v[k * V + j] = vi < n ? to_f(in.e[j]) : -INFINITY;
                m = fmaxf(m, v[k * V + j]);
            }
        }
        m = block_max(m, scratch);
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            int vi = (tid + k * bd) * V;
#pragma unroll
            for (int j = 0; j < V; j++) {
                v[k * V + j] = vi < n ? __expf(v[k * V + j] - m) : 0.f;
                s += v[k * V + j];
            }
        }
        float inv = 1.f / block_sum(s, scratch);
#pragma unroll
        for (int k = 0; k < 2; k++) {
            int vi = (tid + k * bd) * V;
            if (vi < n) {
                Vec16<T> o;
#pragma unroll
                for (int j = 0; j < V; j++) o.e[j] = from_f<T>(v[k * V + j] * inv);
                *reinterpret_cast<uint4*>(out + vi) = o.u;
            }
        }
        return;
    }
    if (n <= K * bd) {
        float v[K];
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int i = tid + k * bd;
            v[k] = i < n ? to_f(row[i]) : -INFINITY;
            m = fmaxf(m, v[k]);
        }
        m = block_max(m, scratch);
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            v[k] = tid + k * bd < n ? __expf(v[k] - m) : 0.f;
            s += v[k];
        }
        float inv = 1.f / block_sum(s, scratch);
#pragma unroll
        for (int k = 0; k < K; k++) {
            int i = tid + k * bd;
            if (i < n) out[i] = from_f<T>(v[k] * inv);
        }
        return;
    }
    // Online pass: running max m and sum s rescaled when m grows.
    float m = -INFINITY, s = 0.f;
    for (int i = tid; i < n; i += bd) {
        float v = to_f(row[i]);
        if (v > m) { s *= __expf(m - v); m = v; }
        s += __expf(v - m);
    }
    float gm = block_max(m, scratch);
    s = m == -INFINITY ? 0.f : s * __expf(m - gm);
    float inv = 1.f / block_sum(s, scratch);
    for (int i = tid; i < n; i += bd) out[i] = from_f<T>(__expf(to_f(row[i]) - gm) * inv);
}

template <typename T>
__device__ void softmax_backward(const T* __restrict__ y, const T* __restrict__ dy,
                                 T* __restrict__ dx, int n) {
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * n;
    float dot = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dot += to_f(y[base + i]) * to_f(dy[base + i]);
    dot = block_sum(dot, scratch);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dx[base + i] = from_f<T>(to_f(y[base + i]) * (to_f(dy[base + i]) - dot));
}

#define SOFTMAX_PARAMS(T) const T* x, T* y, int n
WICK_INSTANTIATE(softmax, SOFTMAX_PARAMS, (x, y, n))
#define SOFTMAX_BWD_PARAMS(T) const T* y, const T* dy, T* dx, int n
WICK_INSTANTIATE(softmax_backward, SOFTMAX_BWD_PARAMS, (y, dy, dx, n))
