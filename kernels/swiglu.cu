// SwiGLU y = silu(g) * u and its backward, elementwise with grid-stride loops.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + __expf(-g)); }

template <typename T>
__device__ void swiglu(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gv = to_f(g[i]);
        y[i] = from_f<T>(gv * sigmoidf_(gv) * to_f(u[i]));
    }
}

// out: [2, n]: dgate then dup.
template <typename T>
__device__ void swiglu_backward(const T* __restrict__ g, const T* __restrict__ u,
                                const T* __restrict__ dy, T* __restrict__ out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gv = to_f(g[i]), uv = to_f(u[i]), d = to_f(dy[i]);
        float s = sigmoidf_(gv);
        out[i] = from_f<T>(d * uv * s * (1.f + gv * (1.f - s)));
        out[n + i] = from_f<T>(d * gv * s);
    }
}

#define SWIGLU_PARAMS(T) const T* g, const T* u, T* y, size_t n
WICK_INSTANTIATE(swiglu, SWIGLU_PARAMS, (g, u, y, n))
#define SWIGLU_BWD_PARAMS(T) const T* g, const T* u, const T* dy, T* out, size_t n
WICK_INSTANTIATE(swiglu_backward, SWIGLU_BWD_PARAMS, (g, u, dy, out, n))
