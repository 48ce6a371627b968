//! An adapter made ready for inference beside the base model, any number at once: each adapted
//! projection's pair in the CPU update's layout (`ops::lora_delta_cpu`), indexed like the model's
//! `linear_layers()`, so a batch can give every sequence its own adapter (the BGMV idea of
//! Punica / S-LoRA) without touching the base model's `Linear` slots.
//!
//! ```no_run
//! # fn demo(model: &wick::models::llama::Llama) -> wick::Result<()> {
//! let adapter = wick::lora::peft_io::load_adapter("adapters/pirate".as_ref(), &candle_core::Device::Cpu)?;
//! let resident = wick::lora::ResidentAdapter::new("pirate", &adapter, &model.linear_shapes(), "adapters/pirate".as_ref())?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::attach::Adapter;
use crate::ops::lora_delta_cpu::LowRankCpu;
use crate::Result;

/// Distinct ids for every adapter made resident in this process (engines key device copies on it).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An adapter's pairs laid out for inference, one slot per model projection.
#[derive(Debug)]
pub struct ResidentAdapter {
    name: String,
    id: u64,
    scale: f32,
    rank: usize,
    layers: Vec<Option<LowRankCpu>>,
}

impl ResidentAdapter {
    /// Lays out `adapter` for a model whose projections are `model_layers` (path, in, out) in
    /// `linear_layers()` order; errors name `origin` and list every missing module or bad shape.
    pub fn new(
        name: &str,
        adapter: &Adapter,
        model_layers: &[(String, usize, usize)],
        origin: &Path,
    ) -> Result<Self> {
        if adapter.layers.iter().any(|l| l.magnitude.is_some()) {
            // DoRA rescales each output row by m / ||W + s B A||: not a low-rank term beside the base.
            return Err(crate::Error::InvalidRequest(format!(
                "{}: a DoRA adapter cannot be served as a resident low-rank adapter; merge it \
                 (`wick merge`) or use `wick generate --adapter`",
                origin.display()
            )));
        }
        let matched = adapter.match_layers(model_layers, origin)?;
        let mut layers = Vec::with_capacity(matched.len());
        let mut rank = 0;
        for idx in matched {
            layers.push(match idx {
                Some(i) => {
                    let l = &adapter.layers[i];
                    let pair = LowRankCpu::new(l.a.as_tensor(), l.b.as_tensor())?;
                    rank = rank.max(pair.rank());
                    Some(pair)
                }
                None => None,
            });
        }
        Ok(Self {
            name: name.to_string(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            scale: adapter.config.scale() as f32,
            rank,
            layers,
        })
    }

    /// The name requests use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A process-unique id of this load.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// alpha / r (or alpha / sqrt(r) with rsLoRA).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The largest rank among its pairs.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// One slot per model projection (`linear_layers()` order): the pair, or `None` where the
    /// adapter leaves the projection alone.
    pub fn layers(&self) -> &[Option<LowRankCpu>] {
        &self.layers
    }

    /// Adapted projections.
    pub fn modules(&self) -> usize {
        self.layers.iter().filter(|l| l.is_some()).count()
    }
}
