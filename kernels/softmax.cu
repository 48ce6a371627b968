// Softmax over the last dim, one block per row, statistics in f32. Backward: dx = y * (dy - sum(dy * y)).
//
// Forward paths, picked per launch (the host sizes the block; see gpu::launch::row_plan):
// - Register path (rows of n % V == 0 elements, 16-byte aligned, up to vpt * blockDim 16-byte vectors):
//   each thread loads its vpt vectors with 16-byte loads, all issued before any arithmetic, and keeps
//   them raw (8 bf16/f16 or 4 f32 per 16 bytes, so at most 32 registers of data). The thread's own
//   max m and sum s = sum exp(v - m) come from its registers, and one block reduction merges the
//   (m, s) pairs (s rescaled by exp(m - M)): one read and one write of the row, one reduction round
//   (the previous kernel had two: max, then sum).
// - Long rows (vocabularies up to 152k): an online pass over 16-byte vectors keeps (m, s) per thread,
//   the same pair reduction, then a second read (mostly from L2) to write.
// - Rows that do not split into aligned 16-byte vectors: scalar versions of the two paths.
#include "common.cuh"

#define K 8
// Most 16-byte vectors per thread in the register path (vpt <= MAXV).
#define MAXV 8

// (m, s) <- (m, s) merged with (mo, so): s' = s e^(m - M) + so e^(mo - M), M = max(m, mo). A side
// with m = -inf holds no finite element and contributes 0.
__device__ __forceinline__ void ms_merge(float& m, float& s, float mo, float so) {
    float mn = fmaxf(m, mo);
    float a = m == -INFINITY ? 0.f : s * __expf(m - mn);
    float b = mo == -INFINITY ? 0.f : so * __expf(mo - mn);
    m = mn;
    s = a + b;
}

// Block-wide (max, sum) pair reduction; every thread gets the row's max and its sum of exp(v - max).
__device__ __forceinline__ void block_max_sum(float& m, float& s) {
    __shared__ float sm[32], ss[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ms_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
    if (warps == 1) return;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < warps ? sm[lane] : -INFINITY;
    s = lane < warps ? ss[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ms_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
}

// Folds the V elements of one 16-byte vector into the running (m, s) of this thread.
template <typename T>
__device__ __forceinline__ void fold16(uint4 raw, float& m, float& s) {
    Vec16<T> v;
    v.u = raw;
    float mv = -INFINITY;
#pragma unroll
    for (int j = 0; j < Vec16<T>::V; j++) mv = fmaxf(mv, to_f(v.e[j]));
    if (mv == -INFINITY) return;
    if (mv > m) {
        s = m == -INFINITY ? 0.f : s * __expf(m - mv);
        m = mv;
    }
#pragma unroll
    for (int j = 0; j < Vec16<T>::V; j++) s += __expf(to_f(v.e[j]) - m);
}

template <typename T>
__device__ __forceinline__ uint4 softmax16(uint4 raw, float m, float inv) {
    Vec16<T> v, o;
    v.u = raw;
#pragma unroll
    for (int j = 0; j < Vec16<T>::V; j++) o.e[j] = from_f<T>(__expf(to_f(v.e[j]) - m) * inv);
    return o.u;
}

template <typename T>
__device__ void softmax(const T* __restrict__ x, T* __restrict__ y, int n, int vpt) {
    const T* row = x + (size_t)blockIdx.x * n;
    T* out = y + (size_t)blockIdx.x * n;
    int tid = threadIdx.x, bd = blockDim.x;
    constexpr int V = Vec16<T>::V;
    if (n % V == 0 && aligned16(x) && aligned16(y)) {
        const uint4* in4 = reinterpret_cast<const uint4*>(row);
        uint4* out4 = reinterpret_cast<uint4*>(out);
        int nv = n / V;
        if (vpt > 0 && vpt <= MAXV && nv <= vpt * bd) {
            uint4 r[MAXV];
#pragma unroll
            for (int k = 0; k < MAXV; k++) {
                int i = tid + k * bd;
                if (k < vpt && i < nv) r[k] = __ldg(in4 + i);
            }
            float m = -INFINITY, s = 0.f;
            // The thread's max first, then its sum: one exp per element here.
#pragma unroll
            for (int k = 0; k < MAXV; k++) {
                if (k < vpt && tid + k * bd < nv) {
                    Vec16<T> v;
                    v.u = r[k];
#pragma unroll
                    for (int j = 0; j < V; j++) m = fmaxf(m, to_f(v.e[j]));
                }
            }
            if (m != -INFINITY) {
#pragma unroll
                for (int k = 0; k < MAXV; k++) {
                    if (k < vpt && tid + k * bd < nv) {
                        Vec16<T> v;
                        v.u = r[k];
#pragma unroll
                        for (int j = 0; j < V; j++) s += __expf(to_f(v.e[j]) - m);
                    }
                }
            }
            block_max_sum(m, s);
            float inv = 1.f / s;
#pragma unroll
            for (int k = 0; k < MAXV; k++) {
                int i = tid + k * bd;
                if (k < vpt && i < nv) out4[i] = softmax16<T>(r[k], m, inv);
            }
            return;
        }
        // Long rows: online (m, s) over 16-byte vectors, four loads in flight per thread.
        float m = -INFINITY, s = 0.f;
        int i = tid;
        for (; i + 3 * bd < nv; i += 4 * bd) {
            uint4 a = __ldg(in4 + i), b = __ldg(in4 + i + bd), c = __ldg(in4 + i + 2 * bd),
                  d = __ldg(in4 + i + 3 * bd);
            fold16<T>(a, m, s);
            fold16<T>(b, m, s);
            fold16<T>(c, m, s);
            fold16<T>(d, m, s);
        }
        for (; i < nv; i += bd) fold16<T>(__ldg(in4 + i), m, s);
        block_max_sum(m, s);
        float inv = 1.f / s;
        for (i = tid; i < nv; i += bd) out4[i] = softmax16<T>(in4[i], m, inv);
        return;
    }
    if (n <= K * bd) {
        float v[K];
        float m = -INFINITY, s = 0.f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int i = tid + k * bd;
            v[k] = i < n ? to_f(row[i]) : -INFINITY;
            m = fmaxf(m, v[k]);
        }
        if (m != -INFINITY) {
#pragma unroll
            for (int k = 0; k < K; k++) s += tid + k * bd < n ? __expf(v[k] - m) : 0.f;
        }
        block_max_sum(m, s);
        float inv = 1.f / s;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int i = tid + k * bd;
            if (i < n) out[i] = from_f<T>(__expf(v[k] - m) * inv);
        }
        return;
    }
    // Online pass: running max m and sum s rescaled when m grows.
    float m = -INFINITY, s = 0.f;
    for (int i = tid; i < n; i += bd) {
        float v = to_f(row[i]);
        if (v == -INFINITY) continue;
        if (v > m) {
            s = m == -INFINITY ? 0.f : s * __expf(m - v);
            m = v;
        }
        s += __expf(v - m);
    }
    block_max_sum(m, s);
    float inv = 1.f / s;
    for (int i = tid; i < n; i += bd) out[i] = from_f<T>(__expf(to_f(row[i]) - m) * inv);
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

// The forward is bounded to 512 threads (up to 128 registers per thread: no spills) so that any block
// size the host picks (32..512) can launch.
#define SOFTMAX_INST(suffix, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(512) softmax_##suffix(const T* x, T* y, int n,   \
                                                                        int vpt) {               \
        softmax<T>(x, y, n, vpt);                                                                \
    }
SOFTMAX_INST(f32, float)
SOFTMAX_INST(bf16, __nv_bfloat16)
SOFTMAX_INST(f16, __half)
#define SOFTMAX_BWD_PARAMS(T) const T* y, const T* dy, T* dx, int n
WICK_INSTANTIATE(softmax_backward, SOFTMAX_BWD_PARAMS, (y, dy, dx, n))
