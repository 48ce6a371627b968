//! The frozen base weights as raw device addresses of the model's own tensors (no copy): every
//! projection [out, in] and its bias [out] if it has one, the norms [hidden], the embedding
//! [vocab, hidden] and the LM head (the embedding when tied). The engine keeps clones of the
//! tensors (shared storage), so the addresses stay valid for its whole life.
//!
//! QLoRA: a projection kept as GGML blocks (a GGUF loaded quantized, `Llama::with_activation_dtype`)
//! stays in the model's own device blocks; its address in `proj` is its place in the engine's layer
//! scratch (one layer's seven matrices in T, [`layer_scratch_elems`]), which the launch sequence
//! fills from the blocks before the layer's forward and again before its backward
//! (`Launcher::dequantize_layer`). Formats the dequant kernel does not read (F16 blocks, Q2_K, ...)
//! and a quantized untied LM head are dequantized once, here, into engine-owned T tensors.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Storage, Tensor};

use super::layout::{Dims, PROJECTIONS};
use crate::gpu::ggml::{DequantSegment, QuantType, BLOCK};
use crate::gpu::ptr::device_ptr;
use crate::models::linear::{BaseWeight, Linear};
use crate::models::llama::Llama;
use crate::{Context, Error, Result};

/// One layer's weights.
pub struct LayerWeights {
    /// q, k, v, o, gate, up, down: [out, in] in T (in the layer scratch when kept as blocks).
    pub proj: [u64; 7],
    /// The projections kept as GGML blocks: (projection index, its blocks), in projection order;
    /// empty for a dense base.
    pub blocks: Vec<(usize, DequantSegment)>,
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

/// The GGML blocks of a quantized weight in a format the dequant kernel reads, on the device:
/// (address, format, 32-weight blocks).
fn device_blocks(w: &BaseWeight) -> Option<DequantSegment> {
    let BaseWeight::Quantized(QMatMul::QTensor(q)) = w else {
        return None;
    };
    let quant = QuantType::from_ggml(q.dtype())?;
    if !q.device().is_cuda() || q.shape().dims2().is_err() {
        return None;
    }
    let ptr = q.device_ptr().ok()? as u64;
    Some((ptr, quant, q.shape().elem_count() / BLOCK))
}

/// Whether any projection of `model` stays as GGML blocks on the engine (a layer scratch is needed).
pub fn has_blocks(model: &Llama) -> bool {
    model
        .linear_layers()
        .iter()
        .any(|(_, l)| device_blocks(l.weight()).is_some())
}

/// Elements of one layer's seven projections: the layer scratch of a quantized base.
pub fn layer_scratch_elems(dims: &Dims) -> usize {
    projection_shapes(dims).iter().map(|[o, i]| o * i).sum()
}

/// [out, in] of q, k, v, o, gate, up, down.
fn projection_shapes(dims: &Dims) -> [[usize; 2]; 7] {
    let (d, f, qw, kw) = (dims.hidden, dims.ffn, dims.q_width(), dims.kv_width());
    [[qw, d], [kw, d], [kw, d], [d, qw], [f, d], [f, d], [d, f]]
}

/// A projection's weight as a T tensor: the model's own when dense, else a dense copy dequantized
/// by Candle on its device (formats the engine's kernel does not read, and the untied LM head).
fn dense_weight(linear: &Linear, dtype: DType, path: &str) -> Result<Tensor> {
    let w = linear.dense_weight()?;
    if let BaseWeight::Quantized(_) = linear.weight() {
        tracing::info!("CUDA training engine: {path} dequantized to a dense {dtype:?} copy");
        return w
            .to_dtype(dtype)
            .context(format!("CUDA training engine: {path} to {dtype:?}"));
    }
    Ok(w)
}

impl ModelWeights {
    /// Takes the addresses of `model`'s tensors (T = `dtype`), checking every shape against `dims`;
    /// projections kept as blocks point into `scratch` (the layer scratch, 0 when there is none).
    pub fn new(model: &Llama, dims: &Dims, dtype: DType, scratch: u64) -> Result<Self> {
        let mut keep = Vec::new();
        let mut take = |t: &Tensor, want: &[usize], what: &str| -> Result<u64> {
            check_dims(t, want, what)?;
            let ptr = tensor_ptr(t, dtype, what)?;
            keep.push(t.clone());
            Ok(ptr)
        };
        let d = dims.hidden;
        let shapes = projection_shapes(dims);
        let linears = model.linear_layers();
        let (norms, final_norm) = model.norm_weights();
        let mut layers = Vec::with_capacity(dims.layers);
        for (i, (chunk, (n_in, n_post))) in linears.chunks(7).zip(norms).enumerate() {
            let (mut proj, mut bias, mut blocks) = ([0u64; 7], [0u64; 7], Vec::new());
            let mut offset = 0;
            for (j, (path, linear)) in chunk.iter().enumerate() {
                debug_assert!(path.ends_with(PROJECTIONS[j]));
                let dims_j = [linear.out_features(), linear.in_features()];
                match device_blocks(linear.weight()) {
                    Some(segment) if scratch != 0 => {
                        if dims_j != shapes[j] {
                            return Err(Error::InvalidRequest(format!(
                                "CUDA training engine: {path} is {dims_j:?}, expected {:?}",
                                shapes[j]
                            )));
                        }
                        proj[j] = scratch + (offset * dtype.size_in_bytes()) as u64;
                        blocks.push((j, segment));
                    }
                    _ => {
                        let w = dense_weight(linear, dtype, path)?;
                        proj[j] = take(&w, &shapes[j], path)?;
                    }
                }
                offset += shapes[j][0] * shapes[j][1];
                if let Some(b) = linear.bias() {
                    bias[j] = take(b, &shapes[j][..1], &format!("{path}.bias"))?;
                }
            }
            layers.push(LayerWeights {
                proj,
                blocks,
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
            let w = dense_weight(model.lm_head(), dtype, "lm_head")?;
            take(&w, &[dims.vocab, d], "lm_head")?
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
