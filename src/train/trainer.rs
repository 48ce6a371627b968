//! The training loop: LoRA on a frozen decoder with AdamW, a warmup schedule, gradient accumulation,
//! global-norm clipping, periodic eval, atomic checkpoints and exact resume.
//!
//! One optimizer step takes `grad_accum` micro-batches. Micro-batch k of the run is batch
//! `k % batches_per_epoch` of epoch `k / batches_per_epoch`, each epoch's order drawn from (seed, epoch):
//! the data position is a function of the step, so a resumed run sees exactly the batches the
//! uninterrupted run would have. The loss of a step is token-weighted over its micro-batches (each
//! micro-batch's mean loss is scaled by its share of the step's counted tokens before backward), so
//! accumulation gives the gradient of one big batch.
//!
//! Determinism: the LoRA init is seeded, the data order is seeded, and LoRA dropout draws seeded
//! masks (`models::seeded_dropout`: run seed, optimizer step, micro-batch; the CUDA engine's own),
//! so on the CPU a run resumed from step k reproduces the straight run bit for bit, with or without
//! dropout.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::checkpoint::SaveFault;
use super::data::{Batch, Dataset};
use super::engine_steps::EnginePolicy;
use super::loss::causal_lm_loss;
use super::optimizer::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use super::schedule::ScheduleKind;
use crate::lora::{Adapter, LoraConfig};
use crate::models::llama::Llama;
use crate::models::seeded_dropout::DropoutSeed;
use crate::ops::checkpoint::GradSink;
use crate::{Context, Error, Result};

/// Everything that defines a run (saved in every checkpoint; `--resume` continues with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The adapter to train.
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f64,
    pub scheduler: ScheduleKind,
    pub warmup_steps: usize,
    /// Optimizer steps of the whole run.
    pub total_steps: usize,
    pub adamw: AdamWConfig,
    /// Global-norm clipping threshold (None: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Shuffle rows every epoch.
    pub shuffle: bool,
    pub seed: u64,
    /// Save a checkpoint every N steps (and at the end); None: only the final adapter.
    pub save_every: Option<usize>,
    /// Checkpoints kept (0: all).
    pub keep_last: usize,
    /// Evaluate on the eval set every N steps (and at the end) when there is one.
    pub eval_every: Option<usize>,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (`Llama::forward_train_checkpointed`): far less memory for about one more forward pass of
    /// compute. The recomputation draws the same (seeded) dropout masks. Same gradients up to
    /// rounding.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Only the first N decoder layers recompute their activations (None: every layer when
    /// `activation_checkpointing`, none otherwise). Setting it turns checkpointing on by itself.
    /// Memory between none and all, compute between too: each checkpointed layer costs one more
    /// layer forward, each other keeps its activations.
    #[serde(default)]
    pub checkpoint_layers: Option<usize>,
    /// Selective recompute (the CUDA training engine): the N layers after the checkpointed ones
    /// keep every activation but their MLP's gate and up outputs, which the backward recomputes
    /// (two GEMMs a layer; about two thirds of a layer's saved activations at Llama shapes).
    /// Candle's autograd keeps every activation of a layer it does not checkpoint.
    #[serde(default)]
    pub recompute_mlp_layers: Option<usize>,
}

impl TrainConfig {
    /// How many of a model's `layers` decoder layers (the first ones) are checkpointed:
    /// `checkpoint_layers` when set (checkpointing on or not: a count alone asks for it), else all
    /// of them with `activation_checkpointing`, else none.
    pub fn checkpointed_layers(&self, layers: usize) -> usize {
        match self.checkpoint_layers {
            Some(n) => n.min(layers),
            None if self.activation_checkpointing => layers,
            None => 0,
        }
    }

    /// How many of a model's `layers` decoder layers recompute their MLP's gate and up outputs:
    /// `recompute_mlp_layers`, at most the layers left after the checkpointed ones.
    pub fn mlp_recomputed_layers(&self, layers: usize) -> usize {
        let free = layers - self.checkpointed_layers(layers);
        self.recompute_mlp_layers.unwrap_or(0).min(free)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            lr: 2e-4,
            scheduler: ScheduleKind::Linear,
            warmup_steps: 0,
            total_steps: 100,
            adamw: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            batch_size: 4,
            grad_accum: 1,
            shuffle: true,
            seed: 42,
            save_every: None,
            keep_last: 3,
            eval_every: None,
            activation_checkpointing: false,
            checkpoint_layers: None,
            recompute_mlp_layers: None,
        }
    }
}

impl TrainConfig {
    /// Optimizer steps for `epochs` passes over `rows` rows.
    pub fn steps_for_epochs(
        epochs: f64,
        rows: usize,
        batch_size: usize,
        grad_accum: usize,
    ) -> usize {
        let micro = (epochs * rows.div_ceil(batch_size) as f64).ceil() as usize;
        micro.div_ceil(grad_accum).max(1)
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |option: &str, reason: String| {
            Err(Error::InvalidOption {
                option: option.into(),
                reason,
            })
        };
        if self.batch_size == 0 {
            return bad("--batch-size", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("--grad-accum", "must be at least 1".into());
        }
        if self.total_steps == 0 {
            return bad("--steps", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr", format!("must be positive, got {}", self.lr));
        }
        if self.lora.r == 0 {
            return bad("--rank", "must be at least 1".into());
        }
        Ok(())
    }
}

/// What the trainer reports to its caller (the CLI draws a progress bar from it).
#[derive(Debug, Clone)]
pub enum Progress {
    /// Training starts (or resumes) at `step` of `total_steps`.
    Start {
        step: usize,
        total_steps: usize,
        trainable_parameters: usize,
    },
    /// An optimizer step finished.
    Step {
        step: usize,
        total_steps: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
    },
    /// An evaluation finished.
    Eval { step: usize, eval_loss: f64 },
    /// A checkpoint was written.
    Checkpoint { step: usize, dir: PathBuf },
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Loss of every optimizer step of this invocation (resumed runs: only the new steps).
    pub losses: Vec<f64>,
    pub final_eval_loss: Option<f64>,
    /// Where the final adapter was written.
    pub adapter_dir: PathBuf,
    pub steps: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// How the steps ran: `None` through Candle's autograd, else the CUDA training engine's mode.
    pub engine_mode: Option<String>,
}

/// How a run starts. [`TrainRun::new`] gives the defaults; set the fields that differ.
pub struct TrainRun<'a> {
    pub train_data: &'a Dataset,
    pub eval_data: Option<&'a Dataset>,
    pub config: TrainConfig,
    /// The adapter, metrics, loss curve and checkpoints go here.
    pub out_dir: PathBuf,
    /// A checkpoint directory (or an output directory with checkpoints) to continue from; its saved
    /// config replaces `config`.
    pub resume: Option<PathBuf>,
    /// Stop after this many steps of this invocation (a time-boxed run; `resume` continues it). The
    /// schedule still spans `total_steps`. A checkpoint is written at the stop when `save_every` is set.
    pub stop_after_steps: Option<usize>,
    /// Whether CUDA runs may use the training engine (`train::cuda_engine`).
    pub engine: EnginePolicy,
}

impl<'a> TrainRun<'a> {
    /// A run on `train_data` writing to `out_dir`, with `TrainConfig::default()`, no eval set, no
    /// resume, no early stop and the engine policy `auto`.
    pub fn new(train_data: &'a Dataset, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            train_data,
            eval_data: None,
            config: TrainConfig::default(),
            out_dir: out_dir.into(),
            resume: None,
            stop_after_steps: None,
            engine: EnginePolicy::default(),
        }
    }
}

fn batch_tensors(batch: &Batch, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let (b, t) = (batch.input_ids.len(), batch.seq_len());
    let ids: Vec<u32> = batch.input_ids.iter().flatten().copied().collect();
    let labels: Vec<i64> = batch.labels.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(ids, (b, t), device).context("batch ids")?;
    let labels = Tensor::from_vec(labels, (b, t), device).context("batch labels")?;
    Ok((ids, labels))
}

/// Token-weighted mean loss of `data` with the adapter as it is (dropout off).
pub fn evaluate(model: &Llama, data: &Dataset, batch_size: usize) -> Result<f64> {
    let (total, count) = eval_totals(
        model,
        data,
        batch_size,
        0..data.batches_per_epoch(batch_size),
    )?;
    Ok(total / count.max(1) as f64)
}

/// (sum of token losses, counted tokens) over the eval batches `indices` of `data`.
pub(crate) fn eval_totals(
    model: &Llama,
    data: &Dataset,
    batch_size: usize,
    indices: impl Iterator<Item = usize>,
) -> Result<(f64, usize)> {
    let mut total = 0f64;
    let mut count = 0usize;
    for index in indices {
        let (batch, _) = data.batch(0, batch_size, index, false);
        let n = super::loss::counted_positions(&batch.labels);
        if n == 0 {
            continue;
        }
        let (ids, labels) = batch_tensors(&batch, model.device())?;
        let mut cache = model.new_cache(batch.input_ids.len());
        let logits = model.forward(&ids, &mut cache)?.detach();
        let loss = causal_lm_loss(&logits, &labels)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        total += loss * n as f64;
        count += n;
    }
    Ok((total, count))
}

/// Each micro-batch's loss weight: its share of the step's counted positions, so that accumulating
/// `weight x mean loss` over the micro-batches gives the gradient of one big batch; `None` for a
/// micro-batch with no counted position (skipped). Both step paths (autograd, CUDA engine) use it.
pub(crate) fn loss_weights(micro: &[(Batch, Vec<usize>)]) -> Vec<Option<f64>> {
    let counted: Vec<usize> = micro
        .iter()
        .map(|(b, _)| super::loss::counted_positions(&b.labels))
        .collect();
    let total: usize = counted.iter().sum();
    counted
        .into_iter()
        .map(|c| (c > 0).then(|| c as f64 / total as f64))
        .collect()
}

/// One optimizer step through Candle's autograd (the reference path): forward, loss and backward
/// per micro-batch with gradients accumulated by token share, global-norm clipping, AdamW. Returns
/// (step loss, gradient norm before clipping); a non-finite value returns before the update.
pub(crate) fn candle_step(
    model: &Llama,
    vars: &[(String, Var)],
    optimizer: &mut AdamW,
    config: &TrainConfig,
    micro: &[(Batch, Vec<usize>)],
    lr: f64,
    masks: Option<MaskSeeds>,
) -> Result<(f64, f64)> {
    let weighted: Vec<(&Batch, f64)> = micro
        .iter()
        .zip(loss_weights(micro))
        .filter_map(|((batch, _), weight)| weight.map(|w| (batch, w)))
        .collect();
    let (grads, step_loss) = accumulate_grads(model, vars, config, &weighted, masks)?;
    apply_update(grads, step_loss, optimizer, config, lr)
}

/// Where one step's LoRA dropout masks come from: the model's shared seed, set before each
/// micro-batch from the run's seed, this optimizer step (from 1) and the micro-batch's index
/// (`first_micro` + its place among the step's micro-batches with counted labels).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskSeeds<'a> {
    pub(crate) seed: &'a DropoutSeed,
    pub(crate) step: u64,
    pub(crate) first_micro: u64,
}

/// Forward, loss and backward of each (batch, loss weight), the adapter's gradients summed with
/// those weights; returns (gradient by variable name, weighted loss). Stops at a non-finite loss.
pub(crate) fn accumulate_grads(
    model: &Llama,
    vars: &[(String, Var)],
    config: &TrainConfig,
    weighted: &[(&Batch, f64)],
    masks: Option<MaskSeeds>,
) -> Result<(HashMap<String, Tensor>, f64)> {
    let device = model.device().clone();
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let sink = GradSink::new();
    let mut step_loss = 0f64;
    for (i, &(batch, weight)) in weighted.iter().enumerate() {
        if let Some(m) = masks {
            m.seed.set(config.seed, m.step, m.first_micro + i as u64);
        }
        let (ids, labels) = batch_tensors(batch, &device)?;
        let checkpointed = config.checkpointed_layers(model.config().num_hidden_layers);
        let logits = if checkpointed > 0 {
            model.forward_train_checkpointed(&ids, &sink, checkpointed)?
        } else {
            model.forward_train(&ids)?
        };
        let loss = causal_lm_loss(&logits, &labels)?;
        let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        step_loss += loss_value * weight;
        if !loss_value.is_finite() {
            break;
        }
        let store = (loss * weight)?.backward().context("backward pass")?;
        let mut micro_grads = collect_grads(vars, &store);
        // Checkpointed layers hand their adapter gradients over through the sink.
        let mut sunk = sink.take();
        for (name, var) in vars {
            if let Some(g) = sunk.remove(&var.as_tensor().id()) {
                let merged = match micro_grads.remove(name) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                micro_grads.insert(name.clone(), merged);
            }
        }
        // The store also holds the gradients Candle computed for every non-trainable input of
        // the graph; the graph itself lives as long as the logits. Free both before the next
        // micro-batch's forward.
        drop(store);
        drop(logits);
        for (name, g) in micro_grads {
            let merged = match grads.remove(&name) {
                Some(acc) => (acc + g)?,
                None => g,
            };
            grads.insert(name, merged);
        }
    }
    Ok((grads, step_loss))
}

/// Global-norm clipping and the AdamW update from a step's gradients; returns (loss, gradient norm
/// before clipping). A non-finite loss or norm leaves the parameters unchanged.
pub(crate) fn apply_update(
    mut grads: HashMap<String, Tensor>,
    step_loss: f64,
    optimizer: &mut AdamW,
    config: &TrainConfig,
    lr: f64,
) -> Result<(f64, f64)> {
    let grad_norm = if step_loss.is_finite() {
        clip_grad_norm(&mut grads, config.max_grad_norm)?
    } else {
        f64::NAN
    };
    if step_loss.is_finite() && grad_norm.is_finite() {
        optimizer.step(&grads, lr)?;
    }
    Ok((step_loss, grad_norm))
}

/// Trains a LoRA adapter on `model` (its weights stay frozen; the adapter is left attached).
pub fn train(
    model: &mut Llama,
    run: TrainRun<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Adapter, TrainSummary)> {
    train_with_save_fault(model, run, SaveFault::default(), progress)
}

/// [`train`] with a crash-test hook in the checkpoint writer (the process aborts part-way through a
/// save): for the tests that check a killed run leaves a loadable checkpoint, not for users.
#[doc(hidden)]
pub fn train_with_save_fault(
    model: &mut Llama,
    run: TrainRun<'_>,
    fault: SaveFault,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Adapter, TrainSummary)> {
    super::session::train_rank(model, run, fault, None, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::IGNORE_INDEX;

    fn batch(labels: Vec<Vec<i64>>) -> (Batch, Vec<usize>) {
        let input_ids = labels.iter().map(|r| vec![0u32; r.len()]).collect();
        let lengths = labels.iter().map(Vec::len).collect();
        (Batch { input_ids, labels }, lengths)
    }

    /// Counted positions are labels after the first that are not ignored: 3, 0 and 1 here.
    #[test]
    fn loss_weights_are_shares_of_counted_positions() {
        let i = IGNORE_INDEX;
        let micro = vec![
            batch(vec![vec![5, 6, 7], vec![1, 2, i]]),
            batch(vec![vec![4, i, i]]),
            batch(vec![vec![i, i, 9]]),
        ];
        assert_eq!(
            loss_weights(&micro),
            vec![Some(3.0 / 4.0), None, Some(1.0 / 4.0)]
        );
    }

    #[test]
    fn a_checkpoint_count_alone_turns_checkpointing_on() {
        let with = |on: bool, n: Option<usize>| TrainConfig {
            activation_checkpointing: on,
            checkpoint_layers: n,
            ..TrainConfig::default()
        };
        assert_eq!(with(false, None).checkpointed_layers(30), 0);
        assert_eq!(with(true, None).checkpointed_layers(30), 30);
        assert_eq!(with(true, Some(4)).checkpointed_layers(30), 4);
        // Was 0: the count was silently ignored without the flag.
        assert_eq!(with(false, Some(4)).checkpointed_layers(30), 4);
        assert_eq!(with(false, Some(99)).checkpointed_layers(30), 30);
    }

    #[test]
    fn mlp_recompute_takes_the_layers_after_the_checkpointed_ones() {
        let with = |ckpt: Option<usize>, mlp: Option<usize>| TrainConfig {
            checkpoint_layers: ckpt,
            recompute_mlp_layers: mlp,
            ..TrainConfig::default()
        };
        assert_eq!(with(None, None).mlp_recomputed_layers(30), 0);
        assert_eq!(with(None, Some(20)).mlp_recomputed_layers(30), 20);
        assert_eq!(with(Some(14), Some(20)).mlp_recomputed_layers(30), 16);
        assert_eq!(with(Some(30), Some(5)).mlp_recomputed_layers(30), 0);
        // A config saved before the option existed reads as none.
        let json = serde_json::to_string(&with(Some(2), None)).unwrap();
        let field = ",\"recompute_mlp_layers\":null";
        assert!(json.contains(field), "{json}");
        let old: TrainConfig = serde_json::from_str(&json.replace(field, "")).unwrap();
        assert_eq!(old.recompute_mlp_layers, None);
    }
}
