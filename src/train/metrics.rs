//! Training metrics as JSON lines (`metrics.jsonl` beside the adapter): one record per optimizer step
//! and one per evaluation, flushed as written so a crash loses at most the line being written.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::io_error;
use crate::Result;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricRecord {
    /// After an optimizer step (1-based `step`).
    Train {
        step: usize,
        epoch: f64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        /// Non-padding tokens in this step.
        tokens: usize,
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    /// After an evaluation on the eval file.
    Eval { step: usize, eval_loss: f64 },
}

impl MetricRecord {
    /// The step the record belongs to.
    pub fn step(&self) -> usize {
        match self {
            Self::Train { step, .. } | Self::Eval { step, .. } => *step,
        }
    }
}

/// Appends records to a JSONL file.
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Opens `path` for appending, first dropping any record after `resume_step` (a resumed run
    /// rewrites the steps after its checkpoint). `resume_step` 0 starts a fresh file.
    pub fn open(path: &Path, resume_step: usize) -> Result<Self> {
        let kept: Vec<String> = if resume_step > 0 && path.exists() {
            read_metrics(path)?
                .into_iter()
                .filter(|r| r.step() <= resume_step)
                .map(|r| serde_json::to_string(&r).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        crate::lora::peft_io::write_atomic(path, body.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &MetricRecord) -> Result<()> {
        let line = serde_json::to_string(record)
            .map_err(|e| crate::Error::InvalidRequest(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(io_error(&self.path))?;
        self.file.flush().map_err(io_error(&self.path))
    }
}

/// Reads every record of a metrics file (a torn last line is skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
