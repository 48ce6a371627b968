//! Reading texts to embed: one text per line, or JSONL with a `text` field (files ending in `.jsonl`
//! or `.ndjson`).
//!
//! Every line is one record, so output row k always belongs to input line k: an empty or
//! whitespace-only line of a plain-text file is the empty text (embedded as sentence-transformers
//! embeds "", i.e. `[CLS] [SEP]`), and so is a JSONL record whose `text` is "". Only blank lines after
//! the last record are not records (a file's trailing newlines). A JSONL record may carry an `id`
//! (any JSON value), which is kept with its text so that outputs can copy it through.
//!
//! A line that cannot be read (not UTF-8; in JSONL: blank, not JSON, not an object with a string
//! `text`) is an error naming the file and line, unless `skip_bad_lines` is set: then it is recorded
//! in [`Texts::bad`] with its reason, and the caller writes an error record in its place.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::io_error;
use crate::{Error, Result};

/// A line that could not be read, kept in place of its text when bad lines are skipped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// The record's `id`, when the line was a JSON object with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Why the line could not be used.
    pub reason: String,
}

/// Texts read from a file, with the 1-based line (and JSONL `id`) each came from.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    /// The texts, in file order.
    pub texts: Vec<String>,
    /// `lines[i]`: the line `texts[i]` came from (1-based).
    pub lines: Vec<usize>,
    /// `ids[i]`: the `id` field of the record `texts[i]` came from (JSONL only).
    pub ids: Vec<Option<Value>>,
    /// Lines that could not be read (only with `skip_bad_lines`; otherwise they are errors).
    pub bad: Vec<BadLine>,
}

impl Texts {
    /// The texts as `&str`, for `Embedder::embed`.
    pub fn as_strs(&self) -> Vec<&str> {
        self.texts.iter().map(String::as_str).collect()
    }

    /// Records in the file (texts and bad lines): the rows an aligned output has.
    pub fn records(&self) -> usize {
        self.texts.len() + self.bad.len()
    }

    /// Every record in line order: `Ok(i)` for `texts[i]`, `Err(j)` for `bad[j]`.
    pub fn in_line_order(&self) -> Vec<std::result::Result<usize, usize>> {
        let mut order: Vec<(usize, std::result::Result<usize, usize>)> = (0..self.texts.len())
            .map(|i| (self.lines[i], Ok(i)))
            .chain(self.bad.iter().enumerate().map(|(j, b)| (b.line, Err(j))))
            .collect();
        order.sort_by_key(|(line, _)| *line);
        order.into_iter().map(|(_, r)| r).collect()
    }
}

/// How lines that cannot be read are handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Record bad lines in `Texts::bad` instead of failing on the first one.
    pub skip_bad_lines: bool,
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

/// Reads the texts of `path` (plain lines or JSONL, by extension); any bad line is an error.
pub fn read_texts(path: &Path) -> Result<Texts> {
    read_texts_with(path, ReadOptions::default())
}

/// Reads the texts of `path` with `options`.
pub fn read_texts_with(path: &Path, options: ReadOptions) -> Result<Texts> {
    let content = std::fs::read(path).map_err(io_error(path))?;
    parse_texts_bytes(&content, is_jsonl(path), path, options)
}

/// Parses `content` as plain lines or JSONL; `path` is for messages. Bad lines are errors.
pub fn parse_texts(content: &str, jsonl: bool, path: &Path) -> Result<Texts> {
    parse_texts_bytes(content.as_bytes(), jsonl, path, ReadOptions::default())
}

/// Parses raw bytes (each line must be UTF-8) as plain lines or JSONL.
pub fn parse_texts_bytes(
    content: &[u8],
    jsonl: bool,
    path: &Path,
    options: ReadOptions,
) -> Result<Texts> {
    let content = content
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(content);
    let lines = split_lines(content);
    let mut out = Texts::default();
    for (index, raw) in lines.iter().enumerate() {
        let line = index + 1;
        match read_record(raw, jsonl) {
            Ok((text, id)) => {
                out.texts.push(text);
                out.lines.push(line);
                out.ids.push(id);
            }
            Err((reason, id)) if options.skip_bad_lines => {
                out.bad.push(BadLine { line, id, reason })
            }
            Err((reason, _)) => {
                return Err(Error::BadLine {
                    path: path.to_path_buf(),
                    line,
                    reason: format!("{reason} (--skip-bad-lines writes an error record instead)"),
                })
            }
        }
    }
    if !out.bad.is_empty() {
        let shown: Vec<String> = out.bad.iter().take(5).map(|b| b.line.to_string()).collect();
        let more = if out.bad.len() > 5 { ", ..." } else { "" };
        tracing::warn!(
            "{}: {} line(s) could not be read (line {}{more}); each gets an error record",
            path.display(),
            out.bad.len(),
            shown.join(", ")
        );
    }
    if out.texts.is_empty() {
        let reason = if content.is_empty() {
            "the file is empty: nothing to embed".to_string()
        } else if lines.is_empty() {
            "the file holds only blank lines: no text to embed".to_string()
        } else {
            format!("no line could be read ({} bad line(s))", out.bad.len())
        };
        return Err(Error::Format {
            path: PathBuf::from(path),
            reason,
        });
    }
    Ok(out)
}

/// The file's lines (without `\n` / `\r\n`), less the blank lines after the last non-blank one.
fn split_lines(content: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = content
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    while lines
        .last()
        .is_some_and(|l| l.iter().all(u8::is_ascii_whitespace))
    {
        lines.pop();
    }
    lines
}

/// One line to (text, id), or (reason, id) when it cannot be used.
fn read_record(
    raw: &[u8],
    jsonl: bool,
) -> std::result::Result<(String, Option<Value>), (String, Option<Value>)> {
    let raw = std::str::from_utf8(raw).map_err(|e| {
        let reason = format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1);
        (reason, None)
    })?;
    if !jsonl {
        return Ok((raw.to_string(), None));
    }
    if raw.trim().is_empty() {
        return Err(("blank line (each JSONL line must be a record)".into(), None));
    }
    let value: Value =
        serde_json::from_str(raw).map_err(|e| (format!("invalid JSON: {e}"), None))?;
    let Value::Object(mut object) = value else {
        return Err(("expected a JSON object with a `text` field".into(), None));
    };
    let id = object.remove("id");
    match object.remove("text") {
        Some(Value::String(s)) => Ok((s, id)),
        Some(other) => Err((format!("`text` must be a string, found {other}"), id)),
        None => Err(("no `text` field".into(), id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip() -> ReadOptions {
        ReadOptions {
            skip_bad_lines: true,
        }
    }

    #[test]
    fn plain_lines_keep_every_line_including_empty_ones() {
        let t = parse_texts("a\n\n  \nb\r\nc\n\n \n", false, Path::new("x.txt")).unwrap();
        assert_eq!(t.texts, vec!["a", "", "  ", "b", "c"]);
        assert_eq!(t.lines, vec![1, 2, 3, 4, 5]);
        assert!(t.bad.is_empty());
    }

    #[test]
    fn jsonl_keeps_empty_texts_and_ids() {
        let content =
            "\u{feff}{\"text\":\"a\",\"id\":\"x1\"}\n{\"text\":\"\"}\n{\"id\":7,\"text\":\"c\"}\n";
        let t = parse_texts(content, true, Path::new("x.jsonl")).unwrap();
        assert_eq!(t.texts, vec!["a", "", "c"]);
        assert_eq!(
            t.ids,
            vec![Some(Value::from("x1")), None, Some(Value::from(7))]
        );
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
            err.contains("x.jsonl:2") && err.contains("blank line"),
            "{err}"
        );
        let bytes = b"ok\nbad \xff byte\n";
        let err = parse_texts_bytes(bytes, false, Path::new("x.txt"), ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.txt:2") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn skipped_bad_lines_keep_their_place() {
        let content = b"{\"text\":\"a\"}\n{oops\n{\"id\":5}\n\xfe\n{\"text\":\"e\"}\n";
        let t = parse_texts_bytes(content, true, Path::new("x.jsonl"), skip()).unwrap();
        assert_eq!(t.texts, vec!["a", "e"]);
        assert_eq!(t.lines, vec![1, 5]);
        let bad: Vec<usize> = t.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, vec![2, 3, 4]);
        assert_eq!(t.bad[1].id, Some(Value::from(5)));
        assert!(t.bad[1].reason.contains("no `text` field"));
        assert_eq!(t.records(), 5);
        assert_eq!(
            t.in_line_order(),
            vec![Ok(0), Err(0), Err(1), Err(2), Ok(1)]
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
        assert!(err.contains("only blank lines"), "{err}");
        let err = parse_texts_bytes(b"{x\n", true, Path::new("e.jsonl"), skip())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no line could be read"), "{err}");
    }
}
