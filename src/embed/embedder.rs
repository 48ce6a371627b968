//! `Embedder`: texts in, one vector per text out, as `SentenceTransformer.encode` computes them.
//!
//! Pipeline: optional prompt + text -> tokenizer (truncated to max_seq_length word pieces, special
//! tokens included) -> texts sorted by token count, cut into batches, each padded on the right to its
//! own longest text -> encoder -> pooling -> optional L2 normalization -> rows put back in input order.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::embed::model_dir::{
    resolve_model_dir, Prompts, SentenceTransformerConfig, DEFAULT_MODEL,
};
use crate::embed::pooling::{l2_normalize, PoolingConfig};
use crate::error::io_error;
use crate::models::bert::BertModel;
use crate::{Context, Error, Result};

/// How an `Embedder` runs.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Compute dtype of the encoder (F32 matches sentence-transformers' default; F16/BF16 on GPUs).
    pub dtype: DType,
    /// Overrides the model's max_seq_length (capped by its position table).
    pub max_seq_length: Option<usize>,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            dtype: DType::F32,
            max_seq_length: None,
        }
    }
}

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    st_config: SentenceTransformerConfig,
    max_seq_length: usize,
    pad_id: u32,
    batch_size: usize,
    dir: PathBuf,
    spec: String,
    fingerprint: OnceLock<String>,
}

/// Texts whose tokens exceeded max_seq_length in one `embed` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// How many inputs were cut to max_seq_length.
    pub truncated: usize,
}

impl Embedder {
    /// Loads `model` (`default` or a sentence-transformers directory) onto `device` with default options.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        Self::load_with(model, device, EmbedderOptions::default())
    }

    /// Loads `model` with `options`.
    pub fn load_with(model: &str, device: &Device, options: EmbedderOptions) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::InvalidOption {
                option: "batch_size".into(),
                reason: "must be at least 1".into(),
            });
        }
        let dir = resolve_model_dir(model)?;
        // Paths are recorded absolute, so an index names a model that can be found from anywhere.
        let spec = if model == DEFAULT_MODEL {
            model.to_string()
        } else {
            std::fs::canonicalize(&dir)
                .map_err(io_error(&dir))?
                .display()
                .to_string()
        };
        let st_config = SentenceTransformerConfig::read(&dir)?;
        let model_net = BertModel::load(&dir, device, options.dtype)?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::Format {
                path: dir.clone(),
                reason: "no tokenizer.json in the model directory".into(),
            });
        }
        let mut tokenizer = crate::formats::tokenizer::read_tokenizer_json(&tokenizer_path)?;
        let limit = model_net.config().max_positions();
        let wanted = options
            .max_seq_length
            .or(st_config.max_seq_length)
            .or_else(|| tokenizer_model_max_length(&dir))
            .unwrap_or(limit);
        if wanted > limit {
            tracing::warn!(
                "{}: max_seq_length {wanted} exceeds the model's {limit} positions; using {limit}",
                dir.display()
            );
        }
        let max_seq_length = wanted.min(limit);
        // The tokenizer file's own padding (often fixed-length) and truncation are replaced: wick pads
        // per batch and truncates at max_seq_length like sentence-transformers.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Tokenizer {
                source_name: tokenizer_path.display().to_string(),
                reason: format!("setting truncation to {max_seq_length}: {e}"),
            })?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .or(model_net.config().pad_token_id)
            .unwrap_or(0);
        Ok(Self {
            model: model_net,
            tokenizer,
            st_config,
            max_seq_length,
            pad_id,
            batch_size: options.batch_size,
            dir,
            spec,
            fingerprint: OnceLock::new(),
        })
    }

    /// Embeds `texts` as they are (no prompt). -> [n, dim] f32 on the model's device.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        self.embed_with(texts, None, &mut |_| {}).map(|(t, _)| t)
    }

    /// Word pieces the model reads for `texts` (special tokens included, each text cut to
    /// max_seq_length as `embed` cuts it): the usage a server reports.
    pub fn token_count(&self, texts: &[&str]) -> Result<usize> {
        let mut total = 0;
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| Error::Tokenizer {
                    source_name: self.dir.join("tokenizer.json").display().to_string(),
                    reason: e.to_string(),
                })?;
            total += encoding.get_ids().len().min(self.max_seq_length);
        }
        Ok(total)
    }

    /// Embeds search queries, with the model's query prompt (E5: "query: ").
    pub fn embed_queries(&self, texts: &[&str]) -> Result<Tensor> {
        let prompt = self.st_config.prompts.query.clone();
        self.embed_with(texts, prompt.as_deref(), &mut |_| {})
            .map(|(t, _)| t)
    }

    /// Embeds documents to search, with the model's passage prompt (E5: "passage: ").
    pub fn embed_passages(&self, texts: &[&str]) -> Result<Tensor> {
        let prompt = self.st_config.prompts.passage.clone();
        self.embed_with(texts, prompt.as_deref(), &mut |_| {})
            .map(|(t, _)| t)
    }

    /// Embeds `texts` with `prompt` prepended, calling `progress(done)` after each batch.
    /// Returns [n, dim] f32 on the model's device, rows in input order, and how many were truncated
    /// (also reported once per call as a warning).
    pub fn embed_with(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(Tensor, EmbedStats)> {
        let device = self.model.device();
        if texts.is_empty() {
            let empty =
                Tensor::zeros((0, self.dim()), DType::F32, device).context("empty result")?;
            return Ok((empty, EmbedStats::default()));
        }
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| {
                let text = format!("{}{t}", prompt.unwrap_or(""));
                if self.st_config.do_lower_case {
                    text.to_lowercase()
                } else {
                    text
                }
            })
            .collect();
        let encodings =
            self.tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| Error::Tokenizer {
                    source_name: self.dir.join("tokenizer.json").display().to_string(),
                    reason: e.to_string(),
                })?;
        let stats = EmbedStats {
            truncated: encodings
                .iter()
                .filter(|e| !e.get_overflowing().is_empty())
                .count(),
        };
        if stats.truncated > 0 {
            tracing::warn!(
                "{} of {} texts were longer than max_seq_length ({} word pieces) and were truncated",
                stats.truncated,
                texts.len(),
                self.max_seq_length
            );
        }
        let prompt_tokens = match prompt {
            Some(p) if !self.st_config.pooling.include_prompt => self.prompt_length(p)?,
            _ => 0,
        };
        // Longest first, so the largest batch (the memory peak) comes at once.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        let mut pooled = Vec::with_capacity(order.len().div_ceil(self.batch_size));
        let mut done = 0;
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            pooled.push(self.embed_batch(&batch, prompt_tokens)?);
            done += chunk.len();
            progress(done);
        }
        let sorted = Tensor::cat(&pooled, 0).context("joining batches")?;
        // Row order[k] of the input is row k of `sorted`: invert the permutation.
        let mut inverse = vec![0u32; order.len()];
        for (k, &i) in order.iter().enumerate() {
            inverse[i] = k as u32;
        }
        let inverse = Tensor::new(inverse.as_slice(), device).context("unsort index")?;
        let result = sorted
            .index_select(&inverse, 0)
            .context("restoring input order")?;
        Ok((result, stats))
    }

    /// One padded batch -> [b, dim] f32.
    fn embed_batch(&self, batch: &[&Encoding], prompt_tokens: usize) -> Result<Tensor> {
        let device = self.model.device();
        let seq = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * seq);
        let mut mask = Vec::with_capacity(batch.len() * seq);
        let mut lengths = Vec::with_capacity(batch.len());
        for encoding in batch {
            let row = encoding.get_ids();
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, seq - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, seq - row.len()));
            lengths.push(row.len());
        }
        let shape = (batch.len(), seq);
        let ids = Tensor::from_vec(ids, shape, device).context("input ids")?;
        let mask = Tensor::from_vec(mask, shape, device).context("attention mask")?;
        let hidden = self.model.forward(&ids, &mask)?;
        let pooled = self
            .st_config
            .pooling
            .pool(&hidden, &lengths, prompt_tokens)?;
        if self.st_config.normalize {
            l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }

    /// Tokens of `prompt` alone, less a trailing special token (sentence-transformers' rule).
    fn prompt_length(&self, prompt: &str) -> Result<usize> {
        let encoding = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer {
                source_name: self.dir.join("tokenizer.json").display().to_string(),
                reason: e.to_string(),
            })?;
        let special = encoding.get_special_tokens_mask();
        let mut length = encoding.get_ids().len();
        if special.last() == Some(&1) {
            length -= 1;
        }
        Ok(length)
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.st_config
            .pooling
            .output_dim(self.model.config().hidden_size)
    }

    /// Whether embeddings are L2-normalized (a Normalize module follows pooling).
    pub fn normalized(&self) -> bool {
        self.st_config.normalize
    }

    /// Inputs are cut to this many word pieces, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The pooling in use.
    pub fn pooling(&self) -> &PoolingConfig {
        &self.st_config.pooling
    }

    /// Query/passage prompts in use.
    pub fn prompts(&self) -> &Prompts {
        &self.st_config.prompts
    }

    /// Replaces the query/passage prompts (for models whose directory does not carry them).
    pub fn set_prompts(&mut self, prompts: Prompts) {
        self.st_config.prompts = prompts;
    }

    /// Texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Changes the texts per forward pass (at least 1).
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.batch_size = batch_size.max(1);
    }

    /// The model directory.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// The model as it was named at load: `default`, or the directory's absolute path.
    pub fn model_spec(&self) -> &str {
        &self.spec
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// SHA-256 over the files that decide the embeddings (config, tokenizer, weights, pooling and
    /// sentence-transformers configs), hex. Computed once, on first call.
    pub fn fingerprint(&self) -> Result<String> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let f = fingerprint_dir(&self.dir)?;
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }
}

fn tokenizer_model_max_length(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    // Tokenizers without a limit store a huge sentinel (1e30); ignore anything implausible.
    value
        .get("model_max_length")?
        .as_u64()
        .filter(|&n| n <= 1 << 20)
        .map(|n| n as usize)
}

/// SHA-256 of the files in `dir` that decide its embeddings, in a fixed order, each prefixed by its
/// relative name so that moving bytes between files changes the hash.
pub fn fingerprint_dir(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut shards: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
            .collect();
        shards.sort();
        names.extend(shards);
    }
    let mut hasher = Sha256::new();
    for name in names {
        let path = dir.join(&name);
        if !path.exists() {
            continue;
        }
        let mut file = std::fs::File::open(&path).map_err(io_error(&path))?;
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        std::io::copy(&mut file, &mut hasher).map_err(io_error(&path))?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}
