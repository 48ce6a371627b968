//! One decoder for LLaMA-family models (SmolLM2, TinyLlama, Llama 2/3.x with llama3 RoPE scaling),
//! Mistral and Qwen2/Qwen2.5 (q/k/v bias, tied embeddings).
//!
//! Per layer, with x: [batch, seq, hidden]:
//! ```text
//! h = x + o_proj(attention(rope(q_proj(rms_norm(x))), rope(k_proj(..)), v_proj(..)))
//! y = h + down_proj(silu(gate_proj(rms_norm(h))) * up_proj(rms_norm(h)))
//! ```
//! Attention is causal with grouped key/value heads (GQA): the `groups = heads / kv_heads` query
//! heads that share a key/value head are stacked along the sequence axis, so one batched matmul per
//! kv head covers them and keys and values are never repeated. Scores are taken in f32. A single new
//! token (the decode step) goes through the fused `ops::decode_attention` over the cache instead.
//! RoPE uses the HF half-split layout for every source (the GGUF reader undoes llama.cpp's Q/K
//! permutation). The 1/sqrt(head_dim) attention scale is folded into the query's cos/sin tables, which
//! is exact: rope is linear in its cos/sin.
//!
//! Every projection is a [`Linear`] (LoRA attaches there) and every other op goes through
//! `crate::ops`, whose fused kernels pick the fastest implementation per device.

use candle_core::{DType, Device, Tensor};

use crate::formats::config::DecoderConfig;
use crate::formats::weights::WeightSource;
use crate::models::kv_cache::KvCache;
use crate::models::linear::Linear;
use crate::ops::decode_attention::decode_attention;
use crate::ops::rms_norm::{add_rms_norm, rms_norm};
use crate::ops::rope::{rope, RopeLayout};
use crate::ops::softmax::softmax_last_dim;
use crate::ops::swiglu::swiglu;
use crate::{Context, Error, Result};

mod checkpointed;
mod loading;
pub mod quantize_base;
mod ragged;
mod rotary;

pub use loading::expected_tensors;
use loading::{check_config, has_bias, Loader};
pub use ragged::{RaggedSeq, SeqLora};
pub use rotary::rope_inverse_frequencies;
use rotary::{PositionTables, RotaryTables};

/// How to load a decoder: the device, and `dtype: None` to keep GGUF weights quantized (activations
/// and dense weights in f32) or `Some(dt)` for every weight dense in `dt` (training, merging, bf16 on a
/// GPU). The same options open the weight source, so the source already hands out tensors this way;
/// the decoder converts whatever it gets anyway.
pub use crate::formats::weights::LoadOptions;

/// Causal self-attention with grouped key/value heads.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// x: [batch, t, hidden] -> [batch, t, hidden]. `mask`: [t, len] additive f32 (None when t == 1).
    fn forward(
        &self,
        x: &Tensor,
        tables: &PositionTables,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3().context("attention input")?;
        let q = self.q_proj.forward_t(x, train)?;
        let k = self.k_proj.forward_t(x, train)?;
        let v = self.v_proj.forward_t(x, train)?;
        let out = self.attend(&q, &k, &v, b, t, tables, mask, cache, train)?;
        self.o_proj.forward_t(&out, train)
    }

    /// Attention of projected queries, keys and values: q [b, t, heads * d], k, v [b, t, kv_heads * d]
    /// (or any shape with those elements in that order) -> [b, t, heads * d], before `o_proj`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        b: usize,
        t: usize,
        tables: &PositionTables,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        // [b, t, heads * d] -> [b, heads, t, d]; a no-copy view when t == 1.
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            y.reshape((b, t, n, d))?
                .transpose(1, 2)?
                .contiguous()
                .context("attention head split")
        };
        let q = split(q.clone(), h)?;
        let k = split(k.clone(), kvh)?;
        let v = split(v.clone(), kvh)?;
        let q = rope(&q, &tables.cos_q, &tables.sin_q, RopeLayout::HalfSplit)?;
        let k = rope(&k, &tables.cos, &tables.sin, RopeLayout::HalfSplit)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        if t == 1 && !train {
            // One new token sees every cached position: the fused decode kernel, no mask, no copies.
            // The 1/sqrt(d) scale is already in q.
            return decode_attention(&q, &k, &v, 1.0)?
                .reshape((b, 1, h * d))
                .context("decode attention output");
        }
        let len = k.dim(2)?;
        // Queries of the heads sharing one kv head, stacked: [b, kv_heads, groups * t, d].
        let groups = h / kvh;
        let q = q.reshape((b, kvh, groups * t, d))?;
        // Softmax statistics in f32 (f64 models keep f64, so gradients stay exact in f64 checks).
        let stats = if q.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let scores = q
            .matmul(&k.t()?)
            .context("attention scores")?
            .to_dtype(stats)?;
        let scores = match mask {
            // add_frozen: Candle's broadcast_add would also compute and keep a gradient for the
            // mask, a [batch, heads, t, len] tensor per layer.
            Some(mask) => crate::ops::frozen::add_frozen(
                &scores.reshape((b, kvh, groups, t, len))?,
                &mask.to_dtype(stats)?,
            )?
            .reshape((b, kvh, groups * t, len))?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v).context("attention values")?;
        // [b, kv_heads, groups * t, d] = [b, heads, t, d] -> [b, t, heads * d]
        out.reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))
            .context("attention output")
    }
}

/// The SwiGLU feed-forward block.
#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// x: [batch, t, hidden] -> [batch, t, hidden].
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let gate = self.gate_proj.forward_t(x, train)?;
        let up = self.up_proj.forward_t(x, train)?;
        self.down_proj.forward_t(&swiglu(&gate, &up)?, train)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// A loaded decoder. See the module documentation for the maths.
#[derive(Debug, Clone)]
pub struct Llama {
    config: DecoderConfig,
    /// embed_tokens: [vocab, hidden], dense in the compute dtype.
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Linear,
    rotary: RotaryTables,
    dtype: DType,
    device: Device,
    /// Shared by this model's clones and nothing else: the CUDA decode engine's registry keeps a
    /// `Weak` to it, so an engine lives as long as some clone of the model it was built for.
    instance: std::sync::Arc<()>,
}

/// Which positions the LM head runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogitPositions {
    All,
    Last,
}

impl Llama {
    /// Loads a decoder from a weight source with HF tensor names. Validate the source first with
    /// [`expected_tensors`] for a complete list of problems; here a missing tensor is an error naming it.
    pub fn load(
        config: &DecoderConfig,
        source: &dyn WeightSource,
        options: &LoadOptions,
    ) -> Result<Self> {
        check_config(config, source)?;
        let loader = Loader {
            source,
            device: &options.device,
            dtype: options.dtype,
        };
        let dtype = loader.compute_dtype();
        let embed_name = "model.embed_tokens.weight";
        let embed_weight = loader.weight(embed_name)?;
        let embed_tokens = loader.to_dense(embed_name, embed_weight.clone())?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let linear = |name: &str| loader.linear(&format!("{p}.{name}"), has_bias(config, name));
            layers.push(DecoderLayer {
                input_layernorm: loader.dense(&format!("{p}.input_layernorm.weight"))?,
                self_attn: Attention {
                    q_proj: linear("self_attn.q_proj")?,
                    k_proj: linear("self_attn.k_proj")?,
                    v_proj: linear("self_attn.v_proj")?,
                    o_proj: linear("self_attn.o_proj")?,
                    heads: config.num_attention_heads,
                    kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                },
                post_attention_layernorm: loader
                    .dense(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: linear("mlp.gate_proj")?,
                    up_proj: linear("mlp.up_proj")?,
                    down_proj: linear("mlp.down_proj")?,
                },
            });
        }
        let norm = loader.dense("model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            // The embedding as stored (quantized when it is), so the head runs on QMatMul like llama.cpp.
            Linear::new(embed_weight, None)?
        } else {
            loader.linear("lm_head", false)?
        };
        let rotary = RotaryTables::new(config, dtype, &options.device)?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            dtype,
            device: options.device.clone(),
            instance: std::sync::Arc::new(()),
        })
    }

    /// What this model and its clones share and no other model has (see the field).
    pub fn instance(&self) -> &std::sync::Arc<()> {
        &self.instance
    }

    /// The model's configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The activations' dtype (f32 for quantized inference).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The model with activations in `dtype`: every dense tensor (embedding, norms, biases, dense
    /// projections, RoPE tables) converted, quantized projections kept as blocks. This is QLoRA's
    /// base on CUDA: a GGUF loaded with `dtype: None` (blocks on the device) then run in bf16, which
    /// the CUDA training engine trains through (dequantizing one layer at a time).
    pub fn with_activation_dtype(mut self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype {
            return Ok(self);
        }
        let convert =
            |t: &Tensor, what: &str| t.to_dtype(dtype).context(format!("converting {what}"));
        self.embed_tokens = convert(&self.embed_tokens, "embed_tokens")?;
        self.norm = convert(&self.norm, "model.norm")?;
        for layer in &mut self.layers {
            layer.input_layernorm = convert(&layer.input_layernorm, "input_layernorm")?;
            layer.post_attention_layernorm =
                convert(&layer.post_attention_layernorm, "post_attention_layernorm")?;
        }
        for (_, linear) in self.linear_layers_mut() {
            linear.convert_dense(dtype)?;
        }
        self.lm_head.convert_dense(dtype)?;
        self.rotary = RotaryTables::new(&self.config, dtype, &self.device)?;
        self.dtype = dtype;
        Ok(self)
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty KV cache sized for this model (grows on demand up to the context).
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(&self.config, batch, self.dtype, &self.device)
    }

    /// input_ids: [batch, t] u32 -> logits [batch, t, vocab] f32. The cache holds the positions already
    /// seen; the new tokens take positions `cache.len()..cache.len() + t` and are appended to it.
    pub fn forward(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.run(input_ids, Some(cache), false, LogitPositions::All)
    }

    /// Like [`Llama::forward`] but runs the LM head on the last position only (what generation needs):
    /// input_ids: [batch, t] -> logits [batch, vocab] f32.
    pub fn forward_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let logits = self.run(input_ids, Some(cache), false, LogitPositions::Last)?;
        logits.squeeze(1).context("last-position logits")
    }

    /// Training forward: no cache, positions from 0, adapter dropout on.
    /// input_ids: [batch, t] -> logits [batch, t, vocab] in the compute dtype (cast to f32 for the loss
    /// by `ops::cross_entropy`). Right padding needs no mask: causal attention never lets a real token
    /// see a padded one that follows it.
    pub fn forward_train(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.run(input_ids, None, true, LogitPositions::All)
    }

    fn run(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
        positions: LogitPositions,
    ) -> Result<Tensor> {
        // A one-token CPU step is ~200 small ops (norms, rope, attention, SwiGLU) between the
        // matmuls. Each of them handed to the global rayon pool costs a cross-thread wake-up, and
        // the woken workers then compete for the cores with the matmul kernel's own pool. On a
        // single-thread pool of its own they run inline (rayon's join with no thief is a plain
        // call); the quantized matmuls still use both cores through Candle's barrier pool.
        let single =
            !train && matches!(self.device, Device::Cpu) && input_ids.dim(1).is_ok_and(|t| t == 1);
        match decode_pool() {
            Some(pool) if single => {
                pool.install(|| self.run_inner(input_ids, cache, train, positions))
            }
            _ => self.run_inner(input_ids, cache, train, positions),
        }
    }

    fn run_inner(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
        positions: LogitPositions,
    ) -> Result<Tensor> {
        let (b, t) = input_ids
            .dims2()
            .context("input ids must be [batch, seq]")?;
        if t == 0 {
            return Err(Error::InvalidRequest("empty input: no token to run".into()));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let context = self.config.max_position_embeddings;
        match cache.as_ref() {
            Some(c) => c.check_room(t)?,
            None if t > context => {
                return Err(Error::InvalidRequest(format!(
                    "{t} tokens exceed the model's context of {context} tokens"
                )))
            }
            None => {}
        }
        if let Some(c) = cache.as_ref() {
            if c.batch() != b {
                return Err(Error::InvalidRequest(format!(
                    "kv cache made for batch {}, input has batch {b}",
                    c.batch()
                )));
            }
        }
        let hidden = self.config.hidden_size;
        let ids = input_ids.flatten_all()?;
        let x = self
            .embed_tokens
            .index_select(&ids, 0)
            .context("token embedding (is a token id >= vocab?)")?
            .reshape((b, t, hidden))?;
        let tables = PositionTables {
            cos: self.rotary.cos.narrow(0, offset, t)?,
            sin: self.rotary.sin.narrow(0, offset, t)?,
            cos_q: self.rotary.cos_q.narrow(0, offset, t)?,
            sin_q: self.rotary.sin_q.narrow(0, offset, t)?,
        };
        let mask = if t > 1 {
            Some(causal_mask(t, offset, &self.device)?)
        } else {
            None
        };
        let eps = self.config.rms_norm_eps;
        // The residual add and the next norm are fused: (normed, residual) = add_rms_norm(..).
        let mut residual = x;
        let mut normed = rms_norm(&residual, &self.layers[0].input_layernorm, eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let attn =
                layer
                    .self_attn
                    .forward(&normed, &tables, mask.as_ref(), layer_cache, train)?;
            (normed, residual) =
                add_rms_norm(&attn, &residual, &layer.post_attention_layernorm, eps)?;
            let mlp = layer.mlp.forward(&normed, train)?;
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => &next.input_layernorm,
                None => &self.norm,
            };
            (normed, residual) = add_rms_norm(&mlp, &residual, next_norm, eps)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let normed = match positions {
            LogitPositions::All => normed,
            LogitPositions::Last => normed.narrow(1, t - 1, 1)?,
        };
        let logits = self.lm_head.forward_t(&normed, train)?;
        if train {
            Ok(logits)
        } else {
            logits.to_dtype(DType::F32).context("logits to f32")
        }
    }

    /// Every projection that LoRA can wrap, with its PEFT module path
    /// (`model.layers.{i}.self_attn.q_proj`, ..., `model.layers.{i}.mlp.down_proj`).
    pub fn linear_layers(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7);
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.self_attn;
            let m = &layer.mlp;
            for (name, linear) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// (path, in_features, out_features) of every projection, in [`Llama::linear_layers`] order: what
    /// an adapter is matched against.
    pub fn linear_shapes(&self) -> Vec<(String, usize, usize)> {
        self.linear_layers()
            .into_iter()
            .map(|(p, l)| (p, l.in_features(), l.out_features()))
            .collect()
    }

    /// The token embedding [vocab, hidden] (dense in the compute dtype); also the LM head when the
    /// embeddings are tied.
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// The LM head (the embedding's weight when tied).
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// Per layer, the (input_layernorm, post_attention_layernorm) weights [hidden]; then the final
    /// norm's. For engines that run the decoder on the tensors in place (`train::cuda_engine`).
    pub fn norm_weights(&self) -> (Vec<(&Tensor, &Tensor)>, &Tensor) {
        let layers = self
            .layers
            .iter()
            .map(|l| (&l.input_layernorm, &l.post_attention_layernorm))
            .collect();
        (layers, &self.norm)
    }

    /// Mutable access to every projection, same paths as [`Llama::linear_layers`].
    pub fn linear_layers_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            for (name, linear) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// Every weight as a dense tensor with its HF name (quantized ones dequantized), in
    /// [`expected_tensors`] order; `lm_head.weight` only when the embeddings are not tied.
    /// Used to write a merged model.
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        let linears = self.linear_layers();
        for (i, (layer, projections)) in self.layers.iter().zip(linears.chunks(7)).enumerate() {
            let p = format!("model.layers.{i}");
            let norm = |name: &str, t: &Tensor| (format!("{p}.{name}.weight"), t.clone());
            out.push(norm("input_layernorm", &layer.input_layernorm));
            for (j, (path, linear)) in projections.iter().enumerate() {
                // HF order: attention projections, the second norm, then the MLP.
                if j == 4 {
                    out.push(norm(
                        "post_attention_layernorm",
                        &layer.post_attention_layernorm,
                    ));
                }
                out.push((format!("{path}.weight"), linear.dense_weight()?));
                if let Some(bias) = linear.bias() {
                    out.push((format!("{path}.bias"), bias.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.dense_weight()?));
        }
        Ok(out)
    }
}

/// Additive causal mask for `t` new positions after `offset` cached ones: [t, offset + t] f32,
/// 0 where key position j <= offset + i, -inf after.
/// The single-thread rayon pool that one-token CPU steps run on (see `Llama::run`); None if the
/// thread could not be started (then the step runs on the caller's thread).
fn decode_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "wick-decode".into())
            .build()
            .map_err(|e| tracing::warn!("decode thread pool: {e}"))
            .ok()
    })
    .as_ref()
}

fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let len = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, len), device).context("causal mask")
}
