//! The engine's weights on the device: raw GGML blocks uploaded once (q/k/v concatenated per layer
//! into one matrix, so one launch makes all three), RMSNorm weights in f32, and the RoPE inverse
//! frequencies.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::DType;

use super::EngineShape;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::{Weight, WeightSource};
use crate::gpu::decode::launch::device_ptr;
use crate::gpu::decode::QuantType;
use crate::{Context, Error, Result};

/// One quantized matrix on the device.
pub struct DeviceMatrix {
    pub quant: QuantType,
    pub rows: usize,
    pub cols: usize,
    /// Raw device address of the blocks (owned by `data`).
    pub ptr: u64,
    data: CudaSlice<u8>,
}

impl DeviceMatrix {
    /// Bytes of the blocks.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// The weights of one decoder layer.
pub struct LayerWeights {
    pub qkv: DeviceMatrix,
    pub o: DeviceMatrix,
    pub gate: DeviceMatrix,
    pub up: DeviceMatrix,
    pub down: DeviceMatrix,
}

/// Every weight the engine reads.
pub struct EngineWeights {
    pub layers: Vec<LayerWeights>,
    /// The token embedding [vocab, hidden]; also the LM head when the embeddings are tied.
    pub embed: DeviceMatrix,
    /// The untied LM head [vocab, hidden], if any.
    pub head: Option<DeviceMatrix>,
    /// [2 * layers + 1, hidden]: input_layernorm and post_attention_layernorm per layer, then the
    /// final norm.
    pub norms: CudaSlice<f32>,
    pub norms_ptr: u64,
    /// RoPE inverse frequencies [head_dim / 2] (llama3 scaling applied).
    pub inv_freq: CudaSlice<f32>,
    pub inv_freq_ptr: u64,
}

fn upload_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Candle {
        context: format!("uploading {what} for the CUDA decode engine"),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

/// The raw blocks of a quantized weight with its format and [rows, cols], or why it is unusable.
fn blocks(source: &dyn WeightSource, name: &str) -> Result<(QuantType, usize, usize, Vec<u8>)> {
    let unsupported = |reason: String| Error::InvalidRequest(format!("{name}: {reason}"));
    match source.get(name)? {
        Weight::Quantized(q) => {
            let quant = QuantType::from_ggml(q.dtype()).ok_or_else(|| {
                unsupported(format!(
                    "{:?} blocks are not read by the decode kernels",
                    q.dtype()
                ))
            })?;
            let (rows, cols) = q.shape().dims2().context(format!("shape of {name}"))?;
            let data = q.data().context(format!("reading {name}"))?.to_vec();
            if data.len() < rows * quant.row_bytes(cols) {
                return Err(unsupported(format!(
                    "{} bytes, expected {}",
                    data.len(),
                    rows * quant.row_bytes(cols)
                )));
            }
            Ok((quant, rows, cols, data))
        }
        Weight::Dense(_) => Err(unsupported("dense weights are not supported".into())),
    }
}

fn upload_matrix(
    stream: &std::sync::Arc<CudaStream>,
    name: &str,
    (quant, rows, cols, data): (QuantType, usize, usize, Vec<u8>),
) -> Result<DeviceMatrix> {
    let data = stream
        .clone_htod(&data[..rows * quant.row_bytes(cols)])
        .map_err(|e| upload_err(name, e))?;
    Ok(DeviceMatrix {
        quant,
        rows,
        cols,
        ptr: device_ptr(&data, stream),
        data,
    })
}

fn dense_f32(source: &dyn WeightSource, name: &str) -> Result<Vec<f32>> {
    source
        .get(name)?
        .to_dense(DType::F32)?
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .context(format!("reading {name}"))
}

impl EngineWeights {
    /// Reads every weight of `cfg` from `source` (HF names) and uploads it on `stream`.
    pub fn load(
        cfg: &DecoderConfig,
        shape: &EngineShape,
        source: &dyn WeightSource,
        stream: &std::sync::Arc<CudaStream>,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(shape.layers);
        let mut norms = Vec::with_capacity((2 * shape.layers + 1) * shape.hidden);
        for i in 0..shape.layers {
            let p = format!("model.layers.{i}");
            let get = |name: &str| blocks(source, &format!("{p}.{name}.weight"));
            let (q, k, v) = (
                get("self_attn.q_proj")?,
                get("self_attn.k_proj")?,
                get("self_attn.v_proj")?,
            );
            if q.0 != k.0 || q.0 != v.0 {
                return Err(Error::InvalidRequest(format!(
                    "{p}: q/k/v stored as {:?}/{:?}/{:?}; the engine needs one format",
                    q.0, k.0, v.0
                )));
            }
            let mut qkv = q.3[..q.1 * q.0.row_bytes(q.2)].to_vec();
            qkv.extend_from_slice(&k.3[..k.1 * k.0.row_bytes(k.2)]);
            qkv.extend_from_slice(&v.3[..v.1 * v.0.row_bytes(v.2)]);
            let qkv = (q.0, q.1 + k.1 + v.1, q.2, qkv);
            let (gate, up) = (get("mlp.gate_proj")?, get("mlp.up_proj")?);
            if gate.0 != up.0 {
                return Err(Error::InvalidRequest(format!(
                    "{p}: gate/up stored as {:?}/{:?}; the engine needs one format",
                    gate.0, up.0
                )));
            }
            layers.push(LayerWeights {
                qkv: upload_matrix(stream, &format!("{p} qkv"), qkv)?,
                o: upload_matrix(stream, &p, get("self_attn.o_proj")?)?,
                gate: upload_matrix(stream, &p, gate)?,
                up: upload_matrix(stream, &p, up)?,
                down: upload_matrix(stream, &p, get("mlp.down_proj")?)?,
            });
            norms.extend(dense_f32(source, &format!("{p}.input_layernorm.weight"))?);
            norms.extend(dense_f32(
                source,
                &format!("{p}.post_attention_layernorm.weight"),
            )?);
        }
        norms.extend(dense_f32(source, "model.norm.weight")?);
        if norms.len() != (2 * shape.layers + 1) * shape.hidden {
            return Err(Error::InvalidRequest(format!(
                "norm weights: {} values, expected {}",
                norms.len(),
                (2 * shape.layers + 1) * shape.hidden
            )));
        }
        let embed = upload_matrix(
            stream,
            "model.embed_tokens.weight",
            blocks(source, "model.embed_tokens.weight")?,
        )?;
        let head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(upload_matrix(
                stream,
                "lm_head.weight",
                blocks(source, "lm_head.weight")?,
            )?)
        };
        let inv = crate::models::llama::rope_inverse_frequencies(cfg);
        let norms = stream
            .clone_htod(&norms)
            .map_err(|e| upload_err("norms", e))?;
        let inv_freq = stream
            .clone_htod(&inv)
            .map_err(|e| upload_err("rope frequencies", e))?;
        Ok(Self {
            layers,
            embed,
            head,
            norms_ptr: device_ptr(&norms, stream),
            norms,
            inv_freq_ptr: device_ptr(&inv_freq, stream),
            inv_freq,
        })
    }

    /// The LM head: the untied head, or the embedding.
    pub fn head(&self) -> &DeviceMatrix {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of quantized blocks read per decode step (every matrix once, plus one embedding row).
    pub fn bytes_per_step(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.qkv.bytes() + l.o.bytes() + l.gate.bytes() + l.up.bytes() + l.down.bytes())
            .sum();
        layers + self.head().bytes()
    }
}
