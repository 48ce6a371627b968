//! The engine's weights on the device: raw GGML blocks, or dense rows in the checkpoint's own dtype
//! (bf16/f16/f32: an HF directory's weights are not converted to the f32 its Candle model uses),
//! uploaded once (q/k/v concatenated per layer into one matrix, so one launch makes all three),
//! RMSNorm weights in f32, and the RoPE inverse frequencies.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::{DType, Tensor};

use super::EngineShape;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::{Weight, WeightSource};
use crate::gpu::decode::launch::device_ptr;
use crate::gpu::decode::{QuantType, BLOCK};
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
    /// q/k/v as one matrix (one launch makes all three) when stored in one format, else the
    /// three matrices (q, k, v: a Q4_K_M file keeps some layers' v in Q6_K), launched one after
    /// the other into the same output rows.
    pub qkv: Vec<DeviceMatrix>,
    /// The q/k/v biases concatenated [qkv rows] f32 (Qwen2), added in the mat-vec's epilogue.
    pub qkv_bias: Option<CudaSlice<f32>>,
    /// Raw address of `qkv_bias`, 0 when there is none.
    pub qkv_bias_ptr: u64,
    /// The o_proj bias [hidden] (LLaMA's `attention_bias`; Qwen2 has none), and its address or 0.
    pub o_bias: Option<CudaSlice<f32>>,
    pub o_bias_ptr: u64,
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

/// The little-endian bytes of a flat tensor of `T`.
fn le_bytes<T: candle_core::WithDType, const N: usize>(
    flat: &Tensor,
    name: &str,
    bytes: fn(T) -> [u8; N],
) -> Result<Vec<u8>> {
    Ok(flat
        .to_vec1::<T>()
        .context(format!("reading {name}"))?
        .into_iter()
        .flat_map(bytes)
        .collect())
}

/// A dense matrix's values as the kernels read them: bf16 and f16 as stored, f32 as f32, any other
/// dtype widened to f32 (exact).
fn dense_rows(t: &Tensor, name: &str) -> Result<(QuantType, Vec<u8>)> {
    let flat = t.flatten_all().context(format!("reading {name}"))?;
    Ok(match t.dtype() {
        DType::BF16 => (
            QuantType::BF16,
            le_bytes(&flat, name, half::bf16::to_le_bytes)?,
        ),
        DType::F16 => (
            QuantType::F16,
            le_bytes(&flat, name, half::f16::to_le_bytes)?,
        ),
        _ => {
            let f32s = flat
                .to_dtype(DType::F32)
                .context(format!("reading {name}"))?;
            (QuantType::F32, le_bytes(&f32s, name, f32::to_le_bytes)?)
        }
    })
}

/// The raw blocks of a weight (GGML blocks, or dense rows in their stored dtype) with its format and
/// [rows, cols], or why it is unusable.
fn blocks(source: &dyn WeightSource, name: &str) -> Result<(QuantType, usize, usize, Vec<u8>)> {
    let unsupported = |reason: String| Error::InvalidRequest(format!("{name}: {reason}"));
    match source.get_stored(name)? {
        Weight::Quantized(q) => {
            let quant = QuantType::from_ggml(q.dtype()).ok_or_else(|| {
                unsupported(format!(
                    "{:?} blocks are not read by the decode kernels",
                    q.dtype()
                ))
            })?;
            let (rows, cols) = q.shape().dims2().context(format!("shape of {name}"))?;
            if cols % quant.block_weights() != 0 {
                return Err(unsupported(format!(
                    "rows of {cols} weights are not whole {:?} blocks of {}",
                    quant,
                    quant.block_weights()
                )));
            }
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
        Weight::Dense(t) => {
            let (rows, cols) = t.dims2().context(format!("shape of {name}"))?;
            if cols % BLOCK != 0 {
                return Err(unsupported(format!(
                    "rows of {cols} weights are not a multiple of {BLOCK}"
                )));
            }
            let (quant, data) = dense_rows(&t, name)?;
            Ok((quant, rows, cols, data))
        }
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

/// A bias on the device, where the projection has one.
type Bias = Option<CudaSlice<f32>>;

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
            layers.push(Self::load_layer(cfg, shape, source, stream, &p)?);
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

    /// One layer's projections (q/k/v fused into one matrix when they share a format; gate and
    /// up must) and biases, uploaded; `p` its name prefix (`model.layers.{i}`).
    fn load_layer(
        cfg: &DecoderConfig,
        shape: &EngineShape,
        source: &dyn WeightSource,
        stream: &std::sync::Arc<CudaStream>,
        p: &str,
    ) -> Result<LayerWeights> {
        let get = |name: &str| blocks(source, &format!("{p}.{name}.weight"));
        let (q, k, v) = (
            get("self_attn.q_proj")?,
            get("self_attn.k_proj")?,
            get("self_attn.v_proj")?,
        );
        let qkv_rows = q.1 + k.1 + v.1;
        let qkv = if q.0 == k.0 && q.0 == v.0 {
            let mut fused = q.3[..q.1 * q.0.row_bytes(q.2)].to_vec();
            fused.extend_from_slice(&k.3[..k.1 * k.0.row_bytes(k.2)]);
            fused.extend_from_slice(&v.3[..v.1 * v.0.row_bytes(v.2)]);
            vec![upload_matrix(
                stream,
                &format!("{p} qkv"),
                (q.0, qkv_rows, q.2, fused),
            )?]
        } else {
            vec![
                upload_matrix(stream, &format!("{p} q"), q)?,
                upload_matrix(stream, &format!("{p} k"), k)?,
                upload_matrix(stream, &format!("{p} v"), v)?,
            ]
        };
        let (gate, up) = (get("mlp.gate_proj")?, get("mlp.up_proj")?);
        if gate.0 != up.0 {
            return Err(Error::InvalidRequest(format!(
                "{p}: gate/up stored as {:?}/{:?}; the engine needs one format",
                gate.0, up.0
            )));
        }
        let (qkv_bias, o_bias) = Self::load_biases(cfg, shape, source, stream, p, qkv_rows)?;
        Ok(LayerWeights {
            o_bias_ptr: o_bias.as_ref().map_or(0, |b| device_ptr(b, stream)),
            o_bias,
            qkv_bias_ptr: qkv_bias.as_ref().map_or(0, |b| device_ptr(b, stream)),
            qkv_bias,
            qkv,
            o: upload_matrix(stream, p, get("self_attn.o_proj")?)?,
            gate: upload_matrix(stream, p, gate)?,
            up: upload_matrix(stream, p, up)?,
            down: upload_matrix(stream, p, get("mlp.down_proj")?)?,
        })
    }

    /// The q/k/v biases (`qkv_rows` values, when the config has attention biases) and the o bias
    /// (when the file has one), uploaded.
    fn load_biases(
        cfg: &DecoderConfig,
        shape: &EngineShape,
        source: &dyn WeightSource,
        stream: &std::sync::Arc<CudaStream>,
        p: &str,
        qkv_rows: usize,
    ) -> Result<(Bias, Bias)> {
        let qkv_bias = if cfg.attention_bias {
            let mut bias = dense_f32(source, &format!("{p}.self_attn.q_proj.bias"))?;
            bias.extend(dense_f32(source, &format!("{p}.self_attn.k_proj.bias"))?);
            bias.extend(dense_f32(source, &format!("{p}.self_attn.v_proj.bias"))?);
            if bias.len() != qkv_rows {
                return Err(Error::InvalidRequest(format!(
                    "{p}: q/k/v biases hold {} values for {qkv_rows} rows",
                    bias.len(),
                )));
            }
            Some(
                stream
                    .clone_htod(&bias)
                    .map_err(|e| upload_err("q/k/v biases", e))?,
            )
        } else {
            None
        };
        let o_bias_name = format!("{p}.self_attn.o_proj.bias");
        let o_bias = if cfg.attention_bias && source.contains(&o_bias_name) {
            let bias = dense_f32(source, &o_bias_name)?;
            if bias.len() != shape.hidden {
                return Err(Error::InvalidRequest(format!(
                    "{o_bias_name}: {} values, expected {}",
                    bias.len(),
                    shape.hidden
                )));
            }
            Some(
                stream
                    .clone_htod(&bias)
                    .map_err(|e| upload_err("o_proj bias", e))?,
            )
        } else {
            None
        };
        Ok((qkv_bias, o_bias))
    }

    /// The LM head: the untied head, or the embedding.
    pub fn head(&self) -> &DeviceMatrix {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Bias launches of one prefill chunk (each layer's q/k/v and o biases).
    pub fn bias_launches(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.qkv_bias.is_some() as usize + l.o_bias.is_some() as usize)
            .sum()
    }

    /// Bytes of quantized blocks read per decode step (every matrix once, plus one embedding row).
    pub fn bytes_per_step(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.iter().map(DeviceMatrix::bytes).sum::<usize>()
                    + l.o.bytes()
                    + l.gate.bytes()
                    + l.up.bytes()
                    + l.down.bytes()
            })
            .sum();
        layers + self.head().bytes()
    }
}
