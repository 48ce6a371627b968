//! The frozen base weights as raw device addresses of the model's own tensors (no copy): every
//! projection [out, in] and its bias [out] if it has one, the norms [hidden], the embedding
//! [vocab, hidden] and the LM head (the embedding when tied). The engine keeps clones of the
//! tensors (shared storage), so the addresses stay valid for its whole life.

use candle_core::{DType, Storage, Tensor};

use super::layout::{Dims, PROJECTIONS};
use crate::gpu::ptr::device_ptr;
use crate::models::linear::BaseWeight;
use crate::models::llama::Llama;
use crate::{Error, Result};

/// One layer's weights.
pub struct LayerWeights {
    /// q, k, v, o, gate, up, down: [out, in] in T.
    pub proj: [u64; 7],
    /// Each projection's frozen bias [out] in T, 0 where it has none (Qwen2: q, k, v; LLaMA's
    /// `attention_bias`: q, k, v, o).
    pub bias: [u64; 7],
    pub input_norm: u64,
    pub post_norm: u64,
}

/// Every weight the engine reads.
pub struct ModelWeights {
    pub layers: Vec<LayerWeights>,
    pub embed: u64,
    /// [vocab, hidden]: the untied head, or the embedding.
    pub head: u64,
    pub final_norm: u64,
    /// The tensors behind the addresses, kept alive.
    _tensors: Vec<Tensor>,
}

/// The device address of a contiguous CUDA tensor of dtype `dtype` (its first element).
pub fn tensor_ptr(t: &Tensor, dtype: DType, what: &str) -> Result<u64> {
    let bad =
        |reason: String| Error::InvalidRequest(format!("CUDA training engine: {what}: {reason}"));
    if t.dtype() != dtype {
        return Err(bad(format!(
            "dtype {:?}, the engine runs {dtype:?}",
            t.dtype()
        )));
    }
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        return Err(bad("not contiguous".into()));
    }
    let Storage::Cuda(cs) = &*storage else {
        return Err(bad("not on a CUDA device".into()));
    };
    let stream = cs.device.cuda_stream();
    let ctx = |e: candle_core::Error| Error::Candle {
        context: format!("CUDA training engine: address of {what}"),
        source: e,
    };
    let base = match dtype {
        DType::F32 => device_ptr(cs.as_cuda_slice::<f32>().map_err(ctx)?, &stream),
        DType::BF16 => device_ptr(cs.as_cuda_slice::<half::bf16>().map_err(ctx)?, &stream),
        other => return Err(bad(format!("dtype {other:?} is not f32 or bf16"))),
    };
    Ok(base + (layout.start_offset() * dtype.size_in_bytes()) as u64)
}

fn check_dims(t: &Tensor, want: &[usize], what: &str) -> Result<()> {
    if t.dims() != want {
        return Err(Error::InvalidRequest(format!(
            "CUDA training engine: {what} is {:?}, expected {want:?}",
            t.dims()
        )));
    }
    Ok(())
}

/// A projection's dense weight, or why it is unusable.
pub fn dense_weight<'a>(w: &'a BaseWeight, path: &str) -> Result<&'a Tensor> {
    match w {
        BaseWeight::Dense(t) => Ok(t),
        BaseWeight::Quantized(_) => Err(Error::InvalidRequest(format!(
            "CUDA training engine: {path} is quantized; load the model dense (f32 or bf16)"
        ))),
    }
}

impl ModelWeights {
    /// Takes the addresses of `model`'s tensors (T = `dtype`), checking every shape against `dims`.
    pub fn new(model: &Llama, dims: &Dims, dtype: DType) -> Result<Self> {
        let mut keep = Vec::new();
        let mut take = |t: &Tensor, want: &[usize], what: &str| -> Result<u64> {
            check_dims(t, want, what)?;
            let ptr = tensor_ptr(t, dtype, what)?;
            keep.push(t.clone());
            Ok(ptr)
        };
        let (d, f, qw, kw) = (dims.hidden, dims.ffn, dims.q_width(), dims.kv_width());
        let shapes: [[usize; 2]; 7] = [[qw, d], [kw, d], [kw, d], [d, qw], [f, d], [f, d], [d, f]];
        let linears = model.linear_layers();
        let (norms, final_norm) = model.norm_weights();
        let mut layers = Vec::with_capacity(dims.layers);
        for (i, (chunk, (n_in, n_post))) in linears.chunks(7).zip(norms).enumerate() {
            let (mut proj, mut bias) = ([0u64; 7], [0u64; 7]);
            for (j, (path, linear)) in chunk.iter().enumerate() {
                debug_assert!(path.ends_with(PROJECTIONS[j]));
                proj[j] = take(dense_weight(linear.weight(), path)?, &shapes[j], path)?;
                if let Some(b) = linear.bias() {
                    bias[j] = take(b, &shapes[j][..1], &format!("{path}.bias"))?;
                }
            }
            layers.push(LayerWeights {
                proj,
                bias,
                input_norm: take(n_in, &[d], &format!("layer {i} input_layernorm"))?,
                post_norm: take(n_post, &[d], &format!("layer {i} post_attention_layernorm"))?,
            });
        }
        if layers.len() != dims.layers {
            return Err(Error::InvalidRequest(format!(
                "CUDA training engine: {} layers, the config says {}",
                layers.len(),
                dims.layers
            )));
        }
        let embed = take(model.embed_tokens(), &[dims.vocab, d], "embed_tokens")?;
        let head = if model.config().tie_word_embeddings {
            embed
        } else {
            let w = dense_weight(model.lm_head().weight(), "lm_head")?;
            take(w, &[dims.vocab, d], "lm_head")?
        };
        let final_norm = take(final_norm, &[d], "model.norm")?;
        Ok(Self {
            layers,
            embed,
            head,
            final_norm,
            _tensors: keep,
        })
    }
}
