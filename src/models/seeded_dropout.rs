//! Seeded LoRA dropout for Candle's path: the masks of `reference::lora_dropout`, the ones the CUDA
//! training engine draws, so that a run on either path draws the same masks for the same seed,
//! optimizer step and micro-batch, a resumed run repeats the straight run's, and a checkpointed layer
//! recomputes its forward with the masks it used. The trainer sets the micro-batch's seed
//! ([`DropoutSeed::set`]) before each forward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

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
        // keep / (1 - p) per element as `lora_dropout::apply` draws it, rows in parallel.
        let (seed, threshold) = (self.seed.get(), lora_dropout::threshold(self.p));
        let scale = lora_dropout::keep_scale(self.p);
        let mut values = vec![0f32; b * t * cols];
        values
            .par_chunks_mut(*cols)
            .enumerate()
            .for_each(|(row, out)| {
                for (c, v) in out.iter_mut().enumerate() {
                    if lora_dropout::keep(seed, self.stream, (row / t, row % t, c), threshold) {
                        *v = scale;
                    }
                }
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::lora_dropout;

    #[test]
    fn masks_are_the_references() {
        let seed = DropoutSeed::default();
        seed.set(7, 3, 1);
        let masks = SeededMasks {
            seed: seed.clone(),
            stream: 11,
            p: 0.25,
        };
        let (b, t, cols) = (2, 5, 9);
        let got = masks
            .mask(&[b, t, cols], &Device::Cpu, DType::F32)
            .and_then(|m| Ok(m.flatten_all()?.to_vec1::<f32>()?))
            .unwrap();
        let want = lora_dropout::apply(&vec![1.0; b * t * cols], cols, t, seed.get(), 11, 0.25);
        let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
        assert_eq!(got, want);
        assert!(got.contains(&0.0) && got.iter().any(|&v| v > 1.0));
    }
}
