// RoPE, one thread per rotated pair. x: [b, h, seq, d] with strides (s0, s1, s2, 1) from offset 0
// of the passed pointer; cos/sin: [seq, d/2] contiguous; out: contiguous [b, h, seq, d].
#include "common.cuh"

template <typename T>
__device__ void rope(const T* __restrict__ x, const T* __restrict__ cos_t, const T* __restrict__ sin_t,
                     T* __restrict__ out, int h, int seq, int d, long long s0, long long s1,
                     long long s2, int interleaved, size_t pairs) {
    int half = d / 2;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < pairs; p += (size_t)gridDim.x * blockDim.x) {
        int i = p % half;
        size_t row = p / half;
        int pos = row % seq;
        size_t hb = row / seq;
        int hi = hb % h;
        size_t bi = hb / h;
        const T* src = x + bi * s0 + hi * s1 + pos * s2;
        T* dst = out + row * d;
        int ia = interleaved ? 2 * i : i;
        int ib = interleaved ? 2 * i + 1 : i + half;
        float a = to_f(src[ia]), b = to_f(src[ib]);
        float c = to_f(cos_t[pos * half + i]), s = to_f(sin_t[pos * half + i]);
        dst[ia] = from_f<T>(a * c - b * s);
        dst[ib] = from_f<T>(a * s + b * c);
    }
}

#define ROPE_PARAMS(T) const T* x, const T* c, const T* s, T* out, int h, int seq, int d, long long s0, long long s1, long long s2, int interleaved, size_t pairs
WICK_INSTANTIATE(rope, ROPE_PARAMS, (x, c, s, out, h, seq, d, s0, s1, s2, interleaved, pairs))
