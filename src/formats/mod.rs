//! Model file formats: GGUF, Hugging Face directories (config + safetensors), tokenizers, chat templates.
//!
//! [`open_model`] is the entry point: a GGUF file or an HF directory becomes a [`ModelFiles`] with the
//! normalised config, a weight source keyed by HF tensor names, the tokenizer and the chat template.

pub mod chat_template;
pub mod config;
pub mod fetch;
pub mod gguf;
pub mod hf;
pub mod tokenizer;
pub mod validate;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::DecoderConfig;
pub use tokenizer::TextTokenizer;
pub use weights::{LoadOptions, Weight, WeightSource};

use crate::{Error, Result};

/// What kind of files a model came from.
#[derive(Debug, Clone)]
pub enum ModelFormat {
    /// One GGUF file (kept open for metadata queries).
    Gguf(Arc<gguf::GgufFile>),
    /// A Hugging Face directory.
    HfDirectory,
}

/// Everything needed to build and run a decoder, from one GGUF file or one HF directory.
pub struct ModelFiles {
    /// The GGUF file or HF directory.
    pub path: PathBuf,
    /// The normalised decoder config.
    pub config: DecoderConfig,
    /// Tensors by HF name on the requested device.
    pub weights: Box<dyn WeightSource + Send + Sync>,
    /// The model's tokenizer.
    pub tokenizer: TextTokenizer,
    /// The chat template, if the model ships one.
    pub chat_template: Option<ChatTemplate>,
    /// Where the files came from.
    pub format: ModelFormat,
}

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Opens a model: a `.gguf` file or an HF directory (`config.json`, safetensors, `tokenizer.json`).
/// Fails naming the missing or bad file. Weights are not loaded yet, only mapped and indexed.
pub fn open_model(path: &Path, options: &LoadOptions) -> Result<ModelFiles> {
    if path.is_dir() {
        open_hf_directory(path, options)
    } else if path.is_file() {
        open_gguf(path, options)
    } else {
        Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model file or directory (expected a .gguf file or an HF directory)",
            ),
        })
    }
}

/// Opens a GGUF file: config and tokenizer from its metadata, tensors from its data.
pub fn open_gguf(path: &Path, options: &LoadOptions) -> Result<ModelFiles> {
    let file = Arc::new(gguf::GgufFile::open(path)?);
    let mut config = DecoderConfig::from_gguf(&file)?;
    let tokenizer = TextTokenizer::from_gguf(&file)?;
    merge_tokenizer_specials(&mut config, &tokenizer);
    let chat_template = match file.meta_str("tokenizer.chat_template") {
        Some(source) => Some(ChatTemplate::new(source)?),
        None => None,
    };
    let weights = gguf::GgufSource::from_file(file.clone(), options.clone())?;
    Ok(ModelFiles {
        path: path.to_path_buf(),
        config,
        weights: Box::new(weights),
        tokenizer,
        chat_template,
        format: ModelFormat::Gguf(file),
    })
}

/// Opens an HF directory: `config.json` (+ `generation_config.json`), safetensors, `tokenizer.json`
/// (+ `tokenizer_config.json`), and the chat template from `tokenizer_config.json` or
/// `chat_template.jinja`.
pub fn open_hf_directory(dir: &Path, options: &LoadOptions) -> Result<ModelFiles> {
    let config_path = dir.join("config.json");
    require_file(&config_path)?;
    let mut config = DecoderConfig::from_hf_config(&config_path)?;
    let tokenizer_json = dir.join("tokenizer.json");
    require_file(&tokenizer_json)?;
    let tokenizer_config = dir.join("tokenizer_config.json");
    let tokenizer = TextTokenizer::from_files(&tokenizer_json, Some(&tokenizer_config))?;
    merge_tokenizer_specials(&mut config, &tokenizer);
    let jinja = dir.join("chat_template.jinja");
    let chat_template = if jinja.is_file() {
        Some(ChatTemplate::from_file(&jinja)?)
    } else if tokenizer_config.is_file() {
        ChatTemplate::from_tokenizer_config(&tokenizer_config)?
    } else {
        None
    };
    let weights = hf::SafetensorsSource::open(dir, options.clone())?;
    Ok(ModelFiles {
        path: dir.to_path_buf(),
        config,
        weights: Box::new(weights),
        tokenizer,
        chat_template,
        format: ModelFormat::HfDirectory,
    })
}

fn require_file(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "required file is missing"),
        })
    }
}

/// The tokenizer's EOS ends generation too (instruct models' `<|im_end|>`); its BOS fills a config
/// that names none.
fn merge_tokenizer_specials(config: &mut DecoderConfig, tokenizer: &TextTokenizer) {
    if let Some(eos) = tokenizer.eos_id() {
        if !config.eos_token_ids.contains(&eos) {
            config.eos_token_ids.push(eos);
        }
    }
    if config.bos_token_id.is_none() {
        config.bos_token_id = tokenizer.bos_id();
    }
}
