//! Merging an adapter into its base: `W' = W + scale * B A` for every adapted module (DoRA:
//! `W' = m ⊙ (W + scale * B A) / ||W + scale * B A||` per output row, as PEFT merges), then writing the
//! merged model as a Hugging Face directory (model.safetensors with HF names, config.json, tokenizer files)
//! that wick and transformers load as a plain model, or as a GGUF file for llama.cpp.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::json;

use super::attach::Adapter;
use super::peft_io::{serialize_safetensors, write_atomic};
use crate::error::io_error;
use crate::formats::config::{Architecture, DecoderConfig};
use crate::formats::gguf::{export_gguf, GgufFile, GgufQuant};
use crate::models::linear::Linear;
use crate::{Context, Error, Result};

/// Folds the adapter into the base weights of the model's layers (computed in f32, stored back in the
/// base weight's dtype; a quantized base becomes dense) and clears every adapter slot.
pub fn merge_into_layers(
    adapter: &Adapter,
    model_layers: Vec<(String, &mut Linear)>,
    origin: &Path,
) -> Result<()> {
    let mut model_layers = model_layers;
    // Shape checks first, so a mismatched adapter leaves the model untouched.
    adapter.apply(
        model_layers
            .iter_mut()
            .map(|(p, l)| (p.clone(), &mut **l))
            .collect(),
        origin,
    )?;
    for (path, linear) in model_layers {
        linear.lora = None;
        let Ok(i) = adapter
            .layers
            .binary_search_by(|l| l.path.as_str().cmp(path.as_str()))
        else {
            continue;
        };
        let base = linear.dense_weight()?;
        let dtype = match base.dtype() {
            DType::F32 | DType::F64 | DType::BF16 | DType::F16 => base.dtype(),
            _ => DType::F32,
        };
        let delta = adapter
            .delta_weight(&adapter.layers[i])?
            .to_device(base.device())?;
        let direction = (base.to_dtype(DType::F32)? + delta).context(format!("merging {path}"))?;
        let merged = match &adapter.layers[i].magnitude {
            Some(magnitude) => {
                let norm = direction
                    .sqr()
                    .and_then(|d| d.sum_keepdim(1))
                    .and_then(|d| d.sqrt())
                    .context(format!("DoRA norm of {path}"))?;
                let factor = magnitude
                    .as_tensor()
                    .to_device(base.device())?
                    .unsqueeze(1)?
                    .broadcast_div(&norm)?;
                direction
                    .broadcast_mul(&factor)
                    .context(format!("DoRA merge of {path}"))?
            }
            None => direction,
        };
        let merged = merged.to_dtype(dtype)?;
        linear.set_dense_weight(merged);
    }
    Ok(())
}

/// An HF `config.json` for the decoder (the `*ForCausalLM` class of its architecture).
pub fn hf_config_json(config: &DecoderConfig, torch_dtype: &str) -> serde_json::Value {
    let class = match config.architecture {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
    };
    let eos = match config.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let mut value = json!({
        "architectures": [class],
        "model_type": config.architecture.as_str(),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": torch_dtype,
        "use_cache": true,
    });
    if let Some(map) = value.as_object_mut() {
        match config.architecture {
            Architecture::Llama => {
                map.insert("attention_bias".into(), json!(config.attention_bias));
                map.insert("mlp_bias".into(), json!(false));
            }
            Architecture::Mistral => {
                map.insert("sliding_window".into(), serde_json::Value::Null);
            }
            Architecture::Qwen2 => {
                map.insert("use_sliding_window".into(), json!(false));
            }
        }
        if let Some(s) = &config.rope_scaling {
            map.insert(
                "rope_scaling".into(),
                json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            );
        }
    }
    value
}

/// Writes `model.safetensors` (the given HF-named tensors) and `config.json` into `out`.
/// With tied embeddings an `lm_head.weight` is left out, as transformers saves it.
pub fn write_hf_model(
    out: &Path,
    config: &DecoderConfig,
    weights: Vec<(String, Tensor)>,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let dtype = weights
        .first()
        .map(|(_, t)| t.dtype())
        .ok_or_else(|| Error::InvalidRequest("merge: the model has no weights".into()))?;
    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    let mut weights: Vec<(String, Tensor)> = weights
        .into_iter()
        .filter(|(n, _)| !(config.tie_word_embeddings && n == "lm_head.weight"))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = serialize_safetensors(&weights)?;
    write_atomic(&out.join("model.safetensors"), &bytes)?;
    let json = serde_json::to_string_pretty(&hf_config_json(config, torch_dtype)).map_err(|e| {
        Error::Config {
            path: out.join("config.json"),
            reason: e.to_string(),
        }
    })?;
    write_atomic(&out.join("config.json"), json.as_bytes())
}

/// Writes the merged `weights` (HF names) as one GGUF file at `out`, atomically, in the `quant` mix.
/// The base must be a GGUF file: its metadata (architecture keys, tokenizer, chat template) is kept.
pub fn write_gguf_model(
    out: &Path,
    base: &Path,
    config: &DecoderConfig,
    weights: Vec<(String, Tensor)>,
    quant: GgufQuant,
) -> Result<()> {
    if base.is_dir() {
        return Err(Error::InvalidRequest(format!(
            "GGUF export needs a GGUF base model, whose tokenizer and metadata it keeps; {} is an HF \
             directory: merge into an HF directory (--format hf) and convert that with llama.cpp's \
             convert_hf_to_gguf.py",
            base.display()
        )));
    }
    let source = GgufFile::open(base)?;
    export_gguf(out, &source, config, weights, quant)
}
