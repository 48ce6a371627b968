//! An open GGUF file: the checked header over memory-mapped (or owned) bytes, tensors handed to Candle
//! as `QTensor`s, and metadata that needs tensor data (llama3 RoPE scaling from `rope_freqs.weight`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
use candle_core::Device;

use super::header::{parse_header, value_as_f64, GgufHeader, GgufTensorInfo};
use crate::error::io_error;
use crate::{Context, Error, Result};

/// Recovers llama3 RoPE scaling from a `rope_freqs.weight` tensor (llama.cpp bakes HF's
/// `rope_scaling: llama3` into per-frequency divisors at conversion). `factor` is the largest divisor;
/// the other parameters are searched among the values Llama 3.x ships, and the whole curve must match.
pub fn llama3_rope_scaling(
    file: &GgufFile,
) -> Result<Option<crate::formats::config::Llama3RopeScaling>> {
    let Some(info) = file.tensor_info("rope_freqs.weight") else {
        return Ok(None);
    };
    let path = file.path();
    let factors: Vec<f32> = qtensor_from_bytes(info, file.tensor_bytes(info), &Device::Cpu)
        .and_then(|q| q.dequantize(&Device::Cpu))
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .context(format!("{}: reading rope_freqs.weight", path.display()))?;
    let arch = file.meta_str("general.architecture").unwrap_or("llama");
    let meta_f = |k: &str| file.meta(&format!("{arch}.{k}")).and_then(value_as_f64);
    let base = meta_f("rope.freq_base").unwrap_or(10_000.0);
    let dim = factors.len() * 2;
    let factor = factors.iter().cloned().fold(1.0f32, f32::max) as f64;
    for original in [8192usize, 4096, 2048, 16384, 32768, 131072] {
        for (low, high) in [(1.0f64, 4.0f64), (1.0, 2.0), (1.0, 8.0)] {
            let matches = factors.iter().enumerate().all(|(i, &got)| {
                let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let (low_wl, high_wl) = (original as f64 / low, original as f64 / high);
                let want = if wavelen < high_wl {
                    1.0
                } else if wavelen > low_wl {
                    factor
                } else {
                    let smooth = (original as f64 / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                ((got as f64) - want).abs() <= 1e-3 * want
            });
            if matches {
                return Ok(Some(crate::formats::config::Llama3RopeScaling {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original,
                }));
            }
        }
    }
    Err(Error::Format {
        path: path.to_path_buf(),
        reason: "rope_freqs.weight does not match any llama3 rope scaling wick knows".into(),
    })
}

/// The bytes behind a [`GgufFile`].
enum GgufBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl GgufBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            GgufBytes::Mapped(m) => m,
            GgufBytes::Owned(v) => v,
        }
    }
}

/// An open (memory-mapped) GGUF file with a checked header.
pub struct GgufFile {
    path: PathBuf,
    header: GgufHeader,
    index: HashMap<String, usize>,
    data: GgufBytes,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and checks a GGUF file (magic, version, every length and tensor range).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(io_error(&path))?;
        // SAFETY: the map is read-only; wick never writes model files while reading them. A file
        // truncated by another process while mapped would fault, as with any mmap reader.
        let data = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(&path))?;
        Self::from_data(path, GgufBytes::Mapped(data))
    }

    /// A GGUF held in memory; `label` names it in errors (used by the fuzz target and tests).
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_data(label.into(), GgufBytes::Owned(bytes))
    }

    fn from_data(path: PathBuf, data: GgufBytes) -> Result<Self> {
        let header = parse_header(data.as_slice()).map_err(|reason| Error::Format {
            path: path.clone(),
            reason,
        })?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        tracing::debug!(path = %path.display(), version = header.version, tensors = header.tensors.len(), "opened GGUF");
        Ok(Self {
            path,
            header,
            index,
            data,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checked header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.header.metadata.get(key)
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The tensor entry of a llama.cpp name.
    pub fn tensor_info(&self, gguf_name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(gguf_name).map(|&i| &self.header.tensors[i])
    }

    /// The raw bytes of a tensor (range checked when the header was parsed).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.data.as_slice()[info.offset..info.offset + info.size]
    }

    /// Loads a tensor by llama.cpp name as stored, onto `device`.
    pub fn qtensor(&self, gguf_name: &str, device: &Device) -> Result<QTensor> {
        let info = self.tensor_info(gguf_name).ok_or_else(|| Error::Format {
            path: self.path.clone(),
            reason: format!("no tensor `{gguf_name}`"),
        })?;
        qtensor_from_bytes(info, self.tensor_bytes(info), device).context(format!(
            "{}: loading tensor `{gguf_name}`",
            self.path.display()
        ))
    }
}

/// Builds a QTensor from a tensor's bytes, copying them to an 8-byte aligned buffer when the slice is
/// not aligned (Candle reinterprets the bytes as blocks, which hold f16/f32 fields).
pub(super) fn qtensor_from_bytes(
    info: &GgufTensorInfo,
    bytes: &[u8],
    device: &Device,
) -> candle_core::Result<QTensor> {
    if bytes.len() != info.size {
        candle_core::bail!(
            "tensor data is {} bytes, expected {}",
            bytes.len(),
            info.size
        )
    }
    if (bytes.as_ptr() as usize) % 8 == 0 {
        qtensor_from_ggml(info.dtype, bytes, info.dims.clone(), device)
    } else {
        let aligned = AlignedBytes::copy_from(bytes);
        qtensor_from_ggml(info.dtype, aligned.as_slice(), info.dims.clone(), device)
    }
}

/// Bytes stored in u64 words, so the slice is 8-byte aligned.
pub(super) struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub(super) fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    pub(super) fn copy_from(bytes: &[u8]) -> Self {
        let mut out = Self::zeroed(bytes.len());
        out.as_mut_slice().copy_from_slice(bytes);
        out
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}
