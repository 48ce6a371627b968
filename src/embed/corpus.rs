//! Reading texts to embed: one text per line, or JSONL with a `text` field (files ending in `.jsonl`
//! or `.ndjson`).
//!
//! Empty and whitespace-only lines (and JSONL records whose `text` is empty) are skipped with one
//! warning that counts them and names the first few line numbers: blank lines between paragraphs are
//! common in corpora, and the line number of every kept text is returned so that output rows can be
//! traced back. A file with no text left is an error, as is a JSONL line that is not an object with a
//! string `text` (reported with its line number).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::io_error;
use crate::{Error, Result};

/// Texts read from a file, with the 1-based line each came from.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    /// The texts, in file order.
    pub texts: Vec<String>,
    /// `lines[i]`: the line `texts[i]` came from (1-based).
    pub lines: Vec<usize>,
    /// Lines skipped because they held no text (1-based).
    pub skipped: Vec<usize>,
}

impl Texts {
    /// The texts as `&str`, for `Embedder::embed`.
    pub fn as_strs(&self) -> Vec<&str> {
        self.texts.iter().map(String::as_str).collect()
    }
}

/// Whether `path` is read as JSONL (by extension).
pub fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jsonl") | Some("ndjson")
    )
}

/// Reads the texts of `path` (plain lines or JSONL, by extension).
pub fn read_texts(path: &Path) -> Result<Texts> {
    let content = std::fs::read_to_string(path).map_err(io_error(path))?;
    parse_texts(&content, is_jsonl(path), path)
}

/// Parses `content` as plain lines or JSONL; `path` is for messages.
pub fn parse_texts(content: &str, jsonl: bool, path: &Path) -> Result<Texts> {
    let mut out = Texts::default();
    for (index, raw) in content.lines().enumerate() {
        let line = index + 1;
        let text = if jsonl {
            if raw.trim().is_empty() {
                out.skipped.push(line);
                continue;
            }
            jsonl_text(raw, path, line)?
        } else {
            raw.strip_suffix('\r').unwrap_or(raw).to_string()
        };
        if text.trim().is_empty() {
            out.skipped.push(line);
            continue;
        }
        out.texts.push(text);
        out.lines.push(line);
    }
    if !out.skipped.is_empty() {
        let shown: Vec<String> = out.skipped.iter().take(5).map(|l| l.to_string()).collect();
        let more = if out.skipped.len() > 5 { ", ..." } else { "" };
        tracing::warn!(
            "{}: skipped {} empty line(s) (line {}{more})",
            path.display(),
            out.skipped.len(),
            shown.join(", ")
        );
    }
    if out.texts.is_empty() {
        let reason = if content.is_empty() {
            "the file is empty: nothing to embed".to_string()
        } else {
            format!(
                "no text to embed ({} empty line(s) skipped)",
                out.skipped.len()
            )
        };
        return Err(Error::Format {
            path: PathBuf::from(path),
            reason,
        });
    }
    Ok(out)
}

fn jsonl_text(raw: &str, path: &Path, line: usize) -> Result<String> {
    let bad = |reason: String| Error::BadLine {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let value: Value = serde_json::from_str(raw).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("expected a JSON object with a `text` field".into()))?;
    match object.get("text") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(format!("`text` must be a string, found {other}"))),
        None => Err(bad("no `text` field".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_skip_blanks_and_keep_line_numbers() {
        let t = parse_texts("a\n\n  \nb\r\nc", false, Path::new("x.txt")).unwrap();
        assert_eq!(t.texts, vec!["a", "b", "c"]);
        assert_eq!(t.lines, vec![1, 4, 5]);
        assert_eq!(t.skipped, vec![2, 3]);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let err = parse_texts(
            "{\"text\":\"a\"}\n{\"text\": 3}\n",
            true,
            Path::new("x.jsonl"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.jsonl:2"), "{err}");
        let err = parse_texts("{\"text\":\"a\"}\n\n{oops\n", true, Path::new("x.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.jsonl:3") && err.contains("invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn empty_input_is_an_error() {
        let err = parse_texts("", false, Path::new("e.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        let err = parse_texts("\n \n", false, Path::new("e.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no text"), "{err}");
    }
}
