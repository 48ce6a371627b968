//! BERT-family encoders for embeddings: BERT, MiniLM, BGE, E5 (all the `BertModel` layout) and the
//! RoBERTa / XLM-RoBERTa layout (same blocks, positions offset past the padding index).
//!
//! Shapes, with `b` texts of `s` tokens and hidden width `h`:
//! ```text
//! x  = LayerNorm(word[ids] + position[pos] + token_type[0])          [b*s, h]
//! per layer:
//!   q, k, v = x Wq^T + bq, ...                                       [b, heads, s, h/heads]
//!   a = softmax(q k^T / sqrt(h/heads) + mask) v                      (mask: -inf-like on padding keys)
//!   x = LayerNorm(x + a Wo^T + bo)
//!   x = LayerNorm(x + GELU(x Wi^T + bi) Wd^T + bd)
//! ```
//! GELU is HF's "gelu" (the exact erf form) unless the config names another activation.
//! Weights come by their `BertModel` names; checkpoints saved from a task head (`bert.`, `roberta.`
//! prefixes) and TF-converted ones (`LayerNorm.gamma`/`beta`) load too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::error::io_error;
use crate::{Context, Error, Result};

mod config;

pub use config::{BertConfig, EncoderLayout, HiddenAct};

/// The safetensors files of a model directory, with the name prefix its checkpoint uses.
struct BertWeights {
    files: MmapedSafetensors,
    path: PathBuf,
    names: HashSet<String>,
    prefix: String,
    dtype: DType,
    device: Device,
    missing: Vec<String>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl BertWeights {
    fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (files, path) = if single.exists() {
            // SAFETY: the file is mapped read-only; wick never writes to a model file it has open.
            let files = unsafe { MmapedSafetensors::new(&single) }
                .context(format!("reading {}", single.display()))?;
            (files, single)
        } else if index.exists() {
            let shards = shard_paths(dir, &index)?;
            // SAFETY: as above.
            let files = unsafe { MmapedSafetensors::multi(&shards) }
                .context(format!("reading the shards listed in {}", index.display()))?;
            (files, index)
        } else {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                reason: "no model.safetensors (or model.safetensors.index.json) in the model \
                         directory; convert pytorch_model.bin to safetensors first"
                    .into(),
            });
        };
        let names: HashSet<String> = files.tensors().into_iter().map(|(n, _)| n).collect();
        let anchor = "embeddings.word_embeddings.weight";
        let prefix = names
            .iter()
            .filter_map(|n| n.strip_suffix(anchor))
            .min_by_key(|p| p.len())
            .ok_or_else(|| Error::TensorMismatch {
                path: path.clone(),
                missing: vec![anchor.into()],
                unexpected: vec![],
                mismatched: vec![],
            })?
            .to_string();
        Ok(Self {
            files,
            path,
            names,
            prefix,
            dtype,
            device: device.clone(),
            missing: vec![],
            mismatched: vec![],
        })
    }

    /// The tensor `name` (BertModel naming) of the given shape; records a problem and returns `None`
    /// when it is absent or of another shape, so that one error can list every problem.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let mut candidates = vec![format!("{}{name}", self.prefix)];
        // TF-converted checkpoints name LayerNorm parameters gamma/beta.
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            candidates.push(format!("{}{stem}LayerNorm.gamma", self.prefix));
        } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            candidates.push(format!("{}{stem}LayerNorm.beta", self.prefix));
        }
        let Some(full) = candidates.into_iter().find(|c| self.names.contains(c)) else {
            self.missing.push(format!("{}{name}", self.prefix));
            return Ok(None);
        };
        let tensor = self
            .files
            .load(&full, &self.device)
            .context(format!("loading {full} from {}", self.path.display()))?;
        if tensor.dims() != shape {
            self.mismatched
                .push((full, shape.to_vec(), tensor.dims().to_vec()));
            return Ok(None);
        }
        let tensor = tensor
            .to_dtype(self.dtype)
            .context(format!("converting {full} to {:?}", self.dtype))?;
        Ok(Some(tensor))
    }

    fn linear(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<Option<Dense>> {
        let weight = self.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = self.get(&format!("{name}.bias"), &[out_dim])?;
        match (weight, bias) {
            (Some(w), Some(bias)) => {
                let weight_t = w
                    .t()
                    .and_then(|t| t.contiguous())
                    .context(format!("transposing {name}.weight"))?;
                Ok(Some(Dense { weight_t, bias }))
            }
            _ => Ok(None),
        }
    }

    fn layer_norm(&mut self, name: &str, dim: usize, eps: f64) -> Result<Option<LayerNorm>> {
        let weight = self.get(&format!("{name}.weight"), &[dim])?;
        let bias = self.get(&format!("{name}.bias"), &[dim])?;
        match (weight, bias) {
            (Some(weight), Some(bias)) => Ok(Some(LayerNorm { weight, bias, eps })),
            _ => Ok(None),
        }
    }

    fn finish(self) -> Result<()> {
        if self.missing.is_empty() && self.mismatched.is_empty() {
            return Ok(());
        }
        Err(Error::TensorMismatch {
            path: self.path,
            missing: self.missing,
            unexpected: vec![],
            mismatched: self.mismatched,
        })
    }
}

fn shard_paths(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct ShardIndex {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(io_error(index))?;
    let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: index.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut files: Vec<&String> = parsed.weight_map.values().collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// LayerNorm over the last dimension, two-pass (mean, then the variance of the centred values) so that
/// BERT's eps of 1e-12 does not meet the cancellation of E[x^2] - E[x]^2. Computed in f32.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// x: [..., h] -> [..., h].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32).context("layer norm input to f32")?;
        let mean = x.mean_keepdim(D::Minus1).context("layer norm mean")?;
        let centred = x.broadcast_sub(&mean).context("layer norm centre")?;
        let var = centred
            .sqr()
            .and_then(|s| s.mean_keepdim(D::Minus1))
            .context("layer norm variance")?;
        let inv_std = (var + self.eps)
            .and_then(|v| v.sqrt())
            .and_then(|v| v.recip())
            .context("layer norm 1/std")?;
        let normed = centred
            .broadcast_mul(&inv_std)
            .and_then(|n| n.to_dtype(dtype))
            .context("layer norm scale")?;
        normed
            .broadcast_mul(&self.weight)
            .and_then(|n| n.broadcast_add(&self.bias))
            .context("layer norm affine")
    }
}

/// A projection `x W^T + b` with W stored transposed, [in, out] contiguous. Candle's CPU matmul
/// (gemm) repacks a transposed view of W on every call; with the few rows of one text that packing
/// cost 2-7x the product itself (x [15, 384] by W [1536, 384]: 3.9 ms through `W.t()`, 0.6 ms with
/// W^T stored; measured on the 2-core dev machine). The encoder carries no LoRA adapters, so it does
/// not need `models::linear::Linear`'s adapter slot.
#[derive(Debug, Clone)]
struct Dense {
    /// [in, out]
    weight_t: Tensor,
    /// [out]
    bias: Tensor,
}

impl Dense {
    /// x: [rows, in] -> [rows, out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight_t)
            .and_then(|y| y.broadcast_add(&self.bias))
            .context("dense projection")
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

struct SelfAttention {
    query: Dense,
    key: Dense,
    value: Dense,
    output: Dense,
    norm: LayerNorm,
    heads: usize,
}

struct FeedForward {
    intermediate: Dense,
    output: Dense,
    norm: LayerNorm,
    act: HiddenAct,
}

struct EncoderLayer {
    attention: SelfAttention,
    feed_forward: FeedForward,
}

/// A BERT-family encoder: token ids in, one hidden state per token out.
pub struct BertModel {
    config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    device: Device,
    dtype: DType,
}

impl BertModel {
    /// Loads the encoder in `dir` (config.json + model.safetensors) onto `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let mut w = BertWeights::open(dir, dtype, device)?;
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let word = w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = w.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = w.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let norm = w.layer_norm("embeddings.LayerNorm", h, eps)?;
        let act = HiddenAct::parse(&config.hidden_act).unwrap_or(HiddenAct::GeluErf);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let i_size = config.intermediate_size;
            let parts = (
                w.linear(&format!("{p}.attention.self.query"), h, h)?,
                w.linear(&format!("{p}.attention.self.key"), h, h)?,
                w.linear(&format!("{p}.attention.self.value"), h, h)?,
                w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                w.linear(&format!("{p}.intermediate.dense"), i_size, h)?,
                w.linear(&format!("{p}.output.dense"), h, i_size)?,
                w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            );
            if let (Some(q), Some(k), Some(v), Some(o), Some(n1), Some(fi), Some(fo), Some(n2)) =
                parts
            {
                layers.push(EncoderLayer {
                    attention: SelfAttention {
                        query: q,
                        key: k,
                        value: v,
                        output: o,
                        norm: n1,
                        heads: config.num_attention_heads,
                    },
                    feed_forward: FeedForward {
                        intermediate: fi,
                        output: fo,
                        norm: n2,
                        act,
                    },
                });
            }
        }
        let embeddings = (word, position, token_type, norm);
        w.finish()?;
        let (Some(word), Some(position), Some(token_type), Some(norm)) = embeddings else {
            unreachable!("finish() reports every missing embedding tensor");
        };
        Ok(Self {
            config,
            embeddings: Embeddings {
                word,
                position,
                token_type,
                norm,
            },
            layers,
            device: device.clone(),
            dtype,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// input_ids: [b, s] u32, attention_mask: [b, s] u32 (1 = token, 0 = padding, padding on the right)
    /// -> hidden states [b, s, h] in the compute dtype. Token types are all 0 (single sentences).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, s) = input_ids
            .dims2()
            .context("input_ids must be [batch, seq]")?;
        if s > self.config.max_positions() {
            return Err(Error::InvalidRequest(format!(
                "input of {s} tokens is longer than the model's {} positions",
                self.config.max_positions()
            )));
        }
        let h = self.config.hidden_size;
        let x = self.embed(input_ids, attention_mask)?;
        // Additive key mask [b, 1, 1, s]: 0 on tokens, a large negative on padding. Skipped when no
        // row is padded (every batch of equal-length texts, and batch 1).
        let mask = self.additive_mask(attention_mask)?;
        let mut x = x.reshape((b * s, h)).context("flattening hidden states")?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer
                .forward(&x, b, s, mask.as_ref())
                .map_err(|e| match e {
                    Error::Candle { context, source } => Error::Candle {
                        context: format!("encoder layer {i}: {context}"),
                        source,
                    },
                    other => other,
                })?;
        }
        x.reshape((b, s, h)).context("unflattening hidden states")
    }

    fn embed(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, s) = input_ids
            .dims2()
            .context("input_ids must be [batch, seq]")?;
        let h = self.config.hidden_size;
        let flat_ids = input_ids.flatten_all().context("flattening input ids")?;
        let words = self
            .embeddings
            .word
            .index_select(&flat_ids, 0)
            .context("word embedding lookup")?
            .reshape((b, s, h))
            .context("word embeddings")?;
        let positions = match self.config.layout() {
            EncoderLayout::Bert => self
                .embeddings
                .position
                .narrow(0, 0, s)
                .context("position embeddings")?
                .unsqueeze(0)
                .context("position embeddings")?,
            EncoderLayout::Roberta => {
                // HF create_position_ids_from_input_ids: cumsum(mask) * mask + padding_idx.
                let pad = f64::from(self.config.pad_token_id.unwrap_or(1));
                let ids = attention_mask
                    .to_dtype(DType::F32)
                    .and_then(|m| m.cumsum(1)?.mul(&m.to_dtype(DType::F32)?))
                    .and_then(|p| (p + pad)?.to_dtype(DType::U32))
                    .and_then(|p| p.flatten_all())
                    .context("roberta position ids")?;
                self.embeddings
                    .position
                    .index_select(&ids, 0)
                    .and_then(|p| p.reshape((b, s, h)))
                    .context("position embeddings")?
            }
        };
        let token_type = self
            .embeddings
            .token_type
            .narrow(0, 0, 1)
            .context("token type embedding")?
            .unsqueeze(0)
            .context("token type embedding")?;
        let x = words
            .broadcast_add(&positions)
            .and_then(|x| x.broadcast_add(&token_type))
            .context("summing embeddings")?;
        self.embeddings.norm.forward(&x)
    }

    fn additive_mask(&self, attention_mask: &Tensor) -> Result<Option<Tensor>> {
        let (b, s) = attention_mask
            .dims2()
            .context("attention mask [batch, seq]")?;
        let mask = attention_mask.to_dtype(DType::F32).context("mask to f32")?;
        let count = mask
            .sum_all()
            .and_then(|c| c.to_scalar::<f32>())
            .context("counting tokens")?;
        if count as usize == b * s {
            return Ok(None);
        }
        // (mask - 1) * large: 0 where mask is 1. HF uses finfo.min; -1e30 keeps exp() at exactly 0
        // without overflowing when added to a score.
        let additive = ((mask - 1.0).context("mask")? * 1e30)
            .and_then(|m| m.to_dtype(self.dtype))
            .and_then(|m| m.reshape((b, 1, 1, s)))
            .context("additive mask")?;
        Ok(Some(additive))
    }
}

impl EncoderLayer {
    /// x: [b*s, h] -> [b*s, h].
    fn forward(&self, x: &Tensor, b: usize, s: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        let attended = self.attention.forward(x, b, s, mask)?;
        self.feed_forward.forward(&attended)
    }
}

impl SelfAttention {
    /// x: [b*s, h] -> [b*s, h], including the residual and LayerNorm.
    fn forward(&self, x: &Tensor, b: usize, s: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = x.dim(1).context("hidden width")?;
        let head_dim = h / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            // [b*s, h] -> [b, heads, s, head_dim]
            t.reshape((b, s, self.heads, head_dim))
                .and_then(|t| t.transpose(1, 2))
                .and_then(|t| t.contiguous())
                .context("splitting heads")
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = split((self.query.forward(x)? * scale).context("scaling queries")?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let k_t = k.t().context("k^T")?;
        let mut scores = q.matmul(&k_t).context("attention scores q k^T")?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask).context("masking padding")?;
        }
        let probs = crate::ops::softmax::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)
            .and_then(|c| c.transpose(1, 2))
            .and_then(|c| c.reshape((b * s, h)))
            .context("attention context")?;
        let projected = self.output.forward(&context)?;
        let residual = (projected + x).context("attention residual")?;
        self.norm.forward(&residual)
    }
}

impl FeedForward {
    /// x: [b*s, h] -> [b*s, h], including the residual and LayerNorm.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let inner = self.act.apply(&self.intermediate.forward(x)?)?;
        let out = self.output.forward(&inner)?;
        let residual = (out + x).context("feed-forward residual")?;
        self.norm.forward(&residual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_f64_reference_with_large_mean() {
        // Rows with a large common offset: the one-pass E[x^2]-E[x]^2 form loses the variance here.
        let h = 64;
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let xs: Vec<f32> = (0..2 * h).map(|_| (100.0 + rnd() * 0.1) as f32).collect();
        let gamma: Vec<f32> = (0..h).map(|_| (1.0 + rnd()) as f32).collect();
        let beta: Vec<f32> = (0..h).map(|_| rnd() as f32).collect();
        let dev = Device::Cpu;
        let norm = LayerNorm {
            weight: Tensor::new(gamma.as_slice(), &dev).unwrap(),
            bias: Tensor::new(beta.as_slice(), &dev).unwrap(),
            eps: 1e-12,
        };
        let x = Tensor::from_vec(xs.clone(), (2, h), &dev).unwrap();
        let y: Vec<Vec<f32>> = norm.forward(&x).unwrap().to_vec2().unwrap();
        for (r, row) in xs.chunks(h).enumerate() {
            let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            let mean = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
            for j in 0..h {
                let expect = (row[j] - mean) / (var + 1e-12).sqrt() * f64::from(gamma[j])
                    + f64::from(beta[j]);
                // Std ~0.03 on a mean of 100: E[x^2]-E[x]^2 in f32 would be off by O(1) here;
                // the two-pass form keeps the error near 1e-4.
                assert!(
                    (f64::from(y[r][j]) - expect).abs() < 5e-3,
                    "row {r} col {j}: {} vs {expect}",
                    y[r][j]
                );
            }
        }
    }

    #[test]
    fn roberta_positions_skip_padding_slots() {
        let config: BertConfig = serde_json::from_str(
            r#"{"model_type":"xlm-roberta","vocab_size":10,"hidden_size":4,"num_hidden_layers":1,
                "num_attention_heads":1,"intermediate_size":8,"max_position_embeddings":514,
                "pad_token_id":1}"#,
        )
        .unwrap();
        assert_eq!(config.layout(), EncoderLayout::Roberta);
        assert_eq!(config.max_positions(), 512);
    }
}
