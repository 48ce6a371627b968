//! A decoder's weights (HF names, dense) as a GGUF file llama.cpp loads: llama.cpp tensor names, the
//! per-head Q/K row permutation of LLaMA-architecture files redone (wick's reader undoes it), the
//! source GGUF's metadata (architecture keys, tokenizer, chat template) kept, and each matrix
//! quantized with the type `llama-quantize` would choose for the requested mix.
//!
//! The type choice follows llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp, llama.cpp as
//! vendored in llama-cpp-python 0.3.36) for the four mixes wick writes, without an importance matrix:
//! - f16: every matrix F16 (as `convert_hf_to_gguf.py --outtype f16`); vectors (norms, biases) F32.
//! - q8_0: every matrix Q8_0.
//! - q4_1: every matrix Q4_1, except the output matrix (or the token embedding when it is tied to the
//!   output), which gets Q6_K.
//! - q4_k_m: Q4_K, except Q6_K for the output matrix (tied embedding included), and for `attn_v` and
//!   `ffn_down` of the layers where llama.cpp's `use_more_bits` holds (the first and last eighth of the
//!   layers and every third layer between).
//!
//! A K-quant needs rows of whole 256-weight blocks; a row that is not falls back as llama.cpp's
//! `tensor_type_fallback` does (Q4_K to Q5_0, Q6_K to Q8_0, any 32-block type that does not fit to
//! F16). For the output matrix llama.cpp picks Q8_0 directly when the row is not whole blocks of the
//! mix's base type.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};

use super::file::GgufFile;
use super::quantize::{block_layout, quantize_rows};
use super::source::{gguf_to_hf_name, permute_rows};
use super::writer::{GgufTensorData, GgufWriter};
use crate::formats::config::DecoderConfig;
use crate::{Context, Error, Result};

/// The GGUF weight mixes wick writes (`wick merge --format gguf --quant ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    /// Matrices in F16.
    F16,
    /// Matrices in Q8_0.
    Q8_0,
    /// Matrices in Q4_1 (output in Q6_K).
    Q4_1,
    /// llama.cpp's Q4_K_M mix of Q4_K and Q6_K.
    Q4KM,
}

impl GgufQuant {
    /// The names the CLI accepts.
    pub const NAMES: &'static str = "f16, q8_0, q4_1 or q4_k_m";

    /// Parses `f16`, `q8_0`, `q4_1` or `q4_k_m` (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_1" => Self::Q4_1,
            "q4_k_m" => Self::Q4KM,
            _ => return None,
        })
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) of the mix.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
        }
    }

    /// The type most matrices get before llama.cpp's per-tensor rules.
    fn base_type(self) -> GgmlDType {
        match self {
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q4KM => GgmlDType::Q4K,
        }
    }
}

/// llama.cpp's `use_more_bits`: the layers Q4_K_M gives more bits in `attn_v` and `ffn_down`.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let (i, n) = (layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The storage type llama.cpp gives tensor `gguf_name` of shape `dims` (outermost first) in `quant`.
/// `tied`: the token embedding doubles as the output matrix.
pub fn tensor_type(
    quant: GgufQuant,
    gguf_name: &str,
    dims: &[usize],
    n_layers: usize,
    tied: bool,
) -> GgmlDType {
    let cols = dims.last().copied().unwrap_or(0);
    if dims.len() < 2 || gguf_name.ends_with("_norm.weight") {
        return GgmlDType::F32;
    }
    let base = quant.base_type();
    if quant == GgufQuant::F16 {
        return fallback(base, cols);
    }
    let blocks_of = |t: GgmlDType| block_layout(t).map_or(1, |(b, _)| b);
    let is_output = gguf_name == "output.weight" || (tied && gguf_name == "token_embd.weight");
    let part = gguf_name
        .strip_prefix("blk.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(layer, part)| Some((layer.parse::<usize>().ok()?, part)));
    let chosen = if is_output {
        if cols % blocks_of(base) != 0 {
            GgmlDType::Q8_0
        } else if base != GgmlDType::Q8_0 {
            GgmlDType::Q6K
        } else {
            base
        }
    } else {
        match (quant, part) {
            (GgufQuant::Q4KM, Some((layer, "attn_v.weight" | "ffn_down.weight")))
                if use_more_bits(layer, n_layers) =>
            {
                GgmlDType::Q6K
            }
            _ => base,
        }
    };
    fallback(chosen, cols)
}

/// llama.cpp's `tensor_type_fallback` for a row of `cols` weights.
fn fallback(dtype: GgmlDType, cols: usize) -> GgmlDType {
    let fits = |t: GgmlDType| block_layout(t).is_some_and(|(b, _)| cols % b == 0);
    if fits(dtype) {
        return dtype;
    }
    let smaller = match dtype {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    };
    if fits(smaller) {
        smaller
    } else {
        GgmlDType::F16
    }
}

/// The llama.cpp name of an HF tensor name (inverse of [`gguf_to_hf_name`]).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let (base, suffix) = hf.rsplit_once('.')?;
    let top = match base {
        "model.embed_tokens" => Some("token_embd"),
        "model.norm" => Some("output_norm"),
        "lm_head" => Some("output"),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{suffix}"));
    }
    let rest = base.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let part = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    let name = format!("blk.{}.{part}.{suffix}", layer.parse::<usize>().ok()?);
    (gguf_to_hf_name(&name).as_deref() == Some(hf)).then_some(name)
}

/// Metadata keys the writer sets itself instead of copying from the source.
const OWN_KEYS: [&str; 3] = [
    "general.alignment",
    "general.file_type",
    "general.quantization_version",
];

/// Builds the GGUF of `weights` (HF names, dense, in file order) for a model loaded from `source`,
/// whose metadata (architecture, tokenizer, chat template) is kept; tensors of `source` with no HF
/// twin (`rope_freqs.weight`) are copied as they are.
pub fn build_gguf(
    source: &GgufFile,
    config: &DecoderConfig,
    weights: Vec<(String, Tensor)>,
    quant: GgufQuant,
) -> Result<GgufWriter> {
    let mut writer = GgufWriter::new();
    let arch = source.meta_str("general.architecture").unwrap_or("");
    writer.set("general.architecture", Value::String(arch.to_string()));
    let mut keys: Vec<&String> = source.header().metadata.keys().collect();
    keys.sort();
    for key in keys {
        if !OWN_KEYS.contains(&key.as_str()) {
            writer.set(key, source.header().metadata[key].clone());
        }
    }
    writer.set("general.file_type", Value::U32(quant.file_type()));
    writer.set("general.quantization_version", Value::U32(2));

    let permuted = arch == "llama";
    for (hf, tensor) in weights {
        if config.tie_word_embeddings && hf == "lm_head.weight" {
            continue;
        }
        let name = hf_to_gguf_name(&hf).ok_or_else(|| {
            Error::InvalidRequest(format!("GGUF export: no llama.cpp name for tensor `{hf}`"))
        })?;
        let heads = match name.split('.').nth(2) {
            Some("attn_q") if permuted => Some(config.num_attention_heads),
            Some("attn_k") if permuted => Some(config.num_key_value_heads),
            _ => None,
        };
        let dims = tensor.dims().to_vec();
        let dtype = tensor_type(
            quant,
            &name,
            &dims,
            config.num_hidden_layers,
            config.tie_word_embeddings,
        );
        writer.add_tensor(encode(&name, &tensor, dims, dtype, heads)?)?;
    }
    for info in &source.header().tensors {
        if gguf_to_hf_name(&info.name).is_none() {
            writer.add_tensor(GgufTensorData {
                name: info.name.clone(),
                dims: info.dims.clone(),
                dtype: info.dtype,
                bytes: source.tensor_bytes(info).to_vec(),
            })?;
        }
    }
    Ok(writer)
}

/// One tensor in `dtype`, its rows permuted over `heads` heads when given.
fn encode(
    name: &str,
    tensor: &Tensor,
    dims: Vec<usize>,
    dtype: GgmlDType,
    heads: Option<usize>,
) -> Result<GgufTensorData> {
    let values: Vec<f32> = tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1())
        .context(format!("GGUF export: reading `{name}`"))?;
    let cols = dims.last().copied().unwrap_or(1).max(1);
    let mut bytes = quantize_rows(dtype, &values, cols).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "GGUF export: `{name}` of shape {dims:?} cannot be stored as {dtype:?}"
        ))
    })?;
    if let Some(n_head) = heads {
        let rows = values.len() / cols;
        bytes = permute_rows(&bytes, rows, n_head)
            .map_err(|reason| Error::InvalidRequest(format!("GGUF export: `{name}`: {reason}")))?;
    }
    Ok(GgufTensorData {
        name: name.to_string(),
        dims,
        dtype,
        bytes,
    })
}

/// Writes `weights` as a GGUF file at `path` (atomically); see [`build_gguf`].
pub fn export_gguf(
    path: &Path,
    source: &GgufFile,
    config: &DecoderConfig,
    weights: Vec<(String, Tensor)>,
    quant: GgufQuant,
) -> Result<()> {
    build_gguf(source, config, weights, quant)?.write(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M (30 layers, hidden 576, ffn 1536, tied): the types llama-quantize chose for it
    /// (its Q4_K_M log: attn_v Q8_0/Q5_0, ffn_down Q6_K/Q4_K, the rest Q5_0, token_embd Q8_0).
    #[test]
    fn smollm2_types_match_llama_quantize() {
        let t = |q, name: &str, dims: &[usize]| tensor_type(q, name, dims, 30, true);
        let (q4km, q41) = (GgufQuant::Q4KM, GgufQuant::Q4_1);
        assert_eq!(t(q4km, "token_embd.weight", &[49152, 576]), GgmlDType::Q8_0);
        assert_eq!(t(q4km, "blk.0.attn_v.weight", &[192, 576]), GgmlDType::Q8_0);
        assert_eq!(t(q4km, "blk.4.attn_v.weight", &[192, 576]), GgmlDType::Q5_0);
        assert_eq!(
            t(q4km, "blk.5.ffn_down.weight", &[576, 1536]),
            GgmlDType::Q6K
        );
        assert_eq!(
            t(q4km, "blk.6.ffn_down.weight", &[576, 1536]),
            GgmlDType::Q4K
        );
        assert_eq!(
            t(q4km, "blk.29.ffn_down.weight", &[576, 1536]),
            GgmlDType::Q6K
        );
        assert_eq!(t(q4km, "blk.6.attn_q.weight", &[576, 576]), GgmlDType::Q5_0);
        assert_eq!(t(q4km, "blk.6.attn_norm.weight", &[576]), GgmlDType::F32);
        assert_eq!(t(q41, "token_embd.weight", &[49152, 576]), GgmlDType::Q8_0);
        assert_eq!(
            t(q41, "blk.3.ffn_down.weight", &[576, 1536]),
            GgmlDType::Q4_1
        );
        assert_eq!(
            t(GgufQuant::F16, "blk.3.ffn_up.weight", &[1536, 576]),
            GgmlDType::F16
        );
        // Untied output of a 4096-wide model: Q6_K in both quantized mixes.
        let untied = |q, name: &str| tensor_type(q, name, &[32000, 4096], 32, false);
        assert_eq!(untied(q4km, "output.weight"), GgmlDType::Q6K);
        assert_eq!(untied(q41, "output.weight"), GgmlDType::Q6K);
        assert_eq!(untied(q4km, "token_embd.weight"), GgmlDType::Q4K);
        assert_eq!(untied(q41, "token_embd.weight"), GgmlDType::Q4_1);
    }

    #[test]
    fn use_more_bits_matches_llamacpp_for_30_layers() {
        let layers: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: layers 0-2, 26-29, and 3 + 3k + 2 between.
        assert_eq!(
            layers,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "model.layers.12.self_attn.q_proj.bias",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.3.post_attention_layernorm.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            let gguf = hf_to_gguf_name(hf).unwrap();
            assert_eq!(gguf_to_hf_name(&gguf).as_deref(), Some(hf));
        }
        assert_eq!(hf_to_gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf_name("model.layers.1.mlp.experts.weight"), None);
    }
}
