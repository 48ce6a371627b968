//! Seeded LoRA dropout for Candle's path: the masks of `reference::lora_dropout`, the ones the CUDA
//! training engine draws, so that a run on either path draws the same masks for the same seed,
//! optimizer step and micro-batch, a resumed run repeats the straight run's, and a checkpointed layer
//! recomputes its forward with the masks it used. The trainer sets the micro-batch's seed
//! ([`DropoutSeed::set`]) before each forward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::linear::DropoutMasks;
use super::llama::Llama;
use crate::reference::lora_dropout;
use crate::{Context, Error, Result};

/// The seed of the micro-batch at hand, shared by every adapted layer of a model.
#[derive(Debug, Clone, Default)]
pub struct DropoutSeed(Arc<AtomicU64>);

impl DropoutSeed {
    /// The seed of micro-batch `micro` (among those with counted labels) of optimizer step `step`
    /// (from 1) of a run seeded `run_seed`: `reference::lora_dropout::micro_batch_seed`.
    pub fn set(&self, run_seed: u64, step: u64, micro: u64) {
        let seed = lora_dropout::micro_batch_seed(run_seed, step, micro);
        self.0.store(seed, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The masks of one adapted projection: stream = its index in `Llama::linear_layers` (the
/// engine's layer * 7 + projection).
#[derive(Debug)]
struct SeededMasks {
    seed: DropoutSeed,
    stream: u32,
    p: f32,
}

impl DropoutMasks for SeededMasks {
    fn mask(&self, dims: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let [b, t, cols] = dims else {
            return Err(Error::InvalidRequest(format!(
                "seeded LoRA dropout: input {dims:?} is not [batch, t, in]"
            )));
        };
        let ones = vec![1.0; b * t * cols];
        let keep = lora_dropout::apply(&ones, *cols, *t, self.seed.get(), self.stream, self.p);
        let values: Vec<f32> = keep.into_iter().map(|v| v as f32).collect();
        Tensor::from_vec(values, dims, device)
            .and_then(|m| m.to_dtype(dtype))
            .context("seeded LoRA dropout mask")
    }
}

impl Llama {
    /// Gives every adapted projection with dropout the seeded masks drawn from `seed` (after the
    /// adapter is attached: attaching installs Candle's unseeded dropout). Returns whether any
    /// projection has dropout.
    pub fn use_seeded_dropout(&mut self, seed: &DropoutSeed) -> bool {
        let mut any = false;
        for (i, (_, linear)) in self.linear_layers_mut().into_iter().enumerate() {
            if let Some(lora) = linear.lora.as_mut().filter(|l| l.dropout > 0.0) {
                let p = lora.dropout;
                lora.dropout_masks = Some(Arc::new(SeededMasks {
                    seed: seed.clone(),
                    stream: i as u32,
                    p,
                }));
                any = true;
            }
        }
        any
    }
}
