//! Training data: JSONL lines to token ids and labels, then shuffled, padded batches.
//!
//! Each line is one of
//! - `{"text": "..."}`: every token counts;
//! - `{"prompt": "...", "completion": "..."}`: only the completion's tokens (and the EOS after it) count;
//! - `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`: rendered with the
//!   model's chat template; only assistant turns count. For assistant turn i the template renders
//!   `messages[..i]` with the generation prompt (the prefix) and `messages[..=i]` (through the turn);
//!   the tokens between the two lengths are the turn's (content and end-of-turn marker).
//!
//! Labels are the token ids themselves where they count and `IGNORE_INDEX` elsewhere; the loss shifts
//! them. A sequence longer than `max_seq_len` is truncated (its tail dropped, with a count reported in
//! [`DataStats`]); `max_seq_len` itself may not exceed the model's context. Batches are right-padded
//! (padding labels ignored), or examples are packed into `max_seq_len` rows.
//!
//! Nothing is dropped silently: a line that cannot be read (not UTF-8, not JSON, a bad record) is an
//! error naming file and line; an example left with no trained-on token after truncation is dropped
//! and listed in [`DataStats::dropped`] with its line and reason; blank lines are listed in
//! [`DataStats::blank_lines`]. A dataset where nothing trains is refused, with the reasons.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use serde_json::Value;

use crate::formats::{ChatMessage, ChatTemplate, TextTokenizer};
use crate::lora::init::derived_rng;
use crate::train::loss::IGNORE_INDEX;
use crate::{Error, Result};

/// One tokenized example: ids and labels of the same length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// `input_ids[i]` where position i counts, `IGNORE_INDEX` elsewhere (unshifted).
    pub labels: Vec<i64>,
}

impl Example {
    /// Positions the loss counts (after the shift: position 0 never does).
    pub fn counted(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|l| **l != IGNORE_INDEX)
            .count()
    }
}

/// How a dataset is read.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Longest sequence fed to the model; longer ones are truncated.
    pub max_seq_len: usize,
    /// Concatenate examples into rows of exactly `max_seq_len` instead of padding.
    pub pack: bool,
}

/// A dataset line that gave no example, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedLine {
    /// 1-based line number.
    pub line: usize,
    /// Why it was dropped.
    pub reason: String,
}

/// What loading found, for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Examples read.
    pub examples: usize,
    /// Examples cut to `max_seq_len`.
    pub truncated: usize,
    /// Examples dropped because nothing countable was left after truncation, by line.
    pub dropped: Vec<DroppedLine>,
    /// Whitespace-only lines (not records), by line number.
    pub blank_lines: Vec<usize>,
    /// Total tokens and counted (trained-on) tokens.
    pub tokens: usize,
    pub counted_tokens: usize,
}

/// A tokenized dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    /// Rows the batches are made of (examples, or packed rows).
    pub rows: Vec<Example>,
    pub stats: DataStats,
    /// The id padding uses (its label is always ignored).
    pub pad_id: u32,
}

/// Reads and tokenizes a JSONL dataset. `context_len` is the model's context length.
pub fn load_jsonl(
    path: &Path,
    tokenizer: &TextTokenizer,
    chat_template: Option<&ChatTemplate>,
    options: &DataOptions,
    context_len: usize,
) -> Result<Dataset> {
    check_max_seq_len(options.max_seq_len, context_len)?;
    let bytes = std::fs::read(path).map_err(crate::error::io_error(path))?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let mut stats = DataStats::default();
    let mut examples = Vec::new();
    let mut pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop(); // what follows the final newline is no line
    }
    for (index, raw) in pieces.into_iter().enumerate() {
        let line = index + 1;
        let bad = |reason: String| Error::BadLine {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|e| {
            bad(format!(
                "not valid UTF-8 (byte {} of the line)",
                e.valid_up_to() + 1
            ))
        })?;
        if text.trim().is_empty() {
            stats.blank_lines.push(line);
            continue;
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let mut example = tokenize_record(&value, tokenizer, chat_template).map_err(bad)?;
        stats.examples += 1;
        let length = example.input_ids.len();
        let first = example
            .labels
            .iter()
            .skip(1)
            .position(|l| *l != IGNORE_INDEX);
        if length > options.max_seq_len {
            example.input_ids.truncate(options.max_seq_len);
            example.labels.truncate(options.max_seq_len);
            stats.truncated += 1;
        }
        if example.counted() == 0 {
            let reason = match first {
                Some(p) => format!(
                    "no trained-on token left after truncation to {} tokens (the first is token {} of {length})",
                    options.max_seq_len,
                    p + 2
                ),
                None => format!("no token to train on ({length} tokens, none counted)"),
            };
            stats.dropped.push(DroppedLine { line, reason });
            continue;
        }
        stats.tokens += example.input_ids.len();
        stats.counted_tokens += example.counted();
        examples.push(example);
    }
    check_loaded(path, &stats, examples.len(), options.max_seq_len)?;
    let pad_id = tokenizer.eos_id().unwrap_or(0);
    let rows = if options.pack {
        pack(&examples, options.max_seq_len)
    } else {
        examples
    };
    Ok(Dataset {
        path: path.to_path_buf(),
        rows,
        stats,
        pad_id,
    })
}

/// `--max-seq-len` must hold at least one input and one label, within the model's context.
fn check_max_seq_len(max_seq_len: usize, context_len: usize) -> Result<()> {
    if max_seq_len < 2 {
        return Err(Error::InvalidOption {
            option: "--max-seq-len".into(),
            reason: format!("must be at least 2, got {max_seq_len}"),
        });
    }
    if max_seq_len > context_len {
        return Err(Error::InvalidOption {
            option: "--max-seq-len".into(),
            reason: format!("{max_seq_len} exceeds the model's context of {context_len} tokens"),
        });
    }
    Ok(())
}

/// Fails on a dataset with no lines or with every example dropped (`kept` examples left); warns
/// about truncated ones.
fn check_loaded(path: &Path, stats: &DataStats, kept: usize, max_seq_len: usize) -> Result<()> {
    if stats.examples == 0 {
        return Err(Error::InvalidRequest(format!(
            "{}: the dataset is empty (no JSONL lines)",
            path.display()
        )));
    }
    if kept == 0 {
        return Err(Error::InvalidRequest(format!(
            "{}: nothing to train on: all {} example(s) were dropped ({}); raise --max-seq-len or \
             shorten the prompts",
            path.display(),
            stats.examples,
            describe_dropped(&stats.dropped, 5)
        )));
    }
    if stats.truncated > 0 {
        tracing::warn!(
            "{}: {} of {} examples truncated to {} tokens",
            path.display(),
            stats.truncated,
            stats.examples,
            max_seq_len
        );
    }
    Ok(())
}

/// "line 3: reason; line 7: reason; ... and N more" for the first `shown` dropped lines.
pub fn describe_dropped(dropped: &[DroppedLine], shown: usize) -> String {
    let mut parts: Vec<String> = dropped
        .iter()
        .take(shown)
        .map(|d| format!("line {}: {}", d.line, d.reason))
        .collect();
    if dropped.len() > shown {
        parts.push(format!("and {} more", dropped.len() - shown));
    }
    parts.join("; ")
}

fn field_str<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
        None => Err(format!("missing `{key}`")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON record to an example; the error is the reason (the caller adds file and line).
fn tokenize_record(
    value: &Value,
    tokenizer: &TextTokenizer,
    chat_template: Option<&ChatTemplate>,
) -> Result<Example, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind(value)))?;
    let encode = |text: &str, bos: bool| tokenizer.encode(text, bos).map_err(|e| e.to_string());
    let eos: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    if obj.contains_key("messages") {
        let template = chat_template.ok_or(
            "`messages` needs a chat template, and this model has none (use `text` or `prompt`/`completion`)",
        )?;
        let messages = parse_messages(obj.get("messages").unwrap_or(&Value::Null))?;
        return tokenize_chat(&messages, template, tokenizer);
    }
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        let prompt = field_str(obj, "prompt")?;
        let completion = field_str(obj, "completion")?;
        if completion.is_empty() {
            return Err("`completion` is empty".into());
        }
        let p = encode(prompt, tokenizer.add_bos())?;
        let mut c = encode(completion, false)?;
        c.extend(&eos);
        let mut labels = vec![IGNORE_INDEX; p.len()];
        labels.extend(c.iter().map(|t| *t as i64));
        let mut input_ids = p;
        input_ids.extend(c);
        return Ok(Example { input_ids, labels });
    }
    if obj.contains_key("text") {
        let text = field_str(obj, "text")?;
        if text.is_empty() {
            return Err("`text` is empty".into());
        }
        let mut input_ids = encode(text, tokenizer.add_bos())?;
        input_ids.extend(&eos);
        let labels = input_ids.iter().map(|t| *t as i64).collect();
        return Ok(Example { input_ids, labels });
    }
    let keys: Vec<&String> = obj.keys().collect();
    Err(format!(
        "expected `text`, `prompt` + `completion`, or `messages`; found keys {keys:?}"
    ))
}

fn parse_messages(value: &Value) -> Result<Vec<ChatMessage>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("`messages` must be an array, found {}", kind(value)))?;
    if items.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| format!("messages[{i}] must be an object, found {}", kind(item)))?;
        let role = field_str(obj, "role").map_err(|e| format!("messages[{i}]: {e}"))?;
        let content = field_str(obj, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "messages[{i}]: unknown role `{role}` (system, user or assistant)"
            ));
        }
        messages.push(ChatMessage::new(role, content));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("`messages` has no assistant turn to train on".into());
    }
    Ok(messages)
}

fn tokenize_chat(
    messages: &[ChatMessage],
    template: &ChatTemplate,
    tokenizer: &TextTokenizer,
) -> Result<Example, String> {
    let bos = tokenizer.bos_token().unwrap_or("");
    let eos = tokenizer.eos_token().unwrap_or("");
    let render = |msgs: &[ChatMessage], generation_prompt: bool| -> Result<Vec<u32>, String> {
        let text = template
            .render(msgs, generation_prompt, bos, eos)
            .map_err(|e| e.to_string())?;
        // Templates write BOS themselves when the model wants it (transformers' apply_chat_template
        // tokenizes with add_special_tokens=False).
        tokenizer.encode(&text, false).map_err(|e| e.to_string())
    };
    let input_ids = render(messages, false)?;
    let mut labels = vec![IGNORE_INDEX; input_ids.len()];
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let start = render(&messages[..i], true)?.len();
        let through = render(&messages[..=i], false)?;
        let end = through.len();
        if end > input_ids.len() || through[..] != input_ids[..end] || start > end {
            return Err(format!(
                "the chat template does not render messages[..={i}] as a prefix of the whole conversation, so assistant tokens cannot be located"
            ));
        }
        for j in start..end {
            labels[j] = input_ids[j] as i64;
        }
    }
    Ok(Example { input_ids, labels })
}

/// Concatenates examples (each already ending in EOS) and cuts rows of `len` tokens; the last, shorter
/// row is kept. Attention crosses example boundaries inside a row (as TRL's plain packing does).
fn pack(examples: &[Example], len: usize) -> Vec<Example> {
    let ids: Vec<u32> = examples.iter().flat_map(|e| e.input_ids.clone()).collect();
    let labels: Vec<i64> = examples.iter().flat_map(|e| e.labels.clone()).collect();
    ids.chunks(len)
        .zip(labels.chunks(len))
        .map(|(i, l)| Example {
            input_ids: i.to_vec(),
            labels: l.to_vec(),
        })
        .filter(|e| e.counted() > 0)
        .collect()
}

/// One padded batch: ids [batch, seq] and labels [batch, seq], row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i64>>,
}

impl Batch {
    /// Sequence length of the (padded) batch.
    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }
    /// Tokens that are not padding.
    pub fn real_tokens(&self, lengths: &[usize]) -> usize {
        lengths.iter().sum()
    }
}

impl Dataset {
    /// Batches in one epoch (the last may be smaller).
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.rows.len().div_ceil(batch_size)
    }

    /// The order of rows in `epoch`: a permutation drawn from (seed, epoch) alone, so any epoch's order
    /// can be rebuilt on resume without replaying the earlier ones.
    pub fn epoch_order(&self, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        if shuffle {
            order.shuffle(&mut derived_rng(seed, &format!("data-order-epoch-{epoch}")));
        }
        order
    }

    /// The `index`-th batch of the whole run (batches run on across epochs), with the number of real
    /// tokens of each row. Rows are right-padded with `pad_id` to the batch's longest row.
    pub fn batch(
        &self,
        seed: u64,
        batch_size: usize,
        index: usize,
        shuffle: bool,
    ) -> (Batch, Vec<usize>) {
        let per_epoch = self.batches_per_epoch(batch_size);
        let (epoch, in_epoch) = (index / per_epoch, index % per_epoch);
        let order = self.epoch_order(seed, epoch, shuffle);
        let picked = &order[in_epoch * batch_size..((in_epoch + 1) * batch_size).min(order.len())];
        let longest = picked
            .iter()
            .map(|i| self.rows[*i].input_ids.len())
            .max()
            .unwrap_or(0);
        let mut batch = Batch {
            input_ids: Vec::new(),
            labels: Vec::new(),
        };
        let mut lengths = Vec::new();
        for i in picked {
            let row = &self.rows[*i];
            let mut ids = row.input_ids.clone();
            let mut labels = row.labels.clone();
            lengths.push(ids.len());
            ids.resize(longest, self.pad_id);
            labels.resize(longest, IGNORE_INDEX);
            batch.input_ids.push(ids);
            batch.labels.push(labels);
        }
        (batch, lengths)
    }
}
