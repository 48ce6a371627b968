//! Text tokenizers: an HF `tokenizer.json` (+ `tokenizer_config.json`), or the tokenizer embedded in
//! GGUF metadata turned into the equivalent `tokenizers::Tokenizer`:
//! - `tokenizer.ggml.model == "gpt2"`: byte-level BPE (tokens, merges), with the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (the regexes llama.cpp uses for that model family);
//! - `tokenizer.ggml.model == "llama"`: SentencePiece BPE (tokens, scores) with byte fallback, built
//!   the way HF's `LlamaConverter` does: merges ranked by the score of the merged piece, which is the
//!   order llama.cpp's SPM tokenizer merges in.
//!
//! Control and user-defined tokens (GGUF token types 3 and 4) become added tokens, so `<|im_start|>`
//! in a chat prompt encodes to its one id.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

use crate::formats::gguf::{value_as_u64, GgufFile};
use crate::{Error, Result};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// A tokenizer with the model's special tokens and BOS policy.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    source_name: String,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    add_bos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source_name)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Reads a `tokenizer.json`. The JSON is parsed on its own first: the tokenizers crate panics
/// (`expect("Helper")` in its decoder deserializer) on a syntax error inside the `decoder` field,
/// found by fuzz/fuzz_targets/tokenizer.rs, so it only ever sees well-formed JSON here.
pub fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
    let value: Json = serde_json::from_str(&text)
        .map_err(|e| tokenizer_error(&name, format!("invalid JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| tokenizer_error(&name, e))
}

fn tokenizer_error(source_name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        source_name: source_name.to_string(),
        reason: reason.to_string(),
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": "..."}`.
fn token_string(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Wraps a `tokenizers::Tokenizer` with its special tokens. `add_bos`: whether prompts should start
    /// with `bos` (the model's own policy).
    pub fn new(
        inner: Tokenizer,
        source_name: impl Into<String>,
        bos: Option<(u32, String)>,
        eos: Option<(u32, String)>,
        add_bos: bool,
    ) -> Self {
        Self {
            inner,
            source_name: source_name.into(),
            bos,
            eos,
            add_bos,
        }
    }

    /// Loads `tokenizer.json`, reading BOS/EOS tokens and `add_bos_token` from `tokenizer_config`
    /// when given. Without `add_bos_token`, the policy is read off the tokenizer's own post-processor
    /// (whether it puts BOS in front of an encoding, as HF's Llama tokenizers do).
    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let name = tokenizer_json.display().to_string();
        if !tokenizer_json.is_file() {
            return Err(Error::Io {
                path: tokenizer_json.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file missing"),
            });
        }
        let inner = read_tokenizer_json(tokenizer_json)?;
        let config = match tokenizer_config {
            Some(path) if path.is_file() => Some(crate::formats::config::read_json(path)?),
            _ => None,
        };
        let get = |key: &str| config.as_ref().and_then(|c| c.get(key));
        let with_id =
            |token: Option<String>| token.and_then(|t| inner.token_to_id(&t).map(|id| (id, t)));
        let bos = with_id(token_string(get("bos_token")));
        let eos = with_id(token_string(get("eos_token")));
        let add_bos = match get("add_bos_token").and_then(Json::as_bool) {
            Some(flag) => flag,
            None => match &bos {
                Some((bos_id, _)) => inner
                    .encode("a", true)
                    .map(|e| e.get_ids().first() == Some(bos_id))
                    .unwrap_or(false),
                None => false,
            },
        };
        Ok(Self::new(inner, name, bos, eos, add_bos))
    }

    /// Builds the tokenizer embedded in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let name = file.path().display().to_string();
        let model = file
            .meta_str("tokenizer.ggml.model")
            .ok_or_else(|| tokenizer_error(&name, "missing metadata `tokenizer.ggml.model`"))?;
        let tokens = string_array(file, "tokenizer.ggml.tokens", &name)?;
        let types: Vec<u64> = match file.meta("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => {
                items.iter().map(|v| value_as_u64(v).unwrap_or(1)).collect()
            }
            _ => vec![1; tokens.len()],
        };
        let token_id = |key: &str| {
            file.meta(key)
                .and_then(value_as_u64)
                .map(|v| v as u32)
                .filter(|&id| (id as usize) < tokens.len())
        };
        let (json, default_add_bos) = match model {
            "gpt2" => {
                let merges = string_array(file, "tokenizer.ggml.merges", &name)?;
                let pre = file.meta_str("tokenizer.ggml.pre").unwrap_or("default");
                (gpt2_json(&tokens, &types, &merges, pre), false)
            }
            "llama" => {
                let scores: Vec<f64> = match file.meta("tokenizer.ggml.scores") {
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| crate::formats::gguf::value_as_f64(v).unwrap_or(0.0))
                        .collect(),
                    _ => {
                        return Err(tokenizer_error(
                            &name,
                            "missing metadata `tokenizer.ggml.scores`",
                        ))
                    }
                };
                if scores.len() != tokens.len() {
                    return Err(tokenizer_error(
                        &name,
                        format!("{} scores for {} tokens", scores.len(), tokens.len()),
                    ));
                }
                let unk = token_id("tokenizer.ggml.unknown_token_id").unwrap_or(0);
                let add_space_prefix = match file.meta("tokenizer.ggml.add_space_prefix") {
                    Some(Value::Bool(b)) => *b,
                    _ => true,
                };
                (
                    spm_json(&tokens, &types, &scores, unk, add_space_prefix),
                    true,
                )
            }
            other => {
                return Err(tokenizer_error(
                    &name,
                    format!("tokenizer model `{other}` is not supported (gpt2 and llama are)"),
                ))
            }
        };
        let inner = Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| tokenizer_error(&name, format!("building tokenizer: {e}")))?;
        let named = |id: Option<u32>| id.map(|id| (id, tokens[id as usize].clone()));
        let bos = named(token_id("tokenizer.ggml.bos_token_id"));
        let eos = named(token_id("tokenizer.ggml.eos_token_id"));
        let add_bos = match file.meta("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => default_add_bos,
        };
        Ok(Self::new(inner, name, bos, eos, add_bos))
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) encode to their ids.
    /// `add_bos`: put the BOS token first (pass [`TextTokenizer::add_bos`] to follow the model).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| tokenizer_error(&self.source_name, e))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos {
            if let Some((bos, _)) = &self.bos {
                ids.push(*bos);
            }
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included (the inverse of [`TextTokenizer::encode`]).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tokenizer_error(&self.source_name, e))
    }

    /// The text of `ids` without special tokens.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tokenizer_error(&self.source_name, e))
    }

    /// The vocabulary entry of an id (`Ġhello`, `▁the`, `<0x0A>`), if the id exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry or added token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// BOS id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.0)
    }

    /// BOS token text (`<s>`, `<|im_start|>`, ...).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|b| b.1.as_str())
    }

    /// EOS id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|e| e.0)
    }

    /// EOS token text.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|e| e.1.as_str())
    }

    /// Whether the model wants BOS in front of a prompt (GGUF `tokenizer.ggml.add_bos_token`, HF
    /// `add_bos_token`; llama.cpp's defaults otherwise: SentencePiece yes, GPT-2 BPE no).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

fn string_array(file: &GgufFile, key: &str, name: &str) -> Result<Vec<String>> {
    match file.meta(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(tokenizer_error(
                    name,
                    format!("`{key}` holds {other:?}, not strings"),
                )),
            })
            .collect(),
        _ => Err(tokenizer_error(name, format!("missing metadata `{key}`"))),
    }
}

/// Control (3) and user-defined (4) tokens as HF `added_tokens` entries; control tokens are special.
fn added_tokens(tokens: &[String], types: &[u64]) -> Vec<Json> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &t))| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t == TOKEN_TYPE_CONTROL})
        })
        .collect()
}

fn vocab_map(tokens: &[String]) -> serde_json::Map<String, Json> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // A duplicated piece keeps its first id, as llama.cpp's token-to-id map does.
        vocab.entry(token.clone()).or_insert(json!(id));
    }
    vocab
}

fn split_regex(pattern: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, in HF's JSON form.
fn gpt2_pre_tokenizer(pre: &str) -> Json {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        // StarCoder-family vocabularies (SmolLM, SmolLM2): single digits, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama3" | "llama-bpe" | "smaug-bpe" | "lfm2" => {
            json!({"type": "Sequence", "pretokenizers": [split_regex(LLAMA3), byte_level(false)]})
        }
        "qwen2" | "deepseek-r1-qwen" => {
            json!({"type": "Sequence", "pretokenizers": [split_regex(QWEN2), byte_level(false)]})
        }
        other => {
            if !matches!(other, "gpt2" | "gpt-2" | "default") {
                tracing::warn!(pre = other, "unknown GGUF pre-tokenizer, using GPT-2's");
            }
            byte_level(true)
        }
    }
}

fn gpt2_json(tokens: &[String], types: &[u64], merges: &[String], pre: &str) -> Json {
    let normalizer = if matches!(pre, "qwen2" | "deepseek-r1-qwen") {
        json!({"type": "NFC"})
    } else {
        Json::Null
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": normalizer,
        "pre_tokenizer": gpt2_pre_tokenizer(pre),
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": matches!(pre, "llama3" | "llama-bpe"),
            "vocab": vocab_map(tokens),
            "merges": merges,
        }
    })
}

/// SentencePiece BPE as HF's `LlamaConverter` writes it: every split of a piece into two pieces of the
/// vocabulary is a merge, ranked by the merged piece's score (highest first, then lowest id).
fn spm_json(
    tokens: &[String],
    types: &[u64],
    scores: &[f64],
    unk: u32,
    add_space_prefix: bool,
) -> Json {
    let vocab = vocab_map(tokens);
    let mut merges: Vec<(f64, usize, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Only normal pieces merge (control, byte and unused tokens never come out of a merge).
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((scores[id], id, left, right));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<Json> = merges
        .into_iter()
        .map(|(_, _, l, r)| json!([l, r]))
        .collect();
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": tokens.get(unk as usize),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    })
}
