//! RMSNorm: `y = x * r * w` with `r = 1 / sqrt(mean(x^2) + eps)` per row, optionally after a fused
//! residual add (`s = x + residual; y = rms_norm(s)`, both returned).
//!
//! Backward, per row of n elements, with `g = dy * w`:
//! `dx_j = r * (g_j - x_j * r^2 * sum_i(g_i x_i) / n)` and `dw_j = sum_rows(dy_j * x_j * r)`.
//! The backward op returns dx and dw packed in one flat tensor `[rows * n + n]` so one pass (one
//! kernel on CUDA) produces both. Statistics in f32 (f64 for f64 inputs). The f64 specification
//! every check uses is `crate::reference::rms_norm`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::common::{
    contiguous, contiguous_as, dispatch_float, rows_per_task, stacked_shape, storage, Acc,
};
use crate::{Context, Result};

/// x: [..., hidden], weight: [hidden] -> [..., hidden]. Differentiable in x and weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous().context("rms_norm input")?;
    let weight = weight
        .to_dtype(x.dtype())
        .context("rms_norm weight dtype")?;
    x.apply_op2(&weight, RmsNorm { eps }).context("rms_norm")
}

/// Returns (rms_norm(x + residual), x + residual): the sum is the next residual stream.
/// x, residual: [..., hidden], weight: [hidden]. One pass over the rows.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous().context("add_rms_norm input")?;
    let residual = residual
        .to_dtype(x.dtype())
        .and_then(|r| r.contiguous())
        .context("add_rms_norm residual")?;
    let weight = weight.to_dtype(x.dtype()).context("add_rms_norm weight")?;
    let packed = x
        .apply_op3(&residual, &weight, AddRmsNorm { eps })
        .context("add_rms_norm")?;
    Ok((packed.get(0)?, packed.get(1)?))
}

/// Forward op: (x, w) -> y.
pub(crate) struct RmsNorm {
    pub(crate) eps: f64,
}

/// Fused residual add + norm: (x, residual, w) -> [2, ...]: (y, x + residual).
pub(crate) struct AddRmsNorm {
    pub(crate) eps: f64,
}

/// Backward op: (x, w, dy) -> [rows * n + n]: dx then dw.
pub(crate) struct RmsNormBackward {
    pub(crate) eps: f64,
}

fn norm_row<T: WithDType, A: Acc>(x: &[A], w: &[T], eps: A, out: &mut [T]) {
    let n = A::lit(x.len() as f64);
    let ms = x.iter().map(|v| *v * *v).sum::<A>() / n;
    let r = A::one() / (ms + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = (*v * r * A::load(*w)).store();
    }
}

fn rms_norm_rows<T: WithDType, A: Acc>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let rows = rows_per_task(n);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n * rows)
        .zip(x.par_chunks(n * rows))
        .for_each(|(out, x)| {
            let mut buf = vec![A::zero(); n];
            for (out, x) in out.chunks_mut(n).zip(x.chunks(n)) {
                buf.iter_mut().zip(x).for_each(|(b, v)| *b = A::load(*v));
                norm_row(&buf, w, A::lit(eps), out);
            }
        });
    out
}

fn add_rms_norm_rows<T: WithDType, A: Acc>(x: &[T], res: &[T], w: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let len = x.len();
    let rows = rows_per_task(n);
    let mut out = vec![T::zero(); 2 * len];
    let (normed, sum) = out.split_at_mut(len);
    normed
        .par_chunks_mut(n * rows)
        .zip(sum.par_chunks_mut(n * rows))
        .zip(x.par_chunks(n * rows).zip(res.par_chunks(n * rows)))
        .for_each(|((normed, sum), (x, res))| {
            let mut buf = vec![A::zero(); n];
            for (((normed, sum), x), res) in normed
                .chunks_mut(n)
                .zip(sum.chunks_mut(n))
                .zip(x.chunks(n))
                .zip(res.chunks(n))
            {
                for (((b, s), x), r) in buf.iter_mut().zip(sum.iter_mut()).zip(x).zip(res) {
                    // The sum is rounded to T first: the residual stream is stored in T, and the
                    // norm must see the same values the next layer will.
                    *s = (A::load(*x) + A::load(*r)).store();
                    *b = A::load(*s);
                }
                norm_row(&buf, w, A::lit(eps), normed);
            }
        });
    out
}

fn rms_norm_backward_rows<T: WithDType, A: Acc>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let rows = rows_per_task(n).max(8);
    let mut out = vec![T::zero(); x.len() + n];
    let (dx, dw_out) = out.split_at_mut(x.len());
    let nn = A::lit(n as f64);
    let dw = dx
        .par_chunks_mut(n * rows)
        .zip(x.par_chunks(n * rows).zip(dy.par_chunks(n * rows)))
        .map(|(dx, (x, dy))| {
            let mut dw = vec![A::zero(); n];
            for ((dx, x), dy) in dx.chunks_mut(n).zip(x.chunks(n)).zip(dy.chunks(n)) {
                let ms = x.iter().map(|v| A::load(*v) * A::load(*v)).sum::<A>() / nn;
                let r = A::one() / (ms + A::lit(eps)).sqrt();
                let dot: A = (0..n)
                    .map(|i| A::load(dy[i]) * A::load(w[i]) * A::load(x[i]))
                    .sum();
                let c = r * r * dot / nn;
                for i in 0..n {
                    let (xi, dyi) = (A::load(x[i]), A::load(dy[i]));
                    dx[i] = (r * (dyi * A::load(w[i]) - xi * c)).store();
                    dw[i] += dyi * xi * r;
                }
            }
            dw
        })
        .reduce(
            || vec![A::zero(); n],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    dw_out.iter_mut().zip(dw).for_each(|(o, v)| *o = v.store());
    out
}

fn check_width(l: &Layout, wl: &Layout) -> candle_core::Result<usize> {
    let n = wl.shape().elem_count();
    if l.dims().last() != Some(&n) {
        candle_core::bail!(
            "rms_norm: weight has {n} elements, input shape is {:?}",
            l.dims()
        );
    }
    Ok(n)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "wick-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        check_width(l1, l2)?;
        let out = dispatch_float!(s1, "rms_norm", |x: T, A| {
            let x = contiguous(x, l1, "rms_norm input")?;
            let w = contiguous_as::<T>(s2, l2, "rms_norm weight")?;
            storage(rms_norm_rows::<T, A>(x, w, self.eps))
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
        check_width(l1, l2)?;
        let out = crate::gpu::launch::rms_norm(s1, l1, None, s2, l2, self.eps as f32)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, w, grad, self.eps)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (dx, dw) through the fused backward op.
fn backward(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let grad = grad.contiguous()?;
    let x = x.contiguous()?;
    let packed = x.apply_op3_no_bwd(w, &grad, &RmsNormBackward { eps })?;
    let len = x.elem_count();
    let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
    let dw = packed.narrow(0, len, w.elem_count())?.reshape(w.shape())?;
    Ok((dx, dw))
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "wick-add-rms-norm"
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
        check_width(l1, l3)?;
        let out = dispatch_float!(s1, "add_rms_norm", |x: T, A| {
            let x = contiguous(x, l1, "add_rms_norm input")?;
            let r = contiguous_as::<T>(s2, l2, "residual")?;
            let w = contiguous_as::<T>(s3, l3, "rms_norm weight")?;
            storage(add_rms_norm_rows::<T, A>(x, r, w, self.eps))
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
        check_width(l1, l3)?;
        let out = crate::gpu::launch::rms_norm(s1, l1, Some((s2, l2)), s3, l3, self.eps as f32)?;
        Ok((out, stacked_shape(2, l1)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _residual: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let sum = res.get(1)?;
        let (dsum, dw) = backward(&sum, w, &grad.get(0)?, self.eps)?;
        let dsum = (dsum + grad.get(1)?)?;
        Ok((Some(dsum.clone()), Some(dsum), Some(dw)))
    }
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "wick-rms-norm-backward"
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
        let n = check_width(l1, l2)?;
        let out = dispatch_float!(s1, "rms_norm backward", |x: T, A| {
            let x = contiguous(x, l1, "rms_norm input")?;
            let w = contiguous_as::<T>(s2, l2, "rms_norm weight")?;
            let dy = contiguous_as::<T>(s3, l3, "rms_norm grad")?;
            storage(rms_norm_backward_rows::<T, A>(x, w, dy, self.eps))
        });
        Ok((out, Shape::from(l1.shape().elem_count() + n)))
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
        let n = check_width(l1, l2)?;
        let out = crate::gpu::launch::rms_norm_backward(s1, l1, s2, l2, s3, l3, self.eps as f32)?;
        Ok((out, Shape::from(l1.shape().elem_count() + n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, finite_difference_check, random_tensor, to_f64_vec};
    use crate::reference::rms_norm::{
        rms_norm as reference, rms_norm_backward as reference_backward,
    };
    use candle_core::{DType, Device};

    const EPS: f64 = 1e-5;

    #[test]
    fn forward_and_fused_add_match_reference() {
        let dev = Device::Cpu;
        for (seed, &(rows, n)) in [(1, 1), (3, 17), (2, 33), (5, 127), (2, 4097)]
            .iter()
            .enumerate()
        {
            let seed = seed as u64;
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let x = random_tensor(&[rows, n], dtype, &dev, seed, 2.0).unwrap();
                let r = random_tensor(&[rows, n], dtype, &dev, seed + 50, 2.0).unwrap();
                let w = random_tensor(&[n], dtype, &dev, seed + 100, 1.5).unwrap();
                let wv = to_f64_vec(&w).unwrap();
                let y = rms_norm(&x, &w, EPS).unwrap();
                let want = reference(&to_f64_vec(&x).unwrap(), &wv, EPS).0;
                assert_close(&to_f64_vec(&y).unwrap(), &want, dtype, "rms_norm fwd");

                let (normed, sum) = add_rms_norm(&x, &r, &w, EPS).unwrap();
                let want_sum = (&x + &r).unwrap();
                assert_close(
                    &to_f64_vec(&sum).unwrap(),
                    &to_f64_vec(&want_sum).unwrap(),
                    dtype,
                    "residual sum",
                );
                let want = reference(&to_f64_vec(&want_sum).unwrap(), &wv, EPS).0;
                assert_close(
                    &to_f64_vec(&normed).unwrap(),
                    &want,
                    dtype,
                    "add_rms_norm fwd",
                );
            }
        }
    }

    #[test]
    fn backward_matches_reference_and_finite_differences() {
        let dev = Device::Cpu;
        for (seed, &(rows, n)) in [(1, 3), (3, 17), (2, 33)].iter().enumerate() {
            let seed = seed as u64;
            let x = random_tensor(&[rows, n], DType::F64, &dev, seed, 2.0).unwrap();
            let r = random_tensor(&[rows, n], DType::F64, &dev, seed + 7, 2.0).unwrap();
            let w = random_tensor(&[n], DType::F64, &dev, seed + 1, 1.5).unwrap();
            finite_difference_check(&[x.clone(), w.clone()], |t| rms_norm(&t[0], &t[1], EPS), 3)
                .unwrap();
            finite_difference_check(
                &[x, r, w],
                |t| {
                    let (a, b) = add_rms_norm(&t[0], &t[1], &t[2], EPS)?;
                    // Both outputs feed the loss, as in a decoder layer.
                    Ok(((a * 0.7)? + (b * 1.3)?)?)
                },
                4,
            )
            .unwrap();
        }
        for dtype in [DType::F32, DType::BF16] {
            let x = random_tensor(&[7, 127], dtype, &dev, 8, 2.0).unwrap();
            let w = random_tensor(&[127], dtype, &dev, 9, 1.5).unwrap();
            let dy = random_tensor(&[7, 127], dtype, &dev, 10, 1.0).unwrap();
            let (dx, dw) = backward(&x, &w, &dy, EPS).unwrap();
            let (xv, wv) = (to_f64_vec(&x).unwrap(), to_f64_vec(&w).unwrap());
            let rstd = reference(&xv, &wv, EPS).1;
            let (want_dx, want_dw) = reference_backward(&xv, &wv, &rstd, &to_f64_vec(&dy).unwrap());
            assert_close(&to_f64_vec(&dx).unwrap(), &want_dx, dtype, "rms_norm dx");
            assert_close(&to_f64_vec(&dw).unwrap(), &want_dw, dtype, "rms_norm dw");
        }
    }
}
