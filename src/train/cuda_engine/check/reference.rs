//! The reference step: exactly what the trainer does (`Llama::forward_train` + `causal_lm_loss`,
//! backward of loss * weight per micro-batch, `clip_grad_norm`, `AdamW::step`), two steps.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use super::models::{f64s, tensor_2d, var_values, Micro};
use crate::lora::Adapter;
use crate::models::linear::DropoutMasks;
use crate::models::llama::Llama;
use crate::reference::lora_dropout;
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

/// The seed of the micro-batch at hand, which [`EngineMasks`] draw from (the check runs one model
/// at a time, on one thread).
static MICRO_BATCH_SEED: AtomicU64 = AtomicU64::new(0);

/// LoRA dropout masks of one adapted projection as the engine draws them
/// (`reference::lora_dropout`, stream = the projection's index in `Llama::linear_layers`, which is
/// the engine's layer * 7 + projection), for the micro-batch seed [`step_gradients`] sets.
#[derive(Debug)]
struct EngineMasks {
    stream: u32,
    p: f32,
}

impl DropoutMasks for EngineMasks {
    fn mask(&self, dims: &[usize], device: &Device, dtype: DType) -> crate::Result<Tensor> {
        let [b, t, cols] = dims else {
            return Err(crate::Error::InvalidRequest(format!(
                "engine check masks: input {dims:?} is not [batch, t, in]"
            )));
        };
        let ones = vec![1.0; b * t * cols];
        let seed = MICRO_BATCH_SEED.load(Ordering::Relaxed);
        let values = lora_dropout::apply(&ones, *cols, *t, seed, self.stream, self.p);
        let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
        Tensor::from_vec(values, dims, device)
            .and_then(|m| m.to_dtype(dtype))
            .context("engine check dropout mask")
    }
}

/// Gives every adapted projection of `model` the engine's dropout masks (after `Adapter::apply`,
/// which attaches Candle's unseeded dropout); nothing without dropout.
pub(super) fn use_engine_masks(model: &mut Llama) {
    for (i, (_, linear)) in model.linear_layers_mut().into_iter().enumerate() {
        if let Some(lora) = linear.lora.as_mut().filter(|l| l.dropout > 0.0) {
            let p = lora.dropout;
            lora.dropout_masks = Some(Arc::new(EngineMasks {
                stream: i as u32,
                p,
            }));
        }
    }
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
        let seed = lora_dropout::micro_batch_seed(super::CHECK_DROPOUT_SEED, step, i as u64);
        MICRO_BATCH_SEED.store(seed, Ordering::Relaxed);
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
