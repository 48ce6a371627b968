// Quantized matrix-vector products for batch-1 decode on raw GGML blocks (the CUDA decode engine,
// src/generate/cuda_decode/). Every weight byte is read once per product; blocks are dequantized in
// registers and accumulated in f32. CPU twin: src/gpu/decode/reference.rs.
//
// Block formats (little-endian, rows of consecutive blocks; ggml_blocks.cuh has all eight):
//   Q4_0 (18 B): f16 d, u8 qs[16];         w[j] = d * ((qs[j] & 15) - 8), w[j+16] = d * ((qs[j] >> 4) - 8)
//   Q4_1 (20 B): f16 d, f16 m, u8 qs[16];  w[j] = d * (qs[j] & 15) + m,   w[j+16] = d * (qs[j] >> 4) + m
//   Q8_0 (34 B): f16 d, i8 qs[32];         w[j] = d * qs[j]
//   Q5_0, Q5_1 (32 weights), Q4_K, Q5_K, Q6_K (super-blocks of 256 = 8 blocks of 32 for the split
//   below; k a multiple of 256), and dense F32 / F16 / BF16 rows read as blocks of 32 plain values.
//
// Work split: one warp per output row (grid-stride over rows); lane i takes part (i & 3) of block
// (i >> 2), i.e. 8 weights, so a warp covers 8 blocks per iteration (unrolled 4 times, so a lane's
// weight loads are in flight together: the kernels are bound by load latency, not bandwidth).
// x (normalized when the kernel fuses RMSNorm) sits in shared memory as f32. For Q4_0/Q4_1, whose
// parts read x at 4p and 16 + 4p, odd 32-value blocks are swizzled (value e at e ^ 16), so the two
// 16-byte x reads of a quarter-warp (two blocks, four parts each) hit 32 different banks instead of
// two-way conflicts: +3% decode at SmolLM2-1.7B Q4_1 shapes (bench/results/device-s10). The formats
// whose parts read 8p and 8p + 4 keep the plain layout (XS_SWIZZLE 0): the same swizzle by 4 measured
// 6% slower for Q8_0.
//
// qmv_<q>(w, x, norm_w, y, rows, k, eps, accumulate):
//   xn = norm_w ? x * rsqrt(mean(x^2) + eps) * norm_w : x
//   y[r] = (accumulate ? y[r] : 0) + sum_j W[r, j] xn[j]
// qmv_swiglu_<q>(wg, wu, x, norm_w, y, rows, k, eps):
//   y[r] = silu(Wg[r] . xn) * (Wu[r] . xn)
// embed_<q>(table, state, x, hidden): x = dequantized row state[0] of the table.
//
// Epilogue of every mat-vec (batch 1 and batched), after the row's dot product, before the store:
//   acc += bias[r]                                      (bias != null: Qwen2's q/k/v biases)
//   acc += sum_j xa[b, seg(r) R + j] B_slot(b)[r, j]    (lora.b != null and slots[b] >= 0)
// with B pre-scaled by the adapter's alpha / r: the LoRA delta of each sequence with its own
// adapter slot (Punica's BGMV expand, fused into the base product). The swiglu kernels add the
// gate's and the up's delta before silu(g) * u.
//
// The shrink xa = xn A^T (Punica's BGMV shrink) runs inside the same launch (lora.a != null): the
// grid's first blocks are producers (one task per sequence and row of A, a block per task at batch
// 1 and large k, several tasks a block otherwise; no rows of their own);
// the others are the mat-vec's. A producer computes its xa value from the x it normalizes like every
// block, and stores it; a row's epilogue polls the xa values it needs until they are no longer
// XA_PENDING (the engine fills each launch's xa region with XA_PENDING before the step), so the
// shrink's latency hides behind the rows' dot products: no launch of its own (~2.8 us inside the
// graph, 4 per layer), no counter, fence or end-of-launch reset. Producers read x, the norm weights
// and their A row in one pass (no shared-memory prologue), so their values are usually stored before
// the row warps, which load them before their own dot product, need them. Producers sit in the lowest blocks,
// which the hardware dispatches first, so a polling block never holds the place of a producer that
// has not started. With lora.a == null, xa was computed by an earlier launch (the second and third
// parts of a split q/k/v). At batch 1 each xa value is stored XA_COPIES times, and a row block
// reads its own copy (the rows' loads of one line queued at its L2 slice).
#include "common.cuh"
#include "ggml_blocks.cuh"

#define MV_WARPS 4

// The LoRA part of a mat-vec launch (passed by value). An adapter pool slot holds A and B of every
// projection, B pre-scaled, as f32; `*slot_stride` floats separate two slots. The fields a row block
// reads come first, so that with the mat-vec's own parameters they fill two 64-byte lines of the
// parameter bank: each launch's parameters are new memory, and every line a block touches before
// its loads is a constant-cache miss in turn (ncu, bench/results/device-s18 call 6: the LoRA
// kernels' first instructions waited on two misses, the plain kernels' on one); the producers'
// fields (A) follow.
struct LoraEpi {
    const float* b;          // B of slot 0 for this launch's output rows, [rows, rank]; null: no adapters
    const int* slots;        // [nb] each sequence's slot, < 0: no adapter
    float* xa;               // [nb, xa_stride] x A^T of each sequence, XA_PENDING until produced
    int producers;           // producer blocks of the launch (the host's count of the tasks' blocks)
    int rank;                // R: floats per B row and per xa segment
    int xa_stride;           // floats per sequence in xa
    int e0, e1;              // rows [0, e0) read xa segment 0, [e0, e1) segment 1, [e1, ..) 2
    int task_warps;          // warps of a producer block on one (sequence, row of A) task
    long long slot_stride;   // floats from one slot's B to the next
    const float* a;          // A of slot 0, [a_rows, k]: this launch computes xa; null: xa is ready
    long long a_slot_stride; // floats from one slot's A to the next
    int a_rows;              // rows of A (segments * R)
};

// An xa value not produced yet (a NaN the hardware never computes: its NaNs are 0x7fffffff; a
// producer that computes this pattern anyway stores the canonical NaN instead).
#define XA_PENDING 0xffffffffu

// Copies of a batch-1 launch's xa values: its producers store each value XA_COPIES times (copy c
// where sequence c's values would be: the pool's batch-1 regions are XA_COPIES sequences long,
// `lora_epilogue::xa_sequences`) and a row block reads copy (block % XA_COPIES). With one copy,
// every row of a launch loaded the same one or two 128-byte lines (gate/up at SmolLM2-135M: 1536
// warps, two loads each), queued at one L2 slice: per-launch spans (bench/results/device-s19 calls
// 3-5) put the batch-1 rows' LoRA epilogue at +800 ns in gate/up (+120-300 ns in the others)
// although 99.9% of those rows found their xa values stored at the first look.
#define XA_COPIES 8

// Segment of xa that output row `row` reads (q, k, v of the fused q/k/v product: 0, 1, 2).
__device__ __forceinline__ int lora_seg(const LoraEpi& L, int row) {
    return (row >= L.e0) + (row >= L.e1);
}

// Blocks [0, P) of a launch that computes its shrink are producers: each (sequence b, row j of A)
// is a task of L.task_warps warps splitting the row's k, a block takes warps / task_warps tasks
// (a task of a warp or a few at small k: a block per task made hundreds of producer blocks at
// batch 8, and at batch 1 each task's block-wide barrier and its blocks' scheduling stood between
// the x loads and the stored xa; one task of all its warps in a batch-1 block at large k). P = L.producers,
// counted by the host (LoraEpilogue::for_block): every block reads it before its first load, and
// computing it there (two integer divisions) measured ~3% of the batch-1 adapter step. 0 when xa
// is ready or there are no adapters.
__device__ __forceinline__ int lora_task_warps(const LoraEpi& L) {
    int warps = blockDim.x >> 5;
    return L.task_warps < 1 || L.task_warps > warps ? warps : L.task_warps;
}
__device__ __forceinline__ int lora_producers(const LoraEpi& L) {
    return L.b == nullptr ? 0 : L.producers;  // 0 from the host when xa is ready (L.a null)
}

// A warp's share of one shrink task: over float4 columns [lo, hi) of its A row (a4) and x (x4),
// lanes strided by 32, the dot product with x * norm_w (x alone when w4 is null) and x's sum of
// squares, summed over the warp: (dot, sum of squares).
__device__ __forceinline__ float2 lora_shrink_warp(const float4* __restrict__ a4, const float4* x4,
                                                   const float4* __restrict__ w4, int lo, int hi) {
    float s = 0.f, ss = 0.f;
#pragma unroll 4
    for (int i = lo + (threadIdx.x & 31); i < hi; i += 32) {
        float4 av = __ldg(a4 + i), xv = x4[i];
        ss += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
        if (w4 != nullptr) {
            float4 wv = __ldg(w4 + i);
            xv.x *= wv.x, xv.y *= wv.y, xv.z *= wv.z, xv.w *= wv.w;
        }
        s += xv.x * av.x + xv.y * av.y + xv.z * av.z + xv.w * av.w;
    }
    return make_float2(warp_sum(s), warp_sum(ss));
}

// lora_shrink_warp with a lane's columns taken SHRINK_ROUND at a time, indices clamped into [lo, hi)
// (a column past the end reloads the last one and adds 0), so that no branch stands between a
// round's loads: the strided loop's `#pragma unroll 4` peeled its remainder into iterations that
// each loaded and consumed in turn (k = 576: 4-5 columns a lane, up to 4 dependent L2 round trips
// on the producer's path to its stored xa). Batch-1 producers only: in the batched kernels (four
// warps a row) the round's registers spilled (bench/results/device-s17 call 3: batch 8 0.885x ->
// 0.849x adapter / none, batch 1 +0.6%).
#define SHRINK_ROUND 4
__device__ __forceinline__ float2 lora_shrink_warp_rounds(const float4* __restrict__ a4, const float4* x4,
                                                          const float4* __restrict__ w4, int lo, int hi) {
    float s = 0.f, ss = 0.f;
    for (int base = lo + (threadIdx.x & 31); base < hi; base += 32 * SHRINK_ROUND) {
        float4 av[SHRINK_ROUND], xv[SHRINK_ROUND], wv[SHRINK_ROUND];
#pragma unroll
        for (int u = 0; u < SHRINK_ROUND; u++) {
            int i = min(base + 32 * u, hi - 1);
            av[u] = __ldg(a4 + i), xv[u] = x4[i];
            wv[u] = w4 != nullptr ? __ldg(w4 + i) : make_float4(1.f, 1.f, 1.f, 1.f);
        }
#pragma unroll
        for (int u = 0; u < SHRINK_ROUND; u++) {
            if (base + 32 * u >= hi) continue;
            float4 v = xv[u], w = wv[u], a = av[u];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            s += v.x * w.x * a.x + v.y * w.y * a.y + v.z * w.z * a.z + v.w * w.w * a.w;
        }
    }
    return make_float2(warp_sum(s), warp_sum(ss));
}

// xa[b, j] from the (dot, sum of squares) pairs of a task's `warps` warps (`part`): the norm's scale
// applied when the launch fuses it; a relaxed store at GPU scope, polled by lora_xa (a value with
// XA_PENDING's bits is stored as the canonical NaN).
// `copies` (XA_COPIES at batch 1, else 1) copies, xa_stride floats apart.
__device__ __forceinline__ void lora_store_xa(const LoraEpi& L, int b, int j, const float (*part)[2],
                                              int warps, bool norm, int k, float eps, int copies) {
    float s = 0.f, ss = 0.f;
    for (int w = 0; w < warps; w++) s += part[w][0], ss += part[w][1];
    if (norm) s *= rsqrtf(ss / (float)k + eps);
    if (__float_as_uint(s) == XA_PENDING) s = __uint_as_float(0x7fffffffu);
    float* at = L.xa + (size_t)b * L.xa_stride + j;
    for (int c = 0; c < copies; c++)
        asm volatile("st.relaxed.gpu.global.f32 [%0], %1;" ::"l"(at + (size_t)c * L.xa_stride), "f"(s)
                     : "memory");
}

// The shrink, by producer block blockIdx.x: xa[b, j] = xn_b . A_slot(b)[j] with xn_b =
// rms_norm(x_b) * norm_w (x_b itself when norm_w is null), in one pass over global x, norm_w and the
// A row: the sum of squares beside the dot product, the norm's scale applied at the end. A task's
// warps split k (a lane has few loads in flight even at k = 8192: one warp per task had 64 there and
// was the launch's critical path at SmolLM2-1.7B's down projection); no shared copy of x.
// The slot table is the host's (uploaded before the step) and A is a weight: both are read before
// the PDL wait, and the A row is asked into L2 then, so that after the wait only x's loads and the
// A row's L2 hits stand between the previous kernel and the stored xa. The store is a relaxed one
// at GPU scope, polled by lora_xa.
// ONE: a batch-1 launch (nb == 1), whose producers load a lane's columns in rounds
// (lora_shrink_warp_rounds).
template <bool ONE>
__device__ __forceinline__ void lora_produce(const LoraEpi& L, const float* __restrict__ x,
                                             const float* __restrict__ norm_w, float eps, int k, int nb) {
    __shared__ float part[32][2];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int tw = lora_task_warps(L), sub = warp % tw, per_block = (blockDim.x >> 5) / tw;
    int t = blockIdx.x * per_block + warp / tw;
    int b = t / L.a_rows, j = t - b * L.a_rows;
    // Warps past the block's last whole task (task_warps not dividing the block) have none.
    bool task = warp / tw < per_block && t < nb * L.a_rows;
    int slot = task ? L.slots[b] : -1;  // warp-uniform
    const float* arow = L.a + (slot < 0 ? 0 : slot) * L.a_slot_stride + (size_t)j * k;
    if (slot >= 0)
        for (int off = (sub * 32 + lane) * 128; off < k * 4; off += tw * 32 * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(arow) + off));
    // Every block waits, also one with no task to do: the step's next kernel must not start before
    // the previous one has finished.
    pdl_wait();  // x is the previous kernel's output
    int n4 = k / 4, per = (n4 + tw - 1) / tw;
    int lo = sub * per, hi = slot < 0 ? lo : min(n4, lo + per);
    const float4* a4 = reinterpret_cast<const float4*>(arow);
    const float4* x4 = reinterpret_cast<const float4*>(x + (size_t)(slot < 0 ? 0 : b) * k);
    const float4* w4 = reinterpret_cast<const float4*>(norm_w);
    float2 sums = ONE ? lora_shrink_warp_rounds(a4, x4, w4, lo, hi) : lora_shrink_warp(a4, x4, w4, lo, hi);
    int copies = ONE ? XA_COPIES : 1;
    if (tw == 1) {  // a warp's own task: its sums need no exchange (and no barrier)
        const float own[1][2] = {{sums.x, sums.y}};
        if (slot >= 0 && lane == 0) lora_store_xa(L, b, j, own, 1, norm_w != nullptr, k, eps, copies);
        return;
    }
    if (lane == 0) part[warp][0] = sums.x, part[warp][1] = sums.y;
    __syncthreads();
    if (slot < 0 || sub != 0 || lane != 0) return;
    lora_store_xa(L, b, j, part + warp, tw, norm_w != nullptr, k, eps, copies);
}

// One relaxed load of an xa value at GPU scope (from L2, never a stale L1 line). Volatile, so a
// poll repeats it; no memory clobber, so the loads around it (slot indices, B) stay where the
// compiler put them.
__device__ __forceinline__ float load_xa(const float* at) {
    float v;
    asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];" : "=f"(v) : "l"(at));
    return v;
}

// xa[b, seg R + j], polled at L2 until its producer (in this launch or an earlier one) stored it.
__device__ __forceinline__ float lora_xa(const LoraEpi& L, int b, int seg, int j) {
    const float* at = L.xa + (size_t)b * L.xa_stride + seg * L.rank + j;
    for (unsigned spins = 0;; spins++) {
        float v = load_xa(at);
        if (__float_as_uint(v) != XA_PENDING) return v;
        // Seconds of polling: no producer will store it (xa not marked per step, or a bug). Fail
        // the launch loudly instead of hanging the device.
        if (spins == (1u << 22)) __trap();
        __nanosleep(20);
    }
}

// Sequence b's adapter slot (< 0: none; -1 without LoRA). The slot table is the host's, uploaded
// before the step: the mat-vecs read it before their PDL wait, so that a row's B and xa loads are
// one round trip each instead of two dependent ones behind the table's (at SmolLM2-135M a warp's
// one row of q/k/v or o is a single round of weight loads, shorter than that chain).
__device__ __forceinline__ int lora_slot(const LoraEpi& L, int b) {
    return L.b == nullptr ? -1 : L.slots[b];
}

// The lane's xa value of sequence b (adapter slot `slot`), segment seg (lane j < rank <= 32) as it
// is now, possibly XA_PENDING; 0 where the lane adds nothing. A row issues this for every
// (sequence, segment) it needs before its dot product and settles them after it, so the loads
// overlap each other and the product (waited on one by one after the product they cost ~3.9 us
// per mat-vec at batch 8).
__device__ __forceinline__ float lora_xa_issue(const LoraEpi& L, int slot, int b, int seg) {
    int lane = threadIdx.x & 31;
    if (L.b == nullptr || L.rank > 32 || lane >= L.rank || slot < 0) return 0.f;
    return load_xa(L.xa + (size_t)b * L.xa_stride + seg * L.rank + lane);
}

// `v` from lora_xa_issue, polled again until its producer stored it.
__device__ __forceinline__ float lora_xa_settle(const LoraEpi& L, int b, int seg, float v) {
    if (__float_as_uint(v) != XA_PENDING) return v;
    return lora_xa(L, b, seg, threadIdx.x & 31);
}

// lora_xa_settle ordered after `after` (the row's dot product), for the batch-1 rows: without it
// ptxas tested v right after issuing its load (a predicate held across the product instead of v's
// register), so every row waited for its xa load before it issued its weight loads (ncu,
// bench/results/device-s18 call 4: the test was the gate/up LoRA kernel's most-sampled
// instruction; ordered, 135M adapter decode +2%). The test reads v's bits OR'd with after's times
// a zero ptxas cannot know is zero (the rank's sign bit): a real dependence on the product that no
// scheduler moves (an empty asm statement tying the two vanishes before ptxas). The batched rows
// keep the plain test: there the extra live values spilled (batch 8 0.882x -> 0.868x, call 5).
__device__ __forceinline__ float lora_xa_settle_after(const LoraEpi& L, int b, int seg, float v, float after) {
    if (L.b == nullptr) return v;  // no adapters (the kernels without LoRA fold all of this away)
    unsigned zero = (unsigned)L.rank >> 31;  // ranks are positive
    v = __uint_as_float(__float_as_uint(v) | __float_as_uint(after) * zero);
    return lora_xa_settle(L, b, seg, v);
}

// The lane's B value of row `brow` (lane j < rank <= 32), loaded before the row's dot product so
// that its latency hides behind the weights' loads (after the dot product it was a dependent round
// trip per row: measured ~1 us per mat-vec at SmolLM2-135M); 0 otherwise.
__device__ __forceinline__ float lora_load(const LoraEpi& L, int slot, int brow) {
    int j = threadIdx.x & 31;
    if (L.b == nullptr || L.rank > 32 || j >= L.rank || slot < 0) return 0.f;
    return L.b[slot * L.slot_stride + (size_t)brow * L.rank + j];
}

// The lane's share of the LoRA delta of sequence b (slot `slot`) on B row `brow` from xa segment
// `seg` (the warp sums it with the row's dot product); `xv` from lora_xa_settle, `bv` from
// lora_load (rank > 32: both 0, and the lane walks its share of the row). b is warp-uniform, so
// the early returns are too.
__device__ __forceinline__ float lora_lane(const LoraEpi& L, int slot, float xv, float bv, int b, int brow,
                                           int seg) {
    if (L.b == nullptr || slot < 0) return 0.f;
    if (L.rank <= 32) return xv * bv;
    const float* br = L.b + slot * L.slot_stride + (size_t)brow * L.rank;
    float s = 0.f;
    for (int j = threadIdx.x & 31; j < L.rank; j += 32) s += lora_xa(L, b, seg, j) * br[j];
    return s;
}


// Dot product of part p (0..3) of one block with the 32 x values of that block, stored swizzled by
// sw (0, or the format's XS_SWIZZLE for an odd block: value e at e ^ sw).
__device__ __forceinline__ float dot_part_q4_0(const uint8_t* blk, int p, const float* xb, int sw) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    const uint16_t* qs = reinterpret_cast<const uint16_t*>(blk + 2 + 4 * p);
    uint32_t q = (uint32_t)qs[0] | ((uint32_t)qs[1] << 16);
    float4 xl = *reinterpret_cast<const float4*>(xb + (4 * p ^ sw));
    float4 xh = *reinterpret_cast<const float4*>(xb + ((16 + 4 * p) ^ sw));
    float s = (float)(q & 15) * xl.x + (float)((q >> 8) & 15) * xl.y + (float)((q >> 16) & 15) * xl.z +
              (float)((q >> 24) & 15) * xl.w + (float)((q >> 4) & 15) * xh.x +
              (float)((q >> 12) & 15) * xh.y + (float)((q >> 20) & 15) * xh.z + (float)((q >> 28) & 15) * xh.w;
    float sx = (xl.x + xl.y + xl.z + xl.w) + (xh.x + xh.y + xh.z + xh.w);
    return d * (s - 8.f * sx);
}

__device__ __forceinline__ float dot_part_q4_1(const uint8_t* blk, int p, const float* xb, int sw) {
    __half2 dm = *reinterpret_cast<const __half2*>(blk);
    float d = __low2float(dm), m = __high2float(dm);
    uint32_t q = *reinterpret_cast<const uint32_t*>(blk + 4 + 4 * p);
    float4 xl = *reinterpret_cast<const float4*>(xb + (4 * p ^ sw));
    float4 xh = *reinterpret_cast<const float4*>(xb + ((16 + 4 * p) ^ sw));
    float s = (float)(q & 15) * xl.x + (float)((q >> 8) & 15) * xl.y + (float)((q >> 16) & 15) * xl.z +
              (float)((q >> 24) & 15) * xl.w + (float)((q >> 4) & 15) * xh.x +
              (float)((q >> 12) & 15) * xh.y + (float)((q >> 20) & 15) * xh.z + (float)((q >> 28) & 15) * xh.w;
    float sx = (xl.x + xl.y + xl.z + xl.w) + (xh.x + xh.y + xh.z + xh.w);
    return d * s + m * sx;
}

__device__ __forceinline__ float dot_part_q8_0(const uint8_t* blk, int p, const float* xb, int sw) {
    float d = __half2float(*reinterpret_cast<const __half*>(blk));
    const uint16_t* qs = reinterpret_cast<const uint16_t*>(blk + 2 + 8 * p);
    float4 x0 = *reinterpret_cast<const float4*>(xb + (8 * p ^ sw));
    float4 x1 = *reinterpret_cast<const float4*>(xb + ((8 * p + 4) ^ sw));
    uint16_t a = qs[0], b = qs[1], c = qs[2], e = qs[3];
    float s = (float)(int8_t)(a & 255) * x0.x + (float)(int8_t)(a >> 8) * x0.y +
              (float)(int8_t)(b & 255) * x0.z + (float)(int8_t)(b >> 8) * x0.w +
              (float)(int8_t)(c & 255) * x1.x + (float)(int8_t)(c >> 8) * x1.y +
              (float)(int8_t)(e & 255) * x1.z + (float)(int8_t)(e >> 8) * x1.w;
    return d * s;
}

// Copies total f32 values of x into shared xs, 16-byte loads with LOAD_UNROLL of them in flight per
// thread before any is stored. x is read by every block of a launch and sits in L2: the copy is
// bound by load latency, so independent loads matter more than anything else here (a plain
// strided loop issued them one after another: ~3 us of the ~8 us of a 576-wide mat-vec, ~20 us at
// 8 sequences).
#define LOAD_UNROLL 8
// Shared-memory slot of x element i when odd 32-value blocks hold value e at e ^ sw (sw 0: the plain
// layout; see XS_SWIZZLE_<q>).
__device__ __forceinline__ int xs_slot(int i, int sw) { return i ^ (sw & -((i >> 5) & 1)); }
__device__ __forceinline__ void copy_to_shared(const float* __restrict__ x, float* xs, int total,
                                               int sw = 0) {
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
                if (base + u * bd < n4) s4[xs_slot(4 * (base + u * bd), sw) >> 2] = v[u];
        }
    } else {
        for (int i = threadIdx.x; i < total; i += bd) xs[xs_slot(i, sw)] = x[i];
    }
    __syncthreads();
}

// Copies x[0..k) into shared xs (element i at xs_slot(i, sw)), RMS-normalized and scaled by norm_w
// when norm_w is not null (each thread sums the same elements in the same order whatever sw).
__device__ __forceinline__ void load_x(const float* __restrict__ x, const float* __restrict__ norm_w,
                                       float eps, int k, float* xs, int sw) {
    __shared__ float red[32];
    copy_to_shared(x, xs, k, sw);
    if (norm_w != nullptr) {
        float ss = 0.f;
        for (int i = threadIdx.x; i < k; i += blockDim.x) ss += xs[xs_slot(i, sw)] * xs[xs_slot(i, sw)];
        float r = rsqrtf(block_sum(ss, red) / (float)k + eps);
        for (int i = threadIdx.x; i < k; i += blockDim.x)
            xs[xs_slot(i, sw)] = xs[xs_slot(i, sw)] * r * norm_w[i];
        __syncthreads();
    }
}

// Asks L2 for the first row this warp will read (lane i: the row's i-th 128-byte line), before the
// x prologue: the weights come from HBM, and their latency then overlaps the prologue's.
__device__ __forceinline__ void prefetch_first_row(const uint8_t* w, int rows, int row_bytes, int row) {
    if (row >= rows) return;
    const uint8_t* r = w + (size_t)row * row_bytes;
    for (int off = (threadIdx.x & 31) * 128; off < row_bytes; off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(r + off));
}

// Each mat-vec kernel comes twice, from one body: `<name>_<q>` compiled without the LoRA code
// (LORA = false sets lora.b to null, so every LoRA branch folds away: no registers for B and xa
// values, no producer test) and `<name>_lora_<q>` with it, launched when the epilogue has
// adapters. With the LoRA code skipped only at run time, the step without adapters measured 7%
// (batch 1) and 16% (batch 8) slower than before that code existed
// (bench/results/device-s6-before-after).
// The two entry points of a mat-vec body: NAME_Q without the LoRA code, NAME_lora_Q with it.
#define MATVEC_ENTRIES(NAME, Q, PARAMS, ARGS, BOUNDS, LORA_BOUNDS)                              \
    extern "C" __global__ void BOUNDS NAME##_##Q(PARAMS) { NAME##_body_##Q<false>(ARGS); }      \
    extern "C" __global__ void LORA_BOUNDS NAME##_lora_##Q(PARAMS) {                            \
        NAME##_body_##Q<true>(ARGS);                                                            \
    }
// The batch-1 mat-vecs run blocks of 4-16 warps (the launcher's choice; one warp a row, rows
// block * warps + warp), 32 warps per SM (the launchers' grid: one wave): at most 64 registers a
// thread.
#define MV1_MAX_WARPS 16
#define MV_BOUNDS __launch_bounds__(MV1_MAX_WARPS * 32, 32 / MV1_MAX_WARPS)
// With LoRA (MV_LORA_BOUNDS_<q>) at most 80 for the 32-weight blocks and dense rows: at 64 ptxas
// spilled the B and xa values held across the dot product (qmv_q8x_swiglu_lora_q4_1 16 B stored /
// 28 B loaded a thread, every q/k/v LoRA kernel 12 / 24), reloaded from local memory in the
// epilogue; at 80 they spill nothing (but the f32 swiglu, 4 / 4) and three 8-warp blocks an SM
// stay resident (24 warps; the launcher sizes these grids from the kernel's occupancy).
// SmolLM2-1.7B Q8_0 batch 1 with an adapter 0.864x -> 0.906x of the step without, 135M Q4_1
// 0.881x -> 0.883x (bench/results/device-s17 call 1). The K-quants keep 64: their 16-warp blocks
// would hold one an SM (1.7B Q4_K_M 0.785x -> 0.726x).
#define MV_LORA_WIDE __maxnreg__(80)
#define MV_LORA_BOUNDS_q4_0 MV_LORA_WIDE
#define MV_LORA_BOUNDS_q4_1 MV_LORA_WIDE
#define MV_LORA_BOUNDS_q5_0 MV_LORA_WIDE
#define MV_LORA_BOUNDS_q5_1 MV_LORA_WIDE
#define MV_LORA_BOUNDS_q8_0 MV_LORA_WIDE
#define MV_LORA_BOUNDS_f32 MV_LORA_WIDE
#define MV_LORA_BOUNDS_f16 MV_LORA_WIDE
#define MV_LORA_BOUNDS_bf16 MV_LORA_WIDE
#define MV_LORA_BOUNDS_q4_K MV_BOUNDS
#define MV_LORA_BOUNDS_q5_K MV_BOUNDS
#define MV_LORA_BOUNDS_q6_K MV_BOUNDS
#define QMV_PARAMS \
    const uint8_t* __restrict__ w, const float* __restrict__ x, const float* __restrict__ norm_w, \
    float* __restrict__ y, int rows, int k, float eps, int accumulate, \
    const float* __restrict__ bias, LoraEpi lora
#define QMV_ARGS w, x, norm_w, y, rows, k, eps, accumulate, bias, lora
#define QMV_SWIGLU_PARAMS \
    const uint8_t* __restrict__ wg, const uint8_t* __restrict__ wu, const float* __restrict__ x, \
    const float* __restrict__ norm_w, float* __restrict__ y, int rows, int k, float eps, \
    LoraEpi lora
#define QMV_SWIGLU_ARGS wg, wu, x, norm_w, y, rows, k, eps, lora

#define DEFINE_QMV_AS(NAME, Q, XPREP, ROWDOT, ROWDOT2)                                              \
    template <bool LORA> __device__ __forceinline__ void NAME##_body_##Q(QMV_PARAMS) {              \
        if (!LORA) lora.b = nullptr; /* folds every LoRA branch away */                             \
        extern __shared__ float xs[];                                                               \
        int producers = lora_producers(lora);                                                       \
        if (producers > 0 && (int)blockIdx.x < producers) {                                         \
            lora_produce<true>(lora, x, norm_w, eps, k, 1);                                         \
            return;                                                                                 \
        }                                                                                           \
        int block = blockIdx.x - producers, blocks = gridDim.x - producers, W = blockDim.x >> 5;    \
        prefetch_first_row(w, rows, row_bytes_##Q(k), block * W + (threadIdx.x >> 5));              \
        int slot = lora_slot(lora, 0), copy = block % XA_COPIES; /* the block's copy of xa */        \
        pdl_wait(); /* x is the previous kernel's output */                                         \
        float xscale = XPREP(x, norm_w, eps, k, xs); /* applied to the base product's sum */        \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                       \
        for (int row = block * W + warp; row < rows; row += blocks * W) {                           \
            const uint8_t* wr = w + (size_t)row * row_bytes_##Q(k);                                 \
            int seg = lora_seg(lora, row);                                                          \
            float bv = lora_load(lora, slot, row);                                                  \
            float xv = lora_xa_issue(lora, slot, copy, seg);                                        \
            float acc = ROWDOT(wr, xs, k, lane);                                                    \
            xv = lora_xa_settle_after(lora, copy, seg, xv, acc);                                    \
            acc = warp_sum(acc * xscale + lora_lane(lora, slot, xv, bv, copy, row, seg));           \
            if (bias != nullptr) acc += bias[row];                                                  \
            if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;                                \
        }                                                                                           \
    }                                                                                               \
    MATVEC_ENTRIES(NAME, Q, QMV_PARAMS, QMV_ARGS, MV_BOUNDS, MV_LORA_BOUNDS_##Q)                    \
    template <bool LORA> __device__ __forceinline__ void NAME##_swiglu_body_##Q(QMV_SWIGLU_PARAMS) {\
        if (!LORA) lora.b = nullptr; /* folds every LoRA branch away */                             \
        extern __shared__ float xs[];                                                               \
        int producers = lora_producers(lora);                                                       \
        if (producers > 0 && (int)blockIdx.x < producers) {                                         \
            lora_produce<true>(lora, x, norm_w, eps, k, 1);                                         \
            return;                                                                                 \
        }                                                                                           \
        int block = blockIdx.x - producers, blocks = gridDim.x - producers, W = blockDim.x >> 5;    \
        prefetch_first_row(wg, rows, row_bytes_##Q(k), block * W + (threadIdx.x >> 5));             \
        prefetch_first_row(wu, rows, row_bytes_##Q(k), block * W + (threadIdx.x >> 5));             \
        int slot = lora_slot(lora, 0), copy = block % XA_COPIES; /* the block's copy of xa */        \
        pdl_wait(); /* x is the previous kernel's output */                                         \
        float xscale = XPREP(x, norm_w, eps, k, xs); /* applied to the base product's sum */        \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                       \
        for (int row = block * W + warp; row < rows; row += blocks * W) {                           \
            const uint8_t* gr = wg + (size_t)row * row_bytes_##Q(k);                                \
            const uint8_t* ur = wu + (size_t)row * row_bytes_##Q(k);                                \
            float bg = lora_load(lora, slot, row), bu = lora_load(lora, slot, rows + row);          \
            float xg = lora_xa_issue(lora, slot, copy, 0), xu = lora_xa_issue(lora, slot, copy, 1); \
            float2 gu = ROWDOT2(gr, ur, xs, k, lane);                                               \
            float g = gu.x, u = gu.y;                                                               \
            xg = lora_xa_settle_after(lora, copy, 0, xg, g);                                        \
            xu = lora_xa_settle_after(lora, copy, 1, xu, u);                                        \
            g = warp_sum(g * xscale + lora_lane(lora, slot, xg, bg, copy, row, 0));                 \
            u = warp_sum(u * xscale + lora_lane(lora, slot, xu, bu, copy, rows + row, 1));          \
            if (lane == 0) y[row] = g / (1.f + expf(-g)) * u;                                       \
        }                                                                                           \
    }                                                                                               \
    MATVEC_ENTRIES(NAME##_swiglu, Q, QMV_SWIGLU_PARAMS, QMV_SWIGLU_ARGS, MV_BOUNDS,                \
                   MV_LORA_BOUNDS_##Q)

// A lane's share of a row's dot product (NAME) and of two rows' (NAME##2, the swiglu kernels' gate
// and up rows, their loads side by side) from a part dot XDOT(row, block, part, xs, k): parts
// i = lane, lane + 32, ... of the row's k / 8 (part i & 3 of 32-value block i >> 2).
// A lane's parts run ROW_UNROLL at a time, indices clamped into the row (a part past the end
// reloads the last one and adds 0), so that no branch stands between a round's loads and all are
// issued before any is used: `#pragma unroll 4` on the lane-strided loop peeled the remainder
// (trip count mod 4) into iterations that each loaded and consumed in turn - at k = 576 (2-3 parts
// a lane) 2-3 dependent L2 round trips a row (bench/results/device-s17/sass-rowdot.txt).
#define ROW_UNROLL 4
#define DEFINE_ROWDOT(NAME, XDOT)                                                                   \
    __device__ __forceinline__ float NAME(const uint8_t* wr, const float* xs, int k, int lane) {     \
        float acc = 0.f;                                                                            \
        int n = (k / 32) * 4;                                                                       \
        for (int base = lane; base < n; base += 32 * ROW_UNROLL) {                                  \
            _Pragma("unroll") for (int u = 0; u < ROW_UNROLL; u++) {                                \
                int i = min(base + 32 * u, n - 1); /* in bounds: no branch between the loads */    \
                float v = XDOT(wr, i >> 2, i & 3, xs, k);                                           \
                acc += base + 32 * u < n ? v : 0.f;                                                 \
            }                                                                                       \
        }                                                                                           \
        return acc;                                                                                 \
    }                                                                                               \
    __device__ __forceinline__ float2 NAME##2(const uint8_t* gr, const uint8_t* ur, const float* xs,\
                                              int k, int lane) {                                    \
        float g = 0.f, u = 0.f;                                                                     \
        int n = (k / 32) * 4;                                                                       \
        for (int base = lane; base < n; base += 32 * ROW_UNROLL) {                                  \
            _Pragma("unroll") for (int v = 0; v < ROW_UNROLL; v++) {                                \
                int i = min(base + 32 * v, n - 1); /* in bounds: no branch between the loads */    \
                float dg = XDOT(gr, i >> 2, i & 3, xs, k), du = XDOT(ur, i >> 2, i & 3, xs, k);     \
                bool in = base + 32 * v < n;                                                        \
                g += in ? dg : 0.f;                                                                 \
                u += in ? du : 0.f;                                                                 \
            }                                                                                       \
        }                                                                                           \
        return make_float2(g, u);                                                                   \
    }

// The f32-activation mat-vecs of every format (qmv_<q>, qmv_swiglu_<q>) and the embedding lookup.
#define DEFINE_QMV(Q)                                                                               \
    __device__ __forceinline__ float xprep_##Q(const float* __restrict__ x,                         \
                                               const float* __restrict__ norm_w, float eps, int k,  \
                                               float* xs) {                                         \
        load_x(x, norm_w, eps, k, xs, XS_SWIZZLE_##Q);                                              \
        return 1.f; /* xs is normalized */                                                          \
    }                                                                                               \
    __device__ __forceinline__ float xdot_##Q(const uint8_t* r, int blk, int p, const float* xs,    \
                                              int k) {                                              \
        return rdot_##Q(r, blk, p, xs + blk * 32);                                                  \
    }                                                                                               \
    DEFINE_ROWDOT(rowdot_##Q, xdot_##Q)                                                             \
    DEFINE_QMV_AS(qmv, Q, xprep_##Q, rowdot_##Q, rowdot_##Q##2)                                      \
    extern "C" __global__ void embed_##Q(const uint8_t* __restrict__ table,                         \
                                         const int* __restrict__ state, float* __restrict__ x,      \
                                         int hidden) {                                              \
        embed_row_##Q(table, state[0], x, hidden);                                                  \
    }

// Per format: bytes of a row of k weights, the 8 weights of part p of block blk of a row in the order
// part_dot_<q> pairs them with x, and the part's dot with x. Q4_0/Q4_1/Q8_0 keep their hand-written
// dot products; the others dequantize the part (ggml_blocks.cuh) and dot 8 consecutive weights.
#define LEGACY_ACCESS(Q, BYTES, SWIZZLE)                                                            \
    enum { XS_SWIZZLE_##Q = SWIZZLE };                                                              \
    __device__ __forceinline__ int row_bytes_##Q(int k) { return (k / 32) * BYTES; }                \
    __device__ __forceinline__ float rdot_##Q(const uint8_t* r, int blk, int p, const float* xb) {  \
        return dot_part_##Q(r + (size_t)blk * BYTES, p, xb, (blk & 1) * SWIZZLE);                   \
    }
LEGACY_ACCESS(q4_0, 18, 16)
LEGACY_ACCESS(q4_1, 20, 16)
LEGACY_ACCESS(q8_0, 34, 0)
// Dot of 8 consecutive part weights (positions 8p .. 8p + 7 of a block) with x of that block (xb:
// the block's 32 values, plain layout).
__device__ __forceinline__ float part_dot_q8(const float* w, const float* xb, int p) {
    float4 x0 = *reinterpret_cast<const float4*>(xb + 8 * p);
    float4 x1 = *reinterpret_cast<const float4*>(xb + 8 * p + 4);
    return w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w + w[4] * x1.x + w[5] * x1.y +
           w[6] * x1.z + w[7] * x1.w;
}
// Row bytes and the part's dot with x for a format with an rpart_w_<q> (the 8 part weights).
#define PART_ACCESS(Q, WEIGHTS, BYTES)                                                              \
    enum { XS_SWIZZLE_##Q = 0 };                                                                    \
    __device__ __forceinline__ int row_bytes_##Q(int k) { return (k / WEIGHTS) * BYTES; }           \
    __device__ __forceinline__ float rdot_##Q(const uint8_t* r, int blk, int p, const float* xb) {  \
        float w[8];                                                                                 \
        rpart_w_##Q(r, blk, p, w);                                                                  \
        return part_dot_q8(w, xb, p);                                                               \
    }
// The part as two 4-weight dequantizations of ggml_blocks.cuh.
#define GENERIC_ACCESS(Q, WEIGHTS, BYTES)                                                           \
    __device__ __forceinline__ void rpart_w_##Q(const uint8_t* r, int blk, int p, float* w) {       \
        w4_##Q(r, blk, 2 * p, w);                                                                   \
        w4_##Q(r, blk, 2 * p + 1, w + 4);                                                           \
    }                                                                                               \
    PART_ACCESS(Q, WEIGHTS, BYTES)
GENERIC_ACCESS(q5_0, 32, 22)
GENERIC_ACCESS(q5_1, 32, 24)
GENERIC_ACCESS(q5_K, 256, 176)
// Q4_K and Q6_K (a Q4_K_M file's formats) read a part's bytes in words, not byte by byte (w4_q4_K
// and w4_q6_K load each quant, scale and f16 half separately: ~20 loads per part, which bound the
// mat-vec at SmolLM2-1.7B shapes). Same weights, same f32 operations.
// 6-bit scale and min of sub-block s (0..7) from the words of the head (ggml's get_scale_min_k4).
__device__ __forceinline__ void q4_K_scale_min(uint4 head, int s, float& sc, float& mn) {
    int sh8 = 8 * (s & 3);
    uint32_t a, b;
    if (s < 4) {
        a = (head.y >> sh8) & 63;
        b = (head.z >> sh8) & 63;
    } else {
        uint32_t hi = head.w >> sh8;
        a = (hi & 15) | (((head.y >> sh8) >> 6 & 3) << 4);
        b = (hi >> 4 & 15) | (((head.z >> sh8) >> 6 & 3) << 4);
    }
    sc = (float)a, mn = (float)b;
}
// Q4_K part p of sub-block s: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins (words s0 s1 s2,
// q4_K_scale_min), quant bytes 16 + 32 (s >> 1) + 8p .. + 8, nibble (s & 1). A row of k
// weights is k / 256 * 144 bytes, a multiple of 16, so with the matrix 16-byte aligned (every
// engine matrix is its own allocation) the words are aligned.
__device__ __forceinline__ void rpart_w_q4_K(const uint8_t* r, int blk, int p, float* w) {
    const uint8_t* b = r + (size_t)(blk >> 3) * 144;
    int s = blk & 7;
    uint4 head = *reinterpret_cast<const uint4*>(b);  // d, dmin | scales 0-3 | 4-7 | 8-11
    float sc, mn;
    q4_K_scale_min(head, s, sc, mn);
    float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&head.x));
    float d = dm.x * sc, dmin = dm.y * mn;
    uint2 q = *reinterpret_cast<const uint2*>(b + 16 + 32 * (s >> 1) + 8 * p);
    int sh = (s & 1) * 4;
    uint32_t lo = (q.x >> sh) & 0x0f0f0f0fu, hi = (q.y >> sh) & 0x0f0f0f0fu;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[i] = d * (float)((lo >> (8 * i)) & 255) - dmin;
        w[4 + i] = d * (float)((hi >> (8 * i)) & 255) - dmin;
    }
}
PART_ACCESS(q4_K, 256, 144)
// Four bytes from a 2-byte aligned address (Q6_K's 210-byte super-blocks are only that aligned).
__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t* at) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(at);
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}
// Q6_K part p of sub-block s (n = s >> 2, t = s & 3): low nibbles ql at 64n + 32 (t & 1) + 8p
// (nibble t >> 1), high 2 bits qh at 128 + 32n + 8p (bits 2t), scale int8 at 192 + 8n + 2t + (p >> 1),
// f16 d at 208; w = d scale (q - 32).
__device__ __forceinline__ void rpart_w_q6_K(const uint8_t* r, int blk, int p, float* w) {
    const uint8_t* b = r + (size_t)(blk >> 3) * 210;
    int s = blk & 7, n = s >> 2, t = s & 3;
    const uint8_t* ql = b + 64 * n + 32 * (t & 1) + 8 * p;
    const uint8_t* qh = b + 128 + 32 * n + 8 * p;
    uint32_t l[2] = {ld_u32_a2(ql), ld_u32_a2(ql + 4)}, h[2] = {ld_u32_a2(qh), ld_u32_a2(qh + 4)};
    float d = __half2float(*reinterpret_cast<const __half*>(b + 208)) *
              (float)reinterpret_cast<const int8_t*>(b + 192)[8 * n + 2 * t + (p >> 1)];
    int shl = (t >> 1) * 4, shh = 2 * t;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        uint32_t v = ((l[j] >> shl) & 0x0f0f0f0fu) | (((h[j] >> shh) & 0x03030303u) << 4);
#pragma unroll
        for (int i = 0; i < 4; i++) w[4 * j + i] = d * (float)((int)((v >> (8 * i)) & 63) - 32);
    }
}
PART_ACCESS(q6_K, 256, 210)
// Dense weights (HF bf16/f16/f32 checkpoints): part p of block blk is 8 consecutive values (Q8_0's
// order), one 16-byte load for f16/bf16 (a warp reads 512 consecutive bytes per step), two for f32.
__device__ __forceinline__ void rpart_w_f32(const uint8_t* r, int blk, int p, float* w) {
    const float4* v = reinterpret_cast<const float4*>(r + (size_t)blk * 128 + 32 * p);
    float4 a = v[0], b = v[1];
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
}
__device__ __forceinline__ void rpart_w_f16(const uint8_t* r, int blk, int p, float* w) {
    uint4 v = *reinterpret_cast<const uint4*>(r + (size_t)blk * 64 + 16 * p);
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
        w[2 * i] = f.x, w[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void rpart_w_bf16(const uint8_t* r, int blk, int p, float* w) {
    uint4 v = *reinterpret_cast<const uint4*>(r + (size_t)blk * 64 + 16 * p);
    w[0] = bf16_lo(v.x), w[1] = bf16_hi(v.x), w[2] = bf16_lo(v.y), w[3] = bf16_hi(v.y);
    w[4] = bf16_lo(v.z), w[5] = bf16_hi(v.z), w[6] = bf16_lo(v.w), w[7] = bf16_hi(v.w);
}
PART_ACCESS(f32, 32, 128)
PART_ACCESS(f16, 32, 64)
PART_ACCESS(bf16, 32, 64)

// x[0..hidden) = dequantized row `token` of a table (4 weights per thread).
#define DEFINE_EMBED_ROW(Q)                                                                         \
    __device__ __forceinline__ void embed_row_##Q(const uint8_t* table, int token, float* x,        \
                                                  int hidden) {                                     \
        pdl_trigger(); /* the first kernel of a step: waits on the step before */                   \
        pdl_wait();                                                                                 \
        const uint8_t* row = table + (size_t)token * row_bytes_##Q(hidden);                         \
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < hidden / 4;                         \
             j += gridDim.x * blockDim.x) {                                                         \
            float w[4];                                                                             \
            w4_##Q(row, j >> 3, j & 7, w);                                                          \
            reinterpret_cast<float4*>(x)[j] = make_float4(w[0], w[1], w[2], w[3]);                  \
        }                                                                                           \
    }
DEFINE_EMBED_ROW(q4_0)
DEFINE_EMBED_ROW(q4_1)
DEFINE_EMBED_ROW(q5_0)
DEFINE_EMBED_ROW(q5_1)
DEFINE_EMBED_ROW(q8_0)
DEFINE_EMBED_ROW(q4_K)
DEFINE_EMBED_ROW(q5_K)
DEFINE_EMBED_ROW(q6_K)
DEFINE_EMBED_ROW(f32)
DEFINE_EMBED_ROW(f16)
DEFINE_EMBED_ROW(bf16)

// ---- Batch-1 mat-vecs on int8 activations: qmv_q8x_<q>, qmv_q8x_swiglu_<q> ----
//
// For Q4_0, Q4_1, Q8_0, Q4_K and Q6_K the batch-1 mat-vecs also come with x quantized to int8 per
// 32 values, as llama.cpp's MMVQ and Candle's quantized matmul (CPU and CUDA) do, so that a part's
// 8 weights meet x in two dp4a instructions instead of 8 int-to-float conversions and 8 FMAs: the
// f32 kernels issue ~8 instructions per weight and are bound by it (~15% of DRAM bandwidth at
// SmolLM2-1.7B shapes, bench/results/device-s10). With xg = x * norm_w when the launch fuses the
// RMSNorm (x itself otherwise) and r = rsqrt(mean(x^2) + eps) (1 without the norm):
//   xq[i] = rint(xg[i] * (127 / amax_b)),  ds_b = (amax_b / 127, amax_b / 127 * sum_{i in b} xq[i])
// per block b of 32 values (amax_b = max |xg_i| over b; amax_b = 0: xq = 0, ds = (0, 0)), and
//   y[r] = r * sum_b sum_{i in b} W[r, i] * ds_b.x * xq[i]   (+ bias, LoRA delta, as every mat-vec)
// (rint: to nearest, ties to even): the f32 kernels' maths with xn = r xg replaced by its int8 grid
// (the grid of r xg is r times that of xg). Shared memory: xq [k] int8, then ds [k / 32] float2.

// Quantizes 4 values (float4 i of x, `in` false past the end) into word i of xq, and with the 7 other
// lanes of its 32-value block (lanes 8n .. 8n + 7; every lane of the warp calls) the block's scales
// into ds: amax over the 32 values, q = rint(x * (127 / amax)), ds = (amax / 127, that * sum q).
__device__ __forceinline__ void quantize4(float4 v, int i, bool in, int* xq, float2* ds) {
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float id = amax > 0.f ? 127.f / amax : 0.f;
    int q0 = __float2int_rn(__fmul_rn(v.x, id)), q1 = __float2int_rn(__fmul_rn(v.y, id));
    int q2 = __float2int_rn(__fmul_rn(v.z, id)), q3 = __float2int_rn(__fmul_rn(v.w, id));
    int sum = q0 + q1 + q2 + q3;
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (!in) return;
    xq[i] = (int)((uint32_t)(q0 & 255) | (uint32_t)(q1 & 255) << 8 | (uint32_t)(q2 & 255) << 16 |
                  (uint32_t)(q3 & 255) << 24);
    float d = amax / 127.f;
    if ((i & 7) == 0) ds[i >> 3] = make_float2(d, d * (float)sum);
}

// xq and ds of x[0..k) (times norm_w when not null), straight from global memory in one pass:
// QX_CHUNK float4 per thread and iteration, loaded together (x and norm_w) and quantized side by
// side (their shuffles interleave): a round trip per chunk, 4 at k = 8192 (one load and one
// quantization per iteration measured ~6 us per launch slower there). The RMSNorm's scale
// r = rsqrt(mean(x^2) + eps) is not applied to the values: a block's int8 values do not depend on
// a uniform scale, so the caller multiplies each row's sum by the returned r instead (1 without a
// norm), and the sum of squares rides along in the same pass (a separate first pass cost an L2
// round trip per launch). x and norm_w must be 16-byte aligned (every engine buffer is its own
// allocation) and k a multiple of 32.
#define QX_CHUNK 4
__device__ __forceinline__ float load_x_int8(const float* __restrict__ x, const float* __restrict__ norm_w,
                                             float eps, int k, int* xq, float2* ds) {
    __shared__ float red[32];
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* g4 = reinterpret_cast<const float4*>(norm_w);
    int n4 = k / 4, bd = blockDim.x, lane = threadIdx.x & 31;
    float ss = 0.f;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int base = threadIdx.x - lane; base < n4; base += QX_CHUNK * bd) {
        float4 v[QX_CHUNK];
#pragma unroll
        for (int u = 0; u < QX_CHUNK; u++) {
            int i = base + u * bd + lane;
            v[u] = i < n4 ? __ldg(x4 + i) : zero;
        }
        if (norm_w != nullptr) {
            float4 g[QX_CHUNK];
#pragma unroll
            for (int u = 0; u < QX_CHUNK; u++) {
                int i = base + u * bd + lane;
                g[u] = i < n4 ? __ldg(g4 + i) : zero;
            }
#pragma unroll
            for (int u = 0; u < QX_CHUNK; u++) {
                ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
                v[u] = make_float4(v[u].x * g[u].x, v[u].y * g[u].y, v[u].z * g[u].z, v[u].w * g[u].w);
            }
        }
#pragma unroll
        for (int u = 0; u < QX_CHUNK; u++) {
            int i = base + u * bd + lane;
            quantize4(v[u], i, i < n4, xq, ds);
        }
    }
    if (norm_w == nullptr) {
        __syncthreads();
        return 1.f;
    }
    return rsqrtf(block_sum(ss, red) / (float)k + eps);  // its barriers also publish xq and ds
}

// xq (as words) and ds in the dynamic shared memory: k bytes, then k / 32 float2.
__device__ __forceinline__ const int* q8x_words(const float* xs, int k) {
    return reinterpret_cast<const int*>(xs);
}
__device__ __forceinline__ const float2* q8x_scales(const float* xs, int k) {
    return reinterpret_cast<const float2*>(reinterpret_cast<const int8_t*>(xs) + k);
}

__device__ __forceinline__ float xprep_q8x(const float* __restrict__ x, const float* __restrict__ norm_w,
                                           float eps, int k, float* xs) {
    return load_x_int8(x, norm_w, eps, k, reinterpret_cast<int*>(xs),
                reinterpret_cast<float2*>(reinterpret_cast<int8_t*>(xs) + k));
}

// Part p (of 4) of 32-weight block blk of a row against xq words xw (the block's 8) and its scales
// xd. The 4 lanes of a block each add a quarter of the block's sum terms (ds.y), so the row's warp
// sum holds each block's whole term.
// Q4_0: w = d (q - 8); lane's nibbles: low = values 4p..4p+3, high = 16 + 4p..
__device__ __forceinline__ float qdot_q4_0(const uint8_t* r, int blk, int p, const int* xw, float2 xd) {
    const uint8_t* b = r + (size_t)blk * 18;
    const uint16_t* qs = reinterpret_cast<const uint16_t*>(b + 2 + 4 * p);
    int q = (int)((uint32_t)qs[0] | ((uint32_t)qs[1] << 16));
    int s = __dp4a(q & 0x0f0f0f0f, xw[p], 0);
    s = __dp4a((q >> 4) & 0x0f0f0f0f, xw[4 + p], s);
    float d = __half2float(*reinterpret_cast<const __half*>(b));
    return d * (xd.x * (float)s - 2.f * xd.y);
}
// Q4_1: w = d q + m.
__device__ __forceinline__ float qdot_q4_1(const uint8_t* r, int blk, int p, const int* xw, float2 xd) {
    const uint8_t* b = r + (size_t)blk * 20;
    int q = *reinterpret_cast<const int*>(b + 4 + 4 * p);
    int s = __dp4a(q & 0x0f0f0f0f, xw[p], 0);
    s = __dp4a((q >> 4) & 0x0f0f0f0f, xw[4 + p], s);
    float2 dm = __half22float2(*reinterpret_cast<const __half2*>(b));
    return dm.x * xd.x * (float)s + 0.25f * dm.y * xd.y;
}
// Q8_0: w = d q; the part's values 8p..8p+7 (2-byte aligned: 34-byte blocks).
__device__ __forceinline__ float qdot_q8_0(const uint8_t* r, int blk, int p, const int* xw, float2 xd) {
    const uint8_t* b = r + (size_t)blk * 34;
    int s = __dp4a((int)ld_u32_a2(b + 2 + 8 * p), xw[2 * p], 0);
    s = __dp4a((int)ld_u32_a2(b + 6 + 8 * p), xw[2 * p + 1], s);
    return __half2float(*reinterpret_cast<const __half*>(b)) * xd.x * (float)s;
}
// ---- Q4_K on int8 activations, 32 weights a lane step ----
//
// The f32 kernels' part split (rpart_w_q4_K) gives a lane 8 weights of a block a step: each qs
// byte is loaded twice (its two nibbles belong to two lanes' sub-blocks), a step reads 144 bytes a
// warp, and a row of k = 8192 takes 32 steps a lane (8 rounds of loads in flight together; the
// mat-vecs are bound by load latency). Here a lane step is 16 consecutive qs
// bytes of a super-block (one 16-byte load): weights 16h .. 16h + 15 of sub-blocks 2j (low nibbles)
// and 2j + 1 (high nibbles), unit i of a row = (super-block i >> 3, j = (i & 7) >> 1, h = i & 1),
// 8 units a super-block; the 16-byte head (d, dmin, scales) is read by the unit's lane as well
// (the 8 lanes of a super-block hit one line). A unit's terms, with the part split's maths:
//   d sc_s ds_s.x sum(q xq) - dmin mn_s ds_s.y / 2   for s = 2j, 2j + 1 (half of each block's sum).
// The raw bytes of unit i of a Q4_K row: the super-block's head and the unit's 16 qs bytes.
struct q4_KUnit {
    uint4 head, q;
};
__device__ __forceinline__ q4_KUnit q4_K_unit(const uint8_t* r, int i) {
    const uint8_t* b = r + (size_t)(i >> 3) * 144;
    q4_KUnit u;
    u.head = *reinterpret_cast<const uint4*>(b);
    u.q = *reinterpret_cast<const uint4*>(b + 16 + 16 * (i & 7));
    return u;
}
// Unit i's sum against xq words xw and block scales xd (q8x_words / q8x_scales).
__device__ __forceinline__ float q4_K_unit_dot(const q4_KUnit& u, int i, const int* xw, const float2* xd) {
    int j = (i & 7) >> 1, h = i & 1, blk = (i >> 3) * 8 + 2 * j;
    int4 x0 = *reinterpret_cast<const int4*>(xw + blk * 8 + 4 * h);
    int4 x1 = *reinterpret_cast<const int4*>(xw + (blk + 1) * 8 + 4 * h);
    const uint32_t m = 0x0f0f0f0fu;
    int a0 = __dp4a((int)(u.q.x & m), x0.x, 0);
    a0 = __dp4a((int)(u.q.y & m), x0.y, a0);
    a0 = __dp4a((int)(u.q.z & m), x0.z, a0);
    a0 = __dp4a((int)(u.q.w & m), x0.w, a0);
    int a1 = __dp4a((int)((u.q.x >> 4) & m), x1.x, 0);
    a1 = __dp4a((int)((u.q.y >> 4) & m), x1.y, a1);
    a1 = __dp4a((int)((u.q.z >> 4) & m), x1.z, a1);
    a1 = __dp4a((int)((u.q.w >> 4) & m), x1.w, a1);
    float sc0, mn0, sc1, mn1;
    q4_K_scale_min(u.head, 2 * j, sc0, mn0);
    q4_K_scale_min(u.head, 2 * j + 1, sc1, mn1);
    float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&u.head.x));
    float2 d0 = xd[blk], d1 = xd[blk + 1];
    return dm.x * (sc0 * d0.x * (float)a0 + sc1 * d1.x * (float)a1) -
           0.5f * dm.y * (mn0 * d0.y + mn1 * d1.y);
}

// ---- Q6_K on int8 activations, 32 weights a lane step ----
//
// Q6_K (w = d sc (q - 32), q 6-bit; rpart_w_q6_K's layout) the same way: in half n of a
// super-block, ql byte l holds weight l of sub-blocks 4n (low nibble) and 4n + 2 (high), ql byte
// 32 + l those of 4n + 1 and 4n + 3, qh byte l the high two bits of all four (bits 2t). Unit i =
// (super-block i >> 3, n = (i >> 2) & 1, p = i & 3) takes l = 8p .. 8p + 7: 8 bytes at each of ql,
// ql + 32 and qh (each byte read once; the part split read qh four times and ql twice) and 8
// weights of each of the four sub-blocks. The blocks are only 2-byte aligned (210 bytes), so
// words are read as halves (ld_u32_a2). q - 32 as signed bytes: with bit 7 set in every byte no
// subtraction borrows across bytes, and flipping it back gives (q - 32) mod 256.
struct q6_KUnit {
    uint32_t lo[2], hi[2], qh[2], sc[2], d;  // ql bytes of sub-blocks (4n, 4n+2) and (4n+1, 4n+3)
};
__device__ __forceinline__ q6_KUnit q6_K_unit(const uint8_t* r, int i) {
    const uint8_t* b = r + (size_t)(i >> 3) * 210;
    int n = (i >> 2) & 1, p = i & 3;
    const uint8_t* ql = b + 64 * n + 8 * p;
    const uint8_t* qh = b + 128 + 32 * n + 8 * p;
    q6_KUnit u;
    u.lo[0] = ld_u32_a2(ql), u.lo[1] = ld_u32_a2(ql + 4);
    u.hi[0] = ld_u32_a2(ql + 32), u.hi[1] = ld_u32_a2(ql + 36);
    u.qh[0] = ld_u32_a2(qh), u.qh[1] = ld_u32_a2(qh + 4);
    u.sc[0] = ld_u32_a2(b + 192 + 8 * n), u.sc[1] = ld_u32_a2(b + 196 + 8 * n);
    u.d = *reinterpret_cast<const uint16_t*>(b + 208);
    return u;
}
__device__ __forceinline__ float q6_K_unit_dot(const q6_KUnit& u, int i, const int* xw, const float2* xd) {
    int n = (i >> 2) & 1, p = i & 3, blk0 = (i >> 3) * 8 + 4 * n;
    float s = 0.f;
#pragma unroll
    for (int t = 0; t < 4; t++) {
        const uint32_t* ql = (t & 1) ? u.hi : u.lo;
        int shl = (t >> 1) * 4, acc = 0;
        int2 x = *reinterpret_cast<const int2*>(xw + (blk0 + t) * 8 + 2 * p);
#pragma unroll
        for (int j = 0; j < 2; j++) {
            uint32_t v = ((ql[j] >> shl) & 0x0f0f0f0fu) | (((u.qh[j] >> (2 * t)) & 0x03030303u) << 4);
            uint32_t vs = ((v | 0x80808080u) - 0x20202020u) ^ 0x80808080u;
            acc = __dp4a((int)vs, j ? x.y : x.x, acc);
        }
        // int8 scale of sub-block 4n + t for l in 8p..8p+7: byte 2t + (p >> 1) of the 8 at 192 + 8n.
        int sc = (int)(int8_t)(u.sc[t >> 1] >> (8 * (2 * (t & 1) + (p >> 1))));
        s += (float)sc * xd[blk0 + t].x * (float)acc;
    }
    return __half2float(__ushort_as_half((unsigned short)u.d)) * s;
}

// A lane's share of a row (and of two rows, for the swiglu kernels) in units of 32 weights: the
// raw bytes of its next U units loaded first (guarded, so that their loads are in flight
// together), then dotted. Q4_K: U = 4 for one row (k = 8192: two rounds of loads a row instead of
// eight), 2 for two rows (a unit's bytes take 8 registers; the kernels' cap is 64); Q6_K (9
// registers a unit): 2 and 1.
#define DEFINE_UNIT_ROWDOT(Q, U1, U2)                                                               \
    template <int U>                                                                                \
    __device__ __forceinline__ float Q##_units(const uint8_t* r, int base, int units, const float* xs, \
                                               int k) {                                             \
        Q##Unit u[U];                                                                               \
        _Pragma("unroll") for (int t = 0; t < U; t++) if (base + 32 * t < units) u[t] = Q##_unit(r, base + 32 * t); \
        float acc = 0.f;                                                                            \
        _Pragma("unroll") for (int t = 0; t < U; t++) if (base + 32 * t < units)                    \
            acc += Q##_unit_dot(u[t], base + 32 * t, q8x_words(xs, k), q8x_scales(xs, k));          \
        return acc;                                                                                 \
    }                                                                                               \
    __device__ __forceinline__ float rowdot_q8x_##Q(const uint8_t* wr, const float* xs, int k, int lane) { \
        float acc = 0.f;                                                                            \
        for (int base = lane; base < k / 32; base += 32 * U1) acc += Q##_units<U1>(wr, base, k / 32, xs, k); \
        return acc;                                                                                 \
    }                                                                                               \
    __device__ __forceinline__ float2 rowdot_q8x_##Q##2(const uint8_t* gr, const uint8_t* ur,       \
                                                        const float* xs, int k, int lane) {         \
        float g = 0.f, v = 0.f;                                                                     \
        for (int base = lane; base < k / 32; base += 32 * U2) {                                     \
            g += Q##_units<U2>(gr, base, k / 32, xs, k);                                            \
            v += Q##_units<U2>(ur, base, k / 32, xs, k);                                            \
        }                                                                                           \
        return make_float2(g, v);                                                                   \
    }
DEFINE_UNIT_ROWDOT(q4_K, 4, 2)
DEFINE_UNIT_ROWDOT(q6_K, 2, 1)

#define DEFINE_QMV_Q8X(Q)                                                                           \
    __device__ __forceinline__ float xdot_q8x_##Q(const uint8_t* r, int blk, int p, const float* xs,\
                                                  int k) {                                          \
        return qdot_##Q(r, blk, p, q8x_words(xs, k) + blk * 8, q8x_scales(xs, k)[blk]);             \
    }                                                                                               \
    DEFINE_ROWDOT(rowdot_q8x_##Q, xdot_q8x_##Q)                                                     \
    DEFINE_QMV_AS(qmv_q8x, Q, xprep_q8x, rowdot_q8x_##Q, rowdot_q8x_##Q##2)

DEFINE_QMV(q4_0)
DEFINE_QMV(q4_1)
DEFINE_QMV(q5_0)
DEFINE_QMV(q5_1)
DEFINE_QMV(q8_0)
DEFINE_QMV(q4_K)
DEFINE_QMV(q5_K)
DEFINE_QMV(q6_K)
DEFINE_QMV(f32)
DEFINE_QMV(f16)
DEFINE_QMV(bf16)
DEFINE_QMV_Q8X(q4_0)
DEFINE_QMV_Q8X(q4_1)
DEFINE_QMV_Q8X(q8_0)
DEFINE_QMV_AS(qmv_q8x, q4_K, xprep_q8x, rowdot_q8x_q4_K, rowdot_q8x_q4_K2)
DEFINE_QMV_AS(qmv_q8x, q6_K, xprep_q8x, rowdot_q8x_q6_K, rowdot_q8x_q6_K2)

// ---- Batched decode: NB sequences at once, each weight read once for all of them ----
//
// qmvb_<q>(w, x, norm_w, y, rows, k, eps, accumulate, nb, bias, lora, ldy): x [nb, k], y [nb, ldy]
//   (rows of the output at row stride ldy >= rows: a split q/k/v writes its part of each row), nb <= QMVB_MAX;
//   per sequence b: xn_b = norm_w ? rms_norm(x_b) * norm_w : x_b, y[b, r] (+)= W[r] . xn_b.
// qmvb_swiglu_<q>(wg, wu, x, norm_w, y, rows, k, eps, nb): y[b, r] = silu(Wg[r] . xn_b) * (Wu[r] . xn_b).
// embedb_<q>(table, state, x, hidden): blockIdx.y = sequence b: x[b] = row state[2 b] of the table.
// Work split: a block of MV_WARPS * SPLIT warps takes MV_WARPS rows, SPLIT warps a row: warp w on
// row w / SPLIT for the sequences b = w % SPLIT + SPLIT s (s < QMVB_MAX / SPLIT), lane i on part
// i & 3 of block i >> 2. The part's 8 weights are dequantized into registers and dotted with each
// of the warp's sequences. Several warps a row (the weights read again, from L1/L2) shorten each
// warp's serial chain of shared loads and FMAs: at SmolLM2-135M shapes the batch-8 launches have a
// few warps an SM and were bound by that chain, not by memory (ncu, bench/results/device-s13; two
// warps a row: batch 8 decode 4746 -> 5810 tok/s). Four warps a row (`<name>_lora4_<q>`) pay off
// only with LoRA at small k (the adapter step at SmolLM2-135M batch 8: 4443 -> 5093 tok/s); without
// adapters, or at SmolLM2-1.7B shapes, the weights' dequantization repeated by every warp of a row
// costs more than it saves (launch.rs picks). Dynamic shared memory: nb * k floats (the host opts
// in above 48 KiB).
#define QMVB_MAX 8
#define QMVB_SPLIT 2
#define QMVB_WIDE_SPLIT 4
// The entry points of a batched mat-vec body: NAME_Q and NAME_lora_Q two warps a row, NAME_lora4_Q
// four warps a row in 512-thread blocks of at most 64 registers a thread (two blocks an SM; with
// more registers one block an SM ran SmolLM2-135M's q/k/v launch in two waves).
#define QMVB_ENTRIES(NAME, Q, PARAMS, ARGS)                                                         \
    extern "C" __global__ void NAME##_##Q(PARAMS) { NAME##_body_##Q<false, QMVB_SPLIT>(ARGS); }     \
    extern "C" __global__ void NAME##_lora_##Q(PARAMS) { NAME##_body_##Q<true, QMVB_SPLIT>(ARGS); } \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * QMVB_WIDE_SPLIT * 32, 2)                \
        NAME##_lora4_##Q(PARAMS) { NAME##_body_##Q<true, QMVB_WIDE_SPLIT>(ARGS); }

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
#define part_dot_q4_0 part_dot_q4
#define part_dot_q4_1 part_dot_q4
#define part_dot_q8_0 part_dot_q8
#define part_dot_q5_0 part_dot_q8
#define part_dot_q5_1 part_dot_q8
#define part_dot_q4_K part_dot_q8
#define part_dot_q5_K part_dot_q8
#define part_dot_q6_K part_dot_q8
#define part_dot_f32 part_dot_q8
#define part_dot_f16 part_dot_q8
#define part_dot_bf16 part_dot_q8
#define rpart_w_q4_0(r, blk, p, w) part_w_q4_0((r) + (size_t)(blk) * 18, p, w)
#define rpart_w_q4_1(r, blk, p, w) part_w_q4_1((r) + (size_t)(blk) * 20, p, w)
#define rpart_w_q8_0(r, blk, p, w) part_w_q8_0((r) + (size_t)(blk) * 34, p, w)

// Copies x [nb, k] into shared xs, each row RMS-normalized and scaled by norm_w when not null. The
// nb sums of squares are reduced together (two barriers), from shared memory after one copy. (No
// swizzle here: the batch-1 kernels' Q4 swizzle measured 2% slower at batch 8.)
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

#define QMVB_PARAMS                                                                                 \
    const uint8_t* __restrict__ w, const float* __restrict__ x, const float* __restrict__ norm_w,   \
    float* __restrict__ y, int rows, int k, float eps, int accumulate, int nb,                      \
    const float* __restrict__ bias, LoraEpi lora, int ldy
#define QMVB_ARGS w, x, norm_w, y, rows, k, eps, accumulate, nb, bias, lora, ldy
#define QMVB_SWIGLU_PARAMS                                                                          \
    const uint8_t* __restrict__ wg, const uint8_t* __restrict__ wu, const float* __restrict__ x,    \
    const float* __restrict__ norm_w, float* __restrict__ y, int rows, int k, float eps, int nb,    \
    LoraEpi lora
#define QMVB_SWIGLU_ARGS wg, wu, x, norm_w, y, rows, k, eps, nb, lora

#define DEFINE_QMVB(Q)                                                                              \
    template <bool LORA, int SPLIT> __device__ __forceinline__ void qmvb_body_##Q(QMVB_PARAMS) {    \
        if (!LORA) lora.b = nullptr; /* folds every LoRA branch away */                             \
        constexpr int SEQS = QMVB_MAX / SPLIT; /* sequences of a warp */                            \
        extern __shared__ float xs[];                                                               \
        int producers = lora_producers(lora);                                                       \
        if (producers > 0 && (int)blockIdx.x < producers) {                                         \
            lora_produce<false>(lora, x, norm_w, eps, k, nb);                                       \
            return;                                                                                 \
        }                                                                                           \
        int block = blockIdx.x - producers, blocks = gridDim.x - producers;                         \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, share = warp % SPLIT;                 \
        int row0 = block * MV_WARPS + warp / SPLIT;                                                 \
        int stride = blocks * MV_WARPS;                                                             \
        if (share == 0) prefetch_first_row(w, rows, row_bytes_##Q(k), row0);                        \
        int sl[SEQS]; /* the warp's sequences' slots */                                            \
        _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                          \
            int b = share + SPLIT * s;                                                              \
            sl[s] = b < nb ? lora_slot(lora, b) : -1;                                               \
        }                                                                                           \
        pdl_wait(); /* x is the previous kernel's output */                                         \
        load_xb(x, norm_w, eps, k, nb, xs);                                                         \
        if (share >= nb) return; /* fewer sequences than warps a row: some have none */             \
        int parts = (k / 32) * 4;                                                                   \
        for (int row = row0; row < rows; row += stride) {                                           \
            const uint8_t* wr = w + (size_t)row * row_bytes_##Q(k);                                 \
            float acc[SEQS], bv[SEQS], xv[SEQS];                                                    \
            int seg = lora_seg(lora, row);                                                          \
            _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                      \
                int b = share + SPLIT * s;                                                          \
                acc[s] = 0.f;                                                                       \
                bv[s] = b < nb ? lora_load(lora, sl[s], row) : 0.f;                                 \
                xv[s] = b < nb ? lora_xa_issue(lora, sl[s], b, seg) : 0.f;                          \
            }                                                                                       \
            _Pragma("unroll 4") for (int i = lane; i < parts; i += 32) {                            \
                float wv[8];                                                                        \
                rpart_w_##Q(wr, i >> 2, i & 3, wv);                                                 \
                _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                  \
                    int b = share + SPLIT * s;                                                      \
                    if (b < nb) acc[s] += part_dot_##Q(wv, xs + b * k + (i >> 2) * 32, i & 3);      \
                }                                                                                   \
            }                                                                                       \
            _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                      \
                int b = share + SPLIT * s;                                                          \
                if (b < nb) xv[s] = lora_xa_settle(lora, b, seg, xv[s]);                            \
            }                                                                                       \
            _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                      \
                int b = share + SPLIT * s;                                                          \
                if (b < nb) {                                                                       \
                    float v = warp_sum(acc[s] + lora_lane(lora, sl[s], xv[s], bv[s], b, row, seg)); \
                    if (bias != nullptr) v += bias[row];                                            \
                    size_t at = (size_t)b * ldy + row;                                              \
                    if (lane == 0) y[at] = accumulate ? y[at] + v : v;                              \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    QMVB_ENTRIES(qmvb, Q, QMVB_PARAMS, QMVB_ARGS)                                                   \
    template <bool LORA, int SPLIT> __device__ __forceinline__ void qmvb_swiglu_body_##Q(QMVB_SWIGLU_PARAMS) { \
        if (!LORA) lora.b = nullptr; /* folds every LoRA branch away */                             \
        constexpr int SEQS = QMVB_MAX / SPLIT; /* sequences of a warp */                            \
        extern __shared__ float xs[];                                                               \
        int producers = lora_producers(lora);                                                       \
        if (producers > 0 && (int)blockIdx.x < producers) {                                         \
            lora_produce<false>(lora, x, norm_w, eps, k, nb);                                       \
            return;                                                                                 \
        }                                                                                           \
        int block = blockIdx.x - producers, blocks = gridDim.x - producers;                         \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, share = warp % SPLIT;                 \
        int row0 = block * MV_WARPS + warp / SPLIT;                                                 \
        int stride = blocks * MV_WARPS;                                                             \
        if (share < 2) prefetch_first_row(share == 0 ? wg : wu, rows, row_bytes_##Q(k), row0);      \
        int sl[SEQS]; /* the warp's sequences' slots */                                            \
        _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                          \
            int b = share + SPLIT * s;                                                              \
            sl[s] = b < nb ? lora_slot(lora, b) : -1;                                               \
        }                                                                                           \
        pdl_wait(); /* x is the previous kernel's output */                                         \
        load_xb(x, norm_w, eps, k, nb, xs);                                                         \
        if (share >= nb) return; /* fewer sequences than warps a row: some have none */             \
        int parts = (k / 32) * 4;                                                                   \
        for (int row = row0; row < rows; row += stride) {                                           \
            const uint8_t* gr = wg + (size_t)row * row_bytes_##Q(k);                                \
            const uint8_t* ur = wu + (size_t)row * row_bytes_##Q(k);                                \
            float g[SEQS], u[SEQS], bg[SEQS], bu[SEQS], xg[SEQS], xu[SEQS];                         \
            _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                      \
                int b = share + SPLIT * s;                                                          \
                g[s] = u[s] = 0.f;                                                                  \
                bg[s] = b < nb ? lora_load(lora, sl[s], row) : 0.f;                                 \
                bu[s] = b < nb ? lora_load(lora, sl[s], rows + row) : 0.f;                          \
                xg[s] = b < nb ? lora_xa_issue(lora, sl[s], b, 0) : 0.f;                            \
                xu[s] = b < nb ? lora_xa_issue(lora, sl[s], b, 1) : 0.f;                            \
            }                                                                                       \
            _Pragma("unroll 4") for (int i = lane; i < parts; i += 32) {                            \
                float gv[8], uv[8];                                                                 \
                rpart_w_##Q(gr, i >> 2, i & 3, gv);                                                 \
                rpart_w_##Q(ur, i >> 2, i & 3, uv);                                                 \
                _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                  \
                    int b = share + SPLIT * s;                                                      \
                    if (b < nb) {                                                                   \
                        const float* xb = xs + b * k + (i >> 2) * 32;                               \
                        g[s] += part_dot_##Q(gv, xb, i & 3);                                        \
                        u[s] += part_dot_##Q(uv, xb, i & 3);                                        \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
            _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                      \
                int b = share + SPLIT * s;                                                          \
                if (b < nb) {                                                                       \
                    xg[s] = lora_xa_settle(lora, b, 0, xg[s]);                                      \
                    xu[s] = lora_xa_settle(lora, b, 1, xu[s]);                                      \
                }                                                                                   \
            }                                                                                       \
            _Pragma("unroll") for (int s = 0; s < SEQS; s++) {                                      \
                int b = share + SPLIT * s;                                                          \
                if (b < nb) {                                                                       \
                    float gs = warp_sum(g[s] + lora_lane(lora, sl[s], xg[s], bg[s], b, row, 0));    \
                    float us = warp_sum(u[s] + lora_lane(lora, sl[s], xu[s], bu[s], b, rows + row, 1)); \
                    if (lane == 0) y[(size_t)b * rows + row] = gs / (1.f + expf(-gs)) * us;         \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    QMVB_ENTRIES(qmvb_swiglu, Q, QMVB_SWIGLU_PARAMS, QMVB_SWIGLU_ARGS)                              \
    extern "C" __global__ void embedb_##Q(const uint8_t* __restrict__ table,                        \
                                          const int* __restrict__ state, float* __restrict__ x,     \
                                          int hidden) {                                             \
        int b = blockIdx.y;                                                                         \
        embed_row_##Q(table, state[2 * b], x + (size_t)b * hidden, hidden);                         \
    }

DEFINE_QMVB(q4_0)
DEFINE_QMVB(q4_1)
DEFINE_QMVB(q5_0)
DEFINE_QMVB(q5_1)
DEFINE_QMVB(q8_0)
DEFINE_QMVB(q4_K)
DEFINE_QMVB(q5_K)
DEFINE_QMVB(q6_K)
DEFINE_QMVB(f32)
DEFINE_QMVB(f16)
DEFINE_QMVB(bf16)
