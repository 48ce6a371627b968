//! Loading a decoder's weights: the tensors a config implies, the config checks, and the loader
//! that turns each stored weight into a dense tensor or a quantized `Linear`.

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::formats::config::{Architecture, DecoderConfig};
use crate::formats::weights::{Weight, WeightSource};
use crate::models::linear::Linear;
use crate::{Context, Error, Result};

/// The tensors (HF names) and shapes a model with this config must have, in load order.
/// Used to validate a file before loading it.
pub fn expected_tensors(cfg: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
    let hidden = cfg.hidden_size;
    let q_out = cfg.num_attention_heads * cfg.head_dim;
    let kv_out = cfg.num_key_value_heads * cfg.head_dim;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, hidden],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![hidden]));
        for (name, rows, cols) in [
            ("self_attn.q_proj", q_out, hidden),
            ("self_attn.k_proj", kv_out, hidden),
            ("self_attn.v_proj", kv_out, hidden),
            ("self_attn.o_proj", hidden, q_out),
        ] {
            out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
            if has_bias(cfg, name) {
                out.push((format!("{p}.{name}.bias"), vec![rows]));
            }
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![hidden]));
        let inter = cfg.intermediate_size;
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, hidden]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![inter, hidden]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![hidden, inter]));
    }
    out.push(("model.norm.weight".to_string(), vec![hidden]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, hidden]));
    }
    out
}

/// Whether a projection carries a bias: Qwen2 has q/k/v biases and none on o_proj; HF
/// LLaMA/Mistral's `attention_bias` puts one on all four attention projections; MLPs have none.
pub(super) fn has_bias(cfg: &DecoderConfig, projection: &str) -> bool {
    if !cfg.attention_bias || !projection.starts_with("self_attn.") {
        return false;
    }
    cfg.architecture != Architecture::Qwen2 || projection != "self_attn.o_proj"
}

/// Builds the tensors of one model from a weight source, converting them as `LoadOptions` asks.
pub(super) struct Loader<'a> {
    pub(super) source: &'a dyn WeightSource,
    pub(super) device: &'a Device,
    pub(super) dtype: Option<DType>,
}

impl Loader<'_> {
    /// Activations' dtype: f32 when weights stay quantized (QMatMul's output dtype).
    pub(super) fn compute_dtype(&self) -> DType {
        self.dtype.unwrap_or(DType::F32)
    }

    /// A weight as stored, on the load device, quantized or dense per the options.
    pub(super) fn weight(&self, name: &str) -> Result<Weight> {
        match self.source.get(name)? {
            Weight::Quantized(q) if self.dtype.is_none() => {
                if q.device().same_device(self.device) {
                    Ok(Weight::Quantized(q))
                } else {
                    let data = q.data().context(format!("reading {name}"))?;
                    let storage = QStorage::from_data(data, self.device, q.dtype())
                        .context(format!("moving {name} to {:?}", self.device))?;
                    let moved = QTensor::new(storage, q.shape().clone())
                        .context(format!("moving {name}"))?;
                    Ok(Weight::Quantized(std::sync::Arc::new(moved)))
                }
            }
            other => Ok(Weight::Dense(self.to_dense(name, other)?)),
        }
    }

    /// A weight as a dense tensor in the compute dtype on the load device.
    pub(super) fn dense(&self, name: &str) -> Result<Tensor> {
        let weight = self.source.get(name)?;
        self.to_dense(name, weight)
    }

    pub(super) fn to_dense(&self, name: &str, weight: Weight) -> Result<Tensor> {
        let tensor = match weight {
            Weight::Quantized(q) => q
                .dequantize(self.device)
                .context(format!("dequantizing {name}"))?,
            Weight::Dense(t) => t.to_device(self.device).context(format!("moving {name}"))?,
        };
        tensor
            .to_dtype(self.compute_dtype())
            .context(format!("converting {name}"))
    }

    /// A projection `{prefix}.weight` (+ `{prefix}.bias` when `bias`).
    pub(super) fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let weight = self.weight(&format!("{prefix}.weight"))?;
        let bias = if bias {
            Some(self.dense(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Linear::new(weight, bias)
    }
}

/// Rejects configs the decoder cannot run, naming the file.
pub(super) fn check_config(cfg: &DecoderConfig, source: &dyn WeightSource) -> Result<()> {
    let bad = |reason: String| Error::Config {
        path: source.path().to_path_buf(),
        reason,
    };
    if cfg.num_hidden_layers == 0 {
        return Err(bad("num_hidden_layers is 0".into()));
    }
    if cfg.num_key_value_heads == 0 || cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
        return Err(bad(format!(
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            cfg.num_attention_heads, cfg.num_key_value_heads
        )));
    }
    if cfg.head_dim == 0 || cfg.head_dim % 2 != 0 {
        return Err(bad(format!(
            "head_dim {} must be even for RoPE",
            cfg.head_dim
        )));
    }
    if cfg.max_position_embeddings == 0 {
        return Err(bad("max_position_embeddings is 0".into()));
    }
    Ok(())
}
