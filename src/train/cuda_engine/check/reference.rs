//! The reference step: exactly what the trainer does (`Llama::forward_train` + `causal_lm_loss`,
//! backward of loss * weight per micro-batch, `clip_grad_norm`, `AdamW::step`), two steps.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Tensor, Var};

use super::models::{f64s, tensor_2d, var_values, Micro};
use crate::lora::Adapter;
use crate::models::llama::Llama;
use crate::models::seeded_dropout::DropoutSeed;
use crate::train::loss::causal_lm_loss;
use crate::train::optimizer::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use crate::{Context, Result};

/// What Candle's autograd + AdamW give for two optimizer steps on the same micro-batches.
pub(super) struct Reference {
    /// Step loss of steps 1 and 2 (step 2 runs on the parameters after one update).
    pub(super) loss: [f64; 2],
    /// Step 1's gradients before clipping.
    pub(super) grads: HashMap<String, Vec<f64>>,
    /// Global norm before clipping, steps 1 and 2.
    pub(super) norm: [f64; 2],
    pub(super) max_norm: f64,
    pub(super) adamw: AdamWConfig,
    pub(super) lr: f64,
    /// Parameters before step 1, after step 1, after step 2.
    pub(super) before: HashMap<String, Vec<f64>>,
    pub(super) after: HashMap<String, Vec<f64>>,
    pub(super) after2: HashMap<String, Vec<f64>>,
    /// AdamW moments after step 1.
    pub(super) moments: HashMap<String, Vec<f64>>,
}

/// The check's LoRA dropout seed: the Candle references draw the engine's masks from it
/// (`models::seeded_dropout`, the trainer's own), set per micro-batch by [`step_gradients`].
fn check_seed() -> &'static DropoutSeed {
    static SEED: OnceLock<DropoutSeed> = OnceLock::new();
    SEED.get_or_init(DropoutSeed::default)
}

/// Gives every adapted projection of `model` with dropout the engine's seeded masks.
pub(super) fn use_engine_masks(model: &mut Llama) {
    model.use_seeded_dropout(check_seed());
}

/// Loss and summed gradients of optimizer step `step` (from 1): per micro-batch, backward of
/// loss * weight, the dropout masks (if any) of that step and micro-batch.
pub(super) fn step_gradients(
    model: &Llama,
    vars: &[(String, Var)],
    (micro, weights): (&[Micro], &[f64]),
    step: u64,
) -> Result<(f64, HashMap<String, Tensor>)> {
    let device = model.device().clone();
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let mut loss = 0f64;
    for (i, (mb, w)) in micro.iter().zip(weights).enumerate() {
        check_seed().set(super::CHECK_DROPOUT_SEED, step, i as u64);
        let ids = tensor_2d(&mb.ids, &device)?;
        let labels = tensor_2d(&mb.labels, &device)?;
        let logits = model.forward_train(&ids)?;
        let l = causal_lm_loss(&logits, &labels)?;
        loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()? * w;
        let store = (l * *w)?.backward().context("check backward")?;
        for (name, g) in collect_grads(vars, &store) {
            let merged = match grads.remove(&name) {
                Some(acc) => (acc + g)?,
                None => g,
            };
            grads.insert(name, merged);
        }
    }
    Ok((loss, grads))
}

/// Two optimizer steps of Candle's trainer path on `model` with `adapter` applied. `fixed`: clip at
/// this max_norm with this AdamW config (the bf16 run uses the f32 run's); None: max_norm at half
/// the first norm and eps at 5% of the largest clipped gradient (see the module documentation).
pub(super) fn reference(
    model: &mut Llama,
    adapter: &Adapter,
    micro: &[Micro],
    weights: &[f64],
    fixed: Option<(f64, AdamWConfig)>,
) -> Result<Reference> {
    adapter.apply(model.linear_layers_mut(), Path::new("engine check adapter"))?;
    use_engine_masks(model);
    let vars = adapter.vars();
    let before = var_values(adapter)?;
    let (loss1, mut grads) = step_gradients(model, &vars, (micro, weights), 1)?;
    let unclipped: HashMap<String, Vec<f64>> = grads
        .iter()
        .map(|(n, g)| Ok((n.clone(), f64s(g)?)))
        .collect::<Result<_>>()?;
    let norm1 = clip_grad_norm(&mut grads.clone(), None)?;
    let max_norm = fixed.map_or(0.5 * norm1, |f| f.0);
    clip_grad_norm(&mut grads, Some(max_norm))?;
    let adamw = match fixed {
        Some((_, config)) => config,
        None => {
            let mut largest = 0f64;
            for g in grads.values() {
                largest = largest.max(f64s(g)?.iter().fold(0f64, |m, v| m.max(v.abs())));
            }
            AdamWConfig {
                eps: 0.05 * largest,
                weight_decay: 0.1,
                ..AdamWConfig::default()
            }
        }
    };
    let lr = 1e-2;
    let mut optimizer = AdamW::new(vars.clone(), adamw)?;
    optimizer.step(&grads, lr)?;
    let moments = optimizer
        .state_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, f64s(&t)?)))
        .collect::<Result<_>>()?;
    let after = var_values(adapter)?;
    let (loss2, mut grads2) = step_gradients(model, &vars, (micro, weights), 2)?;
    let norm2 = clip_grad_norm(&mut grads2, Some(max_norm))?;
    optimizer.step(&grads2, lr)?;
    Ok(Reference {
        loss: [loss1, loss2],
        grads: unclipped,
        norm: [norm1, norm2],
        max_norm,
        adamw,
        lr,
        before,
        after,
        after2: var_values(adapter)?,
        moments,
    })
}
