//! The trainer's bridge to the CUDA training engine (`train::cuda_engine`): when the run is on a
//! CUDA device and the engine supports the model and adapter, each optimizer step runs as captured
//! CUDA graphs (forward + backward per micro-batch, then clipping + AdamW) instead of through
//! Candle's autograd. The adapter's `Var`s stay the source of truth at the edges: the engine loads
//! them at the start and writes them back before every evaluation, checkpoint and the final save, so
//! everything else in the trainer (metrics, checkpoints, resume, PEFT output) is unchanged.

use std::collections::HashMap;

use candle_core::Tensor;

use super::data::{Batch, Dataset};
use super::trainer::TrainConfig;
use crate::lora::Adapter;
use crate::models::llama::Llama;
use crate::Result;

/// Whether a run may use the CUDA training engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnginePolicy {
    /// Use it on CUDA when it supports the model and adapter; otherwise Candle's autograd, with the
    /// reason logged.
    #[default]
    Auto,
    /// Always Candle's autograd (the reference path).
    Off,
}

impl std::str::FromStr for EnginePolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => Err(format!("expected auto or off, got {other:?}")),
        }
    }
}

/// The engine of one run (only ever built with the `cuda` feature).
pub struct EngineSteps {
    #[cfg(feature = "cuda")]
    engine: super::cuda_engine::TrainEngine,
    /// How the engine runs its steps, for the log and `wick bench train`.
    pub mode: String,
}

/// Longest row of `data` in tokens: the engine's buffers are sized for it.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn longest_row(data: &Dataset) -> usize {
    data.rows
        .iter()
        .map(|r| r.input_ids.len())
        .max()
        .unwrap_or(0)
}

impl EngineSteps {
    /// The engine for this run, or `None` (with the reason logged) when the run stays on Candle's
    /// autograd. `optimizer_state` and `step` restore a resumed run's AdamW moments.
    pub fn start(
        model: &Llama,
        adapter: &Adapter,
        config: &TrainConfig,
        data: &Dataset,
        policy: EnginePolicy,
        optimizer_state: Option<&HashMap<String, Tensor>>,
        step: usize,
    ) -> Result<Option<Self>> {
        if policy == EnginePolicy::Off || !model.device().is_cuda() {
            warn_mlp_recompute_unused(config, model);
            return Ok(None);
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (adapter, config, data, optimizer_state, step);
            Ok(None)
        }
        #[cfg(feature = "cuda")]
        {
            use super::cuda_engine::{EngineOptions, TrainEngine};
            if let Some(reason) = TrainEngine::unsupported(model, adapter) {
                warn_mlp_recompute_unused(config, model);
                tracing::warn!(
                    "CUDA training engine not used: {reason}; training through Candle's autograd"
                );
                return Ok(None);
            }
            let options = EngineOptions {
                batch: config.batch_size,
                seq: longest_row(data).max(2),
                dtype: model.dtype(),
                // WICK_TRAIN_FLASH=0 keeps the materialized attention (for comparisons).
                flash_attention: !std::env::var("WICK_TRAIN_FLASH").is_ok_and(|v| v == "0"),
                checkpointed_layers: config.checkpointed_layers(model.config().num_hidden_layers),
                mlp_recomputed_layers: mlp_recomputed_layers(config, model),
                dropout_seed: config.seed,
                ..EngineOptions::default()
            };
            let mut engine = TrainEngine::new(model, adapter, config.adamw, options)?;
            engine.load_params(adapter)?;
            if let Some(tensors) = optimizer_state {
                engine.load_optimizer_state(tensors, step)?;
            }
            tracing::info!("training on the CUDA training engine");
            Ok(Some(Self {
                engine,
                mode: "engine".into(),
            }))
        }
    }

    /// One optimizer step over `micro` (each batch with its row lengths); returns (loss, gradient
    /// norm before clipping). Non-finite values leave the parameters unchanged (the caller stops).
    pub fn step(
        &mut self,
        micro: &[(Batch, Vec<usize>)],
        lr: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<(f64, f64)> {
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (micro, lr, max_grad_norm);
            Err(crate::Error::InvalidRequest(
                "the CUDA training engine needs the `cuda` feature".into(),
            ))
        }
        #[cfg(feature = "cuda")]
        {
            self.engine.begin_step()?;
            for ((batch, _), weight) in micro.iter().zip(super::trainer::loss_weights(micro)) {
                if let Some(weight) = weight {
                    self.engine
                        .micro_batch(&batch.input_ids, &batch.labels, weight as f32)?;
                }
            }
            let result = self.engine.optimizer_step(lr, max_grad_norm)?;
            self.mode = match self.engine.mode() {
                super::cuda_engine::StepMode::Eager(reason) => format!("engine, eager: {reason}"),
                super::cuda_engine::StepMode::Graph => "engine, CUDA graphs".into(),
                super::cuda_engine::StepMode::Pending => "engine".into(),
            };
            Ok(result)
        }
    }

    /// Writes the engine's parameters into the adapter's variables (before eval or a save).
    pub fn store_params(&self, adapter: &Adapter) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            self.engine.store_params(adapter)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = adapter;
            Ok(())
        }
    }

    /// AdamW moments in `train::optimizer::AdamW::state_tensors`'s format, sorted by name.
    pub fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>> {
        #[cfg(feature = "cuda")]
        {
            let mut state: Vec<(String, Tensor)> =
                self.engine.optimizer_state()?.into_iter().collect();
            state.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(state)
        }
        #[cfg(not(feature = "cuda"))]
        {
            Ok(Vec::new())
        }
    }
}

/// Selective MLP recompute is the CUDA training engine's: a run on Candle's autograd says so
/// instead of dropping the option silently.
fn warn_mlp_recompute_unused(config: &TrainConfig, model: &Llama) {
    let n = config.mlp_recomputed_layers(model.config().num_hidden_layers);
    if n > 0 {
        tracing::warn!(
            "--recompute-mlp-layers {n}: only the CUDA training engine recomputes MLP activations; \
             Candle's autograd keeps them (use --checkpoint-layers there)"
        );
    }
}

/// The engine's MLP-recomputed layers: those asked for, or the fewer left after the checkpointed
/// layers (said, not dropped silently).
#[cfg(feature = "cuda")]
fn mlp_recomputed_layers(config: &TrainConfig, model: &Llama) -> usize {
    let layers = model.config().num_hidden_layers;
    let (asked, got) = (
        config.recompute_mlp_layers.unwrap_or(0),
        config.mlp_recomputed_layers(layers),
    );
    if got < asked {
        tracing::warn!(
            "--recompute-mlp-layers {asked}: {} of the model's {layers} layers are checkpointed, so \
             {got} recompute only their MLP",
            config.checkpointed_layers(layers)
        );
    }
    got
}

#[cfg(test)]
mod tests {
    use super::EnginePolicy;

    #[test]
    fn policy_parses_and_rejects_unknown_values() {
        assert_eq!("auto".parse::<EnginePolicy>(), Ok(EnginePolicy::Auto));
        assert_eq!("off".parse::<EnginePolicy>(), Ok(EnginePolicy::Off));
        let err = "on".parse::<EnginePolicy>().unwrap_err();
        assert!(
            err.contains("auto or off") && err.contains("\"on\""),
            "{err}"
        );
        assert_eq!(EnginePolicy::default(), EnginePolicy::Auto);
    }
}
