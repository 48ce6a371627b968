// GGML block formats as the decode kernels read them: weights of one 32-weight block `blk` of a
// matrix (rows of consecutive blocks; a K-quant super-block of 256 weights is 8 such blocks), by
// block index from the matrix's (or row's) first byte. Layouts after ggml-common.h; the maths is
// ggml's dequantize_row_* (CPU twins: Candle's dequantize, src/gpu/decode/reference.rs).
//
//   Q4_0 (18 B / 32):  f16 d, u8 qs[16]                w = d (q - 8)
//   Q4_1 (20 B / 32):  f16 d, f16 m, u8 qs[16]         w = d q + m
//   Q5_0 (22 B / 32):  f16 d, u8 qh[4], u8 qs[16]      w = d (q - 16), q = nibble | bit(qh, j) << 4
//   Q5_1 (24 B / 32):  f16 d, f16 m, u8 qh[4], qs[16]  w = d q + m
//   Q8_0 (34 B / 32):  f16 d, i8 qs[32]                w = d q
//   (legacy 4/5-bit: weight j < 16 in the low nibble of qs[j], weight 16 + j in its high nibble)
//   Q4_K (144 B / 256): f16 d, f16 dmin, u8 scales[12] (6-bit scale and min per 32), u8 qs[128]:
//     sub-block s (32 weights): nibbles (s odd: high) of qs[32 (s/2) .. + 32]; w = d sc_s q - dmin m_s
//   Q5_K (176 B / 256): as Q4_K plus u8 qh[32] before qs: q |= bit s of qh[l] << 4
//   Q6_K (210 B / 256): u8 ql[128], u8 qh[64], i8 scales[16], f16 d: half n = s / 4 (128 weights),
//     quarter t = s % 4: q = (ql[64n + 32 (t&1) + l] >> 4 (t>>1)) & 15 | ((qh[32n + l] >> 2t) & 3) << 4,
//     w = d scales[8n + 2t + l/16] (q - 32)
//   Dense weights (HF checkpoints' bf16/f16/f32 and GGUF's F16/BF16/F32 tensors), read as 32-weight
//   "blocks" of plain values, no scale: F32 128 B, F16 64 B, BF16 64 B (little-endian).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float ldh(const uint8_t* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// Scale and min of sub-block j (0..7) from the 12 packed bytes (ggml's get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, float& sc, float& m) {
    if (j < 4) {
        sc = (float)(q[j] & 63);
        m = (float)(q[j + 4] & 63);
    } else {
        sc = (float)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Weights 4 p .. 4 p + 3 (p < 8) of block blk, in order.
__device__ __forceinline__ void w4_q4_0(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + blk * 18;
    float d = ldh(b);
    int sh = p < 4 ? 0 : 4;
    const uint8_t* q = b + 2 + 4 * (p & 3);
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = d * ((float)((q[i] >> sh) & 15) - 8.f);
}
__device__ __forceinline__ void w4_q4_1(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + blk * 20;
    float d = ldh(b), m = ldh(b + 2);
    int sh = p < 4 ? 0 : 4;
    const uint8_t* q = b + 4 + 4 * (p & 3);
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = d * (float)((q[i] >> sh) & 15) + m;
}
__device__ __forceinline__ void w4_q5(const uint8_t* b, int p, float d, float m, float* w) {
    // b: the block's qh (4 bytes) then qs (16).
    uint32_t qh = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
    int sh = p < 4 ? 0 : 4;
    const uint8_t* q = b + 4 + 4 * (p & 3);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int j = 4 * p + i;  // position in the block; its high bit is bit j of qh
        int v = ((q[i] >> sh) & 15) | (((qh >> j) & 1) << 4);
        w[i] = d * (float)v + m;
    }
}
__device__ __forceinline__ void w4_q5_0(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + blk * 22;
    float d = ldh(b);
    w4_q5(b + 2, p, d, -16.f * d, w);
}
__device__ __forceinline__ void w4_q5_1(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + blk * 24;
    w4_q5(b + 4, p, ldh(b), ldh(b + 2), w);
}
__device__ __forceinline__ void w4_q8_0(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + blk * 34;
    float d = ldh(b);
    const int8_t* q = reinterpret_cast<const int8_t*>(b + 2 + 4 * p);
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = d * (float)q[i];
}
__device__ __forceinline__ void w4_q4_K(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + (blk >> 3) * 144;
    int s = (int)(blk & 7);
    float sc, m;
    scale_min_k4(s, b + 4, sc, m);
    float d = ldh(b) * sc, dm = ldh(b + 2) * m;
    const uint8_t* q = b + 16 + 32 * (s >> 1) + 4 * p;
    int sh = (s & 1) * 4;
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = d * (float)((q[i] >> sh) & 15) - dm;
}
__device__ __forceinline__ void w4_q5_K(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + (blk >> 3) * 176;
    int s = (int)(blk & 7);
    float sc, m;
    scale_min_k4(s, b + 4, sc, m);
    float d = ldh(b) * sc, dm = ldh(b + 2) * m;
    const uint8_t* qh = b + 16 + 4 * p;
    const uint8_t* q = b + 48 + 32 * (s >> 1) + 4 * p;
    int sh = (s & 1) * 4;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int v = ((q[i] >> sh) & 15) | (((qh[i] >> s) & 1) << 4);
        w[i] = d * (float)v - dm;
    }
}
__device__ __forceinline__ void w4_q6_K(const uint8_t* base, long long blk, int p, float* w) {
    const uint8_t* b = base + (blk >> 3) * 210;
    int s = (int)(blk & 7), n = s >> 2, t = s & 3;
    int l0 = 4 * p;
    const uint8_t* ql = b + 64 * n + 32 * (t & 1) + l0;
    const uint8_t* qh = b + 128 + 32 * n + l0;
    float d = ldh(b + 208) * (float)reinterpret_cast<const int8_t*>(b + 192)[8 * n + 2 * t + (l0 >> 4)];
    int shl = (t >> 1) * 4, shh = 2 * t;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int v = ((ql[i] >> shl) & 15) | (((qh[i] >> shh) & 3) << 4);
        w[i] = d * (float)(v - 32);
    }
}

// The dense formats: weights 4p .. 4p + 3 are 4 consecutive values, one 16-byte (f32) or 8-byte
// (f16, bf16) load.
__device__ __forceinline__ void w4_f32(const uint8_t* base, long long blk, int p, float* w) {
    float4 v = *reinterpret_cast<const float4*>(base + blk * 128 + 16 * p);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
}
__device__ __forceinline__ void w4_f16(const uint8_t* base, long long blk, int p, float* w) {
    uint2 v = *reinterpret_cast<const uint2*>(base + blk * 64 + 8 * p);
    float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
    float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
    w[0] = lo.x, w[1] = lo.y, w[2] = hi.x, w[3] = hi.y;
}
// bf16 to f32 is a 16-bit shift: the bits of a bf16 are the high half of its f32.
__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ void w4_bf16(const uint8_t* base, long long blk, int p, float* w) {
    uint2 v = *reinterpret_cast<const uint2*>(base + blk * 64 + 8 * p);
    w[0] = bf16_lo(v.x), w[1] = bf16_hi(v.x), w[2] = bf16_lo(v.y), w[3] = bf16_hi(v.y);
}

// Weights 4p .. 4p + 3 (p < 8) of 32-weight block blk of a matrix in format `quant` (the codes of
// src/gpu/ggml.rs's QuantType::code: 0 Q4_0, 1 Q4_1, 2 Q8_0, 3 Q5_0, 4 Q5_1, 5 Q4_K, 6 Q5_K, 7 Q6_K,
// 8 F32, 9 F16, 10 BF16).
__device__ __forceinline__ float4 dequant4(int quant, const uint8_t* base, long long blk, int p) {
    float w[4];
    switch (quant) {
        case 0: w4_q4_0(base, blk, p, w); break;
        case 1: w4_q4_1(base, blk, p, w); break;
        case 2: w4_q8_0(base, blk, p, w); break;
        case 3: w4_q5_0(base, blk, p, w); break;
        case 4: w4_q5_1(base, blk, p, w); break;
        case 5: w4_q4_K(base, blk, p, w); break;
        case 6: w4_q5_K(base, blk, p, w); break;
        case 7: w4_q6_K(base, blk, p, w); break;
        case 8: w4_f32(base, blk, p, w); break;
        case 9: w4_f16(base, blk, p, w); break;
        default: w4_bf16(base, blk, p, w); break;
    }
    return make_float4(w[0], w[1], w[2], w[3]);
}

// Bytes of a row of k weights (k a multiple of 256 for the K-quants).
__device__ __forceinline__ long long row_bytes(int quant, int k) {
    switch (quant) {
        case 0: return (k / 32) * 18;
        case 1: return (k / 32) * 20;
        case 2: return (k / 32) * 34;
        case 3: return (k / 32) * 22;
        case 4: return (k / 32) * 24;
        case 5: return (k / 256) * 144;
        case 6: return (k / 256) * 176;
        case 7: return (k / 256) * 210;
        case 8: return (long long)k * 4;
        default: return (long long)k * 2;
    }
}
