// Fused LoRA linear y = x W^T + bias + s (x A^T) B^T; x: [t, in], W: [out, in], A: [r, in], B: [out, r].
//
// lora_linear_small (t <= 8, decode and short prompts): one kernel. Each block first computes the
// rank-r projection low = s x A^T for all t tokens into shared memory (one warp per (token, k) dot),
// then each warp produces output rows: the base dot products for all t tokens share each load of a
// W row (16-byte vector loads when the rows are aligned), and the low-rank term is added in the same
// pass (one warp reduction for both). Each warp issues the loads of its first W row (up to PRE
// vectors per lane) and B row before the projection, so one DRAM round trip covers W, B, x and A.
// W is read exactly once; x and A are tiny and stay in L2.
//
// lora_add_low_rank (many tokens): y[t, o] (+)= bias[o] + s * sum_k low[t, k] B[o, k], one thread
// per output, with low = x A^T from cuBLAS; `accumulate` says whether y already holds x W^T.
#include "common.cuh"

#define MAX_T 8
#define MAX_R 64
#define WARPS 8

// Dot of 16 bytes of a and b reinterpreted as T.
template <typename T>
__device__ __forceinline__ float dot16(uint4 a, uint4 b) {
    const T* pa = reinterpret_cast<const T*>(&a);
    const T* pb = reinterpret_cast<const T*>(&b);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 16 / (int)sizeof(T); j++) s += to_f(pa[j]) * to_f(pb[j]);
    return s;
}

// 16-byte vectors of a W row each lane loads before the rank-r projection (bf16 in <= 1024 and f32
// in <= 512 are read entirely up front); the rest of the row streams in the main loop.
#define PRE 4

template <typename T>
__device__ void lora_linear_small(const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ bias, const T* __restrict__ a,
                                  const T* __restrict__ b, T* __restrict__ y, int t, int in,
                                  int out, int r, float scale, int vec) {
    __shared__ float low[MAX_T * MAX_R];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int V = 16 / sizeof(T);
    // 0. Start this warp's first output row before anything else: the first PRE 16-byte vectors of
    //    each lane's share of the W row, and the lane's B entries (lane k < r holds B[o, k],
    //    B[o, k + 32]), so the DRAM latency of W and B overlaps step 1.
    int o = blockIdx.x * WARPS + warp;
    uint4 wpre[PRE];
    float bpre0 = 0.f, bpre1 = 0.f;
    if (o < out) {
        const T* wr = w + (size_t)o * in;
        if (vec) {
#pragma unroll
            for (int p = 0; p < PRE; p++) {
                int i = (lane + p * 32) * V;
                if (i < in) wpre[p] = __ldg(reinterpret_cast<const uint4*>(wr + i));
            }
        }
        if (lane < r) bpre0 = to_f(b[(size_t)o * r + lane]);
        if (lane + 32 < r) bpre1 = to_f(b[(size_t)o * r + lane + 32]);
    }
    // 1. low[tt * r + k] = s * dot(x[tt], A[k]), one warp per (token, k) pair.
    for (int p = warp; p < t * r; p += WARPS) {
        int tt = p / r, k = p % r;
        const T* xr = x + (size_t)tt * in;
        const T* ar = a + (size_t)k * in;
        float s = 0.f;
        if (vec) {
#pragma unroll 4
            for (int i = lane * V; i < in; i += 32 * V)
                s += dot16<T>(__ldg(reinterpret_cast<const uint4*>(xr + i)),
                              __ldg(reinterpret_cast<const uint4*>(ar + i)));
        } else {
            for (int i = lane; i < in; i += 32) s += to_f(xr[i]) * to_f(ar[i]);
        }
        s = warp_sum(s);
        if (lane == 0) low[p] = s * scale;
    }
    __syncthreads();
    // 2. One warp per output row o: the base product for all tokens shares each load of the W row;
    //    the rank-r term is added in the same pass.
    for (bool first = true; o < out; o += gridDim.x * WARPS, first = false) {
        const T* wr = w + (size_t)o * in;
        float acc[MAX_T];
#pragma unroll
        for (int tt = 0; tt < MAX_T; tt++) acc[tt] = 0.f;
        if (vec) {
            int i = lane * V;
            if (first) {
#pragma unroll
                for (int p = 0; p < PRE; p++, i += 32 * V) {
                    if (i < in) {
#pragma unroll
                        for (int tt = 0; tt < MAX_T; tt++)
                            if (tt < t)
                                acc[tt] += dot16<T>(wpre[p], __ldg(reinterpret_cast<const uint4*>(
                                                                 x + (size_t)tt * in + i)));
                    }
                }
            }
#pragma unroll 4
            for (; i < in; i += 32 * V) {
                uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + i));
#pragma unroll
                for (int tt = 0; tt < MAX_T; tt++)
                    if (tt < t)
                        acc[tt] += dot16<T>(wv, __ldg(reinterpret_cast<const uint4*>(x + (size_t)tt * in + i)));
            }
        } else {
            for (int i = lane; i < in; i += 32) {
                float wv = to_f(wr[i]);
#pragma unroll
                for (int tt = 0; tt < MAX_T; tt++)
                    if (tt < t) acc[tt] += wv * to_f(x[(size_t)tt * in + i]);
            }
        }
        if (!first) {
            bpre0 = lane < r ? to_f(b[(size_t)o * r + lane]) : 0.f;
            bpre1 = lane + 32 < r ? to_f(b[(size_t)o * r + lane + 32]) : 0.f;
        }
        float bias_o = bias ? to_f(bias[o]) : 0.f;
#pragma unroll
        for (int tt = 0; tt < MAX_T; tt++) {
            if (tt >= t) break;
            // The base dot and the rank-r sum reduce together: lanes k < r add low[k] * B[o, k].
            float v = acc[tt];
            if (lane < r) v += low[tt * r + lane] * bpre0;
            if (lane + 32 < r) v += low[tt * r + lane + 32] * bpre1;
            v = warp_sum(v);
            if (lane == 0) y[(size_t)tt * out + o] = from_f<T>(v + bias_o);
        }
    }
}

template <typename T>
__device__ void lora_add_low_rank(T* __restrict__ y, const T* __restrict__ low, const T* __restrict__ b,
                                  const T* __restrict__ bias, int t, int out, int r, float scale,
                                  int accumulate) {
    size_t n = (size_t)t * out;
    constexpr int V = Vec16<T>::V;
    bool vec = r % V == 0 && aligned16(low) && aligned16(b);
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        int o = idx % out;
        size_t tt = idx / out;
        float s = 0.f;
        const T* lr = low + tt * r;
        const T* br = b + (size_t)o * r;
        if (vec) {
            // 16-byte loads of the rank-r rows: r / V loads each instead of r.
            for (int k = 0; k < r; k += V) {
                Vec16<T> lv, bv;
                lv.u = *reinterpret_cast<const uint4*>(lr + k);
                bv.u = *reinterpret_cast<const uint4*>(br + k);
#pragma unroll
                for (int j = 0; j < V; j++) s += to_f(lv.e[j]) * to_f(bv.e[j]);
            }
        } else {
            for (int k = 0; k < r; k++) s += to_f(lr[k]) * to_f(br[k]);
        }
        float v = accumulate ? to_f(y[idx]) : 0.f;
        if (bias) v += to_f(bias[o]);
        y[idx] = from_f<T>(v + scale * s);
    }
}

#define SMALL_PARAMS(T) const T* x, const T* w, const T* bias, const T* a, const T* b, T* y, int t, int in, int out, int r, float scale, int vec
WICK_INSTANTIATE(lora_linear_small, SMALL_PARAMS, (x, w, bias, a, b, y, t, in, out, r, scale, vec))
#define ADD_PARAMS(T) T* y, const T* low, const T* b, const T* bias, int t, int out, int r, float scale, int accumulate
WICK_INSTANTIATE(lora_add_low_rank, ADD_PARAMS, (y, low, b, bias, t, out, r, scale, accumulate))
