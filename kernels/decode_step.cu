// The non-matmul kernels of the CUDA decode engine (src/generate/cuda_decode/): attention with RoPE and
// the KV-cache write fused, and the greedy argmax with its log-probability. Both read the position /
// write the token through device memory, so a captured CUDA graph replays them unchanged for every
// token. CPU twins: src/gpu/decode/reference.rs.
//
// state: int[2] = {token id, position} of the token being decoded.
//
// rope_attention(qkv, k_cache, v_cache, state, inv_freq, out, part, counters, heads, kv_heads, d,
//                scale, cache_seq_stride): flash-decoding attention, split over the positions.
//   Batched decode: grid z = sequence; sequence z reads/writes qkv, state, out, part and counters at
//   z times their size and its caches at z * cache_seq_stride floats.
//   qkv: [heads*d | kv_heads*d | kv_heads*d] (q, k, v of the new token, before RoPE)
//   k_cache, v_cache: [max_seq, kv_heads, d] of this layer; out: [heads, d]
//   part: scratch of heads * ATT_SPLITS * (d + 2) floats: per query head and split the unnormalized
//     sum acc[d] (first heads * ATT_SPLITS * d floats) then (max, sum of exp) pairs.
//   counters: kv_heads unsigned ints, zero before the launch (the kernel leaves them zero).
//   grid: (kv_heads, ATT_SPLITS) blocks, whatever the position, so a captured graph stays valid.
//   Block (kvh, y) handles the `group` query heads of kv head kvh over the chunks c = y, y + S, ...
//   (S = ATT_SPLITS) of ATT_CHUNK positions [c ATT_CHUNK, min((c + 1) ATT_CHUNK, pos + 1)), with an
//   online softmax across its chunks; blocks with no chunk (y > pos / ATT_CHUNK) exit at once.
//   block: ATT_THREADS threads. Dynamic shared memory: (2 group d + 3 d + 2 ATT_CHUNK (d + 4) +
//   group ATT_CHUNK + 2 group) floats (each chunk's keys and values are staged there first).
//   RoPE (HF half-split layout): with a_i = pos * inv_freq[i], i < d/2,
//     x'[i] = x[i] cos a_i - x[i + d/2] sin a_i,  x'[i + d/2] = x[i] sin a_i + x[i + d/2] cos a_i
//   on q (head h) and k (kv head h / group). The block whose chunks hold pos writes k', v to the
//   cache at pos and uses its own copy for that position (no other block reads row pos). Then
//     s_t = scale * q' . k_t (t <= pos),  out = sum_t softmax(s)_t v_t,
//   as per-split (m_y, l_y, acc_y) partials; the last block of each kv head to finish (atomic
//   counter) combines them: out = sum_y e^(m_y - M) acc_y / sum_y e^(m_y - M) l_y. With one split
//   active (pos < ATT_CHUNK) its block writes out = acc / l itself (no partials, no counter).
// argmax_logprob(logits, n, result): one block per sequence (logits [batch, n]); result[0] = argmax (lowest index on ties, NaN never
//   wins), result[1] = bits of logits[id] - logsumexp(logits) as f32. Also writes the id to state[0]
//   when `state` is not null. With `pending` not null, the blocks also set its `pending_words` words to
//   all ones: the adapter pool's xa values of the next step (XA_PENDING, kernels/quant_matvec.cu),
//   which every mat-vec of this step has read by now (this kernel is the step's last; it runs after
//   the PDL wait, when every earlier kernel has finished). A memset node before the step did it and
//   cost the step a graph node of its own.
#include "common.cuh"

#define ATT_CHUNK 32
#define ATT_SPLITS 32
#define ATT_THREADS 256

// Keys and values of cached positions [t0, t0 + n) (all before pos: written by earlier steps or the
// prefill) of kv head kvh into shared rows of ld floats: 16-byte loads, several in flight per
// thread (the kernel is bound by load latency: walking the cache row by row waited on every load).
__device__ __forceinline__ void stage_cached(const float* __restrict__ k_cache,
                                             const float* __restrict__ v_cache, int t0, int n,
                                             size_t row, int kvh, int d, int ld, float* ks, float* vs) {
    int d4 = d / 4;
#pragma unroll 4
    for (int j = threadIdx.x; j < n * d4; j += blockDim.x) {
        int tt = j / d4, i4 = j % d4;
        size_t at = (size_t)(t0 + tt) * row + (size_t)kvh * d;
        float4 kv = __ldg(reinterpret_cast<const float4*>(k_cache + at) + i4);
        float4 vv = __ldg(reinterpret_cast<const float4*>(v_cache + at) + i4);
        reinterpret_cast<float4*>(ks + tt * ld)[i4] = kv;
        reinterpret_cast<float4*>(vs + tt * ld)[i4] = vv;
    }
}

// Threads per (head, position) score of a chunk of n positions: 8 when the chunk's pairs leave
// room (each then dots d / 32 float4 and adds 3 shuffles instead of d / 4 float4 in one chain:
// SmolLM2-1.7B has one query head per kv head, 32 pairs for 256 threads), else 1. Shared rows
// d + 4 floats apart serve both without bank conflicts: one thread a pair, the 8 rows of a
// quarter-warp's 16-byte loads start one float4 apart; 8 a pair, they read 8 float4 of one row.
__device__ __forceinline__ int score_threads(int group, int n, int d) {
    return group * n * 8 <= (int)blockDim.x && d >= 32 ? 8 : 1;
}

#define ROPE_ATTENTION_PARAMS                                                                       \
    const float* __restrict__ qkv, float* __restrict__ k_cache, float* __restrict__ v_cache,        \
        const int* __restrict__ state, const float* __restrict__ inv_freq, float* __restrict__ out, \
        float* __restrict__ part, unsigned int* __restrict__ counters, int heads, int kv_heads,     \
        int d, float scale, long long cache_seq_stride
#define ROPE_ATTENTION_ARGS \
    qkv, k_cache, v_cache, state, inv_freq, out, part, counters, heads, kv_heads, d, scale, cache_seq_stride
__device__ __forceinline__ void rope_attention_body(ROPE_ATTENTION_PARAMS) {
    extern __shared__ float sm[];
    __shared__ bool is_last;
    int kvh = blockIdx.x, y = blockIdx.y;
    // Sequence blockIdx.z of a batch: its own q/k/v row, caches, state, output and scratch.
    {
        size_t z = blockIdx.z;
        qkv += z * (size_t)(heads + 2 * kv_heads) * d;
        k_cache += z * (size_t)cache_seq_stride;
        v_cache += z * (size_t)cache_seq_stride;
        state += 2 * z;
        out += z * (size_t)heads * d;
        part += z * (size_t)heads * ATT_SPLITS * (d + 2);
        counters += z * (size_t)kv_heads;
    }
    // state is the host's (uploaded before the step): read before the wait.
    int pos = state[1];
    int last_chunk = pos / ATT_CHUNK;
    if (y > last_chunk) {
        pdl_wait();
        return;
    }
    int group = heads / kv_heads, half = d / 2;
    unsigned int active = (unsigned int)min(last_chunk + 1, ATT_SPLITS);
    int ld = d + 4;  // floats per shared key/value row (score_threads)
    float* q = sm;                   // [group][d], rotated
    float* acc = q + group * d;      // [group][d] running unnormalized sums
    float* kc = acc + group * d;     // [d] rotated key at pos
    float* vc = kc + d;              // [d] value at pos
    float2* rot = reinterpret_cast<float2*>(vc + d);  // [d / 2] (cos, sin) of pos * inv_freq
    float* ks = vc + 2 * d;          // [ATT_CHUNK][ld]
    float* vs = ks + ATT_CHUNK * ld;  // [ATT_CHUNK][ld]
    float* p = vs + ATT_CHUNK * ld;   // [group][ATT_CHUNK] scores, then weights
    float* run_m = p + group * ATT_CHUNK;  // [group] running max
    float* run_l = run_m + group;          // [group] running sum of exp
    __shared__ float alpha[64];            // per head rescale of acc for the current chunk (group <= 64)
    float* part_acc = part;
    float* part_ml = part + (size_t)heads * ATT_SPLITS * d;
    const float* qin = qkv + (size_t)kvh * group * d;
    const float* kin = qkv + (size_t)heads * d + (size_t)kvh * d;
    const float* vin = qkv + (size_t)(heads + kv_heads) * d + (size_t)kvh * d;
    bool has_pos = last_chunk % ATT_SPLITS == y;
    size_t row = (size_t)kv_heads * d;  // floats per cached position
    // Everything that reads no earlier kernel's output happens before the wait, overlapping the
    // q/k/v product's tail: the rotation angles (pos and inv_freq are the host's), the running
    // sums, and the block's first chunk of cached keys and values (positions before pos, written
    // by earlier steps or the prefill: this kernel starts only once every block of the q/k/v
    // product has passed its own wait, so every kernel before that one has completed; see
    // pdl_wait), straight into shared memory.
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, co;
        sincosf((float)pos * inv_freq[i], &s, &co);
        rot[i] = make_float2(co, s);
    }
    for (int j = threadIdx.x; j < group * d; j += blockDim.x) acc[j] = 0.f;
    for (int g = threadIdx.x; g < group; g += blockDim.x) {
        run_m[g] = -INFINITY;
        run_l[g] = 0.f;
    }
    {
        int t0 = y * ATT_CHUNK;
        stage_cached(k_cache, v_cache, t0, min(ATT_CHUNK, pos - t0), row, kvh, d, ld, ks, vs);
    }
    pdl_wait();  // q/k/v are the previous kernel's output
    __syncthreads();  // rot
    for (int j = threadIdx.x; j < group * half; j += blockDim.x) {
        int g = j / half, i = j % half;
        float2 cs = rot[i];
        float a = qin[g * d + i], b = qin[g * d + i + half];
        q[g * d + i] = a * cs.x - b * cs.y;
        q[g * d + i + half] = a * cs.y + b * cs.x;
    }
    if (has_pos) {
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            float2 cs = rot[i];
            float a = kin[i], b = kin[i + half];
            float k0 = a * cs.x - b * cs.y, k1 = a * cs.y + b * cs.x;
            kc[i] = k0;
            kc[i + half] = k1;
            k_cache[(size_t)pos * row + (size_t)kvh * d + i] = k0;
            k_cache[(size_t)pos * row + (size_t)kvh * d + i + half] = k1;
        }
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            float v = vin[i];
            vc[i] = v;
            v_cache[(size_t)pos * row + (size_t)kvh * d + i] = v;
        }
    }
    __syncthreads();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int d4 = d / 4;  // d % 4 == 0 (checked by the host)
    for (int c = y; c <= last_chunk; c += ATT_SPLITS) {
        int t0 = c * ATT_CHUNK;
        int n = min(ATT_CHUNK, pos + 1 - t0);
        // The first chunk was staged before the wait; a later one (pos >= ATT_CHUNK * ATT_SPLITS)
        // now, after the previous chunk's last barrier.
        if (c != y) stage_cached(k_cache, v_cache, t0, min(n, pos - t0), row, kvh, d, ld, ks, vs);
        if (c == last_chunk)  // the new position's row: this block's rotated key and value
            for (int i4 = threadIdx.x; i4 < d4; i4 += blockDim.x) {
                reinterpret_cast<float4*>(ks + (pos - t0) * ld)[i4] = reinterpret_cast<const float4*>(kc)[i4];
                reinterpret_cast<float4*>(vs + (pos - t0) * ld)[i4] = reinterpret_cast<const float4*>(vc)[i4];
            }
        __syncthreads();
        // Scores: tpp threads per (head, position) pair, from shared memory; the pass runs to a
        // multiple of 32 threads so that every lane of a warp takes part in the shuffles.
        {
            int tpp = score_threads(group, n, d), pairs = group * n, span = (pairs * tpp + 31) & ~31;
            for (int j = threadIdx.x; j < span; j += blockDim.x) {
                int pr = j / tpp, sub = j % tpp;
                float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
                int g = pr / n, tt = pr % n;
                if (pr < pairs) {
                    const float4* k4 = reinterpret_cast<const float4*>(ks + tt * ld);
                    const float4* q4 = reinterpret_cast<const float4*>(q + g * d);
                    for (int i = sub; i < d4; i += tpp) {
                        float4 a = q4[i], b = k4[i];
                        d0 += a.x * b.x, d1 += a.y * b.y, d2 += a.z * b.z, d3 += a.w * b.w;
                    }
                }
                float dot = (d0 + d1) + (d2 + d3);
                for (int o = tpp >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                if (pr < pairs && sub == 0) p[g * ATT_CHUNK + tt] = dot * scale;
            }
        }
        __syncthreads();
        // Per head (one warp each): new running max, weights, rescale factor of the old sums.
        for (int g = warp; g < group; g += warps) {
            float m = -INFINITY;
            for (int tt = lane; tt < n; tt += 32) m = fmaxf(m, p[g * ATT_CHUNK + tt]);
            for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
            float big = fmaxf(m, run_m[g]);
            float l = 0.f;
            for (int tt = lane; tt < n; tt += 32) {
                float e = expf(p[g * ATT_CHUNK + tt] - big);
                p[g * ATT_CHUNK + tt] = e;
                l += e;
            }
            for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffff, l, o);
            __syncwarp();
            if (lane == 0) {
                float a = expf(run_m[g] - big);  // 0 on the first chunk (run_m = -inf)
                alpha[g] = a;
                run_l[g] = run_l[g] * a + l;
                run_m[g] = big;
            }
        }
        __syncthreads();
        // Values of the chunk: one (head, dim) pair per thread, four independent sums.
        for (int j = threadIdx.x; j < group * d; j += blockDim.x) {
            int g = j / d, i = j % d;
            const float* pg = p + g * ATT_CHUNK;
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            int tt = 0;
            for (; tt + 4 <= n; tt += 4) {
                s0 += pg[tt] * vs[tt * ld + i];
                s1 += pg[tt + 1] * vs[(tt + 1) * ld + i];
                s2 += pg[tt + 2] * vs[(tt + 2) * ld + i];
                s3 += pg[tt + 3] * vs[(tt + 3) * ld + i];
            }
            for (; tt < n; tt++) s0 += pg[tt] * vs[tt * ld + i];
            acc[j] = acc[j] * alpha[g] + ((s0 + s1) + (s2 + s3));
        }
        __syncthreads();  // p, alpha, ks and vs are rewritten by the next chunk
    }
    pdl_trigger();  // what is left: the output, or the partials and the combine
    if (active == 1) {
        // One block covers every position (pos < ATT_CHUNK): its sums are the output; no
        // partials, no counter.
        for (int j = threadIdx.x; j < group * d; j += blockDim.x) {
            int g = j / d, i = j % d;
            out[(size_t)(kvh * group + g) * d + i] = acc[j] / run_l[g];
        }
        return;
    }
    for (int j = threadIdx.x; j < group * d; j += blockDim.x) {
        int g = j / d, i = j % d;
        part_acc[((size_t)(kvh * group + g) * ATT_SPLITS + y) * d + i] = acc[j];
    }
    for (int g = threadIdx.x; g < group; g += blockDim.x) {
        size_t at = ((size_t)(kvh * group + g) * ATT_SPLITS + y) * 2;
        part_ml[at] = run_m[g];
        part_ml[at + 1] = run_l[g];
    }
    // The last block of this kv head to get here combines the splits. The barrier orders the
    // block's partial stores before thread 0's release; the counter's add releases them at GPU
    // scope and acquires the other blocks' (one round trip instead of a fence and then the add).
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int before;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(before)
                     : "l"(counters + kvh)
                     : "memory");
        is_last = before == active - 1;
    }
    __syncthreads();
    if (!is_last) return;
    for (int j = threadIdx.x; j < group * d; j += blockDim.x) {
        int g = j / d, i = j % d, h = kvh * group + g;
        const float* ml = part_ml + (size_t)h * ATT_SPLITS * 2;
        const float* acc_h = part_acc + (size_t)h * ATT_SPLITS * d + i;
        float big = -INFINITY;
        for (unsigned int yy = 0; yy < active; yy++) big = fmaxf(big, __ldcg(ml + 2 * yy));
        float l = 0.f, sum = 0.f;
        for (unsigned int yy = 0; yy < active; yy++) {
            float w = expf(__ldcg(ml + 2 * yy) - big);
            l += __ldcg(ml + 2 * yy + 1) * w;
            sum += __ldcg(acc_h + (size_t)yy * d) * w;
        }
        out[(size_t)h * d + i] = sum / l;
    }
    if (threadIdx.x == 0) counters[kvh] = 0;
}

// The kernel as compiled (56 registers, four blocks an SM) and capped at 48 registers (five an SM:
// `rope_attention_wide`, for grids of many blocks). SmolLM2-1.7B's 32 kv heads launch 1024 blocks a
// step, and with four an SM a 512-token context's active blocks took two waves: the capped kernel
// decodes 4.7% faster there, but 2-6% slower at the 135M proxy's 96 blocks (bench/results/device-s15,
// call 3); the launcher picks by the grid's size.
extern "C" __global__ void rope_attention(ROPE_ATTENTION_PARAMS) { rope_attention_body(ROPE_ATTENTION_ARGS); }
extern "C" __global__ void __launch_bounds__(ATT_THREADS, 5) rope_attention_wide(ROPE_ATTENTION_PARAMS) {
    rope_attention_body(ROPE_ATTENTION_ARGS);
}

// Two passes over the row, each with 16-byte loads, four in flight per thread (the row is ~200 KB
// and the kernel is latency-bound: one online pass with a dependent exp per element took ~30 us at
// 49152 logits): (1) argmax, (2) sum of exp(v - max). NaN never wins and is left out of the sum, as
// is -inf.
#define ARGMAX_UNROLL 4
// Sets words [0, words) of `pending` to all ones, split over the grid's blocks (16-byte stores where
// aligned); the stores drain while the block reads its logits.
__device__ __forceinline__ void mark_pending(unsigned int* pending, int words) {
    int t = blockIdx.x * blockDim.x + threadIdx.x, threads = gridDim.x * blockDim.x;
    if ((words & 3) == 0 && aligned16(pending)) {
        uint4* p4 = reinterpret_cast<uint4*>(pending);
        for (int i = t; i < words / 4; i += threads) p4[i] = make_uint4(~0u, ~0u, ~0u, ~0u);
    } else {
        for (int i = t; i < words; i += threads) pending[i] = ~0u;
    }
}

extern "C" __global__ void argmax_logprob(const float* __restrict__ logits, int n,
                                          unsigned int* __restrict__ result, int* __restrict__ state,
                                          unsigned int* __restrict__ pending, int pending_words) {
    // Sequence blockIdx.x of a batch: logits [batch, n], result [batch, 2], state [batch, 2].
    logits += (size_t)blockIdx.x * n;
    result += 2 * (size_t)blockIdx.x;
    if (state != nullptr) state += 2 * (size_t)blockIdx.x;
    pdl_trigger();
    pdl_wait();  // the logits are the previous kernel's output
    if (pending != nullptr) mark_pending(pending, pending_words);
    __shared__ float sv[32], red[32];
    __shared__ int si[32];
    __shared__ float s_max;
    __shared__ int s_idx;
    int bd = blockDim.x, tid = threadIdx.x;
    bool vec = (n & 3) == 0 && aligned16(logits);
    const float4* l4 = reinterpret_cast<const float4*>(logits);
    int n4 = n >> 2;
    // Pass 1: each thread walks its indices in increasing order, so a strict > keeps the lowest
    // index of a tie; -inf never replaces the initial -inf, NaN never compares greater.
    float best = -INFINITY;
    int best_i = 0x7fffffff;
    if (vec) {
        for (int base = tid; base < n4; base += ARGMAX_UNROLL * bd) {
            float4 v[ARGMAX_UNROLL];
#pragma unroll
            for (int u = 0; u < ARGMAX_UNROLL; u++)
                if (base + u * bd < n4) v[u] = __ldg(l4 + base + u * bd);
#pragma unroll
            for (int u = 0; u < ARGMAX_UNROLL; u++) {
                int j = base + u * bd;
                if (j < n4) {
                    float e[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                    for (int c = 0; c < 4; c++)
                        if (e[c] > best) {
                            best = e[c];
                            best_i = 4 * j + c;
                        }
                }
            }
        }
    } else {
        for (int i = tid; i < n; i += bd) {
            float v = logits[i];
            if (v > best) {
                best = v;
                best_i = i;
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffff, best, o);
        int oi = __shfl_xor_sync(0xffffffff, best_i, o);
        if (ob > best || (ob == best && oi < best_i)) {
            best = ob;
            best_i = oi;
        }
    }
    int lane = tid & 31, warp = tid >> 5, warps = bd >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = best_i;
    }
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < warps; w++)
            if (sv[w] > best || (sv[w] == best && si[w] < best_i)) {
                best = sv[w];
                best_i = si[w];
            }
        s_max = best;
        s_idx = best_i == 0x7fffffff ? 0 : best_i;  // every logit NaN or -inf: the host argmax says 0 too
    }
    __syncthreads();
    float m = s_max;
    // Pass 2: sum of exp(v - max) over the values that are neither NaN nor -inf.
    float sum = 0.f;
    if (vec) {
        for (int base = tid; base < n4; base += ARGMAX_UNROLL * bd) {
            float4 v[ARGMAX_UNROLL];
#pragma unroll
            for (int u = 0; u < ARGMAX_UNROLL; u++)
                if (base + u * bd < n4) v[u] = __ldg(l4 + base + u * bd);
#pragma unroll
            for (int u = 0; u < ARGMAX_UNROLL; u++) {
                if (base + u * bd < n4) {
                    float e[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                    for (int c = 0; c < 4; c++)
                        if (e[c] > -INFINITY) sum += expf(e[c] - m);
                }
            }
        }
    } else {
        for (int i = tid; i < n; i += bd) {
            float v = logits[i];
            if (v > -INFINITY) sum += expf(v - m);
        }
    }
    sum = block_sum(sum, red);
    if (tid == 0) {
        int id = s_idx;
        float lp = logits[id] - m - logf(sum);
        result[0] = (unsigned int)id;
        result[1] = __float_as_uint(lp);
        if (state != nullptr) state[0] = id;
    }
}
