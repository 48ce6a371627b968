//! The decode engines end to end against Candle on the CPU (part of `wick bench gpu-check`,
//! records `dec_engine_*`): tiny random models with GGML-quantized weights, unmerged LoRA adapters
//! and biases, stepped token by token.
//!
//! Five models with odd sizes and GQA (vocab 301, 2 layers): a LLaMA with Q8_0 weights and an
//! untied head and a Qwen2 with q/k/v biases, Q4_1 weights and a tied head (3 query heads of 32
//! per kv head; hidden 96, ffn 160), a LLaMA with Q4_K_M's mix of formats (Q4_K, Q6_K for v,
//! down and the head: q/k/v launched as three matrices; hidden 256, ffn 512, 2 query heads of 64
//! per kv head), and the first two shapes again with dense weights as an HF directory holds them
//! (the Qwen2 in bf16, the LLaMA in f16). Two random adapters of different ranks (4 and 12, all
//! seven projections for one, q/v/down for the other; B non-zero, scales 2 and 0.5) are loaded into
//! slots 1 and 2 of the engines' pools. The reference is Candle's `Llama` on the CPU with the same
//! weights dequantized to f32 and the adapter attached unmerged (`Linear::lora`), and the same
//! model with the adapter merged into dense weights (`W + s B A`), the "greedy output equals the
//! merged model's" criterion. Compared at each of 6 positions (max |got - want| / max |want|, f32
//! tolerance 1e-5 x the number of layers' worth of reordering: see [`TOLERANCE`]):
//! - `dec_engine_lora`: the batch-1 engine (f32 activations) with each adapter, and with none,
//!   against the unmerged reference; `dec_engine_lora_merged` the same logits against the merged
//!   model, and the greedy ids of both (shape text) must agree. `dec_engine_q8x_lora`: the same
//!   steps on int8 activations (the default) against the unmerged reference at [`INT8_TOLERANCE`].
//! - `dec_engine_prefill`: the batched prefill (q/k/v biases and the adapter included) of all but
//!   the last id, then a step on the cache it wrote, without adapter and with each; in full f32
//!   (at [`TOLERANCE`]) and on the TF32 tensor cores, the default (at [`TF32_TOLERANCE`]).
//! - `dec_engine_lora_batch`: the batch engine, 3 sequences with slots [2, none, 1] and different
//!   tokens, each against the reference with its own adapter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::adapters::DecodeAdapter;
use super::batch::BatchDecodeEngine;
use super::DecodeEngine;
use crate::check::{max_rel_err, random_values};
use crate::formats::config::{Architecture, DecoderConfig};
use crate::formats::weights::{LoadOptions, Weight, WeightSource};
use crate::gpu::decode::launch::Int8Policy;
use crate::models::linear::LoraWeights;
use crate::models::llama::{expected_tensors, Llama};
use crate::{Context, Error, Result};

/// Tolerance of the logits (max |got - want| / max |want|): the engine's f32 sums run in another
/// order than Candle's matmuls (and x A^T B^T vs x (W + BA)^T for the merged model), ~1e-6
/// relative per product; `wick bench decode` sees ~1e-4 at 30 layers. A missing or misplaced
/// adapter term is of the order of the adapter's effect, which `dec_engine_lora_effect` requires
/// to be at least 10x this.
pub const TOLERANCE: f64 = 1e-3;

/// Tolerance of the logits after a prefill whose products ran on the TF32 tensor cores: inputs
/// rounded to a 10-bit mantissa (2^-11 relative) before every product, ~1e-3 relative per layer.
pub const TF32_TOLERANCE: f64 = 2e-2;

/// Tolerance of the logits of steps on int8 activations (the engine's default): every mat-vec's
/// input rounded to 8 bits per 32 values (up to half a step of amax / 127, ~0.5% of a product
/// relative), over two layers and the head.
pub const INT8_TOLERANCE: f64 = 5e-2;

/// One compared quantity.
pub struct EngineCheck {
    pub kernel: String,
    pub shape: String,
    pub max_rel_err: f64,
    pub tolerance: f64,
}

/// An in-memory weight source holding quantized and dense tensors (random check and benchmark
/// models).
pub struct MapSource {
    path: PathBuf,
    tensors: HashMap<String, Weight>,
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
            .cloned()
            .ok_or_else(|| Error::InvalidRequest(format!("decode check model: no tensor {name}")))
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

fn config(arch: Architecture, bias: bool, tied: bool) -> DecoderConfig {
    DecoderConfig {
        architecture: arch,
        vocab_size: 301,
        hidden_size: 96,
        intermediate_size: 160,
        num_hidden_layers: 2,
        num_attention_heads: 3,
        num_key_value_heads: 1,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        attention_bias: bias,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// Seeded random weights: 2-D ones quantized to `format(name, dims)` (projections ~ U(+-1.7/sqrt(in)),
/// embedding U(+-1)), or dense in that dtype for F32/F16/BF16 (an HF directory's tensors); norms
/// 1 +- 0.3 and biases U(+-0.5) dense. Tensors are drawn and quantized in parallel, each from its
/// own seed (the same weights on any number of threads): Candle's K-quant quantizers made the
/// SmolLM2-1.7B shapes take over a minute on one thread of the device's host.
pub fn random_source(
    cfg: &DecoderConfig,
    format: &(dyn Fn(&str, &[usize]) -> GgmlDType + Sync),
    seed: u64,
) -> Result<MapSource> {
    let tensors = expected_tensors(cfg)
        .into_par_iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            random_weight(name, dims, format, seed.wrapping_add(i as u64 * 7919))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(MapSource {
        path: PathBuf::from("<decode check model>"),
        tensors,
    })
}

/// One tensor of [`random_source`] from its seed.
fn random_weight(
    name: String,
    dims: Vec<usize>,
    format: &(dyn Fn(&str, &[usize]) -> GgmlDType + Sync),
    seed: u64,
) -> Result<(String, Weight)> {
    let len: usize = dims.iter().product();
    let weight = if dims.len() == 1 {
        let (offset, scale) = if name.ends_with("bias") {
            (0.0, 0.5)
        } else {
            (1.0, 0.3)
        };
        let v: Vec<f32> = random_values(len, seed, scale)
            .into_iter()
            .map(|v| (offset + v) as f32)
            .collect();
        Weight::Dense(Tensor::from_vec(v, len, &Device::Cpu).context("check weights")?)
    } else {
        let scale = if name.contains("embed") || name.contains("lm_head") {
            1.0
        } else {
            1.7 / (dims[1] as f64).sqrt()
        };
        let v: Vec<f32> = random_values(len, seed, scale)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let t = Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).context("check weights")?;
        match format(&name, &dims) {
            // Dense as an HF directory holds it.
            GgmlDType::BF16 => Weight::Dense(t.to_dtype(DType::BF16).context("check weights")?),
            GgmlDType::F16 => Weight::Dense(t.to_dtype(DType::F16).context("check weights")?),
            GgmlDType::F32 => Weight::Dense(t),
            q => Weight::Quantized(Arc::new(
                QTensor::quantize(&t, q).context("quantizing check weights")?,
            )),
        }
    };
    Ok((name, weight))
}

/// A random adapter of `rank` on the projections whose names contain one of `targets`.
fn random_adapter(
    model: &Llama,
    rank: usize,
    scale: f64,
    targets: &[&str],
    seed: u64,
) -> Result<Vec<Option<LoraWeights>>> {
    let mut out = Vec::new();
    for (i, (name, linear)) in model.linear_layers().into_iter().enumerate() {
        if !targets.iter().any(|t| name.contains(t)) {
            out.push(None);
            continue;
        }
        let (inp, outp) = (linear.in_features(), linear.out_features());
        let s = seed.wrapping_add(i as u64 * 31);
        let a = random_values(rank * inp, s, 1.0 / (inp as f64).sqrt());
        let b = random_values(outp * rank, s + 1, 0.5 / (rank as f64).sqrt());
        let t = |v: Vec<f64>, d: (usize, usize)| {
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            Tensor::from_vec(v, d, &Device::Cpu).context("check adapter")
        };
        out.push(Some(LoraWeights {
            a: t(a, (rank, inp))?,
            b: t(b, (outp, rank))?,
            scale,
            dropout: 0.0,
            dropout_masks: None,
            dora: None,
        }));
    }
    Ok(out)
}

fn with_adapter(base: &Llama, lora: &[Option<LoraWeights>], merged: bool) -> Result<Llama> {
    let mut model = base.clone();
    for ((_, linear), l) in model.linear_layers_mut().into_iter().zip(lora) {
        let Some(l) = l else { continue };
        if merged {
            let delta = (l.b.matmul(&l.a).context("merging")? * l.scale).context("merging")?;
            let w = (linear.dense_weight()? + delta).context("merging")?;
            linear.set_dense_weight(w);
        } else {
            linear.lora = Some(l.clone());
        }
    }
    Ok(model)
}

/// The reference's logits for `ids`, one position at a time.
fn reference_logits(model: &Llama, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
    let mut cache = model.new_cache(1);
    ids.iter()
        .map(|&id| {
            let input = Tensor::new(&[id], &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .context("check ids")?;
            model
                .forward_last(&input, &mut cache)?
                .squeeze(0)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .context("check logits")
        })
        .collect()
}

/// A seeded random adapter of `rank` on all seven projections of every layer of `cfg` (A ~
/// U(+-1/sqrt(in)), B ~ U(+-0.5/sqrt(rank)), scale 2), built on the host: for benchmarks.
pub fn random_decode_adapter(cfg: &DecoderConfig, rank: usize, seed: u64) -> DecodeAdapter {
    let (h, q, kv) = (
        cfg.hidden_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let f = cfg.intermediate_size;
    let dims = [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)];
    let layers = (0..cfg.num_hidden_layers)
        .map(|l| {
            std::array::from_fn(|p| {
                let (inp, out) = dims[p];
                let s = seed.wrapping_add((l * 7 + p) as u64 * 131);
                let v = |n, s, scale| -> Vec<f32> {
                    random_values(n, s, scale)
                        .into_iter()
                        .map(|x| x as f32)
                        .collect()
                };
                Some(super::adapters::ProjectionLora {
                    rank,
                    a: v(rank * inp, s, 1.0 / (inp as f64).sqrt()),
                    b: v(out * rank, s + 1, 1.0 / (rank as f64).sqrt()),
                })
            })
        })
        .collect();
    DecodeAdapter { layers }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |m, (i, &x)| if x > m.1 { (i, x) } else { m },
        )
        .0
}

fn rel(got: &[Vec<f32>], want: &[Vec<f32>]) -> f64 {
    let f = |v: &[Vec<f32>]| -> Vec<f64> { v.iter().flatten().map(|&x| x as f64).collect() };
    max_rel_err(&f(got), &f(want))
}

/// The quantization format of each weight of a check model, by name and shape.
type FormatOf = fn(&str, &[usize]) -> GgmlDType;

/// Q4_K_M's mix: Q6_K for v, down and the head, Q4_K elsewhere (q/k/v launched split).
fn q4_k_m(name: &str, _: &[usize]) -> GgmlDType {
    if ["v_proj", "down_proj", "lm_head"]
        .iter()
        .any(|t| name.contains(t))
    {
        GgmlDType::Q6K
    } else {
        GgmlDType::Q4K
    }
}

/// The check models: (name, config, weight formats).
fn check_models() -> [(&'static str, DecoderConfig, FormatOf); 5] {
    let k_quant_cfg = DecoderConfig {
        hidden_size: 256,
        intermediate_size: 512,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        ..config(Architecture::Llama, false, false)
    };
    [
        (
            "llama q8_0 untied",
            config(Architecture::Llama, false, false),
            |_, _| GgmlDType::Q8_0,
        ),
        (
            "qwen2 q4_1 tied, q/k/v bias",
            config(Architecture::Qwen2, true, true),
            |_, _| GgmlDType::Q4_1,
        ),
        ("llama q4_k_m mix (q4_K, q6_K), untied", k_quant_cfg, q4_k_m),
        (
            "qwen2 bf16 dense (HF directory) tied, q/k/v bias",
            config(Architecture::Qwen2, true, true),
            |_, _| GgmlDType::BF16,
        ),
        (
            "llama f16 dense untied",
            config(Architecture::Llama, false, false),
            |_, _| GgmlDType::F16,
        ),
    ]
}

/// One check model with its two adapters (as weights for the Candle reference and as the
/// engine's host copies) and the token ids it is fed.
struct ModelCase<'a> {
    name: &'a str,
    cfg: &'a DecoderConfig,
    source: &'a MapSource,
    base: &'a Llama,
    adapters: &'a [Vec<Option<LoraWeights>>; 2],
    host: &'a [DecodeAdapter],
    ids: &'a [u32],
}

/// Runs every engine check on `device` (CUDA); `seed` varies the models.
pub fn run(device: &Device, seed: u64) -> Result<Vec<EngineCheck>> {
    let mut out = Vec::new();
    for (m, (name, cfg, format)) in check_models().into_iter().enumerate() {
        let source = random_source(&cfg, &format, seed.wrapping_add(m as u64 * 1000))?;
        let cpu = LoadOptions {
            device: Device::Cpu,
            dtype: Some(DType::F32),
        };
        let base = Llama::load(&cfg, &source, &cpu)?;
        let all = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        let adapters = [
            random_adapter(&base, 4, 2.0, &all, seed + 1)?,
            random_adapter(&base, 12, 0.5, &["q_proj", "v_proj", "down_proj"], seed + 2)?,
        ];
        let host: Vec<DecodeAdapter> = adapters
            .iter()
            .map(|a| {
                let model = with_adapter(&base, a, false)?;
                DecodeAdapter::from_linears(&model.linear_layers())?
                    .ok_or_else(|| Error::InvalidRequest("check adapter is empty".into()))
            })
            .collect::<Result<_>>()?;
        let ids: Vec<u32> = (0..6).map(|i| (seed as u32 + 37 * i + 11) % 301).collect();
        let case = ModelCase {
            name,
            cfg: &cfg,
            source: &source,
            base: &base,
            adapters: &adapters,
            host: &host,
            ids: &ids,
        };
        batch_one(&mut out, &case, device, false)?;
        batch_one(&mut out, &case, device, true)?;
        prefill_then_step(&mut out, &case, device)?;
        batch_three(&mut out, &case, device)?;
    }
    Ok(out)
}

/// Batch 1: no adapter, then each adapter (slots 1 and 2), against unmerged and merged; on f32
/// activations (`dec_engine_lora*`), or on int8 ones (`dec_engine_q8x_lora`, against unmerged at
/// [`INT8_TOLERANCE`]; the adapter's effect and the merged model are the f32 run's to judge).
fn batch_one(
    out: &mut Vec<EngineCheck>,
    case: &ModelCase,
    device: &Device,
    int8: bool,
) -> Result<()> {
    let ModelCase {
        name,
        cfg,
        source,
        base,
        adapters,
        host,
        ids,
    } = *case;
    let mut engine = DecodeEngine::new(cfg, source, device)?;
    // Int8 on every launch that can take it (the default leaves some in f32).
    engine.use_int8_policy(if int8 {
        Int8Policy::All
    } else {
        Int8Policy::Off
    });
    engine.load_adapter(1, &host[0], None)?;
    engine.load_adapter(2, &host[1], None)?;
    for (slot, lora) in [(None, None), (Some(1), Some(0)), (Some(2), Some(1))] {
        engine.set_adapter(slot)?;
        engine.reset();
        let mut got = Vec::new();
        for &id in ids {
            engine.step(id)?;
            got.push(engine.logits()?);
        }
        let (want, merged) = match lora {
            Some(a) => (
                reference_logits(&with_adapter(base, &adapters[a], false)?, ids)?,
                Some(reference_logits(
                    &with_adapter(base, &adapters[a], true)?,
                    ids,
                )?),
            ),
            None => (reference_logits(base, ids)?, None),
        };
        out.push(EngineCheck {
            kernel: if int8 {
                "dec_engine_q8x_lora"
            } else {
                "dec_engine_lora"
            }
            .into(),
            shape: format!("{name}, slot {slot:?}, {} positions", ids.len()),
            max_rel_err: rel(&got, &want),
            tolerance: if int8 { INT8_TOLERANCE } else { TOLERANCE },
        });
        if int8 {
            continue;
        }
        if merged.is_some() {
            // The adapter must move the logits far beyond the tolerance, or the check above
            // could not tell a missing adapter from a present one.
            let effect = rel(&want, &reference_logits(base, ids)?);
            out.push(EngineCheck {
                kernel: "dec_engine_lora_effect".into(),
                shape: format!("{name}, slot {slot:?}: adapter moves logits by {effect:.3e}"),
                max_rel_err: if effect >= 10.0 * TOLERANCE {
                    0.0
                } else {
                    f64::INFINITY
                },
                tolerance: 0.0,
            });
        }
        if let Some(merged) = merged {
            let same_ids = got.iter().zip(&merged).all(|(g, w)| argmax(g) == argmax(w));
            out.push(EngineCheck {
                kernel: "dec_engine_lora_merged".into(),
                shape: format!("{name}, slot {slot:?}, greedy ids equal: {same_ids}"),
                max_rel_err: if same_ids {
                    rel(&got, &merged)
                } else {
                    f64::INFINITY
                },
                tolerance: TOLERANCE,
            });
        }
    }
    Ok(())
}

/// The batched prefill, without adapter and with each (slots 1 and 2): the prompt but its last id
/// prefilled, then the last id stepped on the cache the prefill wrote; the logits of both against
/// the reference's (with the same adapter, unmerged) at those positions.
fn prefill_then_step(out: &mut Vec<EngineCheck>, case: &ModelCase, device: &Device) -> Result<()> {
    let (prompt, last) = case.ids.split_at(case.ids.len() - 1);
    let mut engine = DecodeEngine::new(case.cfg, case.source, device)?;
    // The step after the prefill in exact maths: the prefill's own precision is what is judged.
    engine.use_int8_activations(false);
    engine.load_adapter(1, &case.host[0], None)?;
    engine.load_adapter(2, &case.host[1], None)?;
    for (tf32, (slot, lora)) in [false, true]
        .into_iter()
        .flat_map(|t| [(None, None), (Some(1), Some(0)), (Some(2), Some(1))].map(|c| (t, c)))
    {
        engine.use_prefill_tf32(tf32)?;
        engine.set_adapter(slot)?;
        engine.reset();
        engine.prefill(prompt)?;
        let mut got = vec![engine.logits()?];
        engine.step(last[0])?;
        got.push(engine.logits()?);
        let want = match lora {
            Some(a) => reference_logits(
                &with_adapter(case.base, &case.adapters[a], false)?,
                case.ids,
            )?,
            None => reference_logits(case.base, case.ids)?,
        };
        out.push(EngineCheck {
            kernel: "dec_engine_prefill".into(),
            shape: format!(
                "{}, {}, slot {slot:?}, {} prompt ids then 1 step, positions {} and {}",
                case.name,
                if tf32 { "TF32" } else { "f32" },
                prompt.len(),
                prompt.len() - 1,
                prompt.len()
            ),
            max_rel_err: rel(&got, &want[prompt.len() - 1..]),
            tolerance: if tf32 { TF32_TOLERANCE } else { TOLERANCE },
        });
    }
    Ok(())
}

/// Batch 3: slots [2, none, 1], each sequence its own tokens.
fn batch_three(out: &mut Vec<EngineCheck>, case: &ModelCase, device: &Device) -> Result<()> {
    let ModelCase {
        name,
        cfg,
        source,
        base,
        adapters,
        host,
        ids,
    } = *case;
    let mut batch = BatchDecodeEngine::new(cfg, source, device, 3, 16)?;
    batch.use_int8_activations(false);
    batch.load_adapter(1, &host[0], 16)?;
    batch.load_adapter(2, &host[1], 16)?;
    let slots = [Some(2), None, Some(1)];
    batch.set_adapters(&slots)?;
    let seqs: Vec<Vec<u32>> = (0..3)
        .map(|b| ids.iter().map(|&t| (t + 50 * b) % 301).collect())
        .collect();
    let mut got = vec![Vec::new(); 3];
    for p in 0..ids.len() {
        let tokens: Vec<u32> = seqs.iter().map(|s| s[p]).collect();
        batch.step(&tokens)?;
        let logits = batch.logits()?;
        for (b, g) in got.iter_mut().enumerate() {
            g.push(logits[b * cfg.vocab_size..(b + 1) * cfg.vocab_size].to_vec());
        }
    }
    for (b, slot) in slots.iter().enumerate() {
        let model = match slot {
            Some(s) => with_adapter(base, &adapters[s - 1], false)?,
            None => base.clone(),
        };
        out.push(EngineCheck {
            kernel: "dec_engine_lora_batch".into(),
            shape: format!("{name}, sequence {b} of 3, slot {slot:?}"),
            max_rel_err: rel(&got[b], &reference_logits(&model, &seqs[b])?),
            tolerance: TOLERANCE,
        });
    }
    Ok(())
}
