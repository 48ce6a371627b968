//! Ops with a frozen operand, differentiable in their input only:
//!
//! ```text
//! frozen_linear: y = x W^T (+ b),  W: [out, in], b: [out] frozen   ->  dx = dy W
//! add_frozen:    y = x + c,        c frozen, broadcast to x's shape ->  dx = dy
//! ```
//!
//! Why not Candle's `matmul` / `broadcast_add`: their backward computes the gradient of *both*
//! operands, whether or not anything trainable sits behind them, and leaves it in the `GradStore`
//! until the store is dropped. For LoRA training that is a dW per frozen weight that nobody reads:
//! the tied 49152 x 576 LM head of SmolLM2 costs a [batch, 576, 49152] gradient (453 MiB in f32 at
//! batch 4) plus its zero-initialised accumulator and the batch reduction, and the causal mask costs
//! one [batch, heads, t, t] gradient per layer. These ops compute the same forward (Candle's own
//! matmul and add on the storage, so the numbers are the same) and return no gradient for the frozen
//! operand.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use crate::{Context, Result};

/// x: [..., in] -> [..., out] = x W^T (+ bias), with weight: [out, in] and bias: [out] frozen (never
/// given a gradient). Same dtype for all three.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2().context("frozen linear weight")?;
    let dims = x.dims();
    if dims.last() != Some(&in_features) || bias.is_some_and(|b| b.dims() != [out_features]) {
        return Err(crate::Error::InvalidRequest(format!(
            "frozen linear: x {dims:?}, weight {:?}, bias {:?} do not fit",
            weight.dims(),
            bias.map(|b| b.dims().to_vec())
        )));
    }
    let tokens = x.elem_count() / in_features.max(1);
    let x2 = x
        .reshape((tokens, in_features))
        .and_then(|t| t.contiguous())
        .context("frozen linear input")?;
    let op = FrozenLinear {
        weight: weight.detach(),
        bias: bias.map(Tensor::detach),
    };
    let y = x2.apply_op1(op).context("frozen linear")?;
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_features;
    }
    y.reshape(out_dims).context("frozen linear output")
}

/// x + c, with c: any shape that broadcasts to x's (e.g. an additive mask [t, len] onto scores
/// [batch, heads, t, len]) and never given a gradient. Same dtype for both.
pub fn add_frozen(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    c.broadcast_as(x.shape()).context(format!(
        "add_frozen: {:?} does not broadcast to {:?}",
        c.dims(),
        x.dims()
    ))?;
    x.apply_op1(AddFrozen { c: c.detach() })
        .context("add_frozen")
}

/// x [t, in] -> x W^T + bias [t, out].
struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// The product on one backend's storage: Candle's matmul (the weight read transposed, no copy) and
/// Candle's broadcast add for the bias.
fn linear_storage<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    w: &S,
    wl: &Layout,
    bias: Option<(&S, &Layout)>,
) -> candle_core::Result<(S, Shape)> {
    let (tokens, in_features) = xl.shape().dims2()?;
    let (out, _) = wl.shape().dims2()?;
    let y = x.matmul(w, (1, tokens, out, in_features), xl, &wl.transpose(0, 1)?)?;
    let shape = Shape::from((tokens, out));
    let y = match bias {
        Some((b, bl)) => {
            let yl = Layout::contiguous(shape.clone());
            y.binary_impl::<candle_core::op::Add>(b, &yl, &bl.broadcast_as(shape.clone())?)?
        }
        None => y,
    };
    Ok((y, shape))
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "wick-frozen-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.weight.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("frozen linear: weight is not on the CPU");
        };
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            Some((s, l)) => match &**s {
                Storage::Cpu(s) => Some((s, *l)),
                _ => candle_core::bail!("frozen linear: bias is not on the CPU"),
            },
            None => None,
        };
        linear_storage(xs, xl, ws, wl, bias)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (ws, wl) = self.weight.storage_and_layout();
        let Storage::Cuda(ws) = &*ws else {
            candle_core::bail!("frozen linear: weight is not on the GPU");
        };
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            Some((s, l)) => match &**s {
                Storage::Cuda(s) => Some((s, *l)),
                _ => candle_core::bail!("frozen linear: bias is not on the GPU"),
            },
            None => None,
        };
        linear_storage(xs, xl, ws, wl, bias)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = dy W: [t, out] x [out, in]. W carries no graph, so neither does dx.
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// x -> x + c (c broadcast to x's shape).
struct AddFrozen {
    c: Tensor,
}

fn add_storage<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    c: &S,
    cl: &Layout,
) -> candle_core::Result<(S, Shape)> {
    let y = x.binary_impl::<candle_core::op::Add>(c, xl, &cl.broadcast_as(xl.shape().clone())?)?;
    Ok((y, xl.shape().clone()))
}

impl CustomOp1 for AddFrozen {
    fn name(&self) -> &'static str {
        "wick-add-frozen"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (cs, cl) = self.c.storage_and_layout();
        let Storage::Cpu(cs) = &*cs else {
            candle_core::bail!("add_frozen: constant is not on the CPU");
        };
        add_storage(xs, xl, cs, cl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (cs, cl) = self.c.storage_and_layout();
        let Storage::Cuda(cs) = &*cs else {
            candle_core::bail!("add_frozen: constant is not on the GPU");
        };
        add_storage(xs, xl, cs, cl)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, finite_difference_check, random_tensor, to_f64_vec};
    use candle_core::{DType, Device, Var};

    /// Forward against an f64 reference, gradient of x against finite differences, and no gradient
    /// at all for the frozen weight, bias and constant.
    #[test]
    fn frozen_linear_matches_reference_and_gives_no_weight_gradient() {
        let dev = Device::Cpu;
        for (seed, &(t, inf, out)) in [(1, 3, 5), (7, 17, 33), (64, 40, 9)].iter().enumerate() {
            let seed = 20 * seed as u64;
            let x = random_tensor(&[2, t, inf], DType::F64, &dev, seed, 1.0).unwrap();
            let w = random_tensor(&[out, inf], DType::F64, &dev, seed + 1, 0.5).unwrap();
            let bias = random_tensor(&[out], DType::F64, &dev, seed + 2, 0.5).unwrap();
            let y = frozen_linear(&x, &w, Some(&bias)).unwrap();
            let (xv, wv, bv) = (
                to_f64_vec(&x).unwrap(),
                to_f64_vec(&w).unwrap(),
                to_f64_vec(&bias).unwrap(),
            );
            let want: Vec<f64> = xv
                .chunks(inf)
                .flat_map(|row| {
                    (0..out)
                        .map(|o| bv[o] + (0..inf).map(|i| row[i] * wv[o * inf + i]).sum::<f64>())
                })
                .collect();
            assert_eq!(y.dims(), [2, t, out]);
            assert_close(&to_f64_vec(&y).unwrap(), &want, DType::F64, "frozen linear");
            finite_difference_check(
                std::slice::from_ref(&x),
                |v| frozen_linear(&v[0], &w, Some(&bias)),
                seed + 3,
            )
            .unwrap();
            // Even a weight that is a variable gets no gradient: it is frozen by construction.
            let wvar = Var::from_tensor(&w).unwrap();
            let xvar = Var::from_tensor(&x).unwrap();
            let y = frozen_linear(xvar.as_tensor(), wvar.as_tensor(), None).unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert!(grads.get(wvar.as_tensor()).is_none());
            assert!(grads.get(xvar.as_tensor()).is_some());
        }
    }

    #[test]
    fn add_frozen_matches_broadcast_add_and_passes_the_gradient() {
        let dev = Device::Cpu;
        let x = random_tensor(&[2, 3, 4, 5], DType::F64, &dev, 5, 1.0).unwrap();
        let c = random_tensor(&[4, 5], DType::F64, &dev, 6, 1.0).unwrap();
        let y = add_frozen(&x, &c).unwrap();
        let want = x.broadcast_add(&c).unwrap();
        assert_close(
            &to_f64_vec(&y).unwrap(),
            &to_f64_vec(&want).unwrap(),
            DType::F64,
            "add_frozen",
        );
        finite_difference_check(std::slice::from_ref(&x), |v| add_frozen(&v[0], &c), 7).unwrap();
        let cvar = Var::from_tensor(&c).unwrap();
        let xvar = Var::from_tensor(&x).unwrap();
        let grads = add_frozen(xvar.as_tensor(), cvar.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(cvar.as_tensor()).is_none());
        assert!(add_frozen(
            &x,
            &random_tensor(&[3, 5], DType::F64, &dev, 8, 1.0).unwrap()
        )
        .is_err());
    }
}
