// Flash-decoding: one query token per (batch, head) against T cached positions, split over the
// sequence. decode_attention_split: grid (b * heads, chunks), one warp per key at a time; each lane
// holds d/32 dims of q and of the running output. Each block leaves, per chunk, its max m, sum s
// and unnormalised output acc[d] in f32 scratch. decode_attention_merge: grid b * heads, rescales the
// chunks to the global max and writes out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) s_c.
// k/v: [b, kv, T, d] with strides (s0, s1, s2, 1); GQA: head h reads kv head h / (heads / kv).
#include "common.cuh"

#define MAX_PER_LANE 8  // head dim up to 256
#define WARPS 4

template <typename T>
__device__ void decode_attention_split(const T* __restrict__ q, const T* __restrict__ k,
                                       const T* __restrict__ v, float* __restrict__ scratch_out,
                                       int heads, int kv_heads, int len, int d, int chunk,
                                       long long ks0, long long ks1, long long ks2,
                                       long long vs0, long long vs1, long long vs2, float scale) {
    __shared__ float sm[WARPS], ss[WARPS];
    __shared__ float sacc[WARPS][MAX_PER_LANE * 32];
    int bh = blockIdx.x, c = blockIdx.y, chunks = gridDim.y;
    int bi = bh / heads, h = bh % heads, kvh = h / (heads / kv_heads);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int per_lane = (d + 31) / 32;
    float qv[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        qv[j] = (j < per_lane && i < d) ? to_f(q[(size_t)bh * d + i]) * scale : 0.f;
        acc[j] = 0.f;
    }
    const T* kb = k + bi * ks0 + kvh * ks1;
    const T* vb = v + bi * vs0 + kvh * vs1;
    float m = -INFINITY, s = 0.f;
    int start = c * chunk, end = min(len, start + chunk);
    for (int t = start + warp; t < end; t += WARPS) {
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (j < per_lane && i < d) dot += qv[j] * to_f(kb[t * ks2 + i]);
        }
        dot = warp_sum(dot);
        float nm = fmaxf(m, dot);
        float corr = __expf(m - nm), p = __expf(dot - nm);
        s = s * corr + p;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (j < per_lane && i < d) acc[j] = acc[j] * corr + p * to_f(vb[t * vs2 + i]);
        }
        m = nm;
    }
    if (lane == 0) { sm[warp] = m; ss[warp] = s; }
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) sacc[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    if (warp != 0) return;
    float M = -INFINITY;
    for (int w = 0; w < WARPS; w++) M = fmaxf(M, sm[w]);
    float S = 0.f;
    float out[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) out[j] = 0.f;
    for (int w = 0; w < WARPS; w++) {
        float f = sm[w] == -INFINITY ? 0.f : __expf(sm[w] - M);
        S += ss[w] * f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) out[j] += sacc[w][lane + 32 * j] * f;
    }
    // scratch layout per (bh, c): [m, s, acc[d]]
    float* dst = scratch_out + ((size_t)bh * chunks + c) * (d + 2);
    if (lane == 0) { dst[0] = M; dst[1] = S; }
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (j < per_lane && i < d) dst[2 + i] = out[j];
    }
}

template <typename T>
__device__ void decode_attention_merge(const float* __restrict__ scratch_in, T* __restrict__ out,
                                       int chunks, int d) {
    int bh = blockIdx.x;
    const float* src = scratch_in + (size_t)bh * chunks * (d + 2);
    float M = -INFINITY;
    for (int c = 0; c < chunks; c++) M = fmaxf(M, src[c * (d + 2)]);
    float S = 0.f;
    for (int c = 0; c < chunks; c++) {
        float mc = src[c * (d + 2)];
        if (mc != -INFINITY) S += src[c * (d + 2) + 1] * __expf(mc - M);
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float a = 0.f;
        for (int c = 0; c < chunks; c++) {
            float mc = src[c * (d + 2)];
            if (mc != -INFINITY) a += src[c * (d + 2) + 2 + i] * __expf(mc - M);
        }
        out[(size_t)bh * d + i] = from_f<T>(a / S);
    }
}

#define DA_PARAMS(T) const T* q, const T* k, const T* v, float* scratch, int heads, int kv_heads, int len, int d, int chunk, long long ks0, long long ks1, long long ks2, long long vs0, long long vs1, long long vs2, float scale
WICK_INSTANTIATE(decode_attention_split, DA_PARAMS, (q, k, v, scratch, heads, kv_heads, len, d, chunk, ks0, ks1, ks2, vs0, vs1, vs2, scale))
#define DA_MERGE_PARAMS(T) const float* scratch, T* out, int chunks, int d
WICK_INSTANTIATE(decode_attention_merge, DA_MERGE_PARAMS, (scratch, out, chunks, d))
