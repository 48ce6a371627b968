//! Activation checkpointing for Candle's backprop: `y = f(x)` keeping only x, with f run again
//! during the backward pass.
//!
//! Candle keeps every intermediate tensor of the forward graph until the loss is dropped. For a
//! decoder that is, per layer, the attention scores and probabilities ([batch, heads, t, t], several
//! copies) and the MLP's [tokens, intermediate] activations: most of a training step's memory. A
//! checkpointed segment instead runs f on a detached input (its graph is dropped at once) and
//! returns a single node whose backward, given dy:
//!
//! ```text
//! x' = leaf copy of x;  y' = f(x');  backward of sum(y' * dy)  ->  dx = d/dx',  dtheta for theta in f
//! ```
//!
//! so only one segment's activations are alive at a time during the backward pass, for about one
//! more forward pass of compute. Candle's custom ops return gradients for their tensor inputs only,
//! so the gradients of the trainable tensors inside f (the LoRA A and B of a layer) go to a
//! [`GradSink`] that the trainer reads after `backward()`, by tensor id.
//!
//! f must be deterministic (no dropout): the recomputation has to see the forward pass's values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, TensorId, Var};

use crate::{Context, Result};

/// A checkpointed function: x -> y, deterministic.
pub type Segment = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// Gradients of trainable tensors computed inside checkpointed segments, summed by tensor id.
#[derive(Debug, Default)]
pub struct GradSink {
    grads: Mutex<HashMap<TensorId, Tensor>>,
}

impl GradSink {
    /// An empty sink, shared between the segments of one forward pass and the trainer.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes every gradient collected so far (the sink is empty afterwards).
    pub fn take(&self) -> HashMap<TensorId, Tensor> {
        match self.grads.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    fn add(&self, id: TensorId, grad: Tensor) -> candle_core::Result<()> {
        let mut grads = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint: poisoned gradient sink".into()))?;
        let merged = match grads.remove(&id) {
            Some(previous) => (previous + grad)?,
            None => grad,
        };
        grads.insert(id, merged);
        Ok(())
    }
}

/// `f(x)` with only x kept for the backward pass. `trainable`: the tensors inside f whose gradients
/// are wanted (Candle `Var`s' tensors); theirs go to `sink`. x: any shape; f's output too.
pub fn checkpoint(
    x: &Tensor,
    f: Segment,
    trainable: Vec<Tensor>,
    sink: Arc<GradSink>,
) -> Result<Tensor> {
    let y = f(&x.detach())?.detach();
    if y.layout().start_offset() != 0 || !y.is_contiguous() {
        return Err(crate::Error::InvalidRequest(
            "checkpoint: the segment's output must be a fresh contiguous tensor".into(),
        ));
    }
    // The node must be part of the graph even when x is not (the first layer's input comes from a
    // frozen embedding): a leaf copy of x makes it so; its own gradient is never read.
    let x = if x.track_op() {
        x.clone()
    } else {
        Var::from_tensor(x)
            .context("checkpoint input")?
            .into_inner()
    };
    x.apply_op1(Checkpoint {
        y,
        f,
        trainable,
        sink,
    })
    .context("checkpointed segment")
}

struct Checkpoint {
    /// The forward result, copied into the node's storage (one [tokens, hidden] copy per segment).
    y: Tensor,
    f: Segment,
    trainable: Vec<Tensor>,
    sink: Arc<GradSink>,
}

impl Checkpoint {
    fn output<S: BackendStorage>(y: &S, yl: &Layout) -> candle_core::Result<(S, Shape)> {
        Ok((y.try_clone(yl)?, yl.shape().clone()))
    }
}

impl CustomOp1 for Checkpoint {
    fn name(&self) -> &'static str {
        "wick-checkpoint"
    }

    fn cpu_fwd(&self, _xs: &CpuStorage, _xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ys, yl) = self.y.storage_and_layout();
        match &*ys {
            Storage::Cpu(ys) => Self::output(ys, yl),
            _ => candle_core::bail!("checkpoint: segment output is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _xs: &candle_core::CudaStorage,
        _xl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (ys, yl) = self.y.storage_and_layout();
        match &*ys {
            Storage::Cuda(ys) => Self::output(ys, yl),
            _ => candle_core::bail!("checkpoint: segment output is not on the GPU"),
        }
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let to_candle = |e: crate::Error| candle_core::Error::Msg(format!("checkpoint: {e}"));
        let input = Var::from_tensor(&x.detach())?;
        let y = (self.f)(input.as_tensor()).map_err(to_candle)?;
        // d/dy of sum(y * dy) is dy exactly (ones times dy).
        let store = (y * grad.detach())?.sum_all()?.backward()?;
        for t in &self.trainable {
            if let Some(g) = store.get(t) {
                self.sink.add(t.id(), g.detach())?;
            }
        }
        Ok(store.get(input.as_tensor()).map(Tensor::detach))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{random_tensor, to_f64_vec};
    use candle_core::{DType, Device};

    /// Gradients through two checkpointed segments equal those of the plain graph (f64, exact maths
    /// up to summation order), for the input and for the weights inside the segments.
    #[test]
    fn gradients_equal_the_plain_graph() {
        let dev = Device::Cpu;
        let x = random_tensor(&[3, 5], DType::F64, &dev, 1, 1.0).unwrap();
        let w1 =
            Var::from_tensor(&random_tensor(&[5, 4], DType::F64, &dev, 2, 0.5).unwrap()).unwrap();
        let w2 =
            Var::from_tensor(&random_tensor(&[4, 6], DType::F64, &dev, 3, 0.5).unwrap()).unwrap();
        let seg = |w: &Var| -> Segment {
            let w = w.as_tensor().clone();
            Arc::new(move |x: &Tensor| Ok(x.matmul(&w)?.tanh()?))
        };
        let xv = Var::from_tensor(&x).unwrap();
        let weights = random_tensor(&[3, 6], DType::F64, &dev, 4, 1.0).unwrap();
        // Plain graph.
        let plain = seg(&w2)(&seg(&w1)(xv.as_tensor()).unwrap()).unwrap();
        let store = (plain * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // Checkpointed.
        let sink = GradSink::new();
        let h = checkpoint(
            xv.as_tensor(),
            seg(&w1),
            vec![w1.as_tensor().clone()],
            sink.clone(),
        )
        .unwrap();
        let y = checkpoint(&h, seg(&w2), vec![w2.as_tensor().clone()], sink.clone()).unwrap();
        let cstore = (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let sunk = sink.take();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let (a, b) = (to_f64_vec(a).unwrap(), to_f64_vec(b).unwrap());
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-12, "{what}: {p} vs {q}");
            }
        };
        close(
            store.get(xv.as_tensor()).unwrap(),
            cstore.get(xv.as_tensor()).unwrap(),
            "dx",
        );
        for w in [&w1, &w2] {
            assert!(cstore.get(w.as_tensor()).is_none());
            close(
                store.get(w.as_tensor()).unwrap(),
                &sunk[&w.as_tensor().id()],
                "dw",
            );
        }
        // An input outside the graph (a frozen embedding) still reaches the segment's weights.
        let sink = GradSink::new();
        let y = checkpoint(&x, seg(&w1), vec![w1.as_tensor().clone()], sink.clone()).unwrap();
        y.sum_all().unwrap().backward().unwrap();
        assert!(sink.take().contains_key(&w1.as_tensor().id()));
    }
}
