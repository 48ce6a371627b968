//! The engine against Candle's autograd on the same CUDA device (part of `wick bench gpu-check`,
//! records `trn_engine_*`): the only end-to-end proof that the launch sequence is right.
//!
//! Four tiny random models with odd sizes and GQA (3 query heads per kv head): a LLaMA with tied
//! embeddings, 3 layers and LoRA on all seven projections; one with an untied head, 2 layers and
//! LoRA on q, v and down only; a Qwen2 (q/k/v biases, random U(+-0.5)) shaped like the first; a
//! LLaMA with `attention_bias` (q/k/v/o biases), untied, LoRA on q, o and down. LoRA with random
//! non-zero A and B (PEFT's `init_lora_weights=false`).
//! One optimizer step of two micro-batches: [2 rows x 24] with ignored labels and a padded row tail,
//! then [1 row x 17] (the engine pads it to 2 x 24: a padding row and padded positions). The LM head
//! runs in chunks of 7 tokens (not a divisor of the 48 tokens). The tied model's attention runs in
//! chunks of 3 of its 4 (row, kv head) pairs (a scratch that small forces it: chunks (0, 3) and
//! (3, 1), the second at an offset), the untied model's unchunked. The reference is exactly what the
//! trainer does: `Llama::forward_train` + `causal_lm_loss`, backward of loss * weight per
//! micro-batch, gradients summed, `clip_grad_norm` with max_norm at half the norm (clipping active),
//! `AdamW::step`. Compared:
//! - `trn_engine_loss`: the step loss (weighted mean over the two micro-batches).
//! - `trn_engine_grad`: every LoRA A and B gradient, one record per tensor (its name in `shape`).
//! - `trn_engine_grad_norm`: the global norm before clipping.
//! - `trn_engine_update` (f32 only): each tensor's update p1 - p0 against the reference's.
//! - `trn_engine_moments`: AdamW's exp_avg and exp_avg_sq after the step, the tensor with the
//!   largest error for its tolerance named.
//! - `trn_engine_adamw`: the engine's update against Candle's AdamW applied to the engine's own
//!   gradients (checks clipping, bias corrections and weight decay exactly, whatever T is).
//! - `trn_engine_lowp_params` (bf16): the bf16 copy the products read is bf16(master) after the
//!   update, within half a bf16 ulp per element (its `max_rel_err` is in ulps; a stale copy is off
//!   by ~lr).
//! - Then a second step on the same micro-batches (both graphs replayed, bias corrections at t = 2):
//!   its loss and norm (`trn_engine_loss`, `trn_engine_grad_norm`, "step 2") and, in f32, the
//!   parameters after it (`trn_engine_update`, "step 2").
//! - `trn_engine_curve` (Qwen2, f32): the step loss over 20 optimizer steps on the same
//!   micro-batches, engine against Candle's trainer path, worst step within 1e-4.
//!
//! Tolerances (`max |got - want| / max |want|`): f32 engine 1e-4 throughout. The bf16 engine is
//! judged against what bf16 itself costs, not a guessed constant: the same reference is also run
//! on the model loaded in bf16 (`Llama::load` with dtype bf16, a copy of the same initial adapter
//! with f32 LoRA variables, exactly what the Candle trainer runs on a bf16 model; clipping at the
//! f32 reference's max_norm, the same AdamW config), and every bf16 record (loss, each gradient,
//! the norm, each moment) requires
//! `err(engine bf16 vs f32 reference) <= max(BF16_RATIO x err(Candle bf16 vs f32 reference),
//! BF16_FLOOR)`, both errors written in the record's `shape` text. See [`BF16_RATIO`] and
//! [`BF16_FLOOR`] for why 3 and 1e-2. A real bug (a wrong index, a missing term) is caught by the
//! f32 records at 1e-4 (the launch sequence is the same for both T, only the kernels'
//! instantiation differs) and in bf16 gives errors of order 1, far beyond either bound. The bf16
//! update is not compared with the reference's (Adam's first step is ~lr * sign(g), so any element
//! whose gradient is within bf16 noise of zero may flip), but `trn_engine_adamw` holds it to 5e-5
//! (the updates are ~lr = 1e-2 on parameters up to ~0.5, whose f32 ulp is ~6e-8: 6e-6 of the
//! update).
//!
//! AdamW's eps is set to 5% of the largest clipped gradient for this check: with the default 1e-8,
//! the first update is lr * sign(g) and an element whose gradient is within f32 noise of zero
//! (~1e-6 of the largest) flips sign by chance; with this eps such an element moves by at most
//! ~lr * 4e-5 either way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

use super::layout::ATTENTION_SCRATCH_BYTES;
use super::{EngineOptions, TrainEngine};
use crate::check::{max_rel_err, random_values};
use crate::formats::config::{Architecture, DecoderConfig};
use crate::formats::weights::{LoadOptions, Weight, WeightSource};
use crate::lora::config::InitLoraWeights;
use crate::lora::{attach, Adapter, AdapterLayer, LoraConfig, TargetModules};
use crate::models::llama::{expected_tensors, Llama};
use crate::train::loss::{causal_lm_loss, IGNORE_INDEX};
use crate::train::optimizer::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use crate::{Context, Error, Result};

/// A bf16 engine record passes when its error against the f32 reference is at most this many times
/// the error of Candle's own bf16 run against the same reference. Not 1: the engine rounds more
/// intermediates to bf16 than Candle's bf16 path (the LoRA products read a bf16 copy of A and B and
/// store xa and dxa in bf16, where Candle runs the LoRA branch in f32; P, dS and the logits'
/// gradient are stored in bf16), so its noise is of the same order but systematically somewhat
/// larger. Measured on an H200 over two seeds: up to 3.2x on a second moment (exp_avg_sq ~ g^2
/// doubles the gradient's relative noise on both sides, and the worst of 42 tensors is the one
/// recorded), at most ~2x on the gradients themselves. 4x still separates "the same kind of
/// noise" from a defect (a wrong index or a missing term gives errors of order 1, 25x and more).
pub const BF16_RATIO: f64 = 4.0;

/// The least bf16 tolerance: 1e-2, about 2.5 bf16 roundings (2^-8 = 3.9e-3) of the largest value.
/// Candle's bf16 error can be accidentally tiny where errors cancel (the loss, a mean over ~70
/// positions; the global norm), and a bound of 3x a lucky value would judge luck, not the engine.
pub const BF16_FLOOR: f64 = 1e-2;

/// The bf16 tolerance given Candle's bf16 error against the f32 reference.
fn bf16_tolerance(candle_err: f64) -> f64 {
    (BF16_RATIO * candle_err).max(BF16_FLOOR)
}

/// One compared quantity.
#[derive(Debug, Clone)]
pub struct EngineCase {
    pub kernel: String,
    pub dtype: DType,
    /// fwd (loss), bwd (gradients), step (optimizer).
    pub pass: String,
    /// The model, and the tensor compared.
    pub shape: String,
    pub max_rel_err: f64,
    pub tolerance: f64,
}

/// An in-memory weight source.
struct MapSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl WeightSource for MapSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn get(&self, name: &str) -> Result<Weight> {
        self.tensors
            .get(name)
            .map(|t| Weight::Dense(t.clone()))
            .ok_or_else(|| Error::InvalidRequest(format!("engine check model: no tensor {name}")))
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// One check model: its config, LoRA targets and name.
struct CheckModel {
    name: &'static str,
    config: DecoderConfig,
    targets: TargetModules,
    /// (row, kv head) pairs per attention chunk (None: the default scratch, one chunk here).
    attention_pairs: Option<usize>,
    /// Optimizer steps of the f32 loss curve against Candle's (`trn_engine_curve`; 0: none).
    curve_steps: usize,
}

fn check_models() -> Vec<CheckModel> {
    let base = DecoderConfig {
        architecture: Architecture::Llama,
        vocab_size: 301,
        hidden_size: 44,
        intermediate_size: 76,
        num_hidden_layers: 3,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    };
    vec![
        CheckModel {
            name: "tied, 3 layers, all 7 targets, attention chunks of 3 pairs",
            config: base.clone(),
            targets: TargetModules::One(TargetModules::ALL_LINEAR.into()),
            attention_pairs: Some(3),
            curve_steps: 0,
        },
        CheckModel {
            name: "untied, 2 layers, q/v/down",
            config: DecoderConfig {
                num_hidden_layers: 2,
                tie_word_embeddings: false,
                ..base.clone()
            },
            targets: TargetModules::List(vec![
                "q_proj".into(),
                "v_proj".into(),
                "down_proj".into(),
            ]),
            attention_pairs: None,
            curve_steps: 0,
        },
        CheckModel {
            name: "qwen2 (q/k/v biases), tied, 3 layers, all 7 targets",
            config: DecoderConfig {
                architecture: Architecture::Qwen2,
                attention_bias: true,
                ..base.clone()
            },
            targets: TargetModules::One(TargetModules::ALL_LINEAR.into()),
            attention_pairs: Some(3),
            curve_steps: 20,
        },
        CheckModel {
            name: "llama attention_bias (q/k/v/o biases), untied, 2 layers, q/o/down",
            config: DecoderConfig {
                num_hidden_layers: 2,
                tie_word_embeddings: false,
                attention_bias: true,
                ..base
            },
            targets: TargetModules::List(vec![
                "q_proj".into(),
                "o_proj".into(),
                "down_proj".into(),
            ]),
            attention_pairs: None,
            curve_steps: 0,
        },
    ]
}

/// Seeded random weights: projections ~ U(+-1.7/sqrt(in)), norms 1 +- 0.3, biases U(+-0.5),
/// embedding U(+-1).
fn random_weights(cfg: &DecoderConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (i, (name, dims)) in expected_tensors(cfg).into_iter().enumerate() {
        let len: usize = dims.iter().product();
        let seed = seed.wrapping_add(i as u64 * 7919);
        let values: Vec<f32> = if name.ends_with(".bias") {
            random_values(len, seed, 0.5)
                .into_iter()
                .map(|v| v as f32)
                .collect()
        } else if dims.len() == 1 {
            random_values(len, seed, 0.3)
                .into_iter()
                .map(|v| 1.0 + v as f32)
                .collect()
        } else {
            let scale = if name.contains("embed") || name.contains("lm_head") {
                1.0
            } else {
                1.7 / (dims[1] as f64).sqrt()
            };
            random_values(len, seed, scale)
                .into_iter()
                .map(|v| v as f32)
                .collect()
        };
        let t = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu).context("check weights")?;
        out.insert(name, t);
    }
    Ok(out)
}

/// A micro-batch: unpadded rows of ids and unshifted labels.
struct Micro {
    ids: Vec<Vec<u32>>,
    labels: Vec<Vec<i64>>,
}

fn micro_batches(vocab: usize, seed: u64) -> Vec<Micro> {
    let draw = |len: usize, seed: u64| -> Vec<u32> {
        random_values(len, seed, 1.0)
            .into_iter()
            .map(|v| 1 + (((v + 1.0) / 2.0 * (vocab - 1) as f64) as u32).min(vocab as u32 - 2))
            .collect()
    };
    // Row 0: a 5-token prompt (ignored), then answer tokens. Row 1: 18 real tokens then 6 padding
    // positions (id 0, ignored), as the data loader pads, and one ignored position in the middle.
    let row0 = draw(24, seed);
    let mut labels0: Vec<i64> = row0.iter().map(|&t| t as i64).collect();
    labels0[..5].fill(IGNORE_INDEX);
    let mut row1 = draw(24, seed + 1);
    row1[18..].fill(0);
    let mut labels1: Vec<i64> = row1.iter().map(|&t| t as i64).collect();
    labels1[18..].fill(IGNORE_INDEX);
    labels1[9] = IGNORE_INDEX;
    let row2 = draw(17, seed + 2);
    let mut labels2: Vec<i64> = row2.iter().map(|&t| t as i64).collect();
    labels2[..3].fill(IGNORE_INDEX);
    vec![
        Micro {
            ids: vec![row0, row1],
            labels: vec![labels0, labels1],
        },
        Micro {
            ids: vec![row2],
            labels: vec![labels2],
        },
    ]
}

fn tensor_2d<T: candle_core::WithDType>(rows: &[Vec<T>], device: &Device) -> Result<Tensor> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<T> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (b, t), device).context("check batch")
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context("check read-back")
}

/// A deep copy of an adapter (fresh variables with their own storage).
fn copy_adapter(adapter: &Adapter) -> Result<Adapter> {
    let layers = adapter
        .layers
        .iter()
        .map(|l| {
            Ok(AdapterLayer {
                path: l.path.clone(),
                a: Var::from_tensor(&l.a.as_tensor().copy()?.detach())?,
                b: Var::from_tensor(&l.b.as_tensor().copy()?.detach())?,
                magnitude: None,
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .context("copying the check adapter")?;
    Ok(Adapter {
        config: adapter.config.clone(),
        layers,
    })
}

fn var_values(adapter: &Adapter) -> Result<HashMap<String, Vec<f64>>> {
    adapter
        .vars()
        .into_iter()
        .map(|(n, v)| Ok((n, f64s(v.as_tensor())?)))
        .collect()
}

/// What Candle's autograd + AdamW give for two optimizer steps on the same micro-batches.
struct Reference {
    /// Step loss of steps 1 and 2 (step 2 runs on the parameters after one update).
    loss: [f64; 2],
    /// Step 1's gradients before clipping.
    grads: HashMap<String, Vec<f64>>,
    /// Global norm before clipping, steps 1 and 2.
    norm: [f64; 2],
    max_norm: f64,
    adamw: AdamWConfig,
    lr: f64,
    /// Parameters before step 1, after step 1, after step 2.
    before: HashMap<String, Vec<f64>>,
    after: HashMap<String, Vec<f64>>,
    after2: HashMap<String, Vec<f64>>,
    /// AdamW moments after step 1.
    moments: HashMap<String, Vec<f64>>,
}

/// Loss and summed gradients of one step: per micro-batch, backward of loss * weight.
fn step_gradients(
    model: &Llama,
    vars: &[(String, Var)],
    micro: &[Micro],
    weights: &[f64],
) -> Result<(f64, HashMap<String, Tensor>)> {
    let device = model.device().clone();
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let mut loss = 0f64;
    for (mb, w) in micro.iter().zip(weights) {
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
fn reference(
    model: &mut Llama,
    adapter: &Adapter,
    micro: &[Micro],
    weights: &[f64],
    fixed: Option<(f64, AdamWConfig)>,
) -> Result<Reference> {
    adapter.apply(model.linear_layers_mut(), Path::new("engine check adapter"))?;
    let vars = adapter.vars();
    let before = var_values(adapter)?;
    let (loss1, mut grads) = step_gradients(model, &vars, micro, weights)?;
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
    let (loss2, mut grads2) = step_gradients(model, &vars, micro, weights)?;
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

fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// How a record's tolerance is set: a fixed bound, or (bf16 engine) from Candle's bf16 values of the
/// same quantities ([`bf16_tolerance`] of their error against the same reference).
#[derive(Clone, Copy)]
enum Judge<'a> {
    Fixed(f64),
    AgainstCandleBf16(&'a HashMap<String, Vec<f64>>),
}

impl<'a> Judge<'a> {
    /// f32: 1e-4; otherwise against `candle`, Candle's bf16 values of the same tensors.
    fn for_dtype(dtype: DType, candle: &'a HashMap<String, Vec<f64>>) -> Self {
        match dtype {
            DType::F32 => Judge::Fixed(1e-4),
            _ => Judge::AgainstCandleBf16(candle),
        }
    }

    /// (tolerance, text for the record) for tensor `name` whose reference values are `want`.
    fn tolerance(&self, name: &str, want: &[f64]) -> (f64, String) {
        match self {
            Judge::Fixed(t) => (*t, String::new()),
            Judge::AgainstCandleBf16(candle) => {
                let c = match candle.get(name) {
                    Some(c) => max_rel_err(c, want),
                    None => f64::NAN,
                };
                // No finite Candle error (a missing tensor, a NaN) leaves only the floor: never
                // an infinite tolerance.
                let c = if c.is_finite() { c } else { 0.0 };
                (bf16_tolerance(c), bf16_text(c))
            }
        }
    }
}

fn bf16_text(candle_err: f64) -> String {
    format!(
        "; Candle bf16 vs f32 ref {candle_err:.3e}, tolerance max({BF16_RATIO} x that, {BF16_FLOOR:.0e})"
    )
}

/// Records, for each name, got vs want; `per_tensor` one record each, else the one whose error is
/// the largest share of its tolerance.
#[allow(clippy::too_many_arguments)]
fn compare(
    out: &mut Vec<EngineCase>,
    kernel: &str,
    dtype: DType,
    pass: &str,
    model: &str,
    got: &HashMap<String, Vec<f64>>,
    want: &HashMap<String, Vec<f64>>,
    judge: Judge<'_>,
    per_tensor: bool,
) {
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    // (error / tolerance, error, tolerance, text) of the worst tensor.
    let mut worst = (f64::NEG_INFINITY, f64::INFINITY, 0f64, String::new());
    for name in names {
        let err = match got.get(name) {
            Some(g) => max_rel_err(g, &want[name]),
            None => f64::INFINITY,
        };
        let err = if err.is_nan() { f64::INFINITY } else { err };
        let (tolerance, note) = judge.tolerance(name, &want[name]);
        let what = format!("{model}: {name} [{}]{note}", want[name].len());
        if per_tensor {
            out.push(EngineCase {
                kernel: kernel.into(),
                dtype,
                pass: pass.into(),
                shape: what,
                max_rel_err: err,
                tolerance,
            });
        } else if err / tolerance > worst.0 {
            worst = (err / tolerance, err, tolerance, what);
        }
    }
    if !per_tensor {
        out.push(EngineCase {
            kernel: kernel.into(),
            dtype,
            pass: pass.into(),
            shape: format!("{} tensors, worst {}", want.len(), worst.3),
            max_rel_err: worst.1,
            tolerance: worst.2,
        });
    }
}

fn rel_err(got: f64, want: f64) -> f64 {
    let err = (got - want).abs() / want.abs().max(1e-30);
    if err.is_nan() {
        f64::INFINITY
    } else {
        err
    }
}

/// A scalar (loss, norm) against `want`; `candle_bf16`: Candle's bf16 value (bf16 engine: the
/// tolerance is [`bf16_tolerance`] of its error), else the fixed `tolerance`.
fn scalar_case(
    kernel: &str,
    dtype: DType,
    pass: &str,
    shape: String,
    (got, want): (f64, f64),
    candle_bf16: Option<f64>,
    tolerance: f64,
) -> EngineCase {
    let (tolerance, note) = match candle_bf16 {
        Some(c) => {
            let c = rel_err(c, want);
            let c = if c.is_finite() { c } else { 0.0 };
            (bf16_tolerance(c), bf16_text(c))
        }
        None => (tolerance, String::new()),
    };
    EngineCase {
        kernel: kernel.into(),
        dtype,
        pass: pass.into(),
        shape: format!("{shape}{note}"),
        max_rel_err: rel_err(got, want),
        tolerance,
    }
}

/// The bf16 copy against the f32 masters, in bf16 ulps of each master value: a correctly rounded
/// copy is within half an ulp everywhere; a stale one (before the update) is off by ~lr = 1e-2, at
/// least 1.3 ulps of the largest parameters and far more of the others.
fn lowp_case(
    dtype: DType,
    model: &str,
    got: &HashMap<String, Vec<f64>>,
    master: &HashMap<String, Vec<f64>>,
) -> EngineCase {
    let mut worst = (0f64, String::new());
    for (name, m) in master {
        let err = match got.get(name) {
            Some(g) if g.len() == m.len() => g
                .iter()
                .zip(m)
                .map(|(g, m)| {
                    let ulp = if *m == 0.0 {
                        f64::from(f32::MIN_POSITIVE)
                    } else {
                        2f64.powi(m.abs().log2().floor() as i32 - 7)
                    };
                    (g - m).abs() / ulp
                })
                .fold(
                    0f64,
                    |a, e| if e.is_nan() { f64::INFINITY } else { a.max(e) },
                ),
            _ => f64::INFINITY,
        };
        if err >= worst.0 {
            worst = (err, name.clone());
        }
    }
    EngineCase {
        kernel: "trn_engine_lowp_params".into(),
        dtype,
        pass: "step".into(),
        shape: format!(
            "{model}: bf16 copy vs master after the update, in bf16 ulps, {} tensors, worst {}",
            master.len(),
            worst.1
        ),
        max_rel_err: worst.0,
        tolerance: 0.5,
    }
}

/// The engine's options for a check model: batch 2 x 24 positions, LM head chunks of 7 tokens, the
/// model's attention chunking.
fn engine_options(cm: &CheckModel, dtype: DType) -> EngineOptions {
    let (batch, seq) = (2, 24);
    let groups = cm.config.num_attention_heads / cm.config.num_key_value_heads;
    EngineOptions {
        batch,
        seq,
        dtype,
        loss_chunk: 7,
        // f32 scores of `pairs` [G*S, S] blocks.
        attention_scratch_bytes: cm.attention_pairs.map_or(ATTENTION_SCRATCH_BYTES, |pairs| {
            pairs * groups * seq * seq * 4
        }),
    }
}

/// `trn_engine_curve`: the f32 engine's step losses over `cm.curve_steps` optimizer steps on the
/// same two micro-batches against Candle's trainer path (autograd, `clip_grad_norm`, `AdamW`) from
/// the same initial adapter, with the step-1 check's clipping and AdamW config; the record is the
/// worst step's relative error (1e-4). The loss falls over the steps (both values in the record),
/// so the curve exercises every update, not only the first.
#[allow(clippy::too_many_arguments)]
fn loss_curve(
    cm: &CheckModel,
    load: &dyn Fn(DType) -> Result<Llama>,
    initial: &Adapter,
    micro: &[Micro],
    weights: &[f64],
    (max_norm, adamw, lr): (f64, AdamWConfig, f64),
) -> Result<EngineCase> {
    let steps = cm.curve_steps;
    let mut candle = Vec::with_capacity(steps);
    {
        let mut model = load(DType::F32)?;
        let adapter = copy_adapter(initial)?;
        adapter.apply(model.linear_layers_mut(), Path::new("engine curve adapter"))?;
        let vars = adapter.vars();
        let mut optimizer = AdamW::new(vars.clone(), adamw)?;
        for _ in 0..steps {
            let (loss, mut grads) = step_gradients(&model, &vars, micro, weights)?;
            clip_grad_norm(&mut grads, Some(max_norm))?;
            optimizer.step(&grads, lr)?;
            candle.push(loss);
        }
    }
    let model = load(DType::F32)?;
    let adapter = copy_adapter(initial)?;
    let mut engine = TrainEngine::new(&model, &adapter, adamw, engine_options(cm, DType::F32))?;
    engine.load_params(&adapter)?;
    let mut worst = (0f64, 0usize);
    let mut engine_losses = Vec::with_capacity(steps);
    for (step, want) in candle.iter().enumerate() {
        engine.begin_step()?;
        for (mb, w) in micro.iter().zip(weights) {
            engine.micro_batch(&mb.ids, &mb.labels, *w as f32)?;
        }
        let (loss, _) = engine.optimizer_step(lr, Some(max_norm))?;
        let err = rel_err(loss, *want);
        if err >= worst.0 {
            worst = (err, step + 1);
        }
        engine_losses.push(loss);
    }
    let (first, last) = (candle[0], candle[steps - 1]);
    Ok(EngineCase {
        kernel: "trn_engine_curve".into(),
        dtype: DType::F32,
        pass: "step".into(),
        shape: format!(
            "{} ({:?}): {steps} steps, Candle loss {first:.5} -> {last:.5}, engine {:.5} -> {:.5}, worst step {}",
            cm.name,
            engine.mode(),
            engine_losses[0],
            engine_losses[steps - 1],
            worst.1
        ),
        max_rel_err: worst.0,
        tolerance: 1e-4,
    })
}

/// Runs every case on `device` (CUDA); `seed` makes the weights, adapter and data.
pub fn run(device: &Device, seed: u64) -> Result<Vec<EngineCase>> {
    let mut out = Vec::new();
    for (mi, cm) in check_models().into_iter().enumerate() {
        let seed = seed.wrapping_add(mi as u64 * 1_000_003);
        let tensors = random_weights(&cm.config, seed)?;
        let source = MapSource {
            path: PathBuf::from(format!("engine check model ({})", cm.name)),
            tensors,
        };
        let load = |dtype: DType| {
            Llama::load(
                &cm.config,
                &source,
                &LoadOptions {
                    device: device.clone(),
                    dtype: Some(dtype),
                },
            )
        };
        let mut ref_model = load(DType::F32)?;
        let lora = LoraConfig {
            r: 4,
            lora_alpha: 6.0,
            target_modules: cm.targets.clone(),
            init_lora_weights: InitLoraWeights::Bool(false),
            ..LoraConfig::default()
        };
        let adapter = attach(lora, ref_model.linear_layers_mut(), seed ^ 0x5eed, device)?;
        let initial = copy_adapter(&adapter)?;
        let micro = micro_batches(cm.config.vocab_size, seed + 17);
        let counted: Vec<usize> = micro
            .iter()
            .map(|m| crate::train::loss::counted_positions(&m.labels))
            .collect();
        let total: usize = counted.iter().sum();
        let weights: Vec<f64> = counted.iter().map(|&c| c as f64 / total as f64).collect();
        let want = reference(&mut ref_model, &adapter, &micro, &weights, None)?;
        if cm.curve_steps > 0 {
            let hyper = (want.max_norm, want.adamw, want.lr);
            let load: &dyn Fn(DType) -> Result<Llama> = &load;
            out.push(loss_curve(&cm, load, &initial, &micro, &weights, hyper)?);
        }
        // Candle's trainer path on the model in bf16 (the f32 LoRA variables the trainer holds),
        // from the same initial adapter: what bf16 itself costs, the yardstick of the bf16 engine.
        let candle_bf16 = {
            let mut model = load(DType::BF16)?;
            let adapter = copy_adapter(&initial)?;
            let fixed = Some((want.max_norm, want.adamw));
            reference(&mut model, &adapter, &micro, &weights, fixed)?
        };
        let want_update: HashMap<String, Vec<f64>> = want
            .after
            .iter()
            .map(|(n, p)| (n.clone(), diff(p, &want.before[n])))
            .collect();
        for dtype in [DType::F32, DType::BF16] {
            // f32: 1e-4 everywhere; bf16: judged against Candle's bf16 run.
            let bf16 = (dtype != DType::F32).then_some(&candle_bf16);
            let judge = |candle| Judge::for_dtype(dtype, candle);
            let model = load(dtype)?;
            let engine_adapter = copy_adapter(&initial)?;
            let opts = engine_options(&cm, dtype);
            let mut engine = TrainEngine::new(&model, &engine_adapter, want.adamw, opts)?;
            engine.load_params(&engine_adapter)?;
            engine.begin_step()?;
            for (mb, w) in micro.iter().zip(&weights) {
                engine.micro_batch(&mb.ids, &mb.labels, *w as f32)?;
            }
            let grads: HashMap<String, Tensor> = engine.gradients()?;
            let got_grads: HashMap<String, Vec<f64>> = grads
                .iter()
                .map(|(n, g)| Ok((n.clone(), f64s(g)?)))
                .collect::<Result<_>>()?;
            let (loss, norm) = engine.optimizer_step(want.lr, Some(want.max_norm))?;
            engine.store_params(&engine_adapter)?;
            let model_name = format!("{} ({:?})", cm.name, engine.mode());
            out.push(scalar_case(
                "trn_engine_loss",
                dtype,
                "fwd",
                format!("{model_name}: step loss, B2 S24 + B1 S17"),
                (loss, want.loss[0]),
                bf16.map(|c| c.loss[0]),
                1e-4,
            ));
            compare(
                &mut out,
                "trn_engine_grad",
                dtype,
                "bwd",
                &model_name,
                &got_grads,
                &want.grads,
                judge(&candle_bf16.grads),
                true,
            );
            out.push(scalar_case(
                "trn_engine_grad_norm",
                dtype,
                "bwd",
                format!("{model_name}: global norm before clipping"),
                (norm, want.norm[0]),
                bf16.map(|c| c.norm[0]),
                1e-4,
            ));
            let after = var_values(&engine_adapter)?;
            let got_update: HashMap<String, Vec<f64>> = after
                .iter()
                .map(|(n, p)| (n.clone(), diff(p, &want.before[n])))
                .collect();
            if dtype == DType::F32 {
                compare(
                    &mut out,
                    "trn_engine_update",
                    dtype,
                    "step",
                    &model_name,
                    &got_update,
                    &want_update,
                    Judge::Fixed(1e-4),
                    false,
                );
            }
            let state = engine.optimizer_state()?;
            let moments: HashMap<String, Vec<f64>> = state
                .iter()
                .map(|(n, t)| Ok((n.clone(), f64s(t)?)))
                .collect::<Result<_>>()?;
            for suffix in [".exp_avg", ".exp_avg_sq"] {
                let pick = |m: &HashMap<String, Vec<f64>>| -> HashMap<String, Vec<f64>> {
                    m.iter()
                        .filter(|(n, _)| n.ends_with(suffix))
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect()
                };
                compare(
                    &mut out,
                    "trn_engine_moments",
                    dtype,
                    "step",
                    &model_name,
                    &pick(&moments),
                    &pick(&want.moments),
                    judge(&candle_bf16.moments),
                    false,
                );
            }
            // Candle's AdamW on the engine's own gradients, from the same starting point.
            let exact = copy_adapter(&initial)?;
            let mut host_grads = grads;
            clip_grad_norm(&mut host_grads, Some(want.max_norm))?;
            let mut optimizer = AdamW::new(exact.vars(), want.adamw)?;
            optimizer.step(&host_grads, want.lr)?;
            let exact_update: HashMap<String, Vec<f64>> = var_values(&exact)?
                .into_iter()
                .map(|(n, p)| {
                    let d = diff(&p, &want.before[&n]);
                    (n, d)
                })
                .collect();
            compare(
                &mut out,
                "trn_engine_adamw",
                dtype,
                "step",
                &model_name,
                &got_update,
                &exact_update,
                Judge::Fixed(5e-5),
                false,
            );
            // Step 2 from the updated parameters (replays both graphs; in bf16 the products read
            // the copy that AdamW refreshed).
            if let Some(lowp) = engine.low_precision_params()? {
                let got: HashMap<String, Vec<f64>> = lowp
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), f64s(t)?)))
                    .collect::<Result<_>>()?;
                let master = var_values(&engine_adapter)?;
                out.push(lowp_case(dtype, &model_name, &got, &master));
            }
            engine.begin_step()?;
            for (mb, w) in micro.iter().zip(&weights) {
                engine.micro_batch(&mb.ids, &mb.labels, *w as f32)?;
            }
            let (loss2, norm2) = engine.optimizer_step(want.lr, Some(want.max_norm))?;
            out.push(scalar_case(
                "trn_engine_loss",
                dtype,
                "fwd",
                format!("{model_name}: step 2 loss (after one update)"),
                (loss2, want.loss[1]),
                bf16.map(|c| c.loss[1]),
                1e-4,
            ));
            out.push(scalar_case(
                "trn_engine_grad_norm",
                dtype,
                "bwd",
                format!("{model_name}: step 2 global norm"),
                (norm2, want.norm[1]),
                bf16.map(|c| c.norm[1]),
                1e-4,
            ));
            if dtype == DType::F32 {
                engine.store_params(&engine_adapter)?;
                let got2: HashMap<String, Vec<f64>> = var_values(&engine_adapter)?
                    .into_iter()
                    .map(|(n, p)| {
                        let d = diff(&p, &want.before[&n]);
                        (n, d)
                    })
                    .collect();
                let want2: HashMap<String, Vec<f64>> = want
                    .after2
                    .iter()
                    .map(|(n, p)| (n.clone(), diff(p, &want.before[n])))
                    .collect();
                compare(
                    &mut out,
                    "trn_engine_update",
                    dtype,
                    "step",
                    &format!("{model_name} step 2"),
                    &got2,
                    &want2,
                    Judge::Fixed(1e-4),
                    false,
                );
            }
        }
    }
    Ok(out)
}
