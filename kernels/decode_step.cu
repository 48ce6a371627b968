// The non-matmul kernels of the CUDA decode engine (src/generate/cuda_decode/): attention with RoPE and
// the KV-cache write fused, and the greedy argmax with its log-probability. Both read the position /
// write the token through device memory, so a captured CUDA graph replays them unchanged for every
// token. CPU twins: src/gpu/decode/reference.rs.
//
// state: int[2] = {token id, position} of the token being decoded.
//
// rope_attention(qkv, k_cache, v_cache, state, inv_freq, out, heads, kv_heads, d, scale)
//   qkv: [heads*d | kv_heads*d | kv_heads*d] (q, k, v of the new token, before RoPE)
//   k_cache, v_cache: [max_seq, kv_heads, d] of this layer; out: [heads, d]
//   grid: heads blocks; block: a multiple of d and of 32 threads. Dynamic shared memory:
//   (3 d + pos + 1) floats.
//   RoPE (HF half-split layout): with a_i = pos * inv_freq[i], i < d/2,
//     x'[i] = x[i] cos a_i - x[i + d/2] sin a_i,  x'[i + d/2] = x[i] sin a_i + x[i + d/2] cos a_i
//   on q (head h) and k (kv head h / (heads / kv_heads)); the first query head of each group writes
//   k', v to the cache at pos (the others use their own copy of k', v for position pos, so no block
//   reads what another writes in the same launch). Then
//     s_t = scale * q' . k_t (t <= pos),  out = sum_t softmax(s)_t v_t.
// argmax_logprob(logits, n, result): one block; result[0] = argmax (lowest index on ties, NaN never
//   wins), result[1] = bits of logits[id] - logsumexp(logits) as f32. Also writes the id to state[0]
//   when `state` is not null.
#include "common.cuh"

extern "C" __global__ void rope_attention(const float* __restrict__ qkv, float* __restrict__ k_cache,
                                          float* __restrict__ v_cache, const int* __restrict__ state,
                                          const float* __restrict__ inv_freq, float* __restrict__ out,
                                          int heads, int kv_heads, int d, float scale) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    float* q = sm;
    float* kc = q + d;
    float* vc = kc + d;
    float* p = vc + d;
    int h = blockIdx.x, group = heads / kv_heads, kvh = h / group;
    int pos = state[1];
    int half = d / 2;
    const float* qin = qkv + (size_t)h * d;
    const float* kin = qkv + (size_t)heads * d + (size_t)kvh * d;
    const float* vin = qkv + (size_t)(heads + kv_heads) * d + (size_t)kvh * d;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf((float)pos * inv_freq[i], &s, &c);
        float a = qin[i], b = qin[i + half];
        q[i] = a * c - b * s;
        q[i + half] = a * s + b * c;
        a = kin[i];
        b = kin[i + half];
        kc[i] = a * c - b * s;
        kc[i + half] = a * s + b * c;
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) vc[i] = vin[i];
    __syncthreads();
    size_t row = (size_t)kv_heads * d;  // floats per cached position
    if (h % group == 0) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            k_cache[(size_t)pos * row + (size_t)kvh * d + i] = kc[i];
            v_cache[(size_t)pos * row + (size_t)kvh * d + i] = vc[i];
        }
    }
    // Scores, one position per thread.
    float local_max = -INFINITY;
    for (int t = threadIdx.x; t <= pos; t += blockDim.x) {
        const float* kr = t == pos ? kc : k_cache + (size_t)t * row + (size_t)kvh * d;
        // d % 4 == 0 (checked by the host): 16-byte loads of the key row.
        const float4* k4 = reinterpret_cast<const float4*>(kr);
        const float4* q4 = reinterpret_cast<const float4*>(q);
        float dot = 0.f;
        for (int i = 0; i < d / 4; i++) {
            float4 a = q4[i], b = k4[i];
            dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
        dot *= scale;
        p[t] = dot;
        local_max = fmaxf(local_max, dot);
    }
    float m = block_max(local_max, red);
    float local_sum = 0.f;
    for (int t = threadIdx.x; t <= pos; t += blockDim.x) {
        float e = expf(p[t] - m);
        p[t] = e;
        local_sum += e;
    }
    float total = block_sum(local_sum, red);  // its __syncthreads also publishes p[]
    // Values: thread (g, i) sums dim i over positions t = g, g + G, ...; then the G partials add up.
    int groups = blockDim.x / d;
    int i = threadIdx.x % d, g = threadIdx.x / d;
    float acc = 0.f;
    for (int t = g; t <= pos; t += groups) {
        const float* vr = t == pos ? vc : v_cache + (size_t)t * row + (size_t)kvh * d;
        acc += p[t] * vr[i];
    }
    __syncthreads();
    // Reuse the q/k slots (3 d floats) for the partials; groups <= 3 is checked by the host, else the
    // score area (at least pos + 1 >= 1 floats past them) would be overwritten too early.
    float* partial = sm;
    if (groups <= 3) {
        partial[g * d + i] = acc;
        __syncthreads();
        if (g == 0) {
            float s = 0.f;
            for (int j = 0; j < groups; j++) s += partial[j * d + i];
            out[(size_t)h * d + i] = s / total;
        }
    }
}

extern "C" __global__ void argmax_logprob(const float* __restrict__ logits, int n,
                                          unsigned int* __restrict__ result, int* __restrict__ state) {
    __shared__ float sv[32], sm_[32], ss[32];
    __shared__ int si[32];
    float best = -INFINITY;
    int best_i = 0x7fffffff;
    float m = -INFINITY, s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = logits[i];
        if (v > best) {
            best = v;
            best_i = i;
        }
        if (v > m) {
            s = s * expf(m - v) + 1.f;
            m = v;
        } else if (v > -INFINITY) {  // skips NaN and -inf
            s += expf(v - m);
        }
    }
    // Warp then block reduction of (best, best_i) and (m, s).
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffff, best, o);
        int oi = __shfl_xor_sync(0xffffffff, best_i, o);
        if (ob > best || (ob == best && oi < best_i)) {
            best = ob;
            best_i = oi;
        }
        float om = __shfl_xor_sync(0xffffffff, m, o);
        float os = __shfl_xor_sync(0xffffffff, s, o);
        float nm = fmaxf(m, om);
        s = (m == -INFINITY ? 0.f : s * expf(m - nm)) + (om == -INFINITY ? 0.f : os * expf(om - nm));
        m = nm;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = best_i;
        sm_[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; w++) {
            if (sv[w] > best || (sv[w] == best && si[w] < best_i)) {
                best = sv[w];
                best_i = si[w];
            }
            float nm = fmaxf(m, sm_[w]);
            s = (m == -INFINITY ? 0.f : s * expf(m - nm)) +
                (sm_[w] == -INFINITY ? 0.f : ss[w] * expf(sm_[w] - nm));
            m = nm;
        }
        if (best_i == 0x7fffffff) best_i = 0;  // every logit NaN or -inf: the host argmax says 0 too
        float lp = logits[best_i] - m - logf(s);
        result[0] = (unsigned int)best_i;
        result[1] = __float_as_uint(lp);
        if (state != nullptr) state[0] = best_i;
    }
}
