//! A reusable search index: the embeddings of a corpus, its texts, and a manifest naming the model
//! (with a fingerprint of its files) so that a query is never compared with vectors from another model.
//!
//! On disk, one directory:
//! ```text
//! manifest.json           format, version, model spec and name, fingerprint, dim, count, prompts
//! embeddings.safetensors  "embeddings": [count, dim] f32
//! texts.jsonl             {"text": ..., "line": ..., "id": ...} per row, in row order: the corpus line
//!                         the row came from and the record's `id` when it had one
//! ```
//! Written into a temporary sibling directory and renamed into place, so a reader never sees half an
//! index.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::embed::corpus::{BadLine, Texts};
use crate::embed::embedder::Embedder;
use crate::embed::pooling::l2_normalize;
use crate::error::io_error;
use crate::{Context, Error, Result};

/// The `format` field of every wick index manifest.
pub const INDEX_FORMAT: &str = "wick-embedding-index";
/// The manifest version this wick writes and reads.
pub const INDEX_VERSION: u32 = 1;

const MANIFEST_FILE: &str = "manifest.json";
const EMBEDDINGS_FILE: &str = "embeddings.safetensors";
const TEXTS_FILE: &str = "texts.jsonl";

/// What an index records about itself and the model that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    /// Always `wick-embedding-index`.
    pub format: String,
    /// Manifest version.
    pub version: u32,
    /// The model as named when indexing (`default` or a path).
    pub model: String,
    /// The model directory's name, for messages.
    pub model_name: String,
    /// SHA-256 of the model's files (`Embedder::fingerprint`).
    pub fingerprint: String,
    /// Embedding width.
    pub dim: usize,
    /// Number of texts.
    pub count: usize,
    /// Whether the stored embeddings are L2-normalized.
    pub normalized: bool,
    /// Prompt prepended to each text when indexing.
    pub passage_prompt: Option<String>,
    /// Seconds since the Unix epoch when the index was written.
    pub created_unix: u64,
    /// Corpus lines left out because they could not be read (`--skip-bad-lines`), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_lines: Vec<BadLine>,
}

/// Where a row of an index came from: the corpus line and the record's `id`, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowSource {
    /// 1-based line of the corpus file.
    pub line: usize,
    /// The JSONL record's `id` field, copied through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// 1-based rank.
    pub rank: usize,
    /// Row of the corpus.
    pub row: usize,
    /// Cosine similarity with the query.
    pub score: f32,
    /// The text.
    pub text: String,
    /// Where the row came from.
    pub source: RowSource,
}

/// Texts and their embeddings, searchable by cosine similarity.
#[derive(Debug, Clone)]
pub struct Index {
    /// What made the index.
    pub manifest: IndexManifest,
    /// The texts, one per row.
    pub texts: Vec<String>,
    /// `sources[i]`: where `texts[i]` came from.
    pub sources: Vec<RowSource>,
    /// [count, dim] f32 on the CPU.
    pub embeddings: Tensor,
}

impl Index {
    /// Embeds `texts` as passages with `embedder` (row i is line i + 1); `progress(done)` after each
    /// batch.
    pub fn build(
        embedder: &Embedder,
        texts: Vec<String>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let count = texts.len();
        let texts = Texts {
            lines: (1..=count).collect(),
            ids: vec![None; count],
            texts,
            bad: Vec::new(),
        };
        Self::build_from(embedder, texts, progress)
    }

    /// Embeds texts read from a corpus, keeping each row's line and `id` and recording the lines
    /// that could not be read in the manifest.
    pub fn build_from(
        embedder: &Embedder,
        texts: Texts,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let Texts {
            texts,
            lines,
            ids,
            bad,
        } = texts;
        let sources = lines
            .into_iter()
            .zip(ids)
            .map(|(line, id)| RowSource { line, id })
            .collect();
        let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let prompt = embedder.prompts().passage.clone();
        let (embeddings, _) = embedder.embed_with(&strs, prompt.as_deref(), progress)?;
        let embeddings = embeddings
            .to_device(&Device::Cpu)
            .context("moving embeddings to the CPU")?;
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let manifest = IndexManifest {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            model: embedder.model_spec().to_string(),
            model_name: model_name(embedder.model_dir()),
            fingerprint: embedder.fingerprint()?,
            dim: embedder.dim(),
            count: texts.len(),
            normalized: embedder.normalized(),
            passage_prompt: prompt,
            created_unix,
            skipped_lines: bad,
        };
        Ok(Self {
            manifest,
            texts,
            sources,
            embeddings,
        })
    }

    /// Writes the index to `dir` atomically. An existing index there is replaced; any other
    /// non-empty directory is left alone and reported.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
        if dir.exists() {
            let is_index = dir.join(MANIFEST_FILE).exists();
            let is_empty = std::fs::read_dir(dir)
                .map_err(io_error(dir))?
                .next()
                .is_none();
            if !is_index && !is_empty {
                return Err(Error::InvalidRequest(format!(
                    "{} exists and is not a wick index: refusing to replace it",
                    dir.display()
                )));
            }
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "index".into());
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .tempdir_in(&parent)
            .map_err(io_error(&parent))?;
        self.write_files(staging.path())?;
        if dir.exists() {
            // Move the old index aside, put the new one in place, then drop the old one.
            let old = tempfile::Builder::new()
                .prefix(&format!(".{name}.old-"))
                .tempdir_in(&parent)
                .map_err(io_error(&parent))?;
            let old_path = old.path().join("index");
            std::fs::rename(dir, &old_path).map_err(io_error(dir))?;
            std::fs::rename(staging.keep(), dir).map_err(io_error(dir))?;
            drop(old);
        } else {
            std::fs::rename(staging.keep(), dir).map_err(io_error(dir))?;
        }
        Ok(())
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let embeddings_path = dir.join(EMBEDDINGS_FILE);
        let tensors = HashMap::from([("embeddings".to_string(), self.embeddings.clone())]);
        candle_core::safetensors::save(&tensors, &embeddings_path)
            .context(format!("writing {}", embeddings_path.display()))?;
        let texts_path = dir.join(TEXTS_FILE);
        let mut texts = Vec::new();
        for (text, source) in self.texts.iter().zip(&self.sources) {
            let row = IndexRow {
                text: text.clone(),
                line: Some(source.line),
                id: source.id.clone(),
            };
            let line = serde_json::to_string(&row)
                .map_err(|e| Error::InvalidRequest(format!("encoding a text as JSON: {e}")))?;
            texts.extend_from_slice(line.as_bytes());
            texts.push(b'\n');
        }
        write_synced(&texts_path, &texts)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| Error::InvalidRequest(format!("encoding the manifest: {e}")))?;
        write_synced(&manifest_path, &manifest)
    }

    /// Opens the index in `dir`, checking that its parts agree with its manifest.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.exists() {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                reason: "not a wick index (no manifest.json); build one with `wick index`".into(),
            });
        }
        let text = std::fs::read_to_string(&manifest_path).map_err(io_error(&manifest_path))?;
        let manifest: IndexManifest = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: manifest_path.clone(),
            reason: format!("bad index manifest: {e}"),
        })?;
        if manifest.format != INDEX_FORMAT || manifest.version != INDEX_VERSION {
            return Err(Error::Format {
                path: manifest_path,
                reason: format!(
                    "index format {} v{} is not {INDEX_FORMAT} v{INDEX_VERSION}",
                    manifest.format, manifest.version
                ),
            });
        }
        let embeddings_path = dir.join(EMBEDDINGS_FILE);
        let mut tensors = candle_core::safetensors::load(&embeddings_path, &Device::Cpu)
            .context(format!("reading {}", embeddings_path.display()))?;
        let embeddings = tensors.remove("embeddings").ok_or_else(|| Error::Format {
            path: embeddings_path.clone(),
            reason: "no `embeddings` tensor".into(),
        })?;
        let embeddings = embeddings
            .to_dtype(DType::F32)
            .context("index embeddings to f32")?;
        if embeddings.dims() != [manifest.count, manifest.dim] {
            return Err(Error::Format {
                path: embeddings_path,
                reason: format!(
                    "embeddings of shape {:?}, but the manifest says [{}, {}]",
                    embeddings.dims(),
                    manifest.count,
                    manifest.dim
                ),
            });
        }
        let texts_path = dir.join(TEXTS_FILE);
        let content = std::fs::read_to_string(&texts_path).map_err(io_error(&texts_path))?;
        let (texts, sources) = read_rows(&content, &texts_path)?;
        if texts.len() != manifest.count {
            return Err(Error::Format {
                path: texts_path,
                reason: format!(
                    "{} texts, but the manifest says {}",
                    texts.len(),
                    manifest.count
                ),
            });
        }
        Ok(Self {
            manifest,
            texts,
            sources,
            embeddings,
        })
    }

    /// Refuses an embedder other than the one that built the index.
    pub fn check_model(&self, embedder: &Embedder) -> Result<()> {
        let fingerprint = embedder.fingerprint()?;
        if fingerprint == self.manifest.fingerprint && embedder.dim() == self.manifest.dim {
            return Ok(());
        }
        Err(Error::InvalidRequest(format!(
            "this index was built with model `{}` ({}, fingerprint {}), but the query model is `{}` \
             ({}, fingerprint {}); embeddings of different models cannot be compared: search with \
             the index's model or rebuild the index with `wick index`",
            self.manifest.model_name,
            self.manifest.model,
            short(&self.manifest.fingerprint),
            model_name(embedder.model_dir()),
            embedder.model_spec(),
            short(&fingerprint),
        )))
    }

    /// The `top_k` rows closest to `query` ([dim] or [1, dim]) by cosine similarity.
    pub fn search(&self, query: &Tensor, top_k: usize) -> Result<Vec<Hit>> {
        let ranked = rank_by_cosine(&self.embeddings, query, top_k)?;
        Ok(ranked
            .into_iter()
            .enumerate()
            .map(|(i, (row, score))| Hit {
                rank: i + 1,
                row,
                score,
                text: self.texts[row].clone(),
                source: self.sources[row].clone(),
            })
            .collect())
    }
}

/// Embeds `query` with the query prompt, checks the model, and searches.
pub fn search_index(
    index: &Index,
    embedder: &Embedder,
    query: &str,
    top_k: usize,
) -> Result<Vec<Hit>> {
    index.check_model(embedder)?;
    let q = embedder.embed_queries(&[query])?;
    index.search(&q, top_k)
}

/// (row, cosine) of the `top_k` rows of corpus: [n, d] most similar to query: [d] or [1, d],
/// best first; ties go to the lower row.
pub fn rank_by_cosine(corpus: &Tensor, query: &Tensor, top_k: usize) -> Result<Vec<(usize, f32)>> {
    let corpus = corpus
        .to_device(&Device::Cpu)
        .and_then(|c| c.to_dtype(DType::F32))
        .context("corpus to CPU f32")?;
    let dim = corpus.dim(1).context("corpus [n, dim]")?;
    let query = query
        .to_device(&Device::Cpu)
        .and_then(|q| q.to_dtype(DType::F32))
        .and_then(|q| q.reshape((1, dim)))
        .context(format!("query must have {dim} values"))?;
    let scores: Vec<f32> = l2_normalize(&corpus)?
        .matmul(&l2_normalize(&query)?.t().context("query^T")?)
        .and_then(|s| s.flatten_all())
        .and_then(|s| s.to_vec1())
        .context("cosine scores")?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    Ok(order
        .into_iter()
        .take(top_k)
        .map(|row| (row, scores[row]))
        .collect())
}

/// One line of texts.jsonl. Indexes written before rows carried their line have none: row i is
/// line i + 1 then.
#[derive(Serialize, Deserialize)]
struct IndexRow {
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
}

/// The rows of texts.jsonl: texts and their sources.
fn read_rows(content: &str, path: &Path) -> Result<(Vec<String>, Vec<RowSource>)> {
    let mut texts = Vec::new();
    let mut sources = Vec::new();
    for (index, raw) in content.lines().enumerate() {
        let row: IndexRow = serde_json::from_str(raw).map_err(|e| Error::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            reason: format!("not an index row: {e}"),
        })?;
        texts.push(row.text);
        sources.push(RowSource {
            line: row.line.unwrap_or(index + 1),
            id: row.id,
        });
    }
    Ok((texts, sources))
}

fn model_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string())
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_cosine_not_dot_product() {
        // Row 0 is long but off-axis; row 2 is short and aligned with the query.
        let corpus =
            Tensor::new(&[[10.0f32, 10.0], [0.0, 1.0], [0.3, 0.01]], &Device::Cpu).unwrap();
        let query = Tensor::new(&[1.0f32, 0.0], &Device::Cpu).unwrap();
        let ranked = rank_by_cosine(&corpus, &query, 2).unwrap();
        assert_eq!(ranked[0].0, 2);
        assert_eq!(ranked[1].0, 0);
        assert!((ranked[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
