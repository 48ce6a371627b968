// The non-GEMM kernels of the CUDA LoRA training engine (src/train/cuda_engine/): one micro-batch
// (forward + backward) and the optimizer step are fixed sequences of these launches and cuBLASLt
// GEMMs on raw device pointers, captured as CUDA graphs. Nothing here allocates or synchronizes.
// CPU twins (the specification, f64): src/gpu/train/reference.rs; launch configurations:
// src/gpu/train/launch.rs. Every T-typed kernel is instantiated as trn_<name>_{f32,bf16,f16}.
//
// Layouts (N = B*S tokens, token t = b*S + s at position s; head h = kvh*G + g):
//   token-major [N, width]; head-major qh [B, Hkv, G, S, d] = [B, H, S, d], kh, vh [B, Hkv, S, d].
//   RoPE (HF rotate-half): with (c, s) = (cos, sin)[pos, i], i < d/2 (f32 tables [S_max, d/2]),
//     x'[i] = x[i] c - x[i + d/2] s,  x'[i + d/2] = x[i] s + x[i + d/2] c.
//
// trn_embed(table, ids, x, n, width): x[t] = table[ids[t]]; one block per row.
// trn_rms_norm(x, w, y, rstd, rows, n, eps): r = rsqrt(mean(x^2) + eps), y = x r w, rstd = r;
//   one block per row, rows of 16-byte vectors kept in registers (RN_VPT per thread).
// trn_rms_norm_backward(x, w, rstd, dy, dx, rows, n, accumulate): g = dy w,
//   dx (+)= r (g - x r^2 mean(g x)); one block per row.
// trn_rope_scatter / trn_rope_gather_backward: token-major q, k, v <-> head-major, rotated by +theta
//   forward and -theta backward (the transpose); grid-stride over (token, head, pair chunk).
// trn_heads_to_tokens / trn_tokens_to_heads: [B, H, S, d] <-> [N, H*d]; grid-stride, 16-byte units.
// trn_causal_softmax(scores f32, p, rows, s, scale): one warp per row r (query position r % S):
//   p = softmax_{j <= r % S}(scale scores), 0 beyond; the masked tail is never read.
// trn_causal_softmax_backward(p, dp f32, ds, rows, s, scale): ds = scale p (dp - sum_j p dp).
// trn_swiglu / trn_swiglu_backward: y = silu(g) u; dg = dy u s (1 + g (1 - s)), du = dy g s.
// trn_label_count(labels, n, count): count = max(1, #{labels >= 0}); one block.
// trn_cross_entropy(logits, labels, count, scale, row_loss, rows, vocab): one block per row, in
//   place: logits <- (softmax - onehot) k, row_loss = (lse - x[label]) k, k = scale[0] / count[0];
//   label < 0: zero gradient and loss; label >= vocab: NaN loss (the trainer skips the step).
// trn_sum_into(x, n, out, accumulate): out (+)= sum x; one block, fixed order (deterministic).
// trn_sum_squares_partial + trn_sum_squares_final: out = sum x^2 through per-block partials.
// trn_adamw(param, grad, m, v, param_lowp, hyper, gnorm_sq, loss, n): clipped torch AdamW (see
//   src/train/optimizer.rs), skipped entirely when gnorm_sq or loss[0] is not finite.
// trn_cast(src f32, dst, n): dst = T(src).
// trn_add_bias(y, bias, rows, cols): y[r, c] += bias[c] (frozen projection biases, e.g. Qwen2's
//   q/k/v); grid-stride, 16-byte vectors when cols and both pointers allow.
// trn_lora_dropout(x, y, rows, cols, s, seed, stream, threshold, scale, accumulate): LoRA dropout,
//   y = x * keep / (1 - p) (accumulate: y += that), x and y [rows, cols] in rows of s positions;
//   keep drawn per element (row / s, row % s, col) from the u64 seed in device memory and the
//   stream (layer and projection) as src/reference/lora_dropout.rs specifies; grid-stride.
#include "common.cuh"

#define LOG2E 1.4426950408889634f
// Most 16-byte vectors per thread that the row kernels keep in registers.
#define RN_VPT 4

// Four consecutive elements of T (8 or 16 bytes), for the RoPE pairs, softmax rows and AdamW.
template <typename T> struct Raw4;
template <> struct Raw4<float> { using type = float4; };
template <> struct Raw4<__nv_bfloat16> { using type = uint2; };
template <> struct Raw4<__half> { using type = uint2; };

template <typename T>
struct Vec4 {
    union {
        typename Raw4<T>::type r;
        T e[4];
    };
};

template <typename T>
__device__ __forceinline__ void load4(const T* p, float* f) {
    Vec4<T> v;
    v.r = *reinterpret_cast<const typename Raw4<T>::type*>(p);
#pragma unroll
    for (int j = 0; j < 4; j++) f[j] = to_f(v.e[j]);
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const float* f) {
    Vec4<T> v;
#pragma unroll
    for (int j = 0; j < 4; j++) v.e[j] = from_f<T>(f[j]);
    *reinterpret_cast<typename Raw4<T>::type*>(p) = v.r;
}

// P consecutive elements as f32 (P = 4: one vector load; P = 1: one scalar).
template <typename T, int P>
__device__ __forceinline__ void load_p(const T* p, float* f) {
    if constexpr (P == 4) load4(p, f);
    else f[0] = to_f(p[0]);
}

template <typename T, int P>
__device__ __forceinline__ void store_p(T* p, const float* f) {
    if constexpr (P == 4) store4(p, f);
    else p[0] = from_f<T>(f[0]);
}

template <typename T>
__device__ __forceinline__ bool aligned4(const T* p) {
    return ((uintptr_t)p & (4 * sizeof(T) - 1)) == 0;
}

__device__ __forceinline__ size_t grid_index() { return blockIdx.x * (size_t)blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t grid_stride() { return (size_t)gridDim.x * blockDim.x; }

// ---------------------------------------------------------------------------------------------
// Embedding lookup. grid: n blocks.
template <typename T>
__device__ void trn_embed(const T* __restrict__ table, const int* __restrict__ ids, T* __restrict__ x,
                          int n, int width) {
    int row = blockIdx.x;
    if (row >= n) return;
    const T* src = table + (size_t)ids[row] * width;
    T* dst = x + (size_t)row * width;
    constexpr int V = Vec16<T>::V;
    if (width % V == 0 && aligned16(table) && aligned16(x)) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < width / V; i += blockDim.x) d4[i] = __ldg(s4 + i);
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm forward. grid: rows blocks; block: a multiple of 32 threads.
template <typename T>
__device__ void trn_rms_norm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                             float* __restrict__ rstd, int rows, int n, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    if (row >= rows) return;
    size_t base = (size_t)row * n;
    constexpr int V = Vec16<T>::V;
    int nv = n / V;
    if (n % V == 0 && nv <= RN_VPT * bd && aligned16(x) && aligned16(w) && aligned16(y)) {
        const uint4* x4 = reinterpret_cast<const uint4*>(x + base);
        uint4 r[RN_VPT];
#pragma unroll
        for (int k = 0; k < RN_VPT; k++) {
            int i = tid + k * bd;
            if (i < nv) r[k] = __ldg(x4 + i);
        }
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < RN_VPT; k++) {
            if (tid + k * bd < nv) {
                Vec16<T> a;
                a.u = r[k];
#pragma unroll
                for (int j = 0; j < V; j++) ss += to_f(a.e[j]) * to_f(a.e[j]);
            }
        }
        float rs = rsqrtf(block_sum(ss, scratch) / n + eps);
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        uint4* y4 = reinterpret_cast<uint4*>(y + base);
#pragma unroll
        for (int k = 0; k < RN_VPT; k++) {
            int i = tid + k * bd;
            if (i < nv) {
                Vec16<T> a, wv, o;
                a.u = r[k];
                wv.u = __ldg(w4 + i);
#pragma unroll
                for (int j = 0; j < V; j++) o.e[j] = from_f<T>(to_f(a.e[j]) * rs * to_f(wv.e[j]));
                y4[i] = o.u;
            }
        }
        if (tid == 0) rstd[row] = rs;
        return;
    }
    float ss = 0.f;
    for (int i = tid; i < n; i += bd) {
        float v = to_f(x[base + i]);
        ss += v * v;
    }
    float rs = rsqrtf(block_sum(ss, scratch) / n + eps);
    for (int i = tid; i < n; i += bd) y[base + i] = from_f<T>(to_f(x[base + i]) * rs * to_f(w[i]));
    if (tid == 0) rstd[row] = rs;
}

// RMSNorm backward (w frozen). grid: rows blocks. dx may alias dy (each element is read by the
// thread that writes it, before it writes it).
template <typename T>
__device__ void trn_rms_norm_backward(const T* __restrict__ x, const T* __restrict__ w,
                                      const float* __restrict__ rstd, const T* dy, T* dx, int rows,
                                      int n, int accumulate) {
    __shared__ float scratch[32];
    int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    if (row >= rows) return;
    size_t base = (size_t)row * n;
    float r = rstd[row];
    constexpr int V = Vec16<T>::V;
    int nv = n / V;
    if (n % V == 0 && nv <= RN_VPT * bd && aligned16(x) && aligned16(w) && aligned16(dy) &&
        aligned16(dx)) {
        const uint4* x4 = reinterpret_cast<const uint4*>(x + base);
        const uint4* dy4 = reinterpret_cast<const uint4*>(dy + base);
        const uint4* w4 = reinterpret_cast<const uint4*>(w);
        uint4 xr[RN_VPT], gr[RN_VPT];
#pragma unroll
        for (int k = 0; k < RN_VPT; k++) {
            int i = tid + k * bd;
            if (i < nv) {
                xr[k] = __ldg(x4 + i);
                gr[k] = dy4[i];
            }
        }
        float dot = 0.f;
#pragma unroll
        for (int k = 0; k < RN_VPT; k++) {
            int i = tid + k * bd;
            if (i < nv) {
                Vec16<T> a, d, wv;
                a.u = xr[k];
                d.u = gr[k];
                wv.u = __ldg(w4 + i);
#pragma unroll
                for (int j = 0; j < V; j++) dot += to_f(d.e[j]) * to_f(wv.e[j]) * to_f(a.e[j]);
            }
        }
        float c = r * r * block_sum(dot, scratch) / n;
        uint4* dx4 = reinterpret_cast<uint4*>(dx + base);
#pragma unroll
        for (int k = 0; k < RN_VPT; k++) {
            int i = tid + k * bd;
            if (i < nv) {
                Vec16<T> a, d, wv, o, prev;
                a.u = xr[k];
                d.u = gr[k];
                wv.u = __ldg(w4 + i);
                if (accumulate) prev.u = dx4[i];
#pragma unroll
                for (int j = 0; j < V; j++) {
                    float v = r * (to_f(d.e[j]) * to_f(wv.e[j]) - to_f(a.e[j]) * c);
                    if (accumulate) v += to_f(prev.e[j]);
                    o.e[j] = from_f<T>(v);
                }
                dx4[i] = o.u;
            }
        }
        return;
    }
    float dot = 0.f;
    for (int i = tid; i < n; i += bd) dot += to_f(dy[base + i]) * to_f(w[i]) * to_f(x[base + i]);
    float c = r * r * block_sum(dot, scratch) / n;
    for (int i = tid; i < n; i += bd) {
        float v = r * (to_f(dy[base + i]) * to_f(w[i]) - to_f(x[base + i]) * c);
        if (accumulate) v += to_f(dx[base + i]);
        dx[base + i] = from_f<T>(v);
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE scatter (forward) and gather (backward). Work item = (token t, head slot hh, chunk of P
// pairs); head slots 0..H-1 are q, H..H+Hkv-1 k, then v (copied, not rotated). P = 4 when d % 8 == 0
// and every pointer is 4-element aligned, else 1. `backward` swaps the sides and rotates by -theta.
template <typename T, int P, bool BACKWARD, typename I>
__device__ void rope_move(const T* q, const T* k, const T* v, const float* __restrict__ cos_t,
                          const float* __restrict__ sin_t, T* qh, T* kh, T* vh, int b, int s, int heads,
                          int kv_heads, int d) {
    int half = d / 2, chunks = half / P, slots = heads + 2 * kv_heads;
    I total = (I)b * s * slots * chunks;
    for (I it = grid_index(); it < total; it += grid_stride()) {
        int c = (int)(it % chunks);
        I rest = it / chunks;
        int hh = (int)(rest % slots);
        size_t t = rest / slots;
        int pos = (int)(t % s);
        size_t bi = t / s;
        const T* tok;
        T* head;
        bool rotate = true;
        if (hh < heads) {
            tok = q + (t * heads + hh) * d;
            head = qh + ((bi * heads + hh) * s + pos) * d;
        } else if (hh < heads + kv_heads) {
            int j = hh - heads;
            tok = k + (t * kv_heads + j) * d;
            head = kh + ((bi * kv_heads + j) * s + pos) * d;
        } else {
            int j = hh - heads - kv_heads;
            tok = v + (t * kv_heads + j) * d;
            head = vh + ((bi * kv_heads + j) * s + pos) * d;
            rotate = false;
        }
        int i0 = c * P;
        const T* src = BACKWARD ? head : tok;
        T* dst = BACKWARD ? const_cast<T*>(tok) : head;
        float a[P], bb[P];
        load_p<T, P>(src + i0, a);
        load_p<T, P>(src + half + i0, bb);
        if (rotate) {
            float cs[P], sn[P];
            if constexpr (P == 4) {
                float4 c4 = *reinterpret_cast<const float4*>(cos_t + (size_t)pos * half + i0);
                float4 s4 = *reinterpret_cast<const float4*>(sin_t + (size_t)pos * half + i0);
                cs[0] = c4.x; cs[1] = c4.y; cs[2] = c4.z; cs[3] = c4.w;
                sn[0] = s4.x; sn[1] = s4.y; sn[2] = s4.z; sn[3] = s4.w;
            } else {
                cs[0] = cos_t[(size_t)pos * half + i0];
                sn[0] = sin_t[(size_t)pos * half + i0];
            }
#pragma unroll
            for (int p = 0; p < P; p++) {
                float sg = BACKWARD ? -sn[p] : sn[p];
                float x0 = a[p], x1 = bb[p];
                a[p] = x0 * cs[p] - x1 * sg;
                bb[p] = x0 * sg + x1 * cs[p];
            }
        }
        store_p<T, P>(dst + i0, a);
        store_p<T, P>(dst + half + i0, bb);
    }
}

template <typename T, bool BACKWARD>
__device__ void trn_rope(const T* q, const T* k, const T* v, const float* cos_t, const float* sin_t,
                         T* qh, T* kh, T* vh, int b, int s, int heads, int kv_heads, int d) {
    bool vec = d % 8 == 0 && aligned4(q) && aligned4(k) && aligned4(v) && aligned4(qh) &&
               aligned4(kh) && aligned4(vh) && aligned16(cos_t) && aligned16(sin_t);
    // 32-bit index arithmetic (no 64-bit division) whenever the item count allows.
    bool small = (size_t)b * s * (heads + 2 * kv_heads) * (d / 2) < 0x7fffffffull;
    if (vec && small)
        rope_move<T, 4, BACKWARD, unsigned>(q, k, v, cos_t, sin_t, qh, kh, vh, b, s, heads, kv_heads, d);
    else if (vec)
        rope_move<T, 4, BACKWARD, size_t>(q, k, v, cos_t, sin_t, qh, kh, vh, b, s, heads, kv_heads, d);
    else if (small)
        rope_move<T, 1, BACKWARD, unsigned>(q, k, v, cos_t, sin_t, qh, kh, vh, b, s, heads, kv_heads, d);
    else
        rope_move<T, 1, BACKWARD, size_t>(q, k, v, cos_t, sin_t, qh, kh, vh, b, s, heads, kv_heads, d);
}

// q, k, v token-major -> qh, kh (rotated), vh head-major.
template <typename T>
__device__ void trn_rope_scatter(const T* q, const T* k, const T* v, const float* cos_t,
                                 const float* sin_t, T* qh, T* kh, T* vh, int b, int s, int heads,
                                 int kv_heads, int d) {
    trn_rope<T, false>(q, k, v, cos_t, sin_t, qh, kh, vh, b, s, heads, kv_heads, d);
}

// dqh, dkh, dvh head-major -> dq, dk, dv token-major (rotated back).
template <typename T>
__device__ void trn_rope_gather_backward(const T* dqh, const T* dkh, const T* dvh, const float* cos_t,
                                         const float* sin_t, T* dq, T* dk, T* dv, int b, int s,
                                         int heads, int kv_heads, int d) {
    trn_rope<T, true>(dq, dk, dv, cos_t, sin_t, const_cast<T*>(dqh), const_cast<T*>(dkh),
                      const_cast<T*>(dvh), b, s, heads, kv_heads, d);
}

// ---------------------------------------------------------------------------------------------
// [B, H, S, d] <-> [N, H*d] in units U (uint4 when d is a multiple of 16 bytes and both pointers
// are aligned, else T); du = d in units. Items in token-major order.
template <typename U, typename I>
__device__ void permute_heads(const U* __restrict__ src, U* __restrict__ dst, int b, int s, int heads,
                              int du, bool to_tokens) {
    I total = (I)b * s * heads * du;
    for (I it = grid_index(); it < total; it += grid_stride()) {
        int c = (int)(it % du);
        I rest = it / du;
        int h = (int)(rest % heads);
        size_t t = rest / heads;
        int pos = (int)(t % s);
        size_t bi = t / s;
        size_t hd = ((bi * heads + h) * s + pos) * du + c;
        if (to_tokens) dst[it] = src[hd];
        else dst[hd] = src[it];
    }
}

template <typename T>
__device__ void trn_permute(const T* src, T* dst, int b, int s, int heads, int d, bool to_tokens) {
    constexpr int V = Vec16<T>::V;
    bool small = (size_t)b * s * heads * d < 0x7fffffffull;
    if (d % V == 0 && aligned16(src) && aligned16(dst)) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        if (small) permute_heads<uint4, unsigned>(s4, d4, b, s, heads, d / V, to_tokens);
        else permute_heads<uint4, size_t>(s4, d4, b, s, heads, d / V, to_tokens);
    } else if (small) {
        permute_heads<T, unsigned>(src, dst, b, s, heads, d, to_tokens);
    } else {
        permute_heads<T, size_t>(src, dst, b, s, heads, d, to_tokens);
    }
}

template <typename T>
__device__ void trn_heads_to_tokens(const T* oh, T* o, int b, int s, int heads, int kv_heads, int d) {
    trn_permute<T>(oh, o, b, s, heads, d, true);
}

template <typename T>
__device__ void trn_tokens_to_heads(const T* o, T* oh, int b, int s, int heads, int kv_heads, int d) {
    trn_permute<T>(o, oh, b, s, heads, d, false);
}

// ---------------------------------------------------------------------------------------------
// Causal softmax, one warp per row. Pass 1: online max / sum over j < L = r % S + 1 (four columns
// at a time: one rescale per group); pass 2 rereads the row (L1) and writes p, zeros for j >= L.
// Works in base 2: y = x scale log2(e).
template <typename T>
__device__ void trn_causal_softmax(const float* __restrict__ scores, T* __restrict__ p, int rows, int s,
                                   float scale) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    int len = row % s + 1;
    const float* x = scores + (size_t)row * s;
    T* y = p + (size_t)row * s;
    float sl = scale * LOG2E;
    bool vec = s % 4 == 0 && aligned16(scores) && aligned4(p);
    float m, sum;
    warp_row_max_sum_exp2(x, len, sl, vec, m, sum);
    float inv = 1.f / sum;
    if (vec) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (int i = lane; i < s / 4; i += 32) {
            float o[4] = {0.f, 0.f, 0.f, 0.f};
            if (i * 4 < len) {
                float4 a = __ldg(x4 + i);
                float e[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
                for (int j = 0; j < 4; j++) o[j] = i * 4 + j < len ? exp2f(e[j] * sl - m) * inv : 0.f;
            }
            store4(y + i * 4, o);
        }
    } else {
        for (int i = lane; i < s; i += 32) y[i] = from_f<T>(i < len ? exp2f(x[i] * sl - m) * inv : 0.f);
    }
}

// Causal softmax backward, one warp per row: ds = scale p (dp - sum_{j < L} p dp), 0 for j >= L.
template <typename T>
__device__ void trn_causal_softmax_backward(const T* __restrict__ p, const float* __restrict__ dp,
                                            T* __restrict__ ds, int rows, int s, float scale) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    int len = row % s + 1;
    const T* pr = p + (size_t)row * s;
    const float* dr = dp + (size_t)row * s;
    T* out = ds + (size_t)row * s;
    bool vec = s % 4 == 0 && aligned4(p) && aligned16(dp) && aligned4(ds);
    float dot = 0.f;
    if (vec) {
        const float4* d4 = reinterpret_cast<const float4*>(dr);
        for (int i = lane; i * 4 < len; i += 32) {
            float pv[4];
            load4(pr + i * 4, pv);
            float4 g = __ldg(d4 + i);
            float gv[4] = {g.x, g.y, g.z, g.w};
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (i * 4 + j < len) dot += pv[j] * gv[j];
        }
    } else {
        for (int i = lane; i < len; i += 32) dot += to_f(pr[i]) * dr[i];
    }
    dot = warp_sum(dot);
    if (vec) {
        const float4* d4 = reinterpret_cast<const float4*>(dr);
        for (int i = lane; i < s / 4; i += 32) {
            float o[4] = {0.f, 0.f, 0.f, 0.f};
            if (i * 4 < len) {
                float pv[4];
                load4(pr + i * 4, pv);
                float4 g = __ldg(d4 + i);
                float gv[4] = {g.x, g.y, g.z, g.w};
#pragma unroll
                for (int j = 0; j < 4; j++) o[j] = i * 4 + j < len ? scale * pv[j] * (gv[j] - dot) : 0.f;
            }
            store4(out + i * 4, o);
        }
    } else {
        for (int i = lane; i < s; i += 32)
            out[i] = from_f<T>(i < len ? scale * to_f(pr[i]) * (dr[i] - dot) : 0.f);
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU, elementwise: 16-byte vectors over the aligned body, scalars for the tail.
__device__ __forceinline__ float sigmoid_f(float g) { return 1.f / (1.f + expf(-g)); }

template <typename T>
__device__ void trn_swiglu(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, size_t n) {
    constexpr int V = Vec16<T>::V;
    size_t nv = aligned16(g) && aligned16(u) && aligned16(y) ? n / V : 0;
    for (size_t i = grid_index(); i < nv; i += grid_stride()) {
        Vec16<T> a, b, o;
        a.u = __ldg(reinterpret_cast<const uint4*>(g) + i);
        b.u = __ldg(reinterpret_cast<const uint4*>(u) + i);
#pragma unroll
        for (int j = 0; j < V; j++) {
            float gv = to_f(a.e[j]);
            o.e[j] = from_f<T>(gv * sigmoid_f(gv) * to_f(b.e[j]));
        }
        reinterpret_cast<uint4*>(y)[i] = o.u;
    }
    for (size_t i = nv * V + grid_index(); i < n; i += grid_stride()) {
        float gv = to_f(g[i]);
        y[i] = from_f<T>(gv * sigmoid_f(gv) * to_f(u[i]));
    }
}

template <typename T>
__device__ void trn_swiglu_backward(const T* __restrict__ g, const T* __restrict__ u,
                                    const T* __restrict__ dy, T* __restrict__ dg, T* __restrict__ du,
                                    size_t n) {
    constexpr int V = Vec16<T>::V;
    size_t nv = aligned16(g) && aligned16(u) && aligned16(dy) && aligned16(dg) && aligned16(du) ? n / V : 0;
    for (size_t i = grid_index(); i < nv; i += grid_stride()) {
        Vec16<T> a, b, d, og, ou;
        a.u = __ldg(reinterpret_cast<const uint4*>(g) + i);
        b.u = __ldg(reinterpret_cast<const uint4*>(u) + i);
        d.u = __ldg(reinterpret_cast<const uint4*>(dy) + i);
#pragma unroll
        for (int j = 0; j < V; j++) {
            float gv = to_f(a.e[j]), uv = to_f(b.e[j]), dv = to_f(d.e[j]);
            float sg = sigmoid_f(gv);
            og.e[j] = from_f<T>(dv * uv * sg * (1.f + gv * (1.f - sg)));
            ou.e[j] = from_f<T>(dv * gv * sg);
        }
        reinterpret_cast<uint4*>(dg)[i] = og.u;
        reinterpret_cast<uint4*>(du)[i] = ou.u;
    }
    for (size_t i = nv * V + grid_index(); i < n; i += grid_stride()) {
        float gv = to_f(g[i]), uv = to_f(u[i]), dv = to_f(dy[i]);
        float sg = sigmoid_f(gv);
        dg[i] = from_f<T>(dv * uv * sg * (1.f + gv * (1.f - sg)));
        du[i] = from_f<T>(dv * gv * sg);
    }
}

// ---------------------------------------------------------------------------------------------
// Loss. One block.
extern "C" __global__ void trn_label_count(const int* __restrict__ labels, int n, float* __restrict__ count) {
    __shared__ float scratch[32];
    float c = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) c += labels[i] >= 0 ? 1.f : 0.f;
    c = block_sum(c, scratch);
    if (threadIdx.x == 0) *count = fmaxf(c, 1.f);
}

// Cross-entropy in place, one block per row; pass 1 online (max, sum) per 16-byte vector, pass 2
// rereads the row (mostly L2: the LM-head GEMM just wrote it) and overwrites it with the gradient.
template <typename T>
__device__ void trn_cross_entropy(T* logits, const int* __restrict__ labels, const float* __restrict__ count,
                                  const float* __restrict__ scale, float* __restrict__ row_loss, int rows,
                                  int vocab) {
    __shared__ float scratch[32];
    int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    if (row >= rows) return;
    T* x = logits + (size_t)row * vocab;
    int label = labels[row];
    constexpr int V = Vec16<T>::V;
    bool vec = vocab % V == 0 && aligned16(logits);
    if (label < 0 || label >= vocab) {
        if (vec) {
            Vec16<T> z;
#pragma unroll
            for (int j = 0; j < V; j++) z.e[j] = from_f<T>(0.f);
            for (int i = tid; i < vocab / V; i += bd) reinterpret_cast<uint4*>(x)[i] = z.u;
        } else {
            for (int i = tid; i < vocab; i += bd) x[i] = from_f<T>(0.f);
        }
        if (tid == 0) row_loss[row] = label < 0 ? 0.f : NAN;
        return;
    }
    // Read before any thread of the block overwrites the row (block_max below is a barrier).
    float x_label = tid == 0 ? to_f(x[label]) : 0.f;
    float m = -INFINITY, s = 0.f;
    if (vec) {
        for (int i = tid; i < vocab / V; i += bd) {
            Vec16<T> a;
            a.u = reinterpret_cast<const uint4*>(x)[i];
            float lm = to_f(a.e[0]);
#pragma unroll
            for (int j = 1; j < V; j++) lm = fmaxf(lm, to_f(a.e[j]));
            float nm = fmaxf(m, lm), acc = 0.f;
#pragma unroll
            for (int j = 0; j < V; j++) acc += __expf(to_f(a.e[j]) - nm);
            s = (m == -INFINITY ? 0.f : s * __expf(m - nm)) + acc;
            m = nm;
        }
    } else {
        for (int i = tid; i < vocab; i += bd) {
            float v = to_f(x[i]);
            float nm = fmaxf(m, v);
            s = (m == -INFINITY ? 0.f : s * __expf(m - nm)) + __expf(v - nm);
            m = nm;
        }
    }
    float gm = block_max(m, scratch);
    s = m == -INFINITY ? 0.f : s * __expf(m - gm);
    float sum = block_sum(s, scratch);
    float k = scale[0] / count[0];
    float ks = k / sum;
    if (vec) {
        for (int i = tid; i < vocab / V; i += bd) {
            Vec16<T> a;
            a.u = reinterpret_cast<const uint4*>(x)[i];
#pragma unroll
            for (int j = 0; j < V; j++) {
                float g = __expf(to_f(a.e[j]) - gm) * ks;
                if (i * V + j == label) g -= k;
                a.e[j] = from_f<T>(g);
            }
            reinterpret_cast<uint4*>(x)[i] = a.u;
        }
    } else {
        for (int i = tid; i < vocab; i += bd) {
            float g = __expf(to_f(x[i]) - gm) * ks;
            if (i == label) g -= k;
            x[i] = from_f<T>(g);
        }
    }
    if (tid == 0) row_loss[row] = (gm + logf(sum) - x_label) * k;
}

// ---------------------------------------------------------------------------------------------
// Deterministic reductions of f32 vectors.
__device__ __forceinline__ float sum_range(const float* __restrict__ x, size_t n, size_t start,
                                           size_t stride, bool square) {
    float acc = 0.f;
    if (aligned16(x)) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (size_t i = start; i < n / 4; i += stride) {
            float4 a = __ldg(x4 + i);
            acc += square ? a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w : a.x + a.y + a.z + a.w;
        }
        for (size_t i = n / 4 * 4 + start; i < n; i += stride) acc += square ? x[i] * x[i] : x[i];
    } else {
        for (size_t i = start; i < n; i += stride) acc += square ? x[i] * x[i] : x[i];
    }
    return acc;
}

// One block.
extern "C" __global__ void trn_sum_into(const float* __restrict__ x, unsigned long long n,
                                        float* __restrict__ out, int accumulate) {
    __shared__ float scratch[32];
    float v = block_sum(sum_range(x, n, threadIdx.x, blockDim.x, false), scratch);
    if (threadIdx.x == 0) *out = accumulate ? *out + v : v;
}

// grid: the partial count (fixed by n on the host); partials[blockIdx.x] = this block's sum x^2.
extern "C" __global__ void trn_sum_squares_partial(const float* __restrict__ x, unsigned long long n,
                                                   float* __restrict__ partials) {
    __shared__ float scratch[32];
    float v = block_sum(sum_range(x, n, grid_index(), grid_stride(), true), scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = v;
}

// One block: out = sum of the partials.
extern "C" __global__ void trn_sum_squares_final(const float* __restrict__ partials, int parts,
                                                 float* __restrict__ out) {
    __shared__ float scratch[32];
    float v = 0.f;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) v += partials[i];
    v = block_sum(v, scratch);
    if (threadIdx.x == 0) *out = v;
}

// ---------------------------------------------------------------------------------------------
// AdamW (torch semantics, src/train/optimizer.rs) with global-norm clipping, grid-stride.
// hyper: [lr, beta1, beta2, eps, weight_decay, 1 - beta1^t, 1 - beta2^t, max_norm, 1 - beta1,
// 1 - beta2], each computed in f64 and rounded once, as torch rounds the Python floats it passes: 1 -
// beta computed here from the rounded beta is another number (1 - 0.999f = 9.99987e-4, 1.3e-5 off).
struct AdamHyper {
    float clip, decay, b1, b2, c1, c2, eps, step, sqrt_bc2;
};

__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, const AdamHyper& h) {
    g *= h.clip;
    p *= h.decay;
    m = h.b1 * m + h.c1 * g;
    v = h.b2 * v + h.c2 * g * g;
    p -= h.step * m / (sqrtf(v) / h.sqrt_bc2 + h.eps);
}

template <typename T>
__device__ void trn_adamw(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                          float* __restrict__ v, T* __restrict__ lowp, const float* __restrict__ hyper,
                          const float* __restrict__ gnorm_sq, const float* __restrict__ loss, size_t n) {
    float gn = *gnorm_sq, l = *loss;
    if (!isfinite(gn) || !isfinite(l)) return;
    float lr = hyper[0], max_norm = hyper[7];
    AdamHyper h;
    h.clip = max_norm > 0.f ? fminf(1.f, max_norm / (sqrtf(gn) + 1e-6f)) : 1.f;
    h.decay = 1.f - lr * hyper[4];
    h.b1 = hyper[1];
    h.b2 = hyper[2];
    h.c1 = hyper[8];
    h.c2 = hyper[9];
    h.eps = hyper[3];
    h.step = lr / hyper[5];
    h.sqrt_bc2 = sqrtf(hyper[6]);
    bool vec = aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v) && (!lowp || aligned4(lowp));
    size_t nv = vec ? n / 4 : 0;
    for (size_t i = grid_index(); i < nv; i += grid_stride()) {
        float4 p4 = reinterpret_cast<float4*>(param)[i];
        float4 g4 = __ldg(reinterpret_cast<const float4*>(grad) + i);
        float4 m4 = reinterpret_cast<float4*>(m)[i];
        float4 v4 = reinterpret_cast<float4*>(v)[i];
        adam_one(p4.x, g4.x, m4.x, v4.x, h);
        adam_one(p4.y, g4.y, m4.y, v4.y, h);
        adam_one(p4.z, g4.z, m4.z, v4.z, h);
        adam_one(p4.w, g4.w, m4.w, v4.w, h);
        reinterpret_cast<float4*>(param)[i] = p4;
        reinterpret_cast<float4*>(m)[i] = m4;
        reinterpret_cast<float4*>(v)[i] = v4;
        if (lowp) {
            float o[4] = {p4.x, p4.y, p4.z, p4.w};
            store4(lowp + i * 4, o);
        }
    }
    for (size_t i = nv * 4 + grid_index(); i < n; i += grid_stride()) {
        float p = param[i], mm = m[i], vv = v[i];
        adam_one(p, grad[i], mm, vv, h);
        param[i] = p;
        m[i] = mm;
        v[i] = vv;
        if (lowp) lowp[i] = from_f<T>(p);
    }
}

// f32 -> T, grid-stride.
template <typename T>
__device__ void trn_cast(const float* __restrict__ src, T* __restrict__ dst, size_t n) {
    size_t nv = aligned16(src) && aligned4(dst) ? n / 4 : 0;
    for (size_t i = grid_index(); i < nv; i += grid_stride()) {
        float4 a = __ldg(reinterpret_cast<const float4*>(src) + i);
        float o[4] = {a.x, a.y, a.z, a.w};
        store4(dst + i * 4, o);
    }
    for (size_t i = nv * 4 + grid_index(); i < n; i += grid_stride()) dst[i] = from_f<T>(src[i]);
}

// y [rows, cols] += bias [cols], in place; the sum in f32, rounded once to T.
template <typename T>
__device__ void trn_add_bias(T* __restrict__ y, const T* __restrict__ bias, size_t rows, int cols) {
    constexpr int V = Vec16<T>::V;
    size_t n = rows * (size_t)cols;
    if (cols % V == 0 && aligned16(y) && aligned16(bias)) {
        int cv = cols / V;
        uint4* y4 = reinterpret_cast<uint4*>(y);
        const uint4* b4 = reinterpret_cast<const uint4*>(bias);
        for (size_t i = grid_index(); i < n / V; i += grid_stride()) {
            Vec16<T> a, b;
            a.u = y4[i];
            b.u = __ldg(b4 + (int)(i % cv));
#pragma unroll
            for (int j = 0; j < V; j++) a.e[j] = from_f<T>(to_f(a.e[j]) + to_f(b.e[j]));
            y4[i] = a.u;
        }
        return;
    }
    for (size_t i = grid_index(); i < n; i += grid_stride())
        y[i] = from_f<T>(to_f(y[i]) + to_f(bias[i % cols]));
}

// Whether element `key` of stream `stream` survives dropout (src/reference/lora_dropout.rs).
__device__ __forceinline__ bool lora_keep(unsigned long long seed, unsigned stream,
                                          unsigned long long key, unsigned threshold) {
    unsigned long long z = (seed ^ ((unsigned long long)stream * 0x9E3779B97F4A7C15ull)) +
                           key * 0xD1B54A32D192ED03ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (unsigned)(z >> 40) >= threshold;
}

template <typename T>
__device__ void trn_lora_dropout(const T* __restrict__ x, T* __restrict__ y, size_t rows, int cols,
                                 int s, const unsigned long long* __restrict__ seed,
                                 unsigned stream, unsigned threshold, float scale, int accumulate) {
    const unsigned long long sd = *seed;
    size_t n = rows * (size_t)cols;
    for (size_t i = grid_index(); i < n; i += grid_stride()) {
        size_t row = i / cols;
        unsigned long long b = row / s, t = row % s, c = i % cols;
        float v = lora_keep(sd, stream, (b << 44) | (t << 24) | c, threshold) ? to_f(x[i]) * scale : 0.f;
        y[i] = from_f<T>(accumulate ? to_f(y[i]) + v : v);
    }
}

// ---------------------------------------------------------------------------------------------
#define EMBED_PARAMS(T) const T* table, const int* ids, T* x, int n, int width
WICK_INSTANTIATE(trn_embed, EMBED_PARAMS, (table, ids, x, n, width))
#define RMS_PARAMS(T) const T* x, const T* w, T* y, float* rstd, int rows, int n, float eps
WICK_INSTANTIATE(trn_rms_norm, RMS_PARAMS, (x, w, y, rstd, rows, n, eps))
#define RMS_BWD_PARAMS(T) \
    const T* x, const T* w, const float* rstd, const T* dy, T* dx, int rows, int n, int accumulate
WICK_INSTANTIATE(trn_rms_norm_backward, RMS_BWD_PARAMS, (x, w, rstd, dy, dx, rows, n, accumulate))
#define ROPE_PARAMS(T)                                                                          \
    const T* q, const T* k, const T* v, const float* cos_t, const float* sin_t, T* qh, T* kh, T* vh, \
        int b, int s, int heads, int kv_heads, int d
WICK_INSTANTIATE(trn_rope_scatter, ROPE_PARAMS, (q, k, v, cos_t, sin_t, qh, kh, vh, b, s, heads, kv_heads, d))
#define ROPE_BWD_PARAMS(T)                                                                      \
    const T* dqh, const T* dkh, const T* dvh, const float* cos_t, const float* sin_t, T* dq, T* dk, \
        T* dv, int b, int s, int heads, int kv_heads, int d
WICK_INSTANTIATE(trn_rope_gather_backward, ROPE_BWD_PARAMS,
                 (dqh, dkh, dvh, cos_t, sin_t, dq, dk, dv, b, s, heads, kv_heads, d))
#define H2T_PARAMS(T) const T* oh, T* o, int b, int s, int heads, int kv_heads, int d
WICK_INSTANTIATE(trn_heads_to_tokens, H2T_PARAMS, (oh, o, b, s, heads, kv_heads, d))
#define T2H_PARAMS(T) const T* o, T* oh, int b, int s, int heads, int kv_heads, int d
WICK_INSTANTIATE(trn_tokens_to_heads, T2H_PARAMS, (o, oh, b, s, heads, kv_heads, d))
#define SOFTMAX_PARAMS(T) const float* scores, T* p, int rows, int s, float scale
WICK_INSTANTIATE(trn_causal_softmax, SOFTMAX_PARAMS, (scores, p, rows, s, scale))
#define SOFTMAX_BWD_PARAMS(T) const T* p, const float* dp, T* ds, int rows, int s, float scale
WICK_INSTANTIATE(trn_causal_softmax_backward, SOFTMAX_BWD_PARAMS, (p, dp, ds, rows, s, scale))
#define SWIGLU_PARAMS(T) const T* g, const T* u, T* y, size_t n
WICK_INSTANTIATE(trn_swiglu, SWIGLU_PARAMS, (g, u, y, n))
#define SWIGLU_BWD_PARAMS(T) const T* g, const T* u, const T* dy, T* dg, T* du, size_t n
WICK_INSTANTIATE(trn_swiglu_backward, SWIGLU_BWD_PARAMS, (g, u, dy, dg, du, n))
#define CE_PARAMS(T) \
    T* logits, const int* labels, const float* count, const float* scale, float* row_loss, int rows, int vocab
WICK_INSTANTIATE(trn_cross_entropy, CE_PARAMS, (logits, labels, count, scale, row_loss, rows, vocab))
#define ADAMW_PARAMS(T)                                                                         \
    float* param, const float* grad, float* m, float* v, T* lowp, const float* hyper,          \
        const float* gnorm_sq, const float* loss, size_t n
WICK_INSTANTIATE(trn_adamw, ADAMW_PARAMS, (param, grad, m, v, lowp, hyper, gnorm_sq, loss, n))
#define CAST_PARAMS(T) const float* src, T* dst, size_t n
WICK_INSTANTIATE(trn_cast, CAST_PARAMS, (src, dst, n))
#define BIAS_PARAMS(T) T* y, const T* bias, size_t rows, int cols
WICK_INSTANTIATE(trn_add_bias, BIAS_PARAMS, (y, bias, rows, cols))
#define DROPOUT_PARAMS(T)                                                                          \
    const T* x, T* y, size_t rows, int cols, int s, const unsigned long long* seed, unsigned stream, \
        unsigned threshold, float scale, int accumulate
WICK_INSTANTIATE(trn_lora_dropout, DROPOUT_PARAMS,
                 (x, y, rows, cols, s, seed, stream, threshold, scale, accumulate))
