//! Fused LoRA linear: `y = x W^T (+ b) + s * (drop(x) A^T) B^T`, with x: [t, in], W: [out, in]
//! frozen, A: [r, in], B: [out, r].
//!
//! One custom op computes the whole layer when the base weight is dense and no dropout runs
//! (inference, or training with dropout 0): on CUDA one kernel for few tokens (the rank-r projection
//! and the base product in the same pass), cuBLAS plus one fused low-rank kernel for many; on the CPU
//! the base and rank-r products through Candle's gemm and the low-rank update fused into the output
//! rows. Quantized bases (QMatMul) and dropout keep their own base product; the same op without W
//! adds the low-rank term on top.
//!
//! Backward (W frozen, no dW), with g = dy: `u = g B` [t, r], `dx = g W + s u A`,
//! `dA = s u^T x`, `dB = s g^T (x A^T)`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::common::{contiguous_as, dispatch_float, same_dtype, Acc};
use crate::models::linear::{BaseWeight, Linear};
use crate::{Context, Result};

/// x: [..., in] -> [..., out] through the base weight and the active adapter, if any.
pub fn forward(layer: &Linear, x: &Tensor, train: bool) -> Result<Tensor> {
    let Some(lora) = &layer.lora else {
        return base_forward(layer, x);
    };
    if let Some(dora) = &lora.dora {
        return super::dora::forward(layer, lora, dora, x, train);
    }
    let dropout = train && lora.dropout > 0.0;
    let dtype = x.dtype();
    let same_dtype = lora.a.dtype() == dtype && lora.b.dtype() == dtype;
    if let (BaseWeight::Dense(w), false, true) = (layer.weight(), dropout, same_dtype) {
        if w.dtype() == dtype {
            let bias = layer
                .bias()
                .map(|b| b.to_dtype(dtype))
                .transpose()
                .context("lora bias dtype")?;
            return lora_linear(x, Some(w), bias.as_ref(), &lora.a, &lora.b, lora.scale);
        }
    }
    let y = base_forward(layer, x)?;
    let x_in = if dropout {
        candle_nn::ops::dropout(x, lora.dropout).context("lora dropout")?
    } else {
        x.clone()
    };
    let x_in = x_in.to_dtype(lora.a.dtype()).context("lora input dtype")?;
    let delta = lora_linear(&x_in, None, None, &lora.a, &lora.b, lora.scale)?;
    let delta = delta.to_dtype(y.dtype()).context("lora output dtype")?;
    (y + delta).context("adding lora update")
}

/// The frozen product `x W^T + b`. Inside a training graph (x carries one) a dense base goes through
/// `ops::frozen::frozen_linear`, whose backward gives dx and no dW: Candle's matmul backward would
/// compute and keep the gradient of every frozen weight (the LM head's alone is [batch, in, vocab]).
pub(crate) fn base_forward(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    match layer.weight() {
        BaseWeight::Dense(w) if x.track_op() && w.dtype() == x.dtype() => {
            let bias = layer
                .bias()
                .map(|b| b.to_dtype(x.dtype()))
                .transpose()
                .context("linear bias dtype")?;
            super::frozen::frozen_linear(x, w, bias.as_ref())
        }
        _ => layer.base_forward(x),
    }
}

/// The op itself: x: [..., in], weight: [out, in] (frozen, optional), bias: [out], a: [r, in],
/// b: [out, r] -> `x W^T + bias + scale (x A^T) B^T`, or the low-rank term alone without a weight.
/// All tensors in one dtype. Differentiable in x, a and b.
pub fn lora_linear(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    let in_features = *dims.last().unwrap_or(&0);
    let (rank, a_in) = a.dims2().context("lora a")?;
    let (out_features, b_rank) = b.dims2().context("lora b")?;
    let weight_ok = weight.is_none_or(|w| w.dims() == [out_features, in_features]);
    if a_in != in_features || b_rank != rank || !weight_ok {
        return Err(crate::Error::InvalidRequest(format!(
            "lora linear: x {dims:?}, weight {:?}, a {:?}, b {:?} do not fit",
            weight.map(|w| w.dims().to_vec()),
            a.dims(),
            b.dims()
        )));
    }
    let tokens = x.elem_count() / in_features.max(1);
    // Decode calls this per layer per token: skip the reshape when x is already [t, in].
    let x2 = if dims.len() == 2 {
        x.contiguous()
    } else {
        x.reshape((tokens, in_features))
            .and_then(|t| t.contiguous())
    }
    .context("lora input")?;
    let op = LoraLinear {
        weight: weight.cloned(),
        bias: bias.cloned(),
        scale,
    };
    let y = x2
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
        .context("lora linear")?;
    if dims.len() == 2 {
        return Ok(y);
    }
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_features;
    }
    y.reshape(out_dims).context("lora output")
}

/// f64 reference: x [t, in], w [out, in] (or empty), bias [out] (or empty), a [r, in], b [out, r].
#[allow(clippy::too_many_arguments)]
pub fn lora_linear_reference(
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    a: &[f64],
    b: &[f64],
    scale: f64,
    in_features: usize,
    rank: usize,
) -> Vec<f64> {
    let out_features = b.len() / rank.max(1);
    let mut y = Vec::with_capacity(x.len() / in_features * out_features);
    for xr in x.chunks(in_features) {
        let low: Vec<f64> = a
            .chunks(in_features)
            .map(|ar| ar.iter().zip(xr).map(|(p, q)| p * q).sum())
            .collect();
        for o in 0..out_features {
            let mut v = if w.is_empty() {
                0.0
            } else {
                (0..in_features)
                    .map(|i| xr[i] * w[o * in_features + i])
                    .sum()
            };
            if !bias.is_empty() {
                v += bias[o];
            }
            v += scale * (0..rank).map(|k| low[k] * b[o * rank + k]).sum::<f64>();
            y.push(v);
        }
    }
    y
}

/// (x [t, in], a [r, in], b [out, r]) -> y [t, out], with the frozen base held by the op.
pub(crate) struct LoraLinear {
    pub(crate) weight: Option<Tensor>,
    pub(crate) bias: Option<Tensor>,
    pub(crate) scale: f64,
}

/// `y[t, o] += bias[o] + scale * sum_k low[t, k] b[o, k]`, row by row in parallel: the low-rank
/// update fused into the rows of the base product (one read and one write of y).
fn add_low_rank<T: WithDType, A: Acc>(
    y: &mut [T],
    low: &[T],
    b: &[T],
    bias: Option<&[T]>,
    scale: f64,
    rank: usize,
) {
    let out = b.len() / rank.max(1);
    let scale = A::lit(scale);
    y.par_chunks_mut(out)
        .zip(low.par_chunks(rank))
        .for_each(|(y, low)| {
            let low: Vec<A> = low.iter().map(|v| A::load(*v) * scale).collect();
            for (o, (y, br)) in y.iter_mut().zip(b.chunks(rank)).enumerate() {
                let mut v = A::load(*y);
                if let Some(bias) = bias {
                    v += A::load(bias[o]);
                }
                for (l, bv) in low.iter().zip(br) {
                    v += *l * A::load(*bv);
                }
                *y = v.store();
            }
        });
}

/// The layout of the transpose of a 2-D tensor's layout.
fn transposed(l: &Layout) -> candle_core::Result<Layout> {
    l.transpose(0, 1)
}

impl LoraLinear {
    fn cpu_base(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        tokens: usize,
        out: usize,
    ) -> candle_core::Result<Option<CpuStorage>> {
        let Some(w) = &self.weight else {
            return Ok(None);
        };
        let (ws, wl) = w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("lora linear: base weight is not on the CPU");
        };
        let in_features = xl.dims()[1];
        Ok(Some(x.matmul(
            ws,
            (1, tokens, out, in_features),
            xl,
            &transposed(wl)?,
        )?))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "wick-lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, in_features) = xl.shape().dims2()?;
        let (rank, _) = al.shape().dims2()?;
        let (out, _) = bl.shape().dims2()?;
        // low = x A^T: [t, r] through gemm.
        let low = xs.matmul(as_, (1, tokens, rank, in_features), xl, &transposed(al)?)?;
        let base = self.cpu_base(xs, xl, tokens, out)?;
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let y = dispatch_float!(&low, "lora linear", |low: T, A| {
            let b = same_dtype::<T>(bs, "lora b")?;
            let b = super::common::contiguous(b, bl, "lora b")?;
            let bias = match &bias_guard {
                Some((s, l)) => match &**s {
                    Storage::Cpu(s) => Some(contiguous_as::<T>(s, l, "lora bias")?),
                    _ => candle_core::bail!("lora linear: bias is not on the CPU"),
                },
                None => None,
            };
            let mut y = match &base {
                Some(base) => same_dtype::<T>(base, "lora base")?.to_vec(),
                None => vec![<T as WithDType>::from_f64(0.0); tokens * out],
            };
            add_low_rank::<T, A>(&mut y, low, b, bias, self.scale, rank);
            super::common::storage(y)
        });
        Ok((y, Shape::from((tokens, out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        as_: &candle_core::CudaStorage,
        al: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (tokens, _) = xl.shape().dims2()?;
        let (out, _) = bl.shape().dims2()?;
        let y = crate::gpu::launch::lora_linear(
            xs,
            xl,
            as_,
            al,
            bs,
            bl,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.scale as f32,
        )?;
        Ok((y, Shape::from((tokens, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = self.scale;
        // dx only where something upstream wants it (not for the first layer's embedding input).
        let want_dx = x.track_op();
        // Detached: the gradients must not carry a graph back into the forward pass (a var's
        // gradient that did would keep the whole step's activations alive as long as it lives).
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let u = grad.matmul(&b)?; // [t, r]
        let dx = if want_dx {
            let mut dx = (u.matmul(&a)? * s)?;
            if let Some(w) = &self.weight {
                dx = (dx + grad.matmul(w)?)?;
            }
            Some(dx)
        } else {
            None
        };
        let da = (u.t()?.matmul(&x)? * s)?;
        let low = x.matmul(&a.t()?)?;
        let db = (grad.t()?.matmul(&low)? * s)?;
        Ok((dx, Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::weights::Weight;
    use crate::models::linear::LoraWeights;
    use crate::ops::check::{assert_close, finite_difference_check, random_tensor, to_f64_vec};
    use candle_core::{DType, Device};

    #[test]
    fn fused_and_low_rank_paths_match_reference() {
        let dev = Device::Cpu;
        let cases = [
            (1, 3, 5, 1),
            (3, 17, 33, 4),
            (17, 33, 127, 8),
            (127, 64, 17, 16),
        ];
        for (seed, &(t, inf, out, r)) in cases.iter().enumerate() {
            let seed = 10 * seed as u64;
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let x = random_tensor(&[t, inf], dtype, &dev, seed, 1.0).unwrap();
                let w = random_tensor(&[out, inf], dtype, &dev, seed + 1, 0.5).unwrap();
                let bias = random_tensor(&[out], dtype, &dev, seed + 2, 0.5).unwrap();
                let a = random_tensor(&[r, inf], dtype, &dev, seed + 3, 0.5).unwrap();
                let b = random_tensor(&[out, r], dtype, &dev, seed + 4, 0.5).unwrap();
                let v = |t: &Tensor| to_f64_vec(t).unwrap();
                let y = lora_linear(&x, Some(&w), Some(&bias), &a, &b, 2.0).unwrap();
                let want =
                    lora_linear_reference(&v(&x), &v(&w), &v(&bias), &v(&a), &v(&b), 2.0, inf, r);
                assert_close(&v(&y), &want, dtype, "lora linear fused");
                let d = lora_linear(&x, None, None, &a, &b, 0.5).unwrap();
                let want = lora_linear_reference(&v(&x), &[], &[], &v(&a), &v(&b), 0.5, inf, r);
                assert_close(&v(&d), &want, dtype, "lora low-rank term");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let dev = Device::Cpu;
        let x = random_tensor(&[2, 3, 17], DType::F64, &dev, 1, 1.0).unwrap();
        let w = random_tensor(&[33, 17], DType::F64, &dev, 2, 0.5).unwrap();
        let bias = random_tensor(&[33], DType::F64, &dev, 3, 0.5).unwrap();
        let a = random_tensor(&[4, 17], DType::F64, &dev, 4, 0.5).unwrap();
        let b = random_tensor(&[33, 4], DType::F64, &dev, 5, 0.5).unwrap();
        finite_difference_check(
            &[x.clone(), a.clone(), b.clone()],
            |t| lora_linear(&t[0], Some(&w), Some(&bias), &t[1], &t[2], 1.5),
            6,
        )
        .unwrap();
        finite_difference_check(
            &[x, a, b],
            |t| lora_linear(&t[0], None, None, &t[1], &t[2], 0.7),
            7,
        )
        .unwrap();
    }

    #[test]
    fn linear_layer_uses_the_adapter() {
        let dev = Device::Cpu;
        let w = random_tensor(&[9, 5], DType::F32, &dev, 1, 0.5).unwrap();
        let mut layer = Linear::new(Weight::Dense(w.clone()), None).unwrap();
        let a = random_tensor(&[2, 5], DType::F32, &dev, 2, 0.5).unwrap();
        let b = random_tensor(&[9, 2], DType::F32, &dev, 3, 0.5).unwrap();
        layer.lora = Some(LoraWeights {
            dora: None,
            a: a.clone(),
            b: b.clone(),
            scale: 4.0,
            dropout: 0.0,
        });
        let x = random_tensor(&[2, 3, 5], DType::F32, &dev, 4, 1.0).unwrap();
        let y = layer.forward(&x).unwrap();
        assert_eq!(y.dims(), [2, 3, 9]);
        let v = |t: &Tensor| to_f64_vec(t).unwrap();
        let want = lora_linear_reference(&v(&x), &v(&w), &[], &v(&a), &v(&b), 4.0, 5, 2);
        assert_close(&v(&y), &want, DType::F32, "Linear with adapter");
        // Dropout path (train) keeps the base product apart; with p > 0 it must differ from eval.
        layer.lora.as_mut().unwrap().dropout = 0.5;
        let yt = layer.forward_t(&x, true).unwrap();
        assert_eq!(yt.dims(), [2, 3, 9]);
    }
}
