//! Decode attention: one query token per sequence against the whole KV cache, GQA-aware.
//! For query head h of kv head `h / (n_heads / n_kv)`:
//! `out_h = sum_t softmax_t(scale * q_h . k_t) v_t`, over every cached position t (the query is the
//! newest token, so no causal mask is needed).
//!
//! On CUDA it runs flash-decoding style (kernels/decode_attention.cu): the sequence is split into
//! chunks, one block per (head, chunk) keeps a running max, sum and weighted value sum, and a second
//! pass merges the chunks. The caches may be views of a larger preallocated buffer (strided in the
//! first three dims, contiguous head dim): `k_cache.narrow(2, 0, len)` costs nothing.
//!
//! For the decoder (src/models/llama.rs): call `decode_attention(&q, &k, &v, 1/sqrt(d))` for
//! single-token steps instead of the matmul-softmax-matmul composition; prefill keeps the general
//! path. There is no backward (inference only).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::common::{contiguous, dispatch_float, same_dtype, storage, Acc};
use crate::{Context, Result};

/// q: [b, n_heads, 1, d], k_cache, v_cache: [b, n_kv, T, d] (n_heads a multiple of n_kv, head dim
/// contiguous) -> [b, n_heads, 1, d] in q's dtype. Accumulation in f32 (f64 for f64).
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, heads, one, d) = q.dims4().context("decode attention q")?;
    let (kb, kv_heads, len, kd) = k_cache.dims4().context("decode attention k")?;
    if one != 1
        || kb != b
        || kd != d
        || kv_heads == 0
        || heads % kv_heads != 0
        || v_cache.dims() != k_cache.dims()
        || len == 0
    {
        return Err(crate::Error::InvalidRequest(format!(
            "decode attention: q {:?}, k {:?}, v {:?} do not fit (one query token, n_heads a multiple of n_kv, T > 0)",
            q.dims(),
            k_cache.dims(),
            v_cache.dims()
        )));
    }
    let q = q.contiguous().context("decode attention q")?;
    let fix = |t: &Tensor| -> Result<Tensor> {
        let t = t
            .to_dtype(q.dtype())
            .context("decode attention cache dtype")?;
        if t.stride()[3] == 1 {
            Ok(t)
        } else {
            t.contiguous().context("decode attention cache")
        }
    };
    let (k, v) = (fix(k_cache)?, fix(v_cache)?);
    q.apply_op3_no_bwd(&k, &v, &DecodeAttention { scale })
        .context("decode attention")
}

/// f64 reference on contiguous q [b, h, d], k, v [b, kv, T, d].
pub fn decode_attention_reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (b, heads, kv_heads, len, d): (usize, usize, usize, usize, usize),
    scale: f64,
) -> Vec<f64> {
    let group = heads / kv_heads;
    let mut out = vec![0.0; b * heads * d];
    for bi in 0..b {
        for h in 0..heads {
            let qh = &q[(bi * heads + h) * d..][..d];
            let base = (bi * kv_heads + h / group) * len * d;
            let scores: Vec<f64> = (0..len)
                .map(|t| scale * (0..d).map(|i| qh[i] * k[base + t * d + i]).sum::<f64>())
                .collect();
            let weights = crate::reference::softmax::softmax(&scores, len);
            let o = &mut out[(bi * heads + h) * d..][..d];
            for (t, p) in weights.iter().enumerate() {
                for i in 0..d {
                    o[i] += p * v[base + t * d + i];
                }
            }
        }
    }
    out
}

/// (q, k_cache, v_cache) -> attention output for one token.
pub(crate) struct DecodeAttention {
    pub(crate) scale: f64,
}

fn decode_rows<T: WithDType, A: Acc>(
    q: &[T],
    ql: &Layout,
    k: &[T],
    kl: &Layout,
    v: &[T],
    vl: &Layout,
    scale: f64,
) -> Vec<T> {
    let (heads, d) = (ql.dims()[1], ql.dims()[3]);
    let (kv_heads, len) = (kl.dims()[1], kl.dims()[2]);
    let group = heads / kv_heads;
    let (ks, vs) = (kl.stride(), vl.stride());
    let mut out = vec![T::zero(); q.len()];
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let (bi, h) = (row / heads, row % heads);
        let kvh = h / group;
        let qh: Vec<A> = q[row * d..][..d]
            .iter()
            .map(|x| A::load(*x) * A::lit(scale))
            .collect();
        let k_at = |t: usize| &k[kl.start_offset() + bi * ks[0] + kvh * ks[1] + t * ks[2]..][..d];
        let v_at = |t: usize| &v[vl.start_offset() + bi * vs[0] + kvh * vs[1] + t * vs[2]..][..d];
        // Online softmax: one pass over the cache, rescaling the running sums when the max grows.
        let mut max = A::neg_infinity();
        let mut sum = A::zero();
        let mut acc = vec![A::zero(); d];
        for t in 0..len {
            let s: A = qh.iter().zip(k_at(t)).map(|(a, b)| *a * A::load(*b)).sum();
            if s > max {
                let c = (max - s).exp();
                sum = sum * c;
                acc.iter_mut().for_each(|a| *a = *a * c);
                max = s;
            }
            let p = (s - max).exp();
            sum += p;
            acc.iter_mut()
                .zip(v_at(t))
                .for_each(|(a, v)| *a += p * A::load(*v));
        }
        o.iter_mut()
            .zip(&acc)
            .for_each(|(o, a)| *o = (*a / sum).store());
    });
    out
}

fn check(ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<()> {
    if kl.dims() != vl.dims() || kl.stride()[3] != 1 || vl.stride()[3] != 1 || !ql.is_contiguous() {
        candle_core::bail!("decode attention: bad layouts q {ql:?} k {kl:?} v {vl:?}");
    }
    Ok(())
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "wick-decode-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        check(l1, l2, l3)?;
        let out = dispatch_float!(s1, "decode attention", |q: T, A| {
            let q = contiguous(q, l1, "q")?;
            let k = same_dtype::<T>(s2, "k cache")?;
            let v = same_dtype::<T>(s3, "v cache")?;
            storage(decode_rows::<T, A>(q, l1, k, l2, v, l3, self.scale))
        });
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        check(l1, l2, l3)?;
        let out = crate::gpu::launch::decode_attention(s1, l1, s2, l2, s3, l3, self.scale as f32)?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, random_tensor, to_f64_vec};
    use candle_core::{DType, Device};

    #[test]
    fn matches_reference_with_gqa_and_cache_views() {
        let dev = Device::Cpu;
        for (seed, &(b, heads, kv, len, d)) in [
            (1, 1, 1, 1, 8),
            (1, 3, 1, 17, 16),
            (2, 9, 3, 33, 64),
            (1, 4, 2, 4097, 64),
        ]
        .iter()
        .enumerate()
        {
            let seed = seed as u64;
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let q = random_tensor(&[b, heads, 1, d], dtype, &dev, seed, 1.0).unwrap();
                // The caches are views of a longer preallocated buffer, as in the KV cache.
                let kfull =
                    random_tensor(&[b, kv, len + 5, d], dtype, &dev, seed + 1, 1.0).unwrap();
                let vfull =
                    random_tensor(&[b, kv, len + 5, d], dtype, &dev, seed + 2, 1.0).unwrap();
                let k = kfull.narrow(2, 0, len).unwrap();
                let v = vfull.narrow(2, 0, len).unwrap();
                let scale = 1.0 / (d as f64).sqrt();
                let y = decode_attention(&q, &k, &v, scale).unwrap();
                let f = |t: &Tensor| to_f64_vec(&t.contiguous().unwrap()).unwrap();
                let want = decode_attention_reference(
                    &f(&q),
                    &f(&k),
                    &f(&v),
                    (b, heads, kv, len, d),
                    scale,
                );
                assert_close(&to_f64_vec(&y).unwrap(), &want, dtype, "decode attention");
            }
        }
    }
}
