// Stand-alone check and timing of kernels/flash_attention.cu (measurement code, not the product):
//   1. odd shapes against an f64 reference on the host (forward o and lse, backward dq, dk, dv),
//   2. TFLOP/s of the causal forward and backward at seq 2k/4k/8k, hd 64/128, 16k tokens a call
//      (FlashAttention's benchmark convention: hidden 2048, batch x seq = 16384, causal FLOPs =
//      half of 4 B H S^2 hd forward, 2.5x that backward).
// Built by benches/flash_attention/run.sh (nvcc, static cudart); `sdpa.py` times PyTorch's SDPA on
// the same shapes in the same call. Prints one JSON object per line.
// The kernel file under test: the product's, or a candidate (-DFA_KERNEL=...; see run.sh).
#ifndef FA_KERNEL
#define FA_KERNEL "../../kernels/flash_attention.cu"
#endif
#include FA_KERNEL

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                         \
    do {                                                                              \
        cudaError_t e_ = (x);                                                         \
        if (e_ != cudaSuccess) {                                                      \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static size_t smem_bytes(int hd, int tiles, int floats) { return (size_t)tiles * 64 * (hd + 8) * 2 + floats * 4; }

struct Kernels {
    void (*fwd)(const bf16*, const bf16*, const bf16*, bf16*, float*, int, int, float);
    void (*dkdv)(const bf16*, const bf16*, const bf16*, const bf16*, const float*, const float*, bf16*, bf16*, int, int, float);
    void (*dq)(const bf16*, const bf16*, const bf16*, const bf16*, const float*, const float*, bf16*, int, int, float);
};

static Kernels kernels(int hd) {
    Kernels k;
    if (hd == 64) { k.fwd = fa_forward_hd64; k.dkdv = fa_backward_dkdv_hd64; k.dq = fa_backward_dq_hd64; }
    else { k.fwd = fa_forward_hd128; k.dkdv = fa_backward_dkdv_hd128; k.dq = fa_backward_dq_hd128; }
    CK(cudaFuncSetAttribute(k.fwd, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(hd, FA_FORWARD_TILES, 0)));
    CK(cudaFuncSetAttribute(k.dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(hd, FA_DKDV_TILES, FA_DKDV_FLOATS)));
    CK(cudaFuncSetAttribute(k.dq, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(hd, FA_DQ_TILES, 0)));
    return k;
}

struct Dev {
    bf16 *q, *k, *v, *o, *dout, *dq, *dk, *dv, *o_tok, *do_tok;
    float *lse, *delta;
};

static float bf(float x) { return __bfloat162float(__float2bfloat16(x)); }

// o_tok / do_tok: token-major copies for fa_row_dot, made on the host.
static void to_tokens(const std::vector<float>& head, std::vector<bf16>& tok, int B, int H, int S, int hd) {
    tok.resize(head.size());
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int s = 0; s < S; ++s)
                for (int d = 0; d < hd; ++d)
                    tok[(((size_t)b * S + s) * H + h) * hd + d] = __float2bfloat16(head[(((size_t)b * H + h) * S + s) * hd + d]);
}

static void run(const Kernels& kk, const Dev& m, int B, int H, int G, int S, int hd, bool backward) {
    float scale = 1.f / sqrtf((float)hd);
    // (heads, tiles): blocks start x fastest, so every head's longest tiles go first.
    dim3 qgrid(B * H, (S + 63) / 64), kgrid(B * H / G, (S + 63) / 64);
    dim3 fgrid(B * H, (S + FA_FWD_ROWS - 1) / FA_FWD_ROWS);
    kk.fwd<<<fgrid, 128, smem_bytes(hd, FA_FORWARD_TILES, 0)>>>(m.q, m.k, m.v, m.o, m.lse, S, G, scale);
    if (!backward) return;
    long long rows = (long long)B * S * H;
    fa_row_dot<<<(unsigned)((rows + 7) / 8), 256>>>(m.do_tok, m.o_tok, m.delta, B, S, H, hd);
    kk.dkdv<<<kgrid, 128, smem_bytes(hd, FA_DKDV_TILES, FA_DKDV_FLOATS)>>>(m.q, m.k, m.v, m.dout, m.lse, m.delta, m.dk, m.dv, S, G, scale);
    kk.dq<<<qgrid, 128, smem_bytes(hd, FA_DQ_TILES, 0)>>>(m.q, m.k, m.v, m.dout, m.lse, m.delta, m.dq, S, G, scale);
}

template <typename T>
static T* upload(const std::vector<T>& h) {
    T* d;
    CK(cudaMalloc(&d, h.size() * sizeof(T) + 16));
    CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
static T* zeros(size_t n) {
    T* d;
    CK(cudaMalloc(&d, n * sizeof(T) + 16));
    CK(cudaMemset(d, 0, n * sizeof(T)));
    return d;
}
static std::vector<float> download(const bf16* d, size_t n) {
    std::vector<bf16> h(n);
    CK(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
    std::vector<float> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = __bfloat162float(h[i]);
    return f;
}

// max |got - want| / max(max |want|, floor).
static double rel_err(const std::vector<float>& got, const std::vector<double>& want, double floor = 1e-30) {
    double err = 0, mag = floor;
    for (size_t i = 0; i < want.size(); ++i) {
        err = fmax(err, fabs(got[i] - want[i]));
        mag = fmax(mag, fabs(want[i]));
    }
    return err / fmax(mag, 1e-30);
}

static bool check(int B, int H, int G, int S, int hd, unsigned seed) {
    const int Hkv = H / G;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    auto fill = [&](size_t n) { std::vector<float> v(n); for (auto& x : v) x = bf(u(rng)); return v; };
    size_t nq = (size_t)B * H * S * hd, nk = (size_t)B * Hkv * S * hd;
    auto q = fill(nq), k = fill(nk), v = fill(nk), dout = fill(nq);
    // f64 reference.
    double c = 1.0 / sqrt((double)hd);
    std::vector<double> o(nq), lse((size_t)B * H * S), dq(nq), dk(nk), dv(nk);
    std::vector<double> p(S), dp(S);
    for (int bh = 0; bh < B * H; ++bh) {
        int kvbh = bh / G;
        const float* qb = &q[(size_t)bh * S * hd];
        const float* kb = &k[(size_t)kvbh * S * hd];
        const float* vb = &v[(size_t)kvbh * S * hd];
        const float* db = &dout[(size_t)bh * S * hd];
        for (int i = 0; i < S; ++i) {
            double mx = -1e300;
            for (int j = 0; j <= i; ++j) {
                double s = 0;
                for (int d = 0; d < hd; ++d) s += (double)qb[i * hd + d] * kb[j * hd + d];
                p[j] = s * c;
                mx = fmax(mx, p[j]);
            }
            double sum = 0;
            for (int j = 0; j <= i; ++j) sum += exp(p[j] - mx);
            double l = mx + log(sum);
            lse[(size_t)bh * S + i] = l;
            for (int j = 0; j <= i; ++j) p[j] = exp(p[j] - l);
            double D = 0;
            for (int d = 0; d < hd; ++d) {
                double acc = 0;
                for (int j = 0; j <= i; ++j) acc += p[j] * vb[j * hd + d];
                o[((size_t)bh * S + i) * hd + d] = acc;
            }
            // D from the bf16-rounded o, as the engine computes it from its saved o.
            for (int d = 0; d < hd; ++d) D += (double)db[i * hd + d] * bf((float)o[((size_t)bh * S + i) * hd + d]);
            for (int j = 0; j <= i; ++j) {
                double s = 0;
                for (int d = 0; d < hd; ++d) s += (double)db[i * hd + d] * vb[j * hd + d];
                dp[j] = p[j] * (s - D);
                for (int d = 0; d < hd; ++d) {
                    dv[((size_t)kvbh * S + j) * hd + d] += p[j] * db[i * hd + d];
                    dk[((size_t)kvbh * S + j) * hd + d] += c * dp[j] * qb[i * hd + d];
                    dq[((size_t)bh * S + i) * hd + d] += c * dp[j] * kb[j * hd + d];
                }
            }
        }
    }
    auto tob = [](const std::vector<float>& f) { std::vector<bf16> b(f.size()); for (size_t i = 0; i < f.size(); ++i) b[i] = __float2bfloat16(f[i]); return b; };
    Dev m;
    m.q = upload(tob(q)); m.k = upload(tob(k)); m.v = upload(tob(v)); m.dout = upload(tob(dout));
    m.o = zeros<bf16>(nq); m.dq = zeros<bf16>(nq); m.dk = zeros<bf16>(nk); m.dv = zeros<bf16>(nk);
    m.lse = zeros<float>((size_t)B * H * S); m.delta = zeros<float>((size_t)B * H * S);
    std::vector<bf16> dtok;
    to_tokens(dout, dtok, B, H, S, hd);
    m.do_tok = upload(dtok);
    Kernels kk = kernels(hd);
    // Forward first, then the token-major o for fa_row_dot from the kernel's own o.
    run(kk, m, B, H, G, S, hd, false);
    CK(cudaDeviceSynchronize());
    auto o_got = download(m.o, nq);
    std::vector<bf16> otok;
    to_tokens(o_got, otok, B, H, S, hd);
    m.o_tok = upload(otok);
    run(kk, m, B, H, G, S, hd, true);
    CK(cudaDeviceSynchronize());
    std::vector<float> lse_got((size_t)B * H * S);
    CK(cudaMemcpy(lse_got.data(), m.lse, lse_got.size() * 4, cudaMemcpyDeviceToHost));
    double lse_err = 0;
    for (size_t i = 0; i < lse.size(); ++i) lse_err = fmax(lse_err, fabs(lse_got[i] * M_LN2 - lse[i]));
    // At one position dS = P (dO.v - dO.o) is zero in exact maths (o = v): dq and dk are rounding
    // noise, measured against the inputs' scale (1) instead of their own zero maximum.
    const double floor = S == 1 ? 1.0 : 1e-30;
    double eo = rel_err(o_got, o), edq = rel_err(download(m.dq, nq), dq, floor),
           edk = rel_err(download(m.dk, nk), dk, floor),
           edv = rel_err(download(m.dv, nk), dv);
    // bf16 P and bf16 outputs: ~2^-8 relative per element, averaged over the row.
    bool ok = eo < 2e-2 && lse_err < 1e-3 && edq < 3e-2 && edk < 3e-2 && edv < 3e-2;
    printf("{\"check\":\"flash_attention\",\"B\":%d,\"H\":%d,\"G\":%d,\"S\":%d,\"hd\":%d,\"o\":%.3e,\"lse_abs\":%.3e,"
           "\"dq\":%.3e,\"dk\":%.3e,\"dv\":%.3e,\"ok\":%s}\n",
           B, H, G, S, hd, eo, lse_err, edq, edk, edv, ok ? "true" : "false");
    cudaFree(m.q); cudaFree(m.k); cudaFree(m.v); cudaFree(m.dout); cudaFree(m.o); cudaFree(m.dq); cudaFree(m.dk);
    cudaFree(m.dv); cudaFree(m.lse); cudaFree(m.delta); cudaFree(m.do_tok); cudaFree(m.o_tok);
    return ok;
}

static void bench_shape(int B, int H, int G, int S, int hd) {
    size_t nq = (size_t)B * H * S * hd, nk = nq / G;
    Dev m;
    std::vector<bf16> r(nq);
    std::mt19937 rng(7);
    std::normal_distribution<float> n(0.f, 1.f);
    for (auto& x : r) x = __float2bfloat16(n(rng));
    m.q = upload(r); m.dout = upload(r); m.o_tok = upload(r); m.do_tok = upload(r);
    r.resize(nk);
    m.k = upload(r); m.v = upload(r);
    m.o = zeros<bf16>(nq); m.dq = zeros<bf16>(nq); m.dk = zeros<bf16>(nk); m.dv = zeros<bf16>(nk);
    m.lse = zeros<float>((size_t)B * H * S); m.delta = zeros<float>((size_t)B * H * S);
    Kernels kk = kernels(hd);
    cudaEvent_t a, b;
    cudaEventCreate(&a); cudaEventCreate(&b);
    double flops = 4.0 * B * H * (double)S * S * hd / 2;
    float ms_f = 0, ms_fb = 0;
    for (int rep = 0; rep < 2; ++rep) {
        const int iters = 20;
        run(kk, m, B, H, G, S, hd, false);
        CK(cudaEventRecord(a));
        for (int i = 0; i < iters; ++i) run(kk, m, B, H, G, S, hd, false);
        CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
        cudaEventElapsedTime(&ms_f, a, b); ms_f /= iters;
        CK(cudaEventRecord(a));
        for (int i = 0; i < iters; ++i) run(kk, m, B, H, G, S, hd, true);
        CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
        cudaEventElapsedTime(&ms_fb, a, b); ms_fb /= iters;
    }
    CK(cudaGetLastError());
    double ms_b = ms_fb - ms_f;
    printf("{\"bench\":\"wick_flash\",\"S\":%d,\"hd\":%d,\"B\":%d,\"H\":%d,\"G\":%d,\"fwd_ms\":%.4f,\"bwd_ms\":%.4f,"
           "\"fwd_tflops\":%.1f,\"bwd_tflops\":%.1f}\n",
           S, hd, B, H, G, ms_f, ms_b, flops / ms_f * 1e-9, 2.5 * flops / ms_b * 1e-9);
    cudaFree(m.q); cudaFree(m.k); cudaFree(m.v); cudaFree(m.dout); cudaFree(m.o); cudaFree(m.dq); cudaFree(m.dk);
    cudaFree(m.dv); cudaFree(m.lse); cudaFree(m.delta); cudaFree(m.do_tok); cudaFree(m.o_tok);
}

// FlashAttention's benchmark shapes: 16k tokens, hidden 2048.
static void bench(int S, int hd, int G) { bench_shape(16384 / S, 2048 / hd, G, S, hd); }

int main(int argc, char** argv) {
    bool all_ok = true;
    all_ok &= check(2, 6, 3, 77, 64, 1);
    all_ok &= check(1, 2, 1, 130, 128, 2);
    all_ok &= check(1, 4, 4, 64, 64, 3);
    all_ok &= check(2, 2, 2, 1, 64, 4);
    all_ok &= check(1, 3, 1, 200, 128, 5);
    all_ok &= check(1, 9, 3, 129, 64, 6);
    if (argc > 1 && std::string(argv[1]) == "check") return all_ok ? 0 : 1;
    // `fa_bench one S HD G`: one shape only (for profilers); `fa_bench shape B H G S HD`: any.
    if (argc > 4 && std::string(argv[1]) == "one") {
        bench(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
        return all_ok ? 0 : 1;
    }
    if (argc > 6 && std::string(argv[1]) == "shape") {
        bench_shape(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
        return all_ok ? 0 : 1;
    }
    for (int hd : {64, 128})
        for (int S : {2048, 4096, 8192}) bench(S, hd, 1);
    bench(2048, 64, 4);
    return all_ok ? 0 : 1;
}
