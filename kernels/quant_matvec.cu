// Quantized matrix-vector products for batch-1 decode on raw GGML blocks (the CUDA decode engine,
// src/generate/cuda_decode/). Every weight byte is read once per product; blocks are dequantized in
// registers and accumulated in f32. CPU twin: src/gpu/decode/reference.rs.
//
// Block formats (32 weights per block, little-endian, rows of k/32 consecutive blocks):
//   Q4_0 (18 B): f16 d, u8 qs[16];         w[j] = d * ((qs[j] & 15) - 8), w[j+16] = d * ((qs[j] >> 4) - 8)
//   Q4_1 (20 B): f16 d, f16 m, u8 qs[16];  w[j] = d * (qs[j] & 15) + m,   w[j+16] = d * (qs[j] >> 4) + m
//   Q8_0 (34 B): f16 d, i8 qs[32];         w[j] = d * qs[j]
//
// Work split: one warp per output row (grid-stride over rows); lane i takes part (i & 3) of block
// (i >> 2), i.e. 8 weights, so a warp covers 8 blocks per iteration (unrolled 4 times, so a lane's
// weight loads are in flight together: the kernels are bound by load latency, not bandwidth).
// x (normalized when the kernel fuses RMSNorm) sits in shared memory as f32.
//
// qmv_<q>(w, x, norm_w, y, rows, k, eps, accumulate):
//   xn = norm_w ? x * rsqrt(mean(x^2) + eps) * norm_w : x
//   y[r] = (accumulate ? y[r] : 0) + sum_j W[r, j] xn[j]
// qmv_swiglu_<q>(wg, wu, x, norm_w, y, rows, k, eps):
//   y[r] = silu(Wg[r] . xn) * (Wu[r] . xn)
// embed_<q>(table, state, x, hidden): x = dequantized row state[0] of the table.
#include "common.cuh"

#define MV_WARPS 4

// Dot product of part p (0..3) of one block with the 32 x values of that block.
__device__ __forceinline__ float dot_part_q4_0(const uint8_t* blk, int p, const float* xb) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    const uint16_t* qs = reinterpret_cast<const uint16_t*>(blk + 2 + 4 * p);
    uint32_t q = (uint32_t)qs[0] | ((uint32_t)qs[1] << 16);
    float4 xl = *reinterpret_cast<const float4*>(xb + 4 * p);
    float4 xh = *reinterpret_cast<const float4*>(xb + 16 + 4 * p);
    float s = (float)(q & 15) * xl.x + (float)((q >> 8) & 15) * xl.y + (float)((q >> 16) & 15) * xl.z +
              (float)((q >> 24) & 15) * xl.w + (float)((q >> 4) & 15) * xh.x +
              (float)((q >> 12) & 15) * xh.y + (float)((q >> 20) & 15) * xh.z + (float)((q >> 28) & 15) * xh.w;
    float sx = (xl.x + xl.y + xl.z + xl.w) + (xh.x + xh.y + xh.z + xh.w);
    return d * (s - 8.f * sx);
}

__device__ __forceinline__ float dot_part_q4_1(const uint8_t* blk, int p, const float* xb) {
    __half2 dm = *reinterpret_cast<const __half2*>(blk);
    float d = __low2float(dm), m = __high2float(dm);
    uint32_t q = *reinterpret_cast<const uint32_t*>(blk + 4 + 4 * p);
    float4 xl = *reinterpret_cast<const float4*>(xb + 4 * p);
    float4 xh = *reinterpret_cast<const float4*>(xb + 16 + 4 * p);
    float s = (float)(q & 15) * xl.x + (float)((q >> 8) & 15) * xl.y + (float)((q >> 16) & 15) * xl.z +
              (float)((q >> 24) & 15) * xl.w + (float)((q >> 4) & 15) * xh.x +
              (float)((q >> 12) & 15) * xh.y + (float)((q >> 20) & 15) * xh.z + (float)((q >> 28) & 15) * xh.w;
    float sx = (xl.x + xl.y + xl.z + xl.w) + (xh.x + xh.y + xh.z + xh.w);
    return d * s + m * sx;
}

__device__ __forceinline__ float dot_part_q8_0(const uint8_t* blk, int p, const float* xb) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    const uint16_t* qs = reinterpret_cast<const uint16_t*>(blk + 2 + 8 * p);
    float4 x0 = *reinterpret_cast<const float4*>(xb + 8 * p);
    float4 x1 = *reinterpret_cast<const float4*>(xb + 8 * p + 4);
    uint16_t a = qs[0], b = qs[1], c = qs[2], e = qs[3];
    float s = (float)(int8_t)(a & 255) * x0.x + (float)(int8_t)(a >> 8) * x0.y +
              (float)(int8_t)(b & 255) * x0.z + (float)(int8_t)(b >> 8) * x0.w +
              (float)(int8_t)(c & 255) * x1.x + (float)(int8_t)(c >> 8) * x1.y +
              (float)(int8_t)(e & 255) * x1.z + (float)(int8_t)(e >> 8) * x1.w;
    return d * s;
}

// One weight j (0..31) of a block, dequantized (the embedding lookup).
__device__ __forceinline__ float dequant_q4_0(const uint8_t* blk, int j) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    uint8_t q = blk[2 + (j & 15)];
    int v = j < 16 ? (q & 15) : (q >> 4);
    return d * (float)(v - 8);
}
__device__ __forceinline__ float dequant_q4_1(const uint8_t* blk, int j) {
    __half2 dm = *reinterpret_cast<const __half2*>(blk);
    uint8_t q = blk[4 + (j & 15)];
    int v = j < 16 ? (q & 15) : (q >> 4);
    return __low2float(dm) * (float)v + __high2float(dm);
}
__device__ __forceinline__ float dequant_q8_0(const uint8_t* blk, int j) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    return d * (float)(int8_t)blk[2 + j];
}

// Copies total f32 values of x into shared xs, 16-byte loads with LOAD_UNROLL of them in flight per
// thread before any is stored. x is read by every block of a launch and sits in L2: the copy is
// bound by load latency, so independent loads matter more than anything else here (a plain
// strided loop issued them one after another: ~3 us of the ~8 us of a 576-wide mat-vec, ~20 us at
// 8 sequences).
#define LOAD_UNROLL 8
__device__ __forceinline__ void copy_to_shared(const float* __restrict__ x, float* xs, int total) {
    int bd = blockDim.x;
    if ((total & 3) == 0 && aligned16(x)) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* s4 = reinterpret_cast<float4*>(xs);
        int n4 = total >> 2;
        for (int base = threadIdx.x; base < n4; base += LOAD_UNROLL * bd) {
            float4 v[LOAD_UNROLL];
#pragma unroll
            for (int u = 0; u < LOAD_UNROLL; u++)
                if (base + u * bd < n4) v[u] = __ldg(x4 + base + u * bd);
#pragma unroll
            for (int u = 0; u < LOAD_UNROLL; u++)
                if (base + u * bd < n4) s4[base + u * bd] = v[u];
        }
    } else {
        for (int i = threadIdx.x; i < total; i += bd) xs[i] = x[i];
    }
    __syncthreads();
}

// Copies x[0..k) into shared xs, RMS-normalized and scaled by norm_w when norm_w is not null.
__device__ __forceinline__ void load_x(const float* __restrict__ x, const float* __restrict__ norm_w,
                                       float eps, int k, float* xs) {
    __shared__ float red[32];
    copy_to_shared(x, xs, k);
    if (norm_w != nullptr) {
        float ss = 0.f;
        for (int i = threadIdx.x; i < k; i += blockDim.x) ss += xs[i] * xs[i];
        float r = rsqrtf(block_sum(ss, red) / (float)k + eps);
        for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = xs[i] * r * norm_w[i];
        __syncthreads();
    }
}

// Asks L2 for the first row this warp will read (lane i: the row's i-th 128-byte line), before the
// x prologue: the weights come from HBM, and their latency then overlaps the prologue's.
__device__ __forceinline__ void prefetch_first_row(const uint8_t* w, int rows, int row_bytes) {
    int row = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const uint8_t* r = w + (size_t)row * row_bytes;
    for (int off = (threadIdx.x & 31) * 128; off < row_bytes; off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(r + off));
}

#define DEFINE_QMV(Q, BYTES)                                                                        \
    extern "C" __global__ void qmv_##Q(const uint8_t* __restrict__ w, const float* __restrict__ x,   \
                                       const float* __restrict__ norm_w, float* __restrict__ y,     \
                                       int rows, int k, float eps, int accumulate) {                 \
        extern __shared__ float xs[];                                                               \
        prefetch_first_row(w, rows, (k / 32) * BYTES);                                              \
        load_x(x, norm_w, eps, k, xs);                                                              \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                       \
        int parts = (k / 32) * 4;                                                                   \
        for (int row = blockIdx.x * MV_WARPS + warp; row < rows; row += gridDim.x * MV_WARPS) {     \
            const uint8_t* wr = w + (size_t)row * (k / 32) * BYTES;                                 \
            float acc = 0.f;                                                                        \
            _Pragma("unroll 4") for (int i = lane; i < parts; i += 32)                                                  \
                acc += dot_part_##Q(wr + (i >> 2) * BYTES, i & 3, xs + (i >> 2) * 32);              \
            acc = warp_sum(acc);                                                                    \
            if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;                                \
        }                                                                                           \
    }                                                                                               \
    extern "C" __global__ void qmv_swiglu_##Q(const uint8_t* __restrict__ wg,                       \
                                              const uint8_t* __restrict__ wu,                       \
                                              const float* __restrict__ x,                          \
                                              const float* __restrict__ norm_w,                     \
                                              float* __restrict__ y, int rows, int k, float eps) {  \
        extern __shared__ float xs[];                                                               \
        prefetch_first_row(wg, rows, (k / 32) * BYTES);                                             \
        prefetch_first_row(wu, rows, (k / 32) * BYTES);                                             \
        load_x(x, norm_w, eps, k, xs);                                                              \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                       \
        int parts = (k / 32) * 4;                                                                   \
        for (int row = blockIdx.x * MV_WARPS + warp; row < rows; row += gridDim.x * MV_WARPS) {     \
            const uint8_t* gr = wg + (size_t)row * (k / 32) * BYTES;                                \
            const uint8_t* ur = wu + (size_t)row * (k / 32) * BYTES;                                \
            float g = 0.f, u = 0.f;                                                                 \
            _Pragma("unroll 4") for (int i = lane; i < parts; i += 32) {                                                \
                const float* xb = xs + (i >> 2) * 32;                                               \
                g += dot_part_##Q(gr + (i >> 2) * BYTES, i & 3, xb);                                \
                u += dot_part_##Q(ur + (i >> 2) * BYTES, i & 3, xb);                                \
            }                                                                                       \
            g = warp_sum(g);                                                                        \
            u = warp_sum(u);                                                                        \
            if (lane == 0) y[row] = g / (1.f + expf(-g)) * u;                                       \
        }                                                                                           \
    }                                                                                               \
    extern "C" __global__ void embed_##Q(const uint8_t* __restrict__ table,                         \
                                         const int* __restrict__ state, float* __restrict__ x,      \
                                         int hidden) {                                              \
        const uint8_t* row = table + (size_t)state[0] * (hidden / 32) * BYTES;                      \
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hidden; j += gridDim.x * blockDim.x) \
            x[j] = dequant_##Q(row + (j / 32) * BYTES, j & 31);                                     \
    }

DEFINE_QMV(q4_0, 18)
DEFINE_QMV(q4_1, 20)
DEFINE_QMV(q8_0, 34)

// ---- Batched decode: NB sequences at once, each weight read once for all of them ----
//
// qmvb_<q>(w, x, norm_w, y, rows, k, eps, accumulate, nb): x [nb, k], y [nb, rows], nb <= QMVB_MAX;
//   per sequence b: xn_b = norm_w ? rms_norm(x_b) * norm_w : x_b, y[b, r] (+)= W[r] . xn_b.
// qmvb_swiglu_<q>(wg, wu, x, norm_w, y, rows, k, eps, nb): y[b, r] = silu(Wg[r] . xn_b) * (Wu[r] . xn_b).
// embedb_<q>(table, state, x, hidden): blockIdx.y = sequence b: x[b] = row state[2 b] of the table.
// Same work split as qmv (a warp per row, lane i on part i & 3 of block i >> 2); the part's 8
// weights are dequantized once into registers and dotted with every sequence's x. Dynamic shared
// memory: nb * k floats (the host opts in above 48 KiB).
#define QMVB_MAX 8

// The 8 weights of part p of a block, in the order of part_x below.
__device__ __forceinline__ void part_w_q4_0(const uint8_t* blk, int p, float* w) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    const uint16_t* qs = reinterpret_cast<const uint16_t*>(blk + 2 + 4 * p);
    uint32_t q = (uint32_t)qs[0] | ((uint32_t)qs[1] << 16);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        w[j] = d * ((float)((q >> (8 * j)) & 15) - 8.f);
        w[4 + j] = d * ((float)((q >> (8 * j + 4)) & 15) - 8.f);
    }
}
__device__ __forceinline__ void part_w_q4_1(const uint8_t* blk, int p, float* w) {
    __half2 dm = *reinterpret_cast<const __half2*>(blk);
    float d = __low2float(dm), m = __high2float(dm);
    uint32_t q = *reinterpret_cast<const uint32_t*>(blk + 4 + 4 * p);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        w[j] = d * (float)((q >> (8 * j)) & 15) + m;
        w[4 + j] = d * (float)((q >> (8 * j + 4)) & 15) + m;
    }
}
__device__ __forceinline__ void part_w_q8_0(const uint8_t* blk, int p, float* w) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2 + 8 * p);
#pragma unroll
    for (int j = 0; j < 8; j++) w[j] = d * (float)qs[j];
}
// Dot of 8 part weights with x of one block (xb: the block's 32 values): Q4 parts hold positions
// 4p..4p+3 (low nibbles) and 16+4p..16+4p+3 (high nibbles); Q8_0 parts 8p..8p+7.
__device__ __forceinline__ float part_dot_q4(const float* w, const float* xb, int p) {
    float4 xl = *reinterpret_cast<const float4*>(xb + 4 * p);
    float4 xh = *reinterpret_cast<const float4*>(xb + 16 + 4 * p);
    return w[0] * xl.x + w[1] * xl.y + w[2] * xl.z + w[3] * xl.w + w[4] * xh.x + w[5] * xh.y +
           w[6] * xh.z + w[7] * xh.w;
}
__device__ __forceinline__ float part_dot_q8(const float* w, const float* xb, int p) {
    float4 x0 = *reinterpret_cast<const float4*>(xb + 8 * p);
    float4 x1 = *reinterpret_cast<const float4*>(xb + 8 * p + 4);
    return w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w + w[4] * x1.x + w[5] * x1.y +
           w[6] * x1.z + w[7] * x1.w;
}
#define part_dot_q4_0 part_dot_q4
#define part_dot_q4_1 part_dot_q4
#define part_dot_q8_0 part_dot_q8

// Copies x [nb, k] into shared xs, each row RMS-normalized and scaled by norm_w when not null. The
// nb sums of squares are reduced together (two barriers), from shared memory after one copy.
__device__ __forceinline__ void load_xb(const float* __restrict__ x, const float* __restrict__ norm_w,
                                        float eps, int k, int nb, float* xs) {
    __shared__ float red[QMVB_MAX][32];
    __shared__ float rs[QMVB_MAX];
    copy_to_shared(x, xs, nb * k);
    if (norm_w == nullptr) return;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int b = 0; b < QMVB_MAX; b++) {
        if (b < nb) {
            float ss = 0.f;
            for (int i = threadIdx.x; i < k; i += blockDim.x) ss += xs[b * k + i] * xs[b * k + i];
            ss = warp_sum(ss);
            if (lane == 0) red[b][warp] = ss;
        }
    }
    __syncthreads();
    if (threadIdx.x < nb) {
        float t = 0.f;
        for (int w = 0; w < warps; w++) t += red[threadIdx.x][w];
        rs[threadIdx.x] = rsqrtf(t / (float)k + eps);
    }
    __syncthreads();
    for (int b = 0; b < nb; b++)
        for (int i = threadIdx.x; i < k; i += blockDim.x) xs[b * k + i] = xs[b * k + i] * rs[b] * norm_w[i];
    __syncthreads();
}

#define DEFINE_QMVB(Q, BYTES)                                                                        \
    extern "C" __global__ void qmvb_##Q(const uint8_t* __restrict__ w, const float* __restrict__ x,   \
                                        const float* __restrict__ norm_w, float* __restrict__ y,     \
                                        int rows, int k, float eps, int accumulate, int nb) {        \
        extern __shared__ float xs[];                                                                \
        prefetch_first_row(w, rows, (k / 32) * BYTES);                                               \
        load_xb(x, norm_w, eps, k, nb, xs);                                                          \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                        \
        int parts = (k / 32) * 4;                                                                    \
        for (int row = blockIdx.x * MV_WARPS + warp; row < rows; row += gridDim.x * MV_WARPS) {      \
            const uint8_t* wr = w + (size_t)row * (k / 32) * BYTES;                                  \
            float acc[QMVB_MAX];                                                                     \
            _Pragma("unroll") for (int b = 0; b < QMVB_MAX; b++) acc[b] = 0.f;                       \
            _Pragma("unroll 4") for (int i = lane; i < parts; i += 32) {                                                 \
                float wv[8];                                                                         \
                part_w_##Q(wr + (i >> 2) * BYTES, i & 3, wv);                                        \
                _Pragma("unroll") for (int b = 0; b < QMVB_MAX; b++) if (b < nb) acc[b] +=           \
                    part_dot_##Q(wv, xs + b * k + (i >> 2) * 32, i & 3);                             \
            }                                                                                        \
            _Pragma("unroll") for (int b = 0; b < QMVB_MAX; b++) {                                   \
                if (b < nb) {                                                                        \
                    float s = warp_sum(acc[b]);                                                      \
                    size_t at = (size_t)b * rows + row;                                              \
                    if (lane == 0) y[at] = accumulate ? y[at] + s : s;                               \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    extern "C" __global__ void qmvb_swiglu_##Q(const uint8_t* __restrict__ wg,                       \
                                               const uint8_t* __restrict__ wu,                       \
                                               const float* __restrict__ x,                          \
                                               const float* __restrict__ norm_w,                     \
                                               float* __restrict__ y, int rows, int k, float eps,    \
                                               int nb) {                                             \
        extern __shared__ float xs[];                                                                \
        prefetch_first_row(wg, rows, (k / 32) * BYTES);                                              \
        prefetch_first_row(wu, rows, (k / 32) * BYTES);                                              \
        load_xb(x, norm_w, eps, k, nb, xs);                                                          \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                        \
        int parts = (k / 32) * 4;                                                                    \
        for (int row = blockIdx.x * MV_WARPS + warp; row < rows; row += gridDim.x * MV_WARPS) {      \
            const uint8_t* gr = wg + (size_t)row * (k / 32) * BYTES;                                 \
            const uint8_t* ur = wu + (size_t)row * (k / 32) * BYTES;                                 \
            float g[QMVB_MAX], u[QMVB_MAX];                                                          \
            _Pragma("unroll") for (int b = 0; b < QMVB_MAX; b++) g[b] = u[b] = 0.f;                  \
            _Pragma("unroll 4") for (int i = lane; i < parts; i += 32) {                                                 \
                float gv[8], uv[8];                                                                  \
                part_w_##Q(gr + (i >> 2) * BYTES, i & 3, gv);                                        \
                part_w_##Q(ur + (i >> 2) * BYTES, i & 3, uv);                                        \
                _Pragma("unroll") for (int b = 0; b < QMVB_MAX; b++) {                               \
                    if (b < nb) {                                                                    \
                        const float* xb = xs + b * k + (i >> 2) * 32;                                \
                        g[b] += part_dot_##Q(gv, xb, i & 3);                                         \
                        u[b] += part_dot_##Q(uv, xb, i & 3);                                         \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
            _Pragma("unroll") for (int b = 0; b < QMVB_MAX; b++) {                                   \
                if (b < nb) {                                                                        \
                    float gs = warp_sum(g[b]), us = warp_sum(u[b]);                                  \
                    if (lane == 0) y[(size_t)b * rows + row] = gs / (1.f + expf(-gs)) * us;          \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    extern "C" __global__ void embedb_##Q(const uint8_t* __restrict__ table,                         \
                                          const int* __restrict__ state, float* __restrict__ x,      \
                                          int hidden) {                                              \
        int b = blockIdx.y;                                                                          \
        const uint8_t* row = table + (size_t)state[2 * b] * (hidden / 32) * BYTES;                   \
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hidden; j += gridDim.x * blockDim.x) \
            x[(size_t)b * hidden + j] = dequant_##Q(row + (j / 32) * BYTES, j & 31);                 \
    }

DEFINE_QMVB(q4_0, 18)
DEFINE_QMVB(q4_1, 20)
DEFINE_QMVB(q8_0, 34)
