//! The decoder configuration wick runs on, normalised from either an HF `config.json` or GGUF metadata.
//! One struct covers LLaMA-family (SmolLM2, TinyLlama, Llama 3.x), Mistral and Qwen2/Qwen2.5.

use serde::{Deserialize, Serialize};

/// Decoder architectures wick implements with its one decoder (`models::llama`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// LLaMA-family: SmolLM2, TinyLlama, Llama 2/3.x.
    Llama,
    /// Mistral (LLaMA layout; sliding window ignored for contexts under the window).
    Mistral,
    /// Qwen2 / Qwen2.5: bias on q/k/v, usually tied embeddings.
    Qwen2,
}

impl Architecture {
    /// The names wick accepts, for error messages.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2";

    /// Parses an HF `model_type` or a GGUF `general.architecture`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// The HF `model_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// Llama 3.x "llama3" RoPE frequency scaling (HF `rope_scaling` with `rope_type: llama3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the decoder needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension; `hidden_size / num_attention_heads` unless the file says otherwise.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    /// The LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    /// Every token id that ends generation.
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    /// Number of query heads sharing one key/value head (GQA group size).
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// The largest layer count, and any other dimension, a config (decoder or encoder) may declare: far
/// above every real model, low enough that nothing sized by them (tensor lists, shape products) can
/// overflow.
pub(crate) const MAX_LAYERS: usize = 1 << 12;
pub(crate) const MAX_DIM: usize = 1 << 24;

/// Reading a [`DecoderConfig`] from an HF `config.json` (+ `generation_config.json`) or GGUF metadata.
mod load {
    use std::path::Path;

    use serde_json::Value as Json;

    use super::{Architecture, DecoderConfig, Llama3RopeScaling, MAX_DIM, MAX_LAYERS};
    use crate::error::io_error;
    use crate::formats::gguf::{value_as_f64, value_as_u64, GgufFile};
    use crate::{Error, Result};

    /// Most bytes the RoPE tables may take (four f32 tables of context x head_dim/2 values; a 1M
    /// context at head_dim 128 takes 0.96 GiB).
    const MAX_ROPE_TABLE_BYTES: u64 = 1 << 30;

    impl DecoderConfig {
        /// Refuses sizes no supported model has before anything is allocated from them (a corrupt or
        /// hostile file could otherwise ask for terabytes).
        fn checked_sizes(self, path: &Path) -> Result<Self> {
            for (name, value) in [
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.num_key_value_heads),
                ("head_dim", self.head_dim),
                ("max_position_embeddings", self.max_position_embeddings),
            ] {
                if value > MAX_DIM {
                    return Err(config_error(
                        path,
                        format!("{name} {value} is larger than wick accepts ({MAX_DIM})"),
                    ));
                }
            }
            if self.num_hidden_layers > MAX_LAYERS {
                return Err(config_error(
                    path,
                    format!(
                        "num_hidden_layers {} is larger than wick accepts ({MAX_LAYERS})",
                        self.num_hidden_layers
                    ),
                ));
            }
            let rope_bytes = 16 * self.max_position_embeddings as u64 * (self.head_dim as u64 / 2);
            if rope_bytes > MAX_ROPE_TABLE_BYTES {
                return Err(config_error(
                    path,
                    format!(
                        "context length {} at head_dim {} needs {} MiB of RoPE tables, more than the {} MiB wick allows",
                        self.max_position_embeddings,
                        self.head_dim,
                        rope_bytes >> 20,
                        MAX_ROPE_TABLE_BYTES >> 20
                    ),
                ));
            }
            Ok(self)
        }
    }

    fn config_error(path: &Path, reason: impl Into<String>) -> Error {
        Error::Config {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Reads a JSON file into a value, naming the file and line on a syntax error.
    pub(crate) fn read_json(path: &Path) -> Result<Json> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        serde_json::from_str(&text).map_err(|e| config_error(path, format!("invalid JSON: {e}")))
    }

    /// Token ids from an int, a list of ints, or null.
    fn token_ids(value: Option<&Json>) -> Vec<u32> {
        match value {
            Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Json::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            _ => Vec::new(),
        }
    }

    struct Fields<'a> {
        path: &'a Path,
        json: &'a Json,
    }

    impl Fields<'_> {
        fn usize_required(&self, key: &str) -> Result<usize> {
            match self.json.get(key) {
                None | Some(Json::Null) => Err(config_error(
                    self.path,
                    format!("missing required field `{key}`"),
                )),
                Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
                    config_error(
                        self.path,
                        format!("field `{key}` is {v}, expected an integer"),
                    )
                }),
            }
        }

        fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
            match self.json.get(key) {
                None | Some(Json::Null) => Ok(default),
                Some(_) => self.usize_required(key),
            }
        }

        fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
            match self.json.get(key) {
                None | Some(Json::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    config_error(
                        self.path,
                        format!("field `{key}` is {v}, expected a number"),
                    )
                }),
            }
        }

        fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
            match self.json.get(key) {
                None | Some(Json::Null) => Ok(default),
                Some(v) => v.as_bool().ok_or_else(|| {
                    config_error(
                        self.path,
                        format!("field `{key}` is {v}, expected true or false"),
                    )
                }),
            }
        }
    }

    /// HF `rope_scaling`: `None` for absent/"default", the llama3 parameters, or an error naming the type.
    fn rope_scaling(path: &Path, json: &Json) -> Result<Option<Llama3RopeScaling>> {
        let scaling = match json.get("rope_scaling") {
            None | Some(Json::Null) => return Ok(None),
            Some(s) => s,
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Json::as_str)
            .unwrap_or("default");
        match kind {
            "default" => Ok(None),
            "llama3" => {
                let f = Fields {
                    path,
                    json: scaling,
                };
                Ok(Some(Llama3RopeScaling {
                    factor: f.f64_or("factor", 8.0)?,
                    low_freq_factor: f.f64_or("low_freq_factor", 1.0)?,
                    high_freq_factor: f.f64_or("high_freq_factor", 4.0)?,
                    original_max_position_embeddings: f
                        .usize_or("original_max_position_embeddings", 8192)?,
                }))
            }
            other => Err(config_error(
                path,
                format!("rope_scaling type `{other}` is not supported (wick implements llama3)"),
            )),
        }
    }

    impl DecoderConfig {
        /// Reads an HF `config.json` (LLaMA, Mistral, Qwen2), merging the `eos_token_id` of a
        /// `generation_config.json` beside it. Shape fields (`vocab_size`, `hidden_size`,
        /// `intermediate_size`, `num_hidden_layers`, `num_attention_heads`) are required: HF would
        /// silently default them to a 7B model's. The rest take HF's per-architecture defaults.
        pub fn from_hf_config(path: &Path) -> Result<Self> {
            let json = read_json(path)?;
            let model_type = json
                .get("model_type")
                .and_then(Json::as_str)
                .ok_or_else(|| config_error(path, "missing required field `model_type`"))?;
            let architecture =
                Architecture::parse(model_type).ok_or_else(|| Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: model_type.to_string(),
                    supported: Architecture::SUPPORTED.to_string(),
                })?;
            let f = Fields { path, json: &json };
            let num_attention_heads = f.usize_required("num_attention_heads")?;
            let hidden_size = f.usize_required("hidden_size")?;
            if num_attention_heads == 0 {
                return Err(config_error(path, "`num_attention_heads` is 0"));
            }
            let (default_theta, default_max_pos) = match architecture {
                Architecture::Llama => (10_000.0, 2048),
                Architecture::Mistral => (10_000.0, 4096 * 32),
                Architecture::Qwen2 => (10_000.0, 32_768),
            };
            let num_key_value_heads = f.usize_or("num_key_value_heads", num_attention_heads)?;
            if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
                return Err(config_error(
                    path,
                    format!("`num_key_value_heads` {num_key_value_heads} does not divide `num_attention_heads` {num_attention_heads}"),
                ));
            }
            let mut eos_token_ids = token_ids(json.get("eos_token_id"));
            let generation = path.with_file_name("generation_config.json");
            if generation.is_file() {
                for id in token_ids(read_json(&generation)?.get("eos_token_id")) {
                    if !eos_token_ids.contains(&id) {
                        eos_token_ids.push(id);
                    }
                }
            }
            Self {
                architecture,
                vocab_size: f.usize_required("vocab_size")?,
                hidden_size,
                intermediate_size: f.usize_required("intermediate_size")?,
                num_hidden_layers: f.usize_required("num_hidden_layers")?,
                num_attention_heads,
                num_key_value_heads,
                head_dim: f.usize_or("head_dim", hidden_size / num_attention_heads)?,
                rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
                rope_theta: f.f64_or("rope_theta", default_theta)?,
                rope_scaling: rope_scaling(path, &json)?,
                max_position_embeddings: f.usize_or("max_position_embeddings", default_max_pos)?,
                tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
                // Qwen2 always has q/k/v bias (its HF config has no switch).
                attention_bias: architecture == Architecture::Qwen2
                    || f.bool_or("attention_bias", false)?,
                bos_token_id: token_ids(json.get("bos_token_id")).first().copied(),
                eos_token_ids,
            }
            .checked_sizes(path)
        }

        /// Reads the config from GGUF metadata (`{arch}.embedding_length`, `.block_count`, ...).
        /// Tied embeddings when there is no `output.weight`; vocab size from the token list.
        pub fn from_gguf(file: &GgufFile) -> Result<Self> {
            let path = file.path();
            let arch_name = file
                .meta_str("general.architecture")
                .ok_or_else(|| Error::Format {
                    path: path.to_path_buf(),
                    reason: "missing metadata `general.architecture`".into(),
                })?;
            let architecture =
                Architecture::parse(arch_name).ok_or_else(|| Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: arch_name.to_string(),
                    supported: Architecture::SUPPORTED.to_string(),
                })?;
            let missing = |key: &str| Error::Format {
                path: path.to_path_buf(),
                reason: format!("missing or non-numeric metadata `{key}`"),
            };
            let uint = |suffix: &str| -> Result<Option<usize>> {
                let key = format!("{arch_name}.{suffix}");
                match file.meta(&key) {
                    None => Ok(None),
                    Some(v) => value_as_u64(v)
                        .map(|v| Some(v as usize))
                        .ok_or_else(|| missing(&key)),
                }
            };
            let required = |suffix: &str| -> Result<usize> {
                uint(suffix)?.ok_or_else(|| missing(&format!("{arch_name}.{suffix}")))
            };
            let float = |suffix: &str| {
                file.meta(&format!("{arch_name}.{suffix}"))
                    .and_then(value_as_f64)
            };
            let hidden_size = required("embedding_length")?;
            let block_count = required("block_count")?;
            // Every block has at least 9 tensors; a larger count is corrupt, and would size loops.
            if block_count > file.header().tensors.len() {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    reason: format!(
                        "`{arch_name}.block_count` is {block_count} but the file holds only {} tensors",
                        file.header().tensors.len()
                    ),
                });
            }
            let num_attention_heads = required("attention.head_count")?;
            if num_attention_heads == 0 {
                return Err(missing(&format!("{arch_name}.attention.head_count")));
            }
            let num_key_value_heads =
                uint("attention.head_count_kv")?.unwrap_or(num_attention_heads);
            if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    reason: format!("head_count_kv {num_key_value_heads} does not divide head_count {num_attention_heads}"),
                });
            }
            let vocab_size = match uint("vocab_size")? {
                Some(v) => v,
                None => match file.meta("tokenizer.ggml.tokens") {
                    Some(candle_core::quantized::gguf_file::Value::Array(tokens)) => tokens.len(),
                    _ => file
                        .tensor_info("token_embd.weight")
                        .map(|t| t.dims[0])
                        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?,
                },
            };
            let eos_token_ids = gguf_eos_token_ids(file);
            gguf_check_rope_scaling(file, arch_name)?;
            Self {
                architecture,
                vocab_size,
                hidden_size,
                intermediate_size: required("feed_forward_length")?,
                num_hidden_layers: block_count,
                num_attention_heads,
                num_key_value_heads,
                head_dim: uint("attention.key_length")?
                    .unwrap_or(hidden_size / num_attention_heads),
                rms_norm_eps: float("attention.layer_norm_rms_epsilon").ok_or_else(|| {
                    missing(&format!("{arch_name}.attention.layer_norm_rms_epsilon"))
                })?,
                rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
                rope_scaling: crate::formats::gguf::llama3_rope_scaling(file)?,
                max_position_embeddings: required("context_length")?,
                tie_word_embeddings: file.tensor_info("output.weight").is_none(),
                attention_bias: architecture == Architecture::Qwen2
                    || file.tensor_info("blk.0.attn_q.bias").is_some(),
                bos_token_id: gguf_token_id(file, "tokenizer.ggml.bos_token_id"),
                eos_token_ids,
            }
            .checked_sizes(path)
        }
    }

    /// A token id from GGUF metadata `key`, if present and numeric.
    fn gguf_token_id(file: &GgufFile, key: &str) -> Option<u32> {
        file.meta(key).and_then(value_as_u64).map(|v| v as u32)
    }

    /// The end-of-sequence ids a GGUF names (eos, eot, eom), each once, in that order.
    fn gguf_eos_token_ids(file: &GgufFile) -> Vec<u32> {
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = gguf_token_id(file, key) {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        eos_token_ids
    }

    /// Rejects a rope scaling type other than `none` (llama3 scaling is read by
    /// `gguf::llama3_rope_scaling`).
    fn gguf_check_rope_scaling(file: &GgufFile, arch_name: &str) -> Result<()> {
        if let Some(scaling) = file.meta_str(&format!("{arch_name}.rope.scaling.type")) {
            if scaling != "none" {
                return Err(Error::Format {
                    path: file.path().to_path_buf(),
                    reason: format!("rope scaling `{scaling}` is not supported"),
                });
            }
        }
        Ok(())
    }
}

pub(crate) use load::read_json;
