//! SwiGLU: `y = silu(g) * u` with `silu(g) = g * sigmoid(g)`.
//! Backward: `du = dy * silu(g)`, `dg = dy * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`; the
//! backward op returns both packed as `[2, ...]` from one pass. The f64 specification every check
//! uses is `crate::reference::swiglu`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::common::{contiguous, contiguous_as, dispatch_float, stacked_shape, storage, Acc};
use crate::{Context, Result};

/// gate, up: [..., intermediate] -> [..., intermediate]. Differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(crate::Error::InvalidRequest(format!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        )));
    }
    let gate = gate.contiguous().context("swiglu gate")?;
    let up = up
        .to_dtype(gate.dtype())
        .and_then(|u| u.contiguous())
        .context("swiglu up")?;
    gate.apply_op2(&up, Swiglu).context("swiglu")
}

/// Forward op: (gate, up) -> y.
pub(crate) struct Swiglu;

/// Backward op: (gate, up, dy) -> [2, ...]: (dgate, dup).
pub(crate) struct SwigluBackward;

const CHUNK: usize = 4096;

#[inline(always)]
fn sigmoid<A: Acc>(g: A) -> A {
    A::one() / (A::one() + (-g).exp())
}

fn swiglu_elems<T: WithDType, A: Acc>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                let g = A::load(*g);
                *o = (g * sigmoid(g) * A::load(*u)).store();
            }
        });
    out
}

fn swiglu_backward_elems<T: WithDType, A: Acc>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let len = g.len();
    let mut out = vec![T::zero(); 2 * len];
    let (dg, du) = out.split_at_mut(len);
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(
            g.par_chunks(CHUNK)
                .zip(u.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))),
        )
        .for_each(|((dg, du), (g, (u, dy)))| {
            for i in 0..g.len() {
                let (gi, ui, d) = (A::load(g[i]), A::load(u[i]), A::load(dy[i]));
                let s = sigmoid(gi);
                dg[i] = (d * ui * s * (A::one() + gi * (A::one() - s))).store();
                du[i] = (d * gi * s).store();
            }
        });
    out
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "wick-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch_float!(s1, "swiglu", |g: T, A| {
            let g = contiguous(g, l1, "swiglu gate")?;
            let u = contiguous_as::<T>(s2, l2, "swiglu up")?;
            storage(swiglu_elems::<T, A>(g, u))
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::gpu::launch::elementwise2(s1, l1, s2, l2, "swiglu")?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let packed = gate.apply_op3_no_bwd(up, &grad, &SwigluBackward)?;
        Ok((Some(packed.get(0)?), Some(packed.get(1)?)))
    }
}

impl CustomOp3 for SwigluBackward {
    fn name(&self) -> &'static str {
        "wick-swiglu-backward"
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
        let out = dispatch_float!(s1, "swiglu backward", |g: T, A| {
            let g = contiguous(g, l1, "swiglu gate")?;
            let u = contiguous_as::<T>(s2, l2, "swiglu up")?;
            let dy = contiguous_as::<T>(s3, l3, "swiglu grad")?;
            storage(swiglu_backward_elems::<T, A>(g, u, dy))
        });
        Ok((out, stacked_shape(2, l1)))
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
        let out = crate::gpu::launch::swiglu_backward(s1, l1, s2, l2, s3, l3)?;
        Ok((out, stacked_shape(2, l1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, finite_difference_check, random_tensor, to_f64_vec};
    use crate::reference::swiglu::{swiglu as reference, swiglu_backward as reference_backward};
    use candle_core::{DType, Device};

    #[test]
    fn forward_and_backward_match_reference() {
        let dev = Device::Cpu;
        for (seed, &n) in [1usize, 3, 17, 33, 127, 4097, 9000].iter().enumerate() {
            let seed = seed as u64;
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let g = random_tensor(&[n], dtype, &dev, seed, 6.0).unwrap();
                let u = random_tensor(&[n], dtype, &dev, seed + 1, 2.0).unwrap();
                let dy = random_tensor(&[n], dtype, &dev, seed + 2, 1.0).unwrap();
                let (gv, uv) = (to_f64_vec(&g).unwrap(), to_f64_vec(&u).unwrap());
                let y = swiglu(&g, &u).unwrap();
                assert_close(
                    &to_f64_vec(&y).unwrap(),
                    &reference(&gv, &uv),
                    dtype,
                    "swiglu fwd",
                );
                let packed = g.apply_op3_no_bwd(&u, &dy, &SwigluBackward).unwrap();
                let (dg, du) = reference_backward(&gv, &uv, &to_f64_vec(&dy).unwrap());
                let got_dg = to_f64_vec(&packed.get(0).unwrap()).unwrap();
                let got_du = to_f64_vec(&packed.get(1).unwrap()).unwrap();
                assert_close(&got_dg, &dg, dtype, "swiglu dgate");
                assert_close(&got_du, &du, dtype, "swiglu dup");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let g = random_tensor(&[3, 17], DType::F64, &Device::Cpu, 1, 4.0).unwrap();
        let u = random_tensor(&[3, 17], DType::F64, &Device::Cpu, 2, 2.0).unwrap();
        finite_difference_check(&[g, u], |t| swiglu(&t[0], &t[1]), 3).unwrap();
    }
}
