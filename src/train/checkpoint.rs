//! Checkpoints: `OUT/checkpoint-{step}/` holding the adapter in PEFT's layout (`adapter_config.json`,
//! `adapter_model.safetensors`), the AdamW moments (`optimizer.safetensors`) and `trainer_state.json`
//! (step, micro-batches consumed, the full training config: everything `--resume` needs, the data order
//! being a function of the seed and the epoch).
//!
//! Crash safety: a checkpoint is written into a hidden temporary directory (`.checkpoint-{step}.tmp-{pid}`),
//! every file fsynced, `trainer_state.json` last, then the directory is renamed to `checkpoint-{step}` and
//! the parent fsynced. A directory named `checkpoint-*` therefore always holds a complete checkpoint; a run
//! killed mid-save leaves only a temporary directory, which the next run removes. The last `keep_last`
//! checkpoints are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::trainer::TrainConfig;
use crate::error::io_error;
use crate::lora::peft_io::{
    adapter_tensors, serialize_safetensors, sync_dir, write_atomic, CONFIG_FILE, WEIGHTS_FILE,
};
use crate::lora::{peft_io, Adapter};
use crate::{Context, Error, Result};

/// File of the optimizer moments inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File of the trainer state inside a checkpoint (written last: its presence marks a complete checkpoint).
pub const STATE_FILE: &str = "trainer_state.json";
const PREFIX: &str = "checkpoint-";

/// Where training stands; with the config it determines the rest of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Micro-batches consumed (step * grad_accum).
    pub micro_batches: usize,
    /// Non-padding tokens seen so far.
    pub tokens_seen: usize,
    /// The run's configuration (resume continues with it).
    pub config: TrainConfig,
    /// The wick version that wrote it.
    pub wick_version: String,
}

/// A checkpoint read back.
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub adapter: Adapter,
    pub optimizer: HashMap<String, Tensor>,
    pub state: TrainerState,
}

/// Crash-test hook: abort the process after `abort_after_files` files of a checkpoint are written
/// (of the checkpoint of step `abort_at_step`, or of any checkpoint when that is `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveFault {
    pub abort_after_files: Option<usize>,
    pub abort_at_step: Option<usize>,
}

/// Writes `OUT/checkpoint-{step}` atomically and prunes old checkpoints to `keep_last` (0 keeps all).
pub fn save_checkpoint(
    out_dir: &Path,
    adapter: &Adapter,
    optimizer: Vec<(String, Tensor)>,
    state: &TrainerState,
    keep_last: usize,
    fault: SaveFault,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let name = format!("{PREFIX}{}", state.step);
    let tmp = out_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_error(&tmp))?;
    let state_json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::InvalidRequest(format!("serialising trainer state: {e}")))?;
    let files: [(&str, Vec<u8>); 4] = [
        (
            WEIGHTS_FILE,
            serialize_safetensors(&adapter_tensors(adapter))?,
        ),
        (CONFIG_FILE, adapter.config.to_json()?.into_bytes()),
        (OPTIMIZER_FILE, serialize_safetensors(&optimizer)?),
        (STATE_FILE, state_json.into_bytes()),
    ];
    for (i, (file, bytes)) in files.iter().enumerate() {
        if fault.abort_after_files == Some(i) && fault.abort_at_step.is_none_or(|s| s == state.step)
        {
            std::process::abort();
        }
        write_atomic(&tmp.join(file), bytes)?;
    }
    let final_dir = out_dir.join(&name);
    if final_dir.exists() {
        // Same step saved again (a resumed run): move the old one aside, then drop it.
        let old = out_dir.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(io_error(&final_dir))?;
        std::fs::rename(&tmp, &final_dir).map_err(io_error(&final_dir))?;
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    } else {
        std::fs::rename(&tmp, &final_dir).map_err(io_error(&final_dir))?;
    }
    sync_dir(out_dir)?;
    if keep_last > 0 {
        let all = list_checkpoints(out_dir)?;
        for (_, dir) in all.iter().take(all.len().saturating_sub(keep_last)) {
            std::fs::remove_dir_all(dir).map_err(io_error(dir))?;
        }
    }
    Ok(final_dir)
}

/// Complete checkpoints in `out_dir` as (step, dir), oldest first.
pub fn list_checkpoints(out_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    if !out_dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(out_dir).map_err(io_error(out_dir))? {
        let entry = entry.map_err(io_error(out_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes temporary directories left by a run killed while saving.
pub fn remove_stale_temporaries(out_dir: &Path) -> Result<()> {
    if !out_dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(out_dir).map_err(io_error(out_dir))? {
        let entry = entry.map_err(io_error(out_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".{PREFIX}")) && entry.path().is_dir() {
            tracing::info!("removing the partial checkpoint {}", entry.path().display());
            std::fs::remove_dir_all(entry.path()).map_err(io_error(entry.path()))?;
        }
    }
    Ok(())
}

/// The checkpoint `path` names: a `checkpoint-N` directory itself, or the newest complete one inside
/// a training output directory.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    list_checkpoints(path)?
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| Error::Format {
            path: path.to_path_buf(),
            reason: format!("no checkpoint to resume from (neither {STATE_FILE} nor a complete checkpoint-N directory)"),
        })
}

/// Reads a checkpoint (see [`resolve_checkpoint`] for what `path` may be) onto `device`.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<LoadedCheckpoint> {
    let dir = resolve_checkpoint(path)?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_error(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: state_path.clone(),
        reason: e.to_string(),
    })?;
    let adapter = peft_io::load_adapter(&dir, device)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer = candle_core::safetensors::load(&opt_path, device)
        .context(format!("reading {}", opt_path.display()))?;
    Ok(LoadedCheckpoint {
        dir,
        adapter,
        optimizer,
        state,
    })
}
