// GGML blocks to dense rows, for the products that run on dense weights: the decode engine's
// prefill (f32 GEMMs, src/generate/cuda_decode/prefill.rs) and the training engine's quantized base
// (bf16, one layer at a time, src/train/cuda_engine/weights.rs). Launcher: src/gpu/ggml.rs. CPU
// twin: Candle's dequantize (src/gpu/decode/reference.rs `prefill_dequant_layer`).
//
// dequant_layer(dst, src0..4, quant0..4, blocks0..4): up to 5 matrices (blocks_s = 0 for none) of
//   consecutive GGML blocks (format codes of kernels/ggml_blocks.cuh's dequant4) dequantized into
//   one f32 buffer, segment after segment (a matrix of rows of k weights becomes its row-major
//   [rows, k]); dequant_layer_bf16 the same into bf16 (each weight rounded to nearest once, from the
//   same f32 value).
#include "common.cuh"
#include "ggml_blocks.cuh"

// The weights go out as T (f32 for the prefill's GEMMs; bf16 for the training engine's quantized
// base, src/train/cuda_engine/weights.rs): 4 consecutive weights per thread.
__device__ __forceinline__ void store4(float* dst, long long idx, float4 v) {
    reinterpret_cast<float4*>(dst)[idx] = v;
}
__device__ __forceinline__ void store4(__nv_bfloat16* dst, long long idx, float4 v) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    reinterpret_cast<__nv_bfloat162*>(dst)[2 * idx] = lo;
    reinterpret_cast<__nv_bfloat162*>(dst)[2 * idx + 1] = hi;
}

template <typename T>
__device__ void dequant_segments(T* __restrict__ dst, const uint8_t* s0, const uint8_t* s1,
                                 const uint8_t* s2, const uint8_t* s3, const uint8_t* s4, int q0,
                                 int q1, int q2, int q3, int q4, long long b0, long long b1,
                                 long long b2, long long b3, long long b4) {
    long long total = b0 + b1 + b2 + b3 + b4;
    // Each thread: part (idx & 7) of block (idx >> 3), 4 weights.
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total * 8;
         idx += (long long)gridDim.x * blockDim.x) {
        long long blk = idx >> 3, local = blk;
        const uint8_t* src;
        int q;
        if (local < b0) {
            src = s0; q = q0;
        } else if ((local -= b0) < b1) {
            src = s1; q = q1;
        } else if ((local -= b1) < b2) {
            src = s2; q = q2;
        } else if ((local -= b2) < b3) {
            src = s3; q = q3;
        } else {
            local -= b3;
            src = s4; q = q4;
        }
        store4(dst, idx, dequant4(q, src, local, (int)(idx & 7)));
    }
}

#define DEQUANT_PARAMS(T)                                                                          \
    T *__restrict__ dst, const uint8_t *s0, const uint8_t *s1, const uint8_t *s2, const uint8_t *s3, \
        const uint8_t *s4, int q0, int q1, int q2, int q3, int q4, long long b0, long long b1,       \
        long long b2, long long b3, long long b4
extern "C" __global__ void dequant_layer(DEQUANT_PARAMS(float)) {
    dequant_segments(dst, s0, s1, s2, s3, s4, q0, q1, q2, q3, q4, b0, b1, b2, b3, b4);
}
extern "C" __global__ void dequant_layer_bf16(DEQUANT_PARAMS(__nv_bfloat16)) {
    dequant_segments(dst, s0, s1, s2, s3, s4, q0, q1, q2, q3, q4, b0, b1, b2, b3, b4);
}

