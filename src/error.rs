//! The library's one error type. Every variant carries the context a user needs to act on it:
//! the file, the tensor or key, the line number, what was expected and what was found.

use std::path::PathBuf;

/// Errors returned by the wick library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model or adapter file whose bytes are not what its format promises
    /// (bad magic, truncated data, unknown tensor type, ...).
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A configuration file (config.json, adapter_config.json, ...) that is missing a field or holds a bad value.
    #[error("{path}: bad config: {reason}")]
    Config { path: PathBuf, reason: String },

    /// An architecture wick does not implement.
    #[error("{path}: unsupported architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: String,
    },

    /// Tensors that do not match what the config implies, listed by name.
    #[error("{path}: tensors do not match the config:{}", format_tensor_problems(.missing, .unexpected, .mismatched))]
    TensorMismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// (name, expected shape, found shape)
        mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    },

    /// A line of a dataset or input file that cannot be used.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A tokenizer that cannot be built or used.
    #[error("tokenizer ({source_name}): {reason}")]
    Tokenizer { source_name: String, reason: String },

    /// A chat template that cannot be parsed or rendered.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// A request that the model cannot serve (prompt longer than the context, empty prompt, ...).
    #[error("{0}")]
    InvalidRequest(String),

    /// A bad option value (rank 0, unknown target module, unknown device, ...).
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption { option: String, reason: String },

    /// Fetching a default model failed.
    #[error("fetching {package}: {reason}")]
    Fetch { package: String, reason: String },

    /// Training stopped because the loss or a gradient became NaN or infinite.
    #[error("training diverged at step {step}: loss is {loss} (last good checkpoint kept at {checkpoint:?})")]
    Diverged {
        step: usize,
        loss: f32,
        checkpoint: Option<PathBuf>,
    },

    /// A data-parallel run stopped because one rank failed (an error, a panic, or a collective
    /// operation it never reached within the timeout); every rank stops with this error.
    #[error("data-parallel training stopped: rank {rank} of {world_size} failed: {reason}")]
    RankFailed {
        rank: usize,
        world_size: usize,
        reason: String,
    },

    /// An error from Candle, with what wick was doing when it happened.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
}

fn format_tensor_problems(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut out = String::new();
    if !missing.is_empty() {
        out.push_str(&format!(" missing [{}];", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        out.push_str(&format!(" unexpected [{}];", unexpected.join(", ")));
    }
    for (name, expected, found) in mismatched {
        out.push_str(&format!(
            " {name}: expected shape {expected:?}, found {found:?};"
        ));
    }
    out
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Candle {
            context: "tensor operation".to_string(),
            source,
        }
    }
}

/// Adds "what wick was doing" to a Candle error, and a path to an I/O error.
pub trait Context<T> {
    /// Wraps the error with a description of the operation that failed.
    fn context(self, what: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, candle_core::Error> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Candle {
            context: what.into(),
            source,
        })
    }
}

/// Wraps an I/O error with the path it happened on.
pub fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
