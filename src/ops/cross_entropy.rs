//! Causal-LM cross-entropy with an ignore index: with `c` the number of counted rows (label >= 0),
//! `loss = sum_i (logsumexp(x_i) - x_i[label_i]) / c` and its gradient
//! `dx_i = (softmax(x_i) - onehot(label_i)) / c` (zero rows for ignored labels).
//!
//! One pass over the logits computes both the per-row losses (f32) and the gradient in the logits'
//! dtype, so no f32 copy of the full logits is ever made (152k-entry vocabularies times thousands of
//! rows would be gigabytes). The loss is returned through a small custom op whose backward scales
//! the saved gradient by the incoming one. Without a graph to backpropagate into (evaluation), the
//! gradient is not computed. The f64 specification every check uses is
//! `crate::reference::cross_entropy`.

use std::sync::Mutex;

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::common::{contiguous, dispatch_float, Acc};
use crate::{Context, Result};

/// Label value whose positions do not count (PyTorch's and PEFT's -100).
pub const IGNORE_INDEX: i64 = -100;

/// logits: [n, vocab] (any float dtype), labels: [n] i64 with `IGNORE_INDEX` for skipped positions.
/// Returns the mean loss over counted positions as an f32 scalar (0 if none count); f64 logits give
/// an f64 loss (for the finite-difference checks).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2().context("cross-entropy logits")?;
    if labels.dims() != [rows] {
        return Err(crate::Error::InvalidRequest(format!(
            "cross-entropy: labels {:?} do not match logits [{rows}, {vocab}]",
            labels.dims()
        )));
    }
    let want_grad = logits.track_op();
    let logits = logits.contiguous().context("cross-entropy logits")?;
    let labels = labels
        .to_dtype(DType::I64)
        .and_then(|l| l.contiguous())
        .context("cross-entropy labels")?;
    let op = CrossEntropyFused {
        want_grad,
        grad: Mutex::new(None),
    };
    let row_losses = logits
        .detach()
        .apply_op2_no_bwd(&labels, &op)
        .context("cross-entropy")?;
    let loss = row_losses.sum_all().context("cross-entropy sum")?;
    if !want_grad {
        return Ok(loss);
    }
    let grad_storage = op
        .grad
        .lock()
        .map_err(|_| crate::Error::InvalidRequest("cross-entropy: poisoned gradient slot".into()))?
        .take()
        .ok_or_else(|| crate::Error::InvalidRequest("cross-entropy: no gradient saved".into()))?;
    let grad = Tensor::from_storage(grad_storage, (rows, vocab), BackpropOp::none(), false);
    logits
        .apply_op1(SavedGradLoss { loss, grad })
        .context("cross-entropy loss node")
}

/// (logits [n, V], labels [n] i64) -> per-row losses f32 [n], already divided by the count; the
/// gradient [n, V] in the logits' dtype is left in `grad` when `want_grad`.
pub(crate) struct CrossEntropyFused {
    pub(crate) want_grad: bool,
    pub(crate) grad: Mutex<Option<Storage>>,
}

/// Returns a precomputed loss; its backward is `grad * d(loss)`.
struct SavedGradLoss {
    loss: Tensor,
    grad: Tensor,
}

fn cross_entropy_rows<T: candle_core::WithDType, A: Acc + candle_core::WithDType>(
    x: &[T],
    labels: &[i64],
    vocab: usize,
    want_grad: bool,
) -> candle_core::Result<(Vec<A>, Option<Vec<T>>)> {
    if let Some(bad) = labels.iter().find(|l| **l >= vocab as i64) {
        candle_core::bail!("cross-entropy: label {bad} out of range for vocabulary {vocab}");
    }
    let count = labels.iter().filter(|l| **l >= 0).count().max(1);
    let inv_count = A::lit(1.0 / count as f64);
    let mut losses = vec![A::zero(); labels.len()];
    let mut grad = if want_grad {
        vec![T::zero(); x.len()]
    } else {
        Vec::new()
    };
    let row_loss = |row: &[T], label: i64, g: Option<&mut [T]>| -> A {
        if label < 0 {
            return A::zero();
        }
        let max = row.iter().fold(A::neg_infinity(), |m, v| {
            num_traits::Float::max(m, A::load(*v))
        });
        let sum: A = row
            .chunks(1024)
            .map(|c| c.iter().map(|v| (A::load(*v) - max).exp()).sum::<A>())
            .sum();
        if let Some(g) = g {
            let scale = inv_count / sum;
            for (g, v) in g.iter_mut().zip(row) {
                *g = ((A::load(*v) - max).exp() * scale).store();
            }
            let l = label as usize;
            g[l] = (((A::load(row[l]) - max).exp() / sum - A::one()) * inv_count).store();
        }
        (max + sum.ln() - A::load(row[label as usize])) * inv_count
    };
    if want_grad {
        losses
            .par_iter_mut()
            .zip(x.par_chunks(vocab).zip(grad.par_chunks_mut(vocab)))
            .zip(labels.par_iter())
            .for_each(|((loss, (row, g)), &label)| *loss = row_loss(row, label, Some(g)));
    } else {
        losses
            .par_iter_mut()
            .zip(x.par_chunks(vocab))
            .zip(labels.par_iter())
            .for_each(|((loss, row), &label)| *loss = row_loss(row, label, None));
    }
    Ok((losses, want_grad.then_some(grad)))
}

impl CustomOp2 for CrossEntropyFused {
    fn name(&self) -> &'static str {
        "wick-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let labels = match s2 {
            CpuStorage::I64(l) => contiguous(l, l2, "labels")?,
            other => candle_core::bail!(
                "cross-entropy labels must be i64, got {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        };
        let losses = dispatch_float!(s1, "cross-entropy", |x: T, A| {
            let x = contiguous(x, l1, "logits")?;
            let (losses, grad) = cross_entropy_rows::<T, A>(x, labels, vocab, self.want_grad)?;
            self.store_grad(grad.map(|g| Storage::Cpu(super::common::storage(g))))?;
            super::common::storage(losses)
        });
        Ok((losses, Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, _vocab) = l1.shape().dims2()?;
        let (losses, grad) = crate::gpu::launch::cross_entropy(s1, l1, s2, l2, self.want_grad)?;
        self.store_grad(grad.map(Storage::Cuda))?;
        Ok((losses, Shape::from(rows)))
    }
}

impl CrossEntropyFused {
    fn store_grad(&self, grad: Option<Storage>) -> candle_core::Result<()> {
        let mut slot = self
            .grad
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned gradient slot".into()))?;
        *slot = grad;
        Ok(())
    }
}

impl CustomOp1 for SavedGradLoss {
    fn name(&self) -> &'static str {
        "wick-cross-entropy-loss"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.loss.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.clone(), layout.shape().clone())),
            _ => candle_core::bail!("cross-entropy: loss is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (storage, layout) = self.loss.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("cross-entropy: loss is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let scale = grad_res.to_dtype(self.grad.dtype())?;
        Ok(Some(self.grad.broadcast_mul(&scale)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, finite_difference_check, random_tensor, to_f64_vec};
    use crate::reference::cross_entropy::{cross_entropy as reference, label_count};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn labels(rows: usize, vocab: usize, seed: u64) -> Vec<i64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..rows)
            .map(|i| {
                if i % 3 == 1 {
                    IGNORE_INDEX
                } else {
                    rng.random_range(0..vocab as i64)
                }
            })
            .collect()
    }

    #[test]
    fn loss_and_gradient_match_reference() {
        let dev = Device::Cpu;
        for (seed, &(rows, vocab)) in [(1, 3), (3, 17), (4, 127), (5, 4097), (2, 49152)]
            .iter()
            .enumerate()
        {
            let seed = seed as u64;
            let lab = labels(rows, vocab, seed);
            let label_t = Tensor::new(lab.as_slice(), &dev).unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let x = random_tensor(&[rows, vocab], dtype, &dev, seed, 8.0).unwrap();
                let var = Var::from_tensor(&x).unwrap();
                let loss = cross_entropy(var.as_tensor(), &label_t).unwrap();
                let grads = loss.backward().unwrap();
                let k = 1.0 / label_count(&lab);
                let (row_losses, want_grad) = reference(&to_f64_vec(&x).unwrap(), &lab, vocab, k);
                let want_loss: f64 = row_losses.iter().sum();
                let got = loss
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                let tol = if dtype == DType::F64 { 1e-6 } else { 1e-5 };
                assert!(
                    (got - want_loss).abs() <= tol * want_loss.abs().max(1.0),
                    "loss {got} vs {want_loss} ({dtype:?})"
                );
                let g = grads.get(var.as_tensor()).unwrap();
                assert_eq!(g.dtype(), dtype);
                assert_close(
                    &to_f64_vec(g).unwrap(),
                    &want_grad,
                    dtype,
                    "cross-entropy grad",
                );
                // Evaluation path (no graph): same loss, no gradient computed.
                let eval = cross_entropy(&x, &label_t).unwrap();
                let eval = eval
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert_eq!(eval, got);
            }
        }
    }

    #[test]
    fn all_ignored_gives_zero_and_bad_label_errors() {
        let dev = Device::Cpu;
        let x = random_tensor(&[2, 5], DType::F32, &dev, 1, 1.0).unwrap();
        let lab = Tensor::new(&[IGNORE_INDEX, IGNORE_INDEX], &dev).unwrap();
        assert_eq!(
            cross_entropy(&x, &lab).unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
        let bad = Tensor::new(&[0i64, 5], &dev).unwrap();
        assert!(cross_entropy(&x, &bad).is_err());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let lab = Tensor::new(labels(4, 17, 3).as_slice(), &dev).unwrap();
        let x = random_tensor(&[4, 17], DType::F64, &dev, 2, 3.0).unwrap();
        finite_difference_check(
            &[x],
            |t| {
                let logits = t[0].clone();
                Ok(cross_entropy(&logits, &lab)?.reshape(1)?)
            },
            5,
        )
        .unwrap();
    }
}
