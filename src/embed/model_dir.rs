//! What a sentence-transformers model directory says beyond the encoder itself: the module pipeline
//! (modules.json), pooling (1_Pooling/config.json), normalization, max_seq_length and lowercasing
//! (sentence_bert_config.json), and query/passage prompts (config_sentence_transformers.json).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::embed::pooling::PoolingConfig;
use crate::error::io_error;
use crate::{Error, Result};

/// The model name wick accepts for its default embedding model.
pub const DEFAULT_MODEL: &str = "default";

/// The directory of the model named `spec`: `default` (fetched into WICK_HOME on first use) or a path.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    if spec == DEFAULT_MODEL {
        return default_model_dir();
    }
    let path = PathBuf::from(spec);
    if !path.is_dir() {
        return Err(Error::InvalidOption {
            option: "--model".into(),
            reason: format!(
                "`{spec}` is not a directory (expected `{DEFAULT_MODEL}` or a sentence-transformers \
                 model directory holding config.json, model.safetensors and tokenizer.json)"
            ),
        });
    }
    Ok(path)
}

fn default_model_dir() -> Result<PathBuf> {
    crate::formats::fetch::ensure_default_embedding_model()
}

/// Query and passage prefixes prepended to texts before tokenizing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    /// Prepended to search queries (E5: `"query: "`).
    pub query: Option<String>,
    /// Prepended to documents / passages (E5: `"passage: "`).
    pub passage: Option<String>,
}

/// The sentence-transformers configuration of one model directory.
#[derive(Debug, Clone)]
pub struct SentenceTransformerConfig {
    /// Pooling modes and whether prompt tokens are pooled.
    pub pooling: PoolingConfig,
    /// Whether a Normalize module follows pooling.
    pub normalize: bool,
    /// Inputs are truncated to this many word pieces (special tokens included).
    pub max_seq_length: Option<usize>,
    /// Lowercase texts before tokenizing (`do_lower_case`).
    pub do_lower_case: bool,
    /// Query/passage prompts.
    pub prompts: Prompts,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

impl SentenceTransformerConfig {
    /// Reads the configs in `dir`. A directory without modules.json (a plain HF encoder) or without a
    /// pooling config gets mean pooling with a warning, as sentence-transformers does.
    pub fn read(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        let (pooling, normalize) = if modules_path.exists() {
            let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
            let mut pooling = None;
            let mut normalize = false;
            for module in &modules {
                let kind = module.kind.rsplit('.').next().unwrap_or(&module.kind);
                match kind {
                    "Transformer" => {}
                    "Normalize" => normalize = true,
                    "Pooling" => {
                        let config = dir.join(&module.path).join("config.json");
                        if config.exists() {
                            pooling = Some(PoolingConfig::from_file(&config)?);
                        } else {
                            tracing::warn!(
                                "{}: no pooling config ({} is missing); using mean pooling",
                                dir.display(),
                                config.display()
                            );
                            pooling = Some(PoolingConfig::default());
                        }
                    }
                    _ => {
                        return Err(Error::UnsupportedArchitecture {
                            path: modules_path.clone(),
                            architecture: format!("sentence-transformers module {}", module.kind),
                            supported: "Transformer, Pooling, Normalize".into(),
                        })
                    }
                }
            }
            let pooling = pooling.unwrap_or_else(|| {
                tracing::warn!(
                    "{}: modules.json lists no Pooling module; using mean pooling",
                    modules_path.display()
                );
                PoolingConfig::default()
            });
            (pooling, normalize)
        } else {
            tracing::warn!(
                "{}: no modules.json, so no pooling config; using mean pooling without normalization \
                 (what sentence-transformers does for a plain Hugging Face encoder)",
                dir.display()
            );
            (PoolingConfig::default(), false)
        };

        let sbert_path = dir.join("sentence_bert_config.json");
        let sbert: SentenceBertConfig = if sbert_path.exists() {
            read_json(&sbert_path)?
        } else {
            SentenceBertConfig::default()
        };
        let prompts = read_prompts(dir)?;
        Ok(Self {
            pooling,
            normalize,
            max_seq_length: sbert.max_seq_length,
            do_lower_case: sbert.do_lower_case,
            prompts,
        })
    }
}

/// Prompts from config_sentence_transformers.json (`prompts: {"query": .., "passage"|"document": ..}`),
/// else E5's documented `"query: "` / `"passage: "` when the directory or `_name_or_path` names an E5
/// model (E5 checkpoints do not ship the prompts in their config).
fn read_prompts(dir: &Path) -> Result<Prompts> {
    let st_config = dir.join("config_sentence_transformers.json");
    if st_config.exists() {
        let value: Value = read_json(&st_config)?;
        if let Some(prompts) = value.get("prompts").and_then(Value::as_object) {
            let pick = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| prompts.get(*k).and_then(Value::as_str))
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
            };
            let found = Prompts {
                query: pick(&["query"]),
                passage: pick(&["passage", "document", "corpus"]),
            };
            if found != Prompts::default() {
                return Ok(found);
            }
        }
    }
    let mut names = vec![dir.to_string_lossy().to_string()];
    if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            if let Some(name) = value.get("_name_or_path").and_then(Value::as_str) {
                names.push(name.to_string());
            }
        }
    }
    if names.iter().any(|n| is_e5_name(n)) {
        return Ok(Prompts {
            query: Some("query: ".into()),
            passage: Some("passage: ".into()),
        });
    }
    Ok(Prompts::default())
}

/// `intfloat/e5-small-v2`, `multilingual-e5-base`, `.../e5_large`: "e5" as a whole word of a path.
fn is_e5_name(name: &str) -> bool {
    name.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "e5")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e5_names() {
        assert!(is_e5_name("intfloat/e5-small-v2"));
        assert!(is_e5_name("/models/multilingual-e5-base"));
        assert!(!is_e5_name("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!is_e5_name("/tmp/e55"));
    }
}
