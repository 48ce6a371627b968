// Causal flash attention for the training engine: bf16 inputs on tensor cores (mma.sync
// m16n8k16, sm_80 and newer), f32 accumulation, no [S, S] matrix in memory.
//
// Layout (the engine's head-major buffers): q, o, do, dq: [BH, S, HD]; k, v, dk, dv: [BHkv, S, HD],
// BH = BHkv * G, query head bh reading kv head bh / G (the G query heads of a kv head are
// consecutive, as the engine's rope_scatter writes them). GQA never expands K/V.
//
// Maths, per query row i and key j <= i (c = scale = 1/sqrt(HD)):
//   forward:   s_ij = c q_i.k_j,   lse_i = log sum_j exp(s_ij),   o_i = sum_j exp(s_ij - lse_i) v_j
//   saved:     lse2_i = lse_i / ln 2 (base 2: the kernels work in exp2 with c log2(e) folded in)
//   backward:  D_i = do_i.o_i,   P_ij = exp(s_ij - lse_i),   dv_j = sum_i P_ij do_i,
//              dP_ij = do_i.v_j, dS_ij = P_ij (dP_ij - D_i), dq_i = c sum_j dS_ij k_j,
//              dk_j = c sum_i dS_ij q_i   (dk_j and dv_j summed over the G query heads)
//
// Work split: 64-row tiles of keys, 4 warps a block. The forward's blocks take 128 query rows,
// 32 a warp (two groups of 16 sharing every K and V fragment); the backward's take 64 query or key
// rows, 16 a warp. The tiles a block walks are double buffered (cp.async: the next loads while
// this one is used); fragments come from shared memory by ldmatrix.
// The forward and dq walk the key tiles of one query tile (online softmax in the forward); dk/dv
// walk the query tiles of one key tile, for each of the G query heads, so no atomics are needed
// and the result is deterministic. Tiles are aligned on both axes, so only the tiles on the diagonal
// are cut by the causal mask and those above it are never read. P is rounded to bf16 before its
// product with V (dO, Q, K in the backward), as FlashAttention-2 does; row statistics stay f32.
//
// MMA fragments (PTX ISA, m16n8k16 .bf16): lane = 4 g + t. A (16 x 16, row): a0 = (g, 2t..2t+1),
// a1 = (g + 8, 2t..), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..). B (16 x 8, col): b0 = (2t..2t+1, g),
// b1 = (2t + 8.., g). C (16 x 8, f32): c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..). Two adjacent
// C fragments of a product are the A fragment of the next product's 16-wide k step, so P goes from
// the scores' accumulators to the PV product without a shuffle.
#include "common.cuh"

namespace {

typedef __nv_bfloat16 bf16;

constexpr int FA_WARPS = 4;
constexpr int FA_THREADS = FA_WARPS * 32;
// Query rows per block (16 per warp) and keys per tile.
constexpr int FA_TILE = 64;
constexpr float LOG2E = 1.4426950408889634f;
// Dynamic shared memory of each kernel, in [64, HD + 8] bf16 tiles plus f32 values (the launchers
// in src/gpu/train/flash_attention.rs size their launches the same way).
// The forward's 16-row groups per warp and query rows per block.
#define FA_FWD_GROUPS 2
#define FA_FWD_ROWS 128
#define FA_FORWARD_TILES 6
#define FA_DKDV_TILES 6
#define FA_DKDV_FLOATS 256
#define FA_DQ_TILES 6
static_assert(FA_FWD_ROWS == FA_WARPS * 16 * FA_FWD_GROUPS, "forward rows: 16 per group");
static_assert(FA_FORWARD_TILES == FA_FWD_GROUPS + 4, "forward tiles: Q, then K and V twice");

// A tile of 64 rows of HD bf16 in shared memory, rows padded by 8 elements (16 bytes) so the
// fragment loads of 8 rows x 4 lanes hit 32 different banks.
template <int HD>
struct Tile {
    static constexpr int LD = HD + 8;
    static constexpr int ELEMS = FA_TILE * LD;
};

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, the first in the low half (the lower index of a fragment).
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// 16 bytes global -> shared without a register round trip (sm_80 cp.async); `valid` false
// zero-fills the destination and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Starts copying rows [row0, row0 + 64) of a [S, HD] matrix into a tile, rows past S zero; the
// caller commits the group and waits for it (then __syncthreads) before reading the tile.
template <int HD>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* __restrict__ src, int row0, int S) {
    constexpr int CHUNKS = HD / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < FA_TILE * CHUNKS; c += FA_THREADS) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool valid = row0 + r < S;
        cp_async16(tile + r * Tile<HD>::LD + col, src + (size_t)(valid ? row0 + r : 0) * HD + col, valid);
    }
}

// Four 8x8 b16 matrices from shared memory (ldmatrix .x4): lanes 8m..8m+7 give the row
// addresses of matrix m; each lane receives (row g, elements 2t..2t+1) of every matrix.
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16* p) {
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The same, transposed: each lane receives (elements 2t..2t+1 of column g) of every matrix.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16* p) {
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// acc[r][n] += A_r B^T for R groups of 16 rows: A_r = rows 16r..16r+15 from `a` (row-major, HD
// wide), B = the 64 rows of tile `b`; acc[r][n] is the C fragment of columns 8n..8n+7. Each B
// fragment serves all R row groups (R = 2 halves the shared-memory reads per product).
// ldmatrix addresses: A (.x4) rows lane & 15, columns + 8 (lane >> 4): a0..a3 in MMA order; B
// (.x4) rows 16np + 8 (lane >> 4) + (lane & 7), columns + 8 ((lane >> 3) & 1): b0, b1 of column
// block 2np, then of 2np + 1.
template <int HD, int R>
__device__ __forceinline__ void mma_rows_bt(float (*acc)[8][4], const bf16* a, const bf16* b, int lane) {
    constexpr int LD = Tile<HD>::LD;
    const bf16* ap = a + (lane & 15) * LD + (lane >> 4) * 8;
    const bf16* bp = b + (((lane >> 4) << 3) + (lane & 7)) * LD + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t af[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) ldsm_x4(af[r], ap + r * 16 * LD + kk * 16);
#pragma unroll
        for (int np = 0; np < 4; ++np) {
            uint32_t bf[4];
            ldsm_x4(bf, bp + np * 16 * LD + kk * 16);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                mma16816(acc[r][2 * np], af[r], bf[0], bf[1]);
                mma16816(acc[r][2 * np + 1], af[r], bf[2], bf[3]);
            }
        }
    }
}

// out[r][n] += P_r V for R groups of 16 rows: P_r (16 x 64) given as C fragments p[r][8] (its
// columns are the 64 rows of tile `v`), rounded to bf16; V = tile `v` (64 x HD). out[r][n]: columns
// 8n..8n+7. V's fragments by ldmatrix .x4.trans: rows 16kk + (lane & 15), columns + 8 (lane >> 4).
template <int HD, int R>
__device__ __forceinline__ void mma_frag_tile(float (*out)[HD / 8][4], const float (*p)[8][4], const bf16* v,
                                              int lane) {
    constexpr int LD = Tile<HD>::LD;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        uint32_t af[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            af[r][0] = pack2(p[r][2 * kk][0], p[r][2 * kk][1]);
            af[r][1] = pack2(p[r][2 * kk][2], p[r][2 * kk][3]);
            af[r][2] = pack2(p[r][2 * kk + 1][0], p[r][2 * kk + 1][1]);
            af[r][3] = pack2(p[r][2 * kk + 1][2], p[r][2 * kk + 1][3]);
        }
        const bf16* vp = v + (kk * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
#pragma unroll
        for (int np = 0; np < HD / 16; ++np) {
            uint32_t bf[4];
            ldsm_x4_trans(bf, vp + np * 16);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                mma16816(out[r][2 * np], af[r], bf[0], bf[1]);
                mma16816(out[r][2 * np + 1], af[r], bf[2], bf[3]);
            }
        }
    }
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffff, v, 1);
    return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// Stores the warp's 16 x HD accumulator rows (times `mul_a` / `mul_b` for rows g / g + 8) as bf16
// into dst [S, HD] at rows row_a and row_a + 8, those below S.
template <int HD>
__device__ __forceinline__ void store_rows(bf16* __restrict__ dst, const float acc[HD / 8][4], int row_a,
                                           int S, float mul_a, float mul_b, int lane) {
    const int t = lane & 3;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        const int col = n * 8 + 2 * t;
        if (row_a < S)
            *reinterpret_cast<uint32_t*>(dst + (size_t)row_a * HD + col) =
                pack2(acc[n][0] * mul_a, acc[n][1] * mul_a);
        if (row_a + 8 < S)
            *reinterpret_cast<uint32_t*>(dst + (size_t)(row_a + 8) * HD + col) =
                pack2(acc[n][2] * mul_b, acc[n][3] * mul_b);
    }
}

// grid (BH, ceil(S / 128)), 128 threads, dynamic shared memory 6 tiles: Q (128 rows, two
// tiles), then K and V double buffered (tile j + 1 loads while tile j is in use). Each warp owns
// 32 query rows as two groups of 16 (FA_FWD_GROUPS), so every K and V fragment read from shared
// memory feeds two products.
template <int HD>
__device__ void fa_forward(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                           bf16* __restrict__ o, float* __restrict__ lse2, int S, int G, float scale) {
    extern __shared__ __align__(16) unsigned char fa_smem[];
    constexpr int E = Tile<HD>::ELEMS, R = FA_FWD_GROUPS, LD = Tile<HD>::LD;
    bf16* qs = reinterpret_cast<bf16*>(fa_smem);
    bf16* ks2 = qs + R * E;
    bf16* vs2 = ks2 + 2 * E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    // Blocks start in index order, x fastest: the query tiles with the most key tiles first.
    const int bh = blockIdx.x;
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * FA_FWD_ROWS;
    const size_t kv_base = (size_t)(bh / G) * S * HD;
#pragma unroll
    for (int r = 0; r < R; ++r) load_tile<HD>(qs + r * E, q + (size_t)bh * S * HD, q0 + r * FA_TILE, S);
    load_tile<HD>(ks2, k + kv_base, 0, S);
    load_tile<HD>(vs2, v + kv_base, 0, S);
    cp_async_commit();
    const float sl2 = scale * LOG2E;
    // Rows of the warp: row[r][0] = its group r's row g, row[r][1] = row g + 8.
    const int warp_row0 = q0 + warp * 16 * R;
    int row[R][2];
    float m[R][2], l[R][2];
    float acc[R][HD / 8][4];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        row[r][0] = warp_row0 + r * 16 + g;
        row[r][1] = row[r][0] + 8;
        m[r][0] = m[r][1] = -INFINITY;
        l[r][0] = l[r][1] = 0.f;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) acc[r][n][0] = acc[r][n][1] = acc[r][n][2] = acc[r][n][3] = 0.f;
    }
    // Key tiles up to the block's last row that exists.
    const int last = (min(q0 + FA_FWD_ROWS, S) - 1) / FA_TILE;
    for (int j = 0; j <= last; ++j) {
        const int k0 = j * FA_TILE, buf = j & 1;
        if (j < last) {
            // The other buffer was last read in iteration j - 1, before its closing barrier.
            load_tile<HD>(ks2 + (buf ^ 1) * E, k + kv_base, k0 + FA_TILE, S);
            load_tile<HD>(vs2 + (buf ^ 1) * E, v + kv_base, k0 + FA_TILE, S);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        // Tiles wholly past the warp's rows add nothing (every score masked): skip the products.
        if (k0 <= warp_row0 + 16 * R - 1) {
            const bf16* ks = ks2 + buf * E;
            const bf16* vs = vs2 + buf * E;
            float s[R][8][4];
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int n = 0; n < 8; ++n) s[r][n][0] = s[r][n][1] = s[r][n][2] = s[r][n][3] = 0.f;
            mma_rows_bt<HD, R>(s, qs + warp * 16 * R * LD, ks, lane);
            // Only tiles reaching past the warp's first row are cut by the causal mask.
            const bool masked = k0 + FA_TILE - 1 > warp_row0;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float mx[2] = {m[r][0], m[r][1]};
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int h = e >> 1, col = k0 + n * 8 + 2 * t + (e & 1);
                        s[r][n][e] = masked && col > row[r][h] ? -INFINITY : s[r][n][e] * sl2;
                        mx[h] = fmaxf(mx[h], s[r][n][e]);
                    }
                }
                float ref[2], sum[2] = {0.f, 0.f};
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    mx[h] = quad_max(mx[h]);
                    // A row group whose rows all precede the tile has only masked scores so far
                    // in this tile (and no earlier ones when it is the first): subtract 0 then.
                    ref[h] = mx[h] == -INFINITY ? 0.f : mx[h];
                    const float corr = exp2f(m[r][h] - ref[h]);
                    l[r][h] *= corr;
#pragma unroll
                    for (int n = 0; n < HD / 8; ++n) {
                        acc[r][n][2 * h] *= corr;
                        acc[r][n][2 * h + 1] *= corr;
                    }
                    m[r][h] = mx[h];
                }
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        s[r][n][e] = exp2f(s[r][n][e] - ref[e >> 1]);
                        sum[e >> 1] += s[r][n][e];
                    }
                }
                // Partial sums per lane: the four lanes of a row share its max, so they add up
                // at the end.
                l[r][0] += sum[0];
                l[r][1] += sum[1];
            }
            mma_frag_tile<HD, R>(acc, s, vs, lane);
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float la = quad_sum(l[r][0]), lb = quad_sum(l[r][1]);
        store_rows<HD>(o + (size_t)bh * S * HD, acc[r], row[r][0], S, 1.f / la, 1.f / lb, lane);
        if (t == 0) {
            if (row[r][0] < S) lse2[(size_t)bh * S + row[r][0]] = m[r][0] + log2f(la);
            if (row[r][1] < S) lse2[(size_t)bh * S + row[r][1]] = m[r][1] + log2f(lb);
        }
    }
}

// grid (BHkv, ceil(S / 64)), 128 threads, dynamic shared memory 6 tiles + 256 floats: K, V, then
// Q and dO (and the rows' lse2, D) double buffered over the (query head, query tile) iterations.
template <int HD>
__device__ void fa_backward_dkdv(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                 const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                 const float* __restrict__ lse2, const float* __restrict__ delta,
                                 bf16* __restrict__ dk, bf16* __restrict__ dv, int S, int G, float scale) {
    extern __shared__ __align__(16) unsigned char fa_smem[];
    constexpr int E = Tile<HD>::ELEMS;
    bf16* ks = reinterpret_cast<bf16*>(fa_smem);
    bf16* vs = ks + E;
    bf16* qs2 = vs + E;
    bf16* dos2 = qs2 + 2 * E;
    float* lse_s2 = reinterpret_cast<float*>(dos2 + 2 * E);
    float* delta_s2 = lse_s2 + 2 * FA_TILE;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    // Key tiles with the most query tiles first.
    const int kvbh = blockIdx.x, kt = blockIdx.y, k0 = kt * FA_TILE;
    const size_t kv_base = (size_t)kvbh * S * HD;
    const float sl2 = scale * LOG2E;
    const int key_a = k0 + warp * 16 + g, key_b = key_a + 8;
    const int qtiles = (S + FA_TILE - 1) / FA_TILE;
    // Iteration it: query head kvbh G + it / per, query tile kt + it % per (the causal ones).
    const int per = qtiles - kt, iterations = G * per;
    auto issue = [&](int it, int buf) {
        const size_t bh = (size_t)kvbh * G + it / per;
        const int q0 = (kt + it % per) * FA_TILE;
        load_tile<HD>(qs2 + buf * E, q + bh * S * HD, q0, S);
        load_tile<HD>(dos2 + buf * E, dout + bh * S * HD, q0, S);
        for (int r = threadIdx.x; r < FA_TILE; r += FA_THREADS) {
            // Rows past S: lse +inf makes their P zero, so they add nothing to dk, dv.
            lse_s2[buf * FA_TILE + r] = q0 + r < S ? lse2[bh * S + q0 + r] : INFINITY;
            delta_s2[buf * FA_TILE + r] = q0 + r < S ? delta[bh * S + q0 + r] : 0.f;
        }
    };
    load_tile<HD>(ks, k + kv_base, k0, S);
    load_tile<HD>(vs, v + kv_base, k0, S);
    issue(0, 0);
    cp_async_commit();
    float dk_acc[HD / 8][4], dv_acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
        dk_acc[n][0] = dk_acc[n][1] = dk_acc[n][2] = dk_acc[n][3] = dv_acc[n][0] = dv_acc[n][1] =
            dv_acc[n][2] = dv_acc[n][3] = 0.f;
    for (int it = 0; it < iterations; ++it) {
        const int buf = it & 1;
        if (it + 1 < iterations) {
            // The other buffers were last read in iteration it - 1, before its closing barrier.
            issue(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int i = kt + it % per, q0 = i * FA_TILE;
        const bf16* qs = qs2 + buf * E;
        const bf16* dos = dos2 + buf * E;
        const float* lse_s = lse_s2 + buf * FA_TILE;
        const float* delta_s = delta_s2 + buf * FA_TILE;
        {
            // P^T: rows = the warp's keys, columns = the tile's queries.
            float pt[8][4];
#pragma unroll
            for (int n = 0; n < 8; ++n) pt[n][0] = pt[n][1] = pt[n][2] = pt[n][3] = 0.f;
            mma_rows_bt<HD, 1>(&pt, ks + warp * 16 * Tile<HD>::LD, qs, lane);
            const bool diagonal = i == kt;
#pragma unroll
            for (int n = 0; n < 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int c = n * 8 + 2 * t + e, col = q0 + c;
                    pt[n][e] = diagonal && key_a > col ? 0.f : exp2f(pt[n][e] * sl2 - lse_s[c]);
                    pt[n][2 + e] = diagonal && key_b > col ? 0.f : exp2f(pt[n][2 + e] * sl2 - lse_s[c]);
                }
            }
            mma_frag_tile<HD, 1>(&dv_acc, &pt, dos, lane);
            // dP^T = V dO^T, then dS^T = P^T (dP^T - D) in place.
            float ds[8][4];
#pragma unroll
            for (int n = 0; n < 8; ++n) ds[n][0] = ds[n][1] = ds[n][2] = ds[n][3] = 0.f;
            mma_rows_bt<HD, 1>(&ds, vs + warp * 16 * Tile<HD>::LD, dos, lane);
#pragma unroll
            for (int n = 0; n < 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float d = delta_s[n * 8 + 2 * t + e];
                    ds[n][e] = pt[n][e] * (ds[n][e] - d);
                    ds[n][2 + e] = pt[n][2 + e] * (ds[n][2 + e] - d);
                }
            }
            mma_frag_tile<HD, 1>(&dk_acc, &ds, qs, lane);
        }
        __syncthreads();
    }
    const int row_a = key_a;
    store_rows<HD>(dk + kv_base, dk_acc, row_a, S, scale, scale, lane);
    store_rows<HD>(dv + kv_base, dv_acc, row_a, S, 1.f, 1.f, lane);
}

// grid (BH, ceil(S / 64)), 128 threads, dynamic shared memory 6 tiles: Q, dO, then K and V double
// buffered.
template <int HD>
__device__ void fa_backward_dq(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                               const bf16* __restrict__ dout, const float* __restrict__ lse2,
                               const float* __restrict__ delta, bf16* __restrict__ dq, int S, int G,
                               float scale) {
    extern __shared__ __align__(16) unsigned char fa_smem[];
    constexpr int E = Tile<HD>::ELEMS;
    bf16* qs = reinterpret_cast<bf16*>(fa_smem);
    bf16* dos = qs + E;
    bf16* ks2 = dos + E;
    bf16* vs2 = ks2 + 2 * E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.x;
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * FA_TILE;
    const size_t q_base = (size_t)bh * S * HD, kv_base = (size_t)(bh / G) * S * HD;
    load_tile<HD>(qs, q + q_base, q0, S);
    load_tile<HD>(dos, dout + q_base, q0, S);
    load_tile<HD>(ks2, k + kv_base, 0, S);
    load_tile<HD>(vs2, v + kv_base, 0, S);
    cp_async_commit();
    const float sl2 = scale * LOG2E;
    const int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
    // Rows past S: any finite statistics (their dO is zero, and they are not stored).
    const float lse_a = row_a < S ? lse2[(size_t)bh * S + row_a] : 0.f;
    const float lse_b = row_b < S ? lse2[(size_t)bh * S + row_b] : 0.f;
    const float d_a = row_a < S ? delta[(size_t)bh * S + row_a] : 0.f;
    const float d_b = row_b < S ? delta[(size_t)bh * S + row_b] : 0.f;
    float acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    for (int j = 0; j <= qt; ++j) {
        const int k0 = j * FA_TILE, buf = j & 1;
        if (j < qt) {
            load_tile<HD>(ks2 + (buf ^ 1) * E, k + kv_base, k0 + FA_TILE, S);
            load_tile<HD>(vs2 + (buf ^ 1) * E, v + kv_base, k0 + FA_TILE, S);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const bf16* ks = ks2 + buf * E;
        const bf16* vs = vs2 + buf * E;
        float p[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) p[n][0] = p[n][1] = p[n][2] = p[n][3] = 0.f;
        mma_rows_bt<HD, 1>(&p, qs + warp * 16 * Tile<HD>::LD, ks, lane);
        const bool diagonal = j == qt;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = k0 + n * 8 + 2 * t + e;
                p[n][e] = diagonal && col > row_a ? 0.f : exp2f(p[n][e] * sl2 - lse_a);
                p[n][2 + e] = diagonal && col > row_b ? 0.f : exp2f(p[n][2 + e] * sl2 - lse_b);
            }
        }
        // dP = dO V^T, then dS = P (dP - D) in place.
        float ds[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) ds[n][0] = ds[n][1] = ds[n][2] = ds[n][3] = 0.f;
        mma_rows_bt<HD, 1>(&ds, dos + warp * 16 * Tile<HD>::LD, vs, lane);
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            ds[n][0] = p[n][0] * (ds[n][0] - d_a);
            ds[n][1] = p[n][1] * (ds[n][1] - d_a);
            ds[n][2] = p[n][2] * (ds[n][2] - d_b);
            ds[n][3] = p[n][3] * (ds[n][3] - d_b);
        }
        mma_frag_tile<HD, 1>(&acc, &ds, ks, lane);
        __syncthreads();
    }
    store_rows<HD>(dq + q_base, acc, row_a, S, scale, scale, lane);
}

}  // namespace

// fa_row_dot(dout, o, delta, B, S, H, HD): delta[(b H + h) S + s] = dout_t . o_t over head h's HD
// columns of token t = b S + s, both token-major [B S, H HD] bf16. One warp per (token, head).
extern "C" __global__ void fa_row_dot(const bf16* __restrict__ dout, const bf16* __restrict__ o,
                                      float* __restrict__ delta, int B, int S, int H, int HD) {
    const int lane = threadIdx.x & 31;
    const long long item = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (item >= (long long)B * S * H) return;
    const long long token = item / H;
    const int h = (int)(item % H);
    const size_t at = (size_t)token * H * HD + (size_t)h * HD;
    float acc = 0.f;
    for (int c = lane * 2; c < HD; c += 64) {
        const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(dout + at + c);
        const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(o + at + c);
        acc += __bfloat162float(a.x) * __bfloat162float(b.x) + __bfloat162float(a.y) * __bfloat162float(b.y);
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        const long long b = token / S, s = token % S;
        delta[((size_t)b * H + h) * S + s] = acc;
    }
}

#define FA_ENTRIES(HD)                                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                \
        fa_forward_hd##HD(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, \
                          bf16* __restrict__ o, float* __restrict__ lse2, int S, int G, float scale) {      \
        fa_forward<HD>(q, k, v, o, lse2, S, G, scale);                                                      \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_backward_dkdv_hd##HD(                       \
        const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,                 \
        const bf16* __restrict__ dout, const float* __restrict__ lse2, const float* __restrict__ delta,      \
        bf16* __restrict__ dk, bf16* __restrict__ dv, int S, int G, float scale) {                          \
        fa_backward_dkdv<HD>(q, k, v, dout, lse2, delta, dk, dv, S, G, scale);                              \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_backward_dq_hd##HD(                         \
        const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,                 \
        const bf16* __restrict__ dout, const float* __restrict__ lse2, const float* __restrict__ delta,      \
        bf16* __restrict__ dq, int S, int G, float scale) {                                                 \
        fa_backward_dq<HD>(q, k, v, dout, lse2, delta, dq, S, G, scale);                                    \
    }

FA_ENTRIES(64)
FA_ENTRIES(128)
