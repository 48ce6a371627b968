// The batched prefill of the CUDA decode engine (src/generate/cuda_decode/prefill.rs): n prompt tokens
// at positions pos0 .. pos0 + n through one layer at a time, the matrix products as f32 GEMMs
// (cuBLASLt, src/gpu/gemm.rs) on weights dequantized here. CPU twins: src/gpu/decode/reference.rs
// (`prefill_*`).
//
// Block formats as in kernels/quant_matvec.cu (32 weights per block; Q4_0 18 B, Q4_1 20 B, Q8_0 34 B).
// quant codes: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0.
//
// embed_rows(table, quant, ids, x, n, hidden): x[i] = dequantized row ids[i] of the table, i < n.
// (The layer's weights come from kernels/dequant.cu's dequant_layer.)
// rms_rows(x, w, y, n, k, eps): y[i] = x[i] * rsqrt(mean(x[i]^2) + eps) * w, one warp per row.
// rope_kv_rows(qkv, k_cache, v_cache, inv_freq, qh, pos0, n, heads, kv_heads, d): per token i
//   (position p = pos0 + i), qkv row i = [q heads*d | k kv*d | v kv*d]: q rotated (HF half-split RoPE,
//   angles p * inv_freq[j] as in rope_attention) in place when qh is null, else written head-major to
//   qh ([heads, n, d]: head h of token i at (h * n + i) * d, qkv's q untouched); rotated k and v
//   written to the caches ([max_seq, kv_heads, d]) at row p.
// prefill_attention(qkv, k_cache, v_cache, out, pos0, n, heads, kv_heads, d, qt, scale): causal
//   attention of the n tokens' (rotated) queries over cache rows 0 ..= p. Block (tile, kvh): the qt
//   tokens tile*qt .. of the chunk and the group = heads/kv_heads query heads of kv head kvh, i.e.
//   R = qt * group query rows (row r = token t * group + g), against key tiles of PA_KEYS positions in
//   shared memory, online softmax in f32. out: [n, heads * d].
// swiglu_rows(gu, act, n, ffn): act[i][j] = silu(gu[i][j]) * gu[i][ffn + j].
// add_bias_rows(y, bias, n, cols): y[i][c] += bias[c] (Qwen2's q/k/v biases after the GEMM).
//
// The GEMM attention (launcher `PrefillKernels::attention_gemm`): with qh head-major from rope_kv_rows,
// S [heads, n, L] (row stride ld) = qh K^T per kv head (cuBLASLt, batched over kv heads, the group's
// query heads stacked as rows), then
// prefill_causal_softmax(s, rows, n, ld, pos0, scale): in place, one warp per row r = h * n + i (query
//   token i, position pos0 + i): s[r][j] = softmax_{j <= pos0 + i}(scale s[r][j]) for j < pos0 + i + 1,
//   0 for pos0 + i < j < pos0 + n (the P V product reads L = pos0 + n columns); columns from L up to
//   the next multiple of 4 (<= ld) may be zeroed, later ones are not touched;
// then O [heads, n, d] = P V (cuBLASLt), and
// heads_to_tokens_rows(oh, out, n, heads, d): out[i][h * d + c] = oh[h][i][c] ([n, heads * d]).
#include "common.cuh"
#include "ggml_blocks.cuh"

#define PA_KEYS 32
#define LOG2E_F 1.4426950408889634f
#define PA_THREADS 256  // threads of a prefill_attention block (the launcher uses the same)

extern "C" __global__ void embed_rows(const uint8_t* __restrict__ table, int quant,
                                      const int* __restrict__ ids, float* __restrict__ x, int n,
                                      int hidden) {
    int i = blockIdx.y;
    if (i >= n) return;
    const uint8_t* row = table + (size_t)ids[i] * row_bytes(quant, hidden);
    int parts = hidden / 4;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < parts; j += gridDim.x * blockDim.x) {
        float4 v = dequant4(quant, row, j >> 3, j & 7);
        reinterpret_cast<float4*>(x + (size_t)i * hidden)[j] = v;
    }
}

extern "C" __global__ void rms_rows(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ y, int n, int k, float eps) {
    int warps = blockDim.x >> 5;
    int row = blockIdx.x * warps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= n) return;
    const float* xr = x + (size_t)row * k;
    float ss = 0.f;
    for (int j = lane; j < k; j += 32) ss += xr[j] * xr[j];
    float r = rsqrtf(warp_sum(ss) / (float)k + eps);
    float* yr = y + (size_t)row * k;
    for (int j = lane; j < k; j += 32) yr[j] = xr[j] * r * w[j];
}

extern "C" __global__ void rope_kv_rows(float* __restrict__ qkv, float* __restrict__ k_cache,
                                        float* __restrict__ v_cache, const float* __restrict__ inv_freq,
                                        float* __restrict__ qh, int pos0, int n, int heads,
                                        int kv_heads, int d) {
    int i = blockIdx.x;
    if (i >= n) return;
    int p = pos0 + i, half = d / 2;
    float* row = qkv + (size_t)i * (heads + 2 * kv_heads) * d;
    size_t cache_row = (size_t)p * kv_heads * d;
    // q and k heads: (heads + kv_heads) * half rotation pairs.
    for (int j = threadIdx.x; j < (heads + kv_heads) * half; j += blockDim.x) {
        int h = j / half, c = j % half;
        float s, co;
        sincosf((float)p * inv_freq[c], &s, &co);
        float a = row[h * d + c], b = row[h * d + c + half];
        float ra = a * co - b * s, rb = a * s + b * co;
        if (h < heads) {
            float* dst = qh ? qh + ((size_t)h * n + i) * d : row + h * d;
            dst[c] = ra;
            dst[c + half] = rb;
        } else {
            int kvh = h - heads;
            k_cache[cache_row + kvh * d + c] = ra;
            k_cache[cache_row + kvh * d + c + half] = rb;
        }
    }
    const float* v = row + (heads + kv_heads) * d;
    for (int j = threadIdx.x; j < kv_heads * d; j += blockDim.x) v_cache[cache_row + j] = v[j];
}

extern "C" __global__ void prefill_attention(const float* __restrict__ qkv,
                                             const float* __restrict__ k_cache,
                                             const float* __restrict__ v_cache, float* __restrict__ out,
                                             int pos0, int n, int heads, int kv_heads, int d, int qt,
                                             float scale) {
    extern __shared__ float sm[];
    int kvh = blockIdx.y, t0 = blockIdx.x * qt;
    if (t0 >= n) return;
    int group = heads / kv_heads;
    int tokens = min(qt, n - t0);
    int R = tokens * group;
    int dp = d + 1;  // padded key rows: thread c reads k[c][i], conflict-free
    float* q = sm;                    // [R][d] (qt * group rows reserved)
    float* acc = q + qt * group * d;  // [R][d]
    float* ks = acc + qt * group * d; // [PA_KEYS][d + 1]
    float* vs = ks + PA_KEYS * dp;    // [PA_KEYS][d]
    float* ps = vs + PA_KEYS * d;     // [R][PA_KEYS]
    float* run_m = ps + qt * group * PA_KEYS;  // [R]
    float* run_l = run_m + qt * group;         // [R]
    float* alpha = run_l + qt * group;         // [R]
    int qkv_row = (heads + 2 * kv_heads) * d;
    for (int j = threadIdx.x; j < R * d; j += blockDim.x) {
        int r = j / d, c = j % d, t = r / group, g = r % group;
        q[j] = qkv[(size_t)(t0 + t) * qkv_row + (size_t)(kvh * group + g) * d + c] * scale;
        acc[j] = 0.f;
    }
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        run_m[r] = -INFINITY;
        run_l[r] = 0.f;
    }
    int last = pos0 + t0 + tokens - 1;  // the last key any row of this block sees
    size_t crow = (size_t)kv_heads * d;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int k0 = 0; k0 <= last; k0 += PA_KEYS) {
        int nk = min(PA_KEYS, last + 1 - k0);
        __syncthreads();  // q/acc ready; previous tile's ks/vs/ps consumed
        for (int j = threadIdx.x; j < nk * d; j += blockDim.x) {
            int kk = j / d, c = j % d;
            size_t at = (size_t)(k0 + kk) * crow + (size_t)kvh * d + c;
            ks[kk * dp + c] = k_cache[at];
            vs[kk * d + c] = v_cache[at];
        }
        __syncthreads();
        // Scores (scale folded into q); keys after a row's position are masked.
        for (int j = threadIdx.x; j < R * PA_KEYS; j += blockDim.x) {
            int r = j / PA_KEYS, kk = j % PA_KEYS;
            int pos = pos0 + t0 + r / group;
            float s = -INFINITY;
            if (kk < nk && k0 + kk <= pos) {
                const float* qr = q + r * d;
                const float* kr = ks + kk * dp;
                float dot = 0.f;
                for (int c = 0; c < d; c++) dot += qr[c] * kr[c];
                s = dot;
            }
            ps[j] = s;
        }
        __syncthreads();
        // Online softmax per row, one warp per row (every row has key 0 .. its position >= k0 in view
        // of the first tile, so run_m is finite after it).
        for (int r = warp; r < R; r += warps) {
            float s = lane < PA_KEYS ? ps[r * PA_KEYS + lane] : -INFINITY;
            float m = warp_max(s);
            float big = fmaxf(m, run_m[r]);
            float e = (big == -INFINITY || s == -INFINITY) ? 0.f : expf(s - big);
            if (lane < PA_KEYS) ps[r * PA_KEYS + lane] = e;
            float l = warp_sum(e);
            if (lane == 0) {
                float a = run_m[r] == -INFINITY ? 0.f : expf(run_m[r] - big);
                alpha[r] = a;
                run_l[r] = run_l[r] * a + l;
                run_m[r] = big;
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < R * d; j += blockDim.x) {
            int r = j / d, c = j % d;
            const float* pr = ps + r * PA_KEYS;
            float sum = 0.f;
            for (int kk = 0; kk < nk; kk++) sum += pr[kk] * vs[kk * d + c];
            acc[j] = acc[j] * alpha[r] + sum;
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < R * d; j += blockDim.x) {
        int r = j / d, c = j % d, t = r / group, g = r % group;
        out[(size_t)(t0 + t) * heads * d + (size_t)(kvh * group + g) * d + c] = acc[j] / run_l[r];
    }
}

extern "C" __global__ void swiglu_rows(const float* __restrict__ gu, float* __restrict__ act, int n,
                                       int ffn) {
    size_t total = (size_t)n * ffn;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < total;
         j += (size_t)gridDim.x * blockDim.x) {
        size_t i = j / ffn, c = j % ffn;
        float g = gu[i * 2 * ffn + c], u = gu[i * 2 * ffn + ffn + c];
        act[j] = g / (1.f + expf(-g)) * u;
    }
}

extern "C" __global__ void add_bias_rows(float* __restrict__ y, const float* __restrict__ bias, int n,
                                         int cols) {
    size_t total = (size_t)n * cols;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < total;
         j += (size_t)gridDim.x * blockDim.x)
        y[j] += bias[j % cols];
}

extern "C" __global__ void prefill_causal_softmax(float* __restrict__ s, int rows, int n, int ld,
                                                  int pos0, float scale) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    int len = pos0 + row % n + 1, cols = pos0 + n;
    float* x = s + (size_t)row * ld;
    float sl = scale * LOG2E_F;
    // Pass 1: running max and sum of exp2 over the row's keys, per lane, then across the warp.
    bool vec = (ld & 3) == 0 && ((size_t)s & 15) == 0;
    float m, sum;
    warp_row_max_sum_exp2(x, len, sl, vec, m, sum);
    float inv = 1.f / sum;
    // Pass 2, in place: each lane rewrites exactly the elements it alone reads.
    if (vec) {
        float4* x4 = reinterpret_cast<float4*>(x);
        for (int i = lane; i * 4 < cols; i += 32) {
            float o[4] = {0.f, 0.f, 0.f, 0.f};
            if (i * 4 < len) {
                float4 a = x4[i];
                float e[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
                for (int j = 0; j < 4; j++) o[j] = i * 4 + j < len ? exp2f(e[j] * sl - m) * inv : 0.f;
            }
            // The last vector may run past cols into the padding up to ld (a multiple of 4): harmless.
            x4[i] = make_float4(o[0], o[1], o[2], o[3]);
        }
    } else {
        for (int i = lane; i < cols; i += 32) x[i] = i < len ? exp2f(x[i] * sl - m) * inv : 0.f;
    }
}

extern "C" __global__ void heads_to_tokens_rows(const float* __restrict__ oh, float* __restrict__ out,
                                                int n, int heads, int d) {
    size_t total = (size_t)n * heads * d;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < total;
         j += (size_t)gridDim.x * blockDim.x) {
        size_t i = j / ((size_t)heads * d), hc = j % ((size_t)heads * d);
        size_t h = hc / d, c = hc % d;
        out[j] = oh[(h * n + i) * d + c];
    }
}
