// Shared helpers for wick's kernels: element loads/stores in f32, warp and block reductions.
// Every kernel is instantiated for float, __nv_bfloat16 and __half with a _f32/_bf16/_f16 suffix.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds 32 floats; blockDim.x % 32 == 0.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// 16-byte vector of T: loads and stores V = 16 / sizeof(T) elements at once.
template <typename T>
struct Vec16 {
    static constexpr int V = 16 / sizeof(T);
    union {
        uint4 u;
        T e[16 / sizeof(T)];
    };
};

__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Instantiates `name##_f32/_bf16/_f16` as extern "C" kernels from a template `name<T>` whose
// parameter list is given as PARAMS(T) and whose call arguments are ARGS.
#define WICK_INSTANTIATE(name, PARAMS, ARGS)                                         \
    extern "C" __global__ void name##_f32(PARAMS(float)) { name<float> ARGS; }          \
    extern "C" __global__ void name##_bf16(PARAMS(__nv_bfloat16)) { name<__nv_bfloat16> ARGS; } \
    extern "C" __global__ void name##_f16(PARAMS(__half)) { name<__half> ARGS; }
