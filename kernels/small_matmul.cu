// Small matrix products y = x W^T (+ bias) in one launch, for shapes where launching cuBLAS costs
// more than the work (64x64x64, decode-sized rows): x: [m, k], W: [n, k] (a Linear weight, both
// row-major with k contiguous), bias: [n] or null, y: [m, n]. f32 accumulation for every dtype; no
// workspace, no split-k, so a launch is one kernel and can be captured in a CUDA graph.
//
// Two kernels (src/gpu/small_matmul.rs picks one and sizes the grid):
// - small_matmul_skinny: m <= 8 (decode, a few tokens). One warp per output column j: the lanes
//   stride over k reading W[j, :] once (16-byte vectors when rows are aligned) and the m rows of x
//   (L1/L2-resident: at most 8 rows), then a warp reduction per row. 8 warps per block.
// - small_matmul_dot: few outputs (m n <= 16384), moderate k: latency first. A group of 8 lanes
//   per output y[i, j]: each lane reads its 16-byte slices of the x row and the W row (k = 64 f32
//   is two vectors per lane, all loads issued before the first multiply), then a 3-step shuffle
//   reduction. No shared memory and no barrier: one round trip to L2 plus a few FMAs per thread,
//   and 4096 outputs make 32768 threads = 128 blocks of 256, one per SM of an H100.
// - small_matmul_tiled{1,2}: any m. A 16x16 thread block computes a (16 TM) x (16 TN) tile of y,
//   TM = TN = 1 or 2, staging 32-wide k slices of x and W in shared memory (converted to f32,
//   stored k-major with one column of padding so the transposed writes do not conflict).
#include "common.cuh"

#define SMALL_MAX_ROWS 8

template <typename T>
__device__ void small_matmul_skinny(const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ bias, T* __restrict__ y, int m, int n,
                                    int k, int vec) {
    int j = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (j >= n) return;  // warp-uniform: the whole warp leaves
    const T* wr = w + (size_t)j * k;
    float acc[SMALL_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < SMALL_MAX_ROWS; ++i) acc[i] = 0.f;
    if (vec) {
        // k % V == 0 and every row 16-byte aligned (checked on the host).
        constexpr int V = Vec16<T>::V;
        for (int kk = lane * V; kk < k; kk += 32 * V) {
            Vec16<T> wv;
            wv.u = *reinterpret_cast<const uint4*>(wr + kk);
#pragma unroll
            for (int i = 0; i < SMALL_MAX_ROWS; ++i) {
                if (i < m) {
                    Vec16<T> xv;
                    xv.u = *reinterpret_cast<const uint4*>(x + (size_t)i * k + kk);
#pragma unroll
                    for (int e = 0; e < V; ++e) acc[i] += to_f(xv.e[e]) * to_f(wv.e[e]);
                }
            }
        }
    } else {
        for (int kk = lane; kk < k; kk += 32) {
            float wv = to_f(wr[kk]);
#pragma unroll
            for (int i = 0; i < SMALL_MAX_ROWS; ++i)
                if (i < m) acc[i] += to_f(x[(size_t)i * k + kk]) * wv;
        }
    }
    float b = bias ? to_f(bias[j]) : 0.f;
#pragma unroll
    for (int i = 0; i < SMALL_MAX_ROWS; ++i) {
        if (i >= m) break;  // m is uniform: every lane takes the same branch
        float v = warp_sum(acc[i]);
        if (lane == 0) y[(size_t)i * n + j] = from_f<T>(v + b);
    }
}

#define DOT_LANES 8

template <typename T>
__device__ void small_matmul_dot(const T* __restrict__ x, const T* __restrict__ w,
                                 const T* __restrict__ bias, T* __restrict__ y, int m, int n,
                                 int k, int vec) {
    size_t o = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / DOT_LANES;
    int g = threadIdx.x & (DOT_LANES - 1);
    bool live = o < (size_t)m * n;
    // Lanes past the end compute output 0 and write nothing: every lane reaches the shuffles.
    // m n <= INT_MAX (checked on the host): 32-bit division, far cheaper than 64-bit.
    unsigned oc = live ? (unsigned)o : 0u;
    int i = (int)(oc / (unsigned)n), j = (int)(oc % (unsigned)n);
    const T* xr = x + (size_t)i * k;
    const T* wr = w + (size_t)j * k;
    float acc0 = 0.f, acc1 = 0.f;
    if (vec) {
        // k % V == 0 and x, W 16-byte aligned (checked on the host).
        constexpr int V = Vec16<T>::V, STEP = DOT_LANES * V;
        int kk = g * V;
        for (; kk + STEP < k; kk += 2 * STEP) {
            Vec16<T> xa, wa, xb, wb;
            xa.u = __ldg(reinterpret_cast<const uint4*>(xr + kk));
            wa.u = __ldg(reinterpret_cast<const uint4*>(wr + kk));
            xb.u = __ldg(reinterpret_cast<const uint4*>(xr + kk + STEP));
            wb.u = __ldg(reinterpret_cast<const uint4*>(wr + kk + STEP));
#pragma unroll
            for (int e = 0; e < V; ++e) {
                acc0 = fmaf(to_f(xa.e[e]), to_f(wa.e[e]), acc0);
                acc1 = fmaf(to_f(xb.e[e]), to_f(wb.e[e]), acc1);
            }
        }
        if (kk < k) {
            Vec16<T> xa, wa;
            xa.u = __ldg(reinterpret_cast<const uint4*>(xr + kk));
            wa.u = __ldg(reinterpret_cast<const uint4*>(wr + kk));
#pragma unroll
            for (int e = 0; e < V; ++e) acc0 = fmaf(to_f(xa.e[e]), to_f(wa.e[e]), acc0);
        }
    } else {
        int kk = g;
#pragma unroll 4
        for (; kk + DOT_LANES < k; kk += 2 * DOT_LANES) {
            float xa = to_f(xr[kk]), wa = to_f(wr[kk]);
            float xb = to_f(xr[kk + DOT_LANES]), wb = to_f(wr[kk + DOT_LANES]);
            acc0 = fmaf(xa, wa, acc0);
            acc1 = fmaf(xb, wb, acc1);
        }
        if (kk < k) acc0 = fmaf(to_f(xr[kk]), to_f(wr[kk]), acc0);
    }
    float v = acc0 + acc1;
#pragma unroll
    for (int s = DOT_LANES / 2; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffff, v, s);
    if (live && g == 0) y[o] = from_f<T>(v + (bias ? to_f(bias[j]) : 0.f));
}

template <typename T, int TM, int TN>
__device__ void small_matmul_tiled(const T* __restrict__ x, const T* __restrict__ w,
                                   const T* __restrict__ bias, T* __restrict__ y, int m, int n,
                                   int k) {
    constexpr int BM = 16 * TM, BN = 16 * TN, BK = 32, THREADS = 256;
    __shared__ float xs[BK][BM + 1];
    __shared__ float ws[BK][BN + 1];
    int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int jj = 0; jj < TN; ++jj) acc[i][jj] = 0.f;
    for (int k0 = 0; k0 < k; k0 += BK) {
        // Consecutive threads read consecutive k of one row: coalesced.
        for (int e = tid; e < BM * BK; e += THREADS) {
            int r = e / BK, c = e % BK, gr = row0 + r, gc = k0 + c;
            xs[c][r] = (gr < m && gc < k) ? to_f(x[(size_t)gr * k + gc]) : 0.f;
        }
        for (int e = tid; e < BN * BK; e += THREADS) {
            int r = e / BK, c = e % BK, gr = col0 + r, gc = k0 + c;
            ws[c][r] = (gr < n && gc < k) ? to_f(w[(size_t)gr * k + gc]) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], bv[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int jj = 0; jj < TN; ++jj) bv[jj] = ws[kk][tx + 16 * jj];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int jj = 0; jj < TN; ++jj) acc[i][jj] += a[i] * bv[jj];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        int r = row0 + ty + 16 * i;
        if (r >= m) continue;
#pragma unroll
        for (int jj = 0; jj < TN; ++jj) {
            int c = col0 + tx + 16 * jj;
            if (c < n) y[(size_t)r * n + c] = from_f<T>(acc[i][jj] + (bias ? to_f(bias[c]) : 0.f));
        }
    }
}

#define SKINNY_PARAMS(T) const T* x, const T* w, const T* bias, T* y, int m, int n, int k, int vec
WICK_INSTANTIATE(small_matmul_skinny, SKINNY_PARAMS, (x, w, bias, y, m, n, k, vec))

WICK_INSTANTIATE(small_matmul_dot, SKINNY_PARAMS, (x, w, bias, y, m, n, k, vec))

#define TILED_PARAMS(T) const T* x, const T* w, const T* bias, T* y, int m, int n, int k
#define TILED_INSTANTIATE(TM)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) small_matmul_tiled##TM##_f32(TILED_PARAMS(float)) { \
        small_matmul_tiled<float, TM, TM>(x, w, bias, y, m, n, k);                              \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) small_matmul_tiled##TM##_bf16(TILED_PARAMS(__nv_bfloat16)) { \
        small_matmul_tiled<__nv_bfloat16, TM, TM>(x, w, bias, y, m, n, k);                      \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) small_matmul_tiled##TM##_f16(TILED_PARAMS(__half)) { \
        small_matmul_tiled<__half, TM, TM>(x, w, bias, y, m, n, k);                             \
    }
TILED_INSTANTIATE(1)
TILED_INSTANTIATE(2)

// Holds the stream for about `cycles` clock cycles, so that launches queued behind it run back to
// back and CUDA events around them time the GPU alone (src/gpu/overhead.rs).
extern "C" __global__ void gpu_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
