// RMSNorm, one block per row: y = x * r * w, r = rsqrt(mean(x^2) + eps). With a residual the sum
// s = x + residual (rounded to T, as the residual stream is stored) is written to out[rows*n + ...]
// and normalised. Rows of aligned 16-byte vectors up to vpt * blockDim vectors stay in registers
// (one read of each input, loads issued together; see gpu::launch::row_plan), other rows up to
// K * blockDim elements too (scalar loads); longer rows are read twice.
// Backward: dx = r * (g - x * r^2 * sum(g x) / n) with g = dy * w; dw = sum_rows dy * x * r,
// accumulated per block in f32 partials [gridDim, n] and reduced by rms_norm_dw.
#include "common.cuh"

#define K 8

// Most 16-byte vectors per thread in the register path (vpt <= MAXV).
#define MAXV 8

template <typename T>
__device__ void rms_norm(const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                         T* __restrict__ out, int rows, int n, float eps, int vpt) {
    __shared__ float scratch[32];
    int tid = threadIdx.x, bd = blockDim.x;
    size_t base = (size_t)blockIdx.x * n;
    T* sum_out = out + (size_t)rows * n;
    constexpr int V = Vec16<T>::V;
    // Register path: up to vpt 16-byte vectors per thread, all loads issued before any arithmetic,
    // kept raw (at most 32 registers of data); w is read at the write (shared by every row: cached).
    if (n % V == 0 && vpt > 0 && vpt <= MAXV && n / V <= vpt * bd && aligned16(x) && aligned16(w) &&
        aligned16(out) && (!res || aligned16(res))) {
        int nv = n / V;
        const uint4* x4 = reinterpret_cast<const uint4*>(x + base);
        uint4 r[MAXV];
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            int i = tid + k * bd;
            if (k < vpt && i < nv) r[k] = __ldg(x4 + i);
        }
        if (res) {
            const uint4* r4 = reinterpret_cast<const uint4*>(res + base);
            uint4* s4 = reinterpret_cast<uint4*>(sum_out + base);
#pragma unroll
            for (int k = 0; k < MAXV; k++) {
                int i = tid + k * bd;
                if (k < vpt && i < nv) {
                    Vec16<T> a, b, sum;
                    a.u = r[k];
                    b.u = __ldg(r4 + i);
#pragma unroll
                    for (int j = 0; j < V; j++) sum.e[j] = from_f<T>(to_f(a.e[j]) + to_f(b.e[j]));
                    s4[i] = sum.u;
                    r[k] = sum.u;
                }
            }
        }
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            if (k < vpt && tid + k * bd < nv) {
                Vec16<T> a;
                a.u = r[k];
#pragma unroll
                for (int j = 0; j < V; j++) ss += to_f(a.e[j]) * to_f(a.e[j]);
            }
        }
        float rs = rsqrtf(block_sum(ss, scratch) / n + eps);
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        uint4* o4 = reinterpret_cast<uint4*>(out + base);
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            int i = tid + k * bd;
            if (k < vpt && i < nv) {
                Vec16<T> a, wv, o;
                a.u = r[k];
                wv.u = __ldg(w4 + i);
#pragma unroll
                for (int j = 0; j < V; j++) o.e[j] = from_f<T>(to_f(a.e[j]) * rs * to_f(wv.e[j]));
                o4[i] = o.u;
            }
        }
        return;
    }
    // Long aligned rows: the same in two passes of 16-byte vectors (the second read mostly from L2).
    if (n % V == 0 && aligned16(x) && aligned16(w) && aligned16(out) && (!res || aligned16(res))) {
        int nv = n / V;
        const uint4* x4 = reinterpret_cast<const uint4*>(x + base);
        uint4* s4 = reinterpret_cast<uint4*>(sum_out + base);
        float ss = 0.f;
        for (int i = tid; i < nv; i += bd) {
            Vec16<T> a;
            a.u = __ldg(x4 + i);
            if (res) {
                Vec16<T> b, sum;
                b.u = __ldg(reinterpret_cast<const uint4*>(res + base) + i);
#pragma unroll
                for (int j = 0; j < V; j++) sum.e[j] = from_f<T>(to_f(a.e[j]) + to_f(b.e[j]));
                s4[i] = sum.u;
                a.u = sum.u;
            }
#pragma unroll
            for (int j = 0; j < V; j++) ss += to_f(a.e[j]) * to_f(a.e[j]);
        }
        float rs = rsqrtf(block_sum(ss, scratch) / n + eps);
        // With a residual each thread rereads only the sums it wrote itself: no barrier needed.
        const uint4* src = res ? s4 : x4;
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        uint4* o4 = reinterpret_cast<uint4*>(out + base);
        for (int i = tid; i < nv; i += bd) {
            Vec16<T> a, wv, o;
            a.u = src[i];
            wv.u = __ldg(w4 + i);
#pragma unroll
            for (int j = 0; j < V; j++) o.e[j] = from_f<T>(to_f(a.e[j]) * rs * to_f(wv.e[j]));
            o4[i] = o.u;
        }
        return;
    }
    if (n <= K * bd) {
        float v[K];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int i = tid + k * bd;
            v[k] = 0.f;
            if (i < n) {
                if (res) {
                    T s = from_f<T>(to_f(x[base + i]) + to_f(res[base + i]));
                    sum_out[base + i] = s;
                    v[k] = to_f(s);
                } else {
                    v[k] = to_f(x[base + i]);
                }
            }
            ss += v[k] * v[k];
        }
        float r = rsqrtf(block_sum(ss, scratch) / n + eps);
#pragma unroll
        for (int k = 0; k < K; k++) {
            int i = tid + k * bd;
            if (i < n) out[base + i] = from_f<T>(v[k] * r * to_f(w[i]));
        }
        return;
    }
    float ss = 0.f;
    for (int i = tid; i < n; i += bd) {
        float v;
        if (res) {
            T s = from_f<T>(to_f(x[base + i]) + to_f(res[base + i]));
            sum_out[base + i] = s;
            v = to_f(s);
        } else {
            v = to_f(x[base + i]);
        }
        ss += v * v;
    }
    float r = rsqrtf(block_sum(ss, scratch) / n + eps);
    const T* src = res ? sum_out : x;
    // With a residual each thread rereads only the sums it wrote itself: no barrier needed.
    for (int i = tid; i < n; i += bd) out[base + i] = from_f<T>(to_f(src[base + i]) * r * to_f(w[i]));
}

// Grid-stride over rows; partial[blockIdx.x * n + i] accumulates dy * x * r for this block's rows.
template <typename T>
__device__ void rms_norm_backward(const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ dy, T* __restrict__ dx,
                                  float* __restrict__ partial, int rows, int n, float eps) {
    __shared__ float scratch[32];
    int tid = threadIdx.x, bd = blockDim.x;
    float* part = partial + (size_t)blockIdx.x * n;
    for (int i = tid; i < n; i += bd) part[i] = 0.f;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        size_t base = (size_t)row * n;
        float ss = 0.f, dot = 0.f;
        for (int i = tid; i < n; i += bd) {
            float xv = to_f(x[base + i]);
            ss += xv * xv;
            dot += to_f(dy[base + i]) * to_f(w[i]) * xv;
        }
        ss = block_sum(ss, scratch);
        dot = block_sum(dot, scratch);
        float r = rsqrtf(ss / n + eps);
        float c = r * r * dot / n;
        for (int i = tid; i < n; i += bd) {
            float xv = to_f(x[base + i]), d = to_f(dy[base + i]);
            dx[base + i] = from_f<T>(r * (d * to_f(w[i]) - xv * c));
            part[i] += d * xv * r;
        }
    }
}

// dw[i] = sum over the partial rows; one thread per column.
template <typename T>
__device__ void rms_norm_dw(const float* __restrict__ partial, T* __restrict__ dw, int parts, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.f;
    for (int p = 0; p < parts; p++) s += partial[(size_t)p * n + i];
    dw[i] = from_f<T>(s);
}

// The forward is bounded to 512 threads (no register spills in the register path); the host picks
// 32..512.
#define RMS_INST(suffix, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(512)                                              \
        rms_norm_##suffix(const T* x, const T* res, const T* w, T* out, int rows, int n, float eps, \
                          int vpt) {                                                               \
        rms_norm<T>(x, res, w, out, rows, n, eps, vpt);                                            \
    }
RMS_INST(f32, float)
RMS_INST(bf16, __nv_bfloat16)
RMS_INST(f16, __half)
#define RMS_BWD_PARAMS(T) const T* x, const T* w, const T* dy, T* dx, float* partial, int rows, int n, float eps
WICK_INSTANTIATE(rms_norm_backward, RMS_BWD_PARAMS, (x, w, dy, dx, partial, rows, n, eps))
#define RMS_DW_PARAMS(T) const float* partial, T* dw, int parts, int n
WICK_INSTANTIATE(rms_norm_dw, RMS_DW_PARAMS, (partial, dw, parts, n))
