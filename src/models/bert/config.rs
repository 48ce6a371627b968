//! The encoder's config.json: the layout (BERT or RoBERTa positions), the activation, and the
//! checks that reject what the encoder cannot run.

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::io_error;
use crate::formats::config::MAX_LAYERS;
use crate::{Context, Error, Result};

/// The encoder layouts wick implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderLayout {
    /// `model_type: bert` (BERT, MiniLM, BGE, E5, GTE-small ...): positions 0..s.
    Bert,
    /// `model_type: roberta | xlm-roberta | camembert`: positions start at `pad_token_id + 1`.
    Roberta,
}

impl EncoderLayout {
    /// The `model_type` values wick accepts, for error messages.
    pub const SUPPORTED: &'static str = "bert, roberta, xlm-roberta, camembert";

    pub(super) fn parse(model_type: &str) -> Option<Self> {
        match model_type.to_ascii_lowercase().as_str() {
            "bert" => Some(Self::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Some(Self::Roberta),
            _ => None,
        }
    }
}

/// The activation inside the feed-forward block (`hidden_act` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// HF "gelu": x * Phi(x) with the exact erf.
    GeluErf,
    /// HF "gelu_new" / "gelu_pytorch_tanh": the tanh approximation.
    GeluTanh,
    /// "relu".
    Relu,
}

impl HiddenAct {
    pub(super) fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    pub(super) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::GeluErf => x.gelu_erf().context("gelu (erf)"),
            Self::GeluTanh => x.gelu().context("gelu (tanh)"),
            Self::Relu => x.relu().context("relu"),
        }
    }
}

/// config.json of a BERT-family encoder, as Hugging Face writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// The name the model was saved under (`_name_or_path`), for messages and prefix defaults.
    #[serde(default, rename = "_name_or_path")]
    pub name_or_path: String,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        if EncoderLayout::parse(&self.model_type).is_none() {
            return Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture: self.model_type.clone(),
                supported: EncoderLayout::SUPPORTED.into(),
            });
        }
        if HiddenAct::parse(&self.hidden_act).is_none() {
            return Err(bad(format!(
                "hidden_act `{}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)",
                self.hidden_act
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(bad(format!(
                "position_embedding_type `{}` is not supported (absolute)",
                self.position_embedding_type
            )));
        }
        // The layer loop at load builds names for every declared layer: a corrupt count must not
        // become a runaway loop or allocation.
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(bad(format!(
                "num_hidden_layers {} is larger than wick accepts ({MAX_LAYERS})",
                self.num_hidden_layers
            )));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// The layout implied by `model_type` (validated at load).
    pub fn layout(&self) -> EncoderLayout {
        EncoderLayout::parse(&self.model_type).unwrap_or(EncoderLayout::Bert)
    }

    /// The longest input the position table allows (RoBERTa reserves `pad_token_id + 1` slots).
    pub fn max_positions(&self) -> usize {
        match self.layout() {
            EncoderLayout::Bert => self.max_position_embeddings,
            EncoderLayout::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id.unwrap_or(1) as usize + 1),
        }
    }
}
