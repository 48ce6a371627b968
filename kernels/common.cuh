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

// Online max and sum of exp2 of x[0..len) * sl across one warp (lane i takes elements i, i + 32,
// ... or, with `vec` (16-byte aligned row), float4 i, i + 32, ...: one rescale per four columns).
// On return every lane holds the row's max m and sum of exp2(x * sl - m). Base 2: pass
// sl = scale * log2(e). The causal softmaxes of training and prefill share it.
__device__ __forceinline__ void warp_row_max_sum_exp2(const float* __restrict__ x, int len, float sl,
                                                      bool vec, float& m_out, float& sum_out) {
    int lane = threadIdx.x & 31;
    float m = -INFINITY, sum = 0.f;
    if (vec) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (int i = lane; i * 4 < len; i += 32) {
            float4 a = x4[i];
            float e[4] = {a.x * sl, a.y * sl, a.z * sl, a.w * sl};
            int valid = min(4, len - i * 4);
            float lm = e[0];
            for (int j = 1; j < valid; j++) lm = fmaxf(lm, e[j]);
            float nm = fmaxf(m, lm);
            float acc = 0.f;
            for (int j = 0; j < valid; j++) acc += exp2f(e[j] - nm);
            sum = (m == -INFINITY ? 0.f : sum * exp2f(m - nm)) + acc;
            m = nm;
        }
    } else {
        for (int i = lane; i < len; i += 32) {
            float e = x[i] * sl;
            float nm = fmaxf(m, e);
            sum = (m == -INFINITY ? 0.f : sum * exp2f(m - nm)) + exp2f(e - nm);
            m = nm;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffff, m, o);
        float os = __shfl_xor_sync(0xffffffff, sum, o);
        float nm = fmaxf(m, om);
        sum = (m == -INFINITY ? 0.f : sum * exp2f(m - nm)) + (om == -INFINITY ? 0.f : os * exp2f(om - nm));
        m = nm;
    }
    m_out = m;
    sum_out = sum;
}

// Programmatic dependent launch (Hopper and later; the decode step's kernels are launched with the
// attribute that allows it, `gpu::decode::step_launch`): a kernel may be scheduled while the one
// before it in the stream is finishing, so its launch latency and its work that reads nothing the
// earlier kernels write (weight and cache prefetches) overlap that kernel's tail.
// pdl_trigger: this block lets the next kernel be scheduled. The mat-vecs do not call it (a block
// lets the next kernel in as it exits): triggered at their start, the next kernel's blocks sat
// waiting beside them and a batch-8 step took 17% longer (bench/results/device-s12, call 2).
// pdl_wait: returns once every earlier kernel of the stream has completed and its writes are
// visible. Every block calls it before reading anything an earlier kernel wrote, before writing
// anything, and before it exits, so each kernel's completion still implies its predecessors'.
// Both are no-ops when the kernel was launched without the attribute.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
