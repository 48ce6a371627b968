//! GGUF v2/v3 files: a bounds-checked header parser of wick's own, and a [`WeightSource`] over the
//! tensors with llama.cpp names mapped to Hugging Face names.
//!
//! The parser never trusts a length: every string, array, tensor count and tensor data range is checked
//! against the bytes that remain in the file before anything is allocated, so a corrupt or truncated file
//! gives an error naming the problem (fuzzed: `fuzz/`, see bench/results/fuzz-gguf.md). Tensor bytes are
//! memory-mapped and handed to Candle's `qtensor_from_ggml` only after their range has been checked.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of LLaMA-architecture models per head
//! from HF's half-split RoPE layout to the interleaved one:
//! `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)`. [`GgufSource`] undoes it on the raw rows
//! (a row of a quantized matrix is an independent run of blocks), so every wick model runs with the HF
//! RoPE layout and LoRA adapters keep PEFT's layout. Qwen2 GGUFs are not permuted by the converter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device};

use crate::error::io_error;
use crate::formats::weights::{LoadOptions, Weight, WeightSource};
use crate::{Context, Error, Result};

/// GGUF magic "GGUF" read as a little-endian u32.
const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default tensor data alignment (GGUF spec).
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal but never deeper than this in real files; bounds recursion.
const MAX_VALUE_DEPTH: usize = 8;

/// One tensor's entry in the GGUF header.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// The llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The GGML storage type.
    pub dtype: GgmlDType,
    /// Shape, outermost first (`[rows, cols]` for a matrix: the HF `[out, in]` order).
    pub dims: Vec<usize>,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: usize,
    /// Size of the tensor data in bytes.
    pub size: usize,
}

/// A parsed GGUF header: version, metadata and tensor table, every range checked against the file size.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata key/values, in Candle's value type.
    pub metadata: HashMap<String, Value>,
    /// Tensor entries in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: usize,
}

/// Maps a GGML type id to Candle's type, or `None` for types Candle cannot hold.
pub fn ggml_dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A little-endian reader over a byte slice that never reads past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated header: {what} needs {n} bytes at offset {}, only {} left in the file",
                self.pos,
                self.remaining()
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length prefix, checked to fit in the bytes left when each element takes at least `min_size`.
    fn length(&mut self, min_size: usize, what: &str) -> std::result::Result<usize, String> {
        let len = self.u64(what)?;
        let needed = len.saturating_mul(min_size.max(1) as u64);
        if needed > self.remaining() as u64 {
            return Err(format!(
                "truncated header: {what} declares length {len} at offset {} (at least {needed} bytes), more than the {} bytes left in the file",
                self.pos - 8,
                self.remaining()
            ));
        }
        Ok(len as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.length(1, what)?;
        let bytes = self.take(len, what)?;
        // Some writers NUL-terminate; GGUF strings are not supposed to be.
        let trimmed = match bytes.iter().rposition(|&b| b != 0) {
            Some(last) => &bytes[..=last],
            None => &[][..],
        };
        Ok(String::from_utf8_lossy(trimmed).into_owned())
    }

    fn value(
        &mut self,
        type_id: u32,
        key: &str,
        depth: usize,
    ) -> std::result::Result<Value, String> {
        let v = match type_id {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(format!(
                        "metadata `{key}`: bool byte {b} is neither 0 nor 1"
                    ))
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(format!(
                        "metadata `{key}`: arrays nested deeper than {MAX_VALUE_DEPTH}"
                    ));
                }
                let elem_type = self.u32(key)?;
                let min_size = min_value_size(elem_type).ok_or_else(|| {
                    format!("metadata `{key}`: unknown array element type {elem_type}")
                })?;
                let len = self.length(min_size, key)?;
                let mut values = Vec::with_capacity(len);
                for _ in 0..len {
                    values.push(self.value(elem_type, key, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(format!("metadata `{key}`: unknown value type {other}")),
        };
        Ok(v)
    }
}

/// Smallest on-disk size of one value of a GGUF metadata type (`None` for an unknown type).
fn min_value_size(type_id: u32) -> Option<usize> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses and checks a whole GGUF header from the file's bytes. Every tensor's data range is checked to
/// lie inside `bytes`, its type to be one Candle can hold, and its row length to be whole blocks.
/// The error is a plain sentence; [`GgufFile::open`] adds the path.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<GgufHeader, String> {
    let mut cur = Cursor { bytes, pos: 0 };
    let magic = cur.u32("magic")?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "not a GGUF file: magic bytes are {:02x?}, expected \"GGUF\"",
            magic.to_le_bytes()
        ));
    }
    let version = cur.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (wick reads versions 2 and 3)"
        ));
    }
    // A tensor entry takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes,
    // a metadata entry at least 8 (key length) + 4 (type) + 1 (value).
    let tensor_count = cur.length(24, "tensor count")?;
    let kv_count = cur.length(13, "metadata count")?;

    let mut metadata = HashMap::with_capacity(kv_count);
    for _ in 0..kv_count {
        let key = cur.string("metadata key")?;
        let type_id = cur.u32(&key)?;
        let value = cur.value(type_id, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match value_as_u64(v) {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };

    let mut raw = Vec::with_capacity(tensor_count);
    let mut seen = std::collections::HashSet::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let name = cur.string("tensor name")?;
        if !seen.insert(name.clone()) {
            return Err(format!("duplicate tensor `{name}`"));
        }
        let n_dims = cur.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cur.u64(&name)?);
        }
        let type_id = cur.u32(&name)?;
        let dtype = ggml_dtype_from_id(type_id).ok_or_else(|| {
            format!("tensor `{name}` has GGML type {type_id}, which wick cannot load")
        })?;
        let offset = cur.u64(&name)?;
        raw.push((name, dims, dtype, offset));
    }

    let data_offset = (cur.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ne, dtype, offset) in raw {
        let (block, type_size) = (dtype.block_size() as u64, dtype.type_size() as u64);
        // ne[0] is the innermost (row) length; a row must be whole blocks, as ggml requires.
        if ne[0] % block != 0 {
            return Err(format!(
                "tensor `{name}`: row length {} is not a multiple of the {dtype:?} block size {block}",
                ne[0]
            ));
        }
        let elems = ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= file_len.saturating_mul(block))
            .ok_or_else(|| format!("tensor `{name}`: shape {ne:?} is larger than the file"))?;
        let size = elems / block * type_size;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: data offset {offset} is not aligned to {alignment}"
            ));
        }
        let start = data_offset.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => {
                let dims = ne.iter().rev().map(|&d| d as usize).collect();
                tensors.push(GgufTensorInfo {
                    name,
                    dtype,
                    dims,
                    offset: start as usize,
                    size: size as usize,
                });
            }
            _ => {
                return Err(format!(
                "truncated: tensor `{name}` needs bytes {}..{} but the file has {file_len} bytes",
                data_offset.saturating_add(offset),
                data_offset.saturating_add(offset).saturating_add(size)
            ))
            }
        }
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        data_offset: data_offset as usize,
    })
}

/// Any unsigned or non-negative integer metadata value as u64.
pub fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// Any numeric metadata value as f64.
pub fn value_as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x as f64),
        Value::F64(x) => Some(x),
        Value::I8(x) => Some(x as f64),
        Value::I16(x) => Some(x as f64),
        Value::I32(x) => Some(x as f64),
        Value::I64(x) => Some(x as f64),
        _ => value_as_u64(v).map(|x| x as f64),
    }
}

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
fn qtensor_from_bytes(
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
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    fn copy_from(bytes: &[u8]) -> Self {
        let mut out = Self::zeroed(bytes.len());
        out.as_mut_slice().copy_from_slice(bytes);
        out
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Maps a llama.cpp tensor name to its Hugging Face name (`None` for names with no HF twin).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (base, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match base {
        "token_embd" => Some("model.embed_tokens".to_string()),
        "output_norm" => Some("model.norm".to_string()),
        "output" => Some("lm_head".to_string()),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{suffix}"));
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{suffix}"))
}

/// Undoes llama.cpp's per-head Q/K row permutation on a tensor of `rows` rows of `row_bytes` bytes each.
/// GGUF row `h*d + 2i + j` holds HF row `h*d + j*d/2 + i` (d = head_dim, i < d/2, j in {0, 1}).
pub fn unpermute_rows(
    bytes: &[u8],
    rows: usize,
    n_head: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; bytes.len()];
    unpermute_rows_into(bytes, &mut out, rows, n_head)?;
    Ok(out)
}

fn unpermute_rows_into(
    bytes: &[u8],
    out: &mut [u8],
    rows: usize,
    n_head: usize,
) -> std::result::Result<(), String> {
    if n_head == 0
        || rows % n_head != 0
        || (rows / n_head) % 2 != 0
        || bytes.len() % rows.max(1) != 0
    {
        return Err(format!(
            "cannot un-permute {rows} rows into {n_head} heads of even size"
        ));
    }
    let row_bytes = bytes.len() / rows;
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(())
}

/// The weights of a GGUF file, by HF name, with LLaMA Q/K rows un-permuted.
pub struct GgufSource {
    file: Arc<GgufFile>,
    /// HF name -> llama.cpp name.
    names: HashMap<String, String>,
    /// (q heads, kv heads) when the rows of attn_q / attn_k must be un-permuted (llama architecture).
    unpermute_heads: Option<(usize, usize)>,
    options: LoadOptions,
}

impl GgufSource {
    /// Wraps an open GGUF file. `unpermute_heads` is `Some((n_head, n_head_kv))` for llama-architecture
    /// files (see [`GgufSource::from_file`]).
    pub fn new(
        file: Arc<GgufFile>,
        unpermute_heads: Option<(usize, usize)>,
        options: LoadOptions,
    ) -> Self {
        let names = file
            .header()
            .tensors
            .iter()
            .map(|t| {
                // Names without an HF twin (rope_freqs.weight, ...) keep their llama.cpp name.
                let hf = gguf_to_hf_name(&t.name).unwrap_or_else(|| t.name.clone());
                (hf, t.name.clone())
            })
            .collect();
        Self {
            file,
            names,
            unpermute_heads,
            options,
        }
    }

    /// A source over `file` that un-permutes Q/K when the file's architecture is `llama`, reading the
    /// head counts from `{arch}.attention.head_count[_kv]`.
    pub fn from_file(file: Arc<GgufFile>, options: LoadOptions) -> Result<Self> {
        let arch = file.meta_str("general.architecture").unwrap_or("");
        let unpermute = if arch == "llama" {
            let heads = file
                .meta("llama.attention.head_count")
                .and_then(value_as_u64)
                .ok_or_else(|| Error::Format {
                    path: file.path().to_path_buf(),
                    reason: "missing metadata `llama.attention.head_count`".into(),
                })? as usize;
            let kv = file
                .meta("llama.attention.head_count_kv")
                .and_then(value_as_u64)
                .map(|v| v as usize)
                .unwrap_or(heads);
            Some((heads, kv))
        } else {
            None
        };
        Ok(Self::new(file, unpermute, options))
    }

    /// The underlying file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// How many heads a tensor's rows are permuted over (`None`: not permuted).
    fn permuted_heads(&self, gguf_name: &str) -> Option<usize> {
        let (q, kv) = self.unpermute_heads?;
        let part = gguf_name.strip_prefix("blk.")?.split_once('.')?.1;
        match part {
            "attn_q.weight" | "attn_q.bias" => Some(q),
            "attn_k.weight" | "attn_k.bias" => Some(kv),
            _ => None,
        }
    }

    /// The tensor by llama.cpp name as HF lays it out (rows un-permuted), on the source's device.
    fn load_qtensor(&self, gguf_name: &str) -> Result<QTensor> {
        let path = self.file.path();
        let info = self
            .file
            .tensor_info(gguf_name)
            .ok_or_else(|| Error::Format {
                path: path.to_path_buf(),
                reason: format!("no tensor `{gguf_name}`"),
            })?;
        let bytes = self.file.tensor_bytes(info);
        let device = &self.options.device;
        let what = || format!("{}: loading tensor `{gguf_name}`", path.display());
        match self.permuted_heads(gguf_name) {
            None => qtensor_from_bytes(info, bytes, device).context(what()),
            Some(n_head) => {
                let rows = info.dims[0];
                let mut out = AlignedBytes::zeroed(bytes.len());
                unpermute_rows_into(bytes, out.as_mut_slice(), rows, n_head).map_err(|reason| {
                    Error::Format {
                        path: path.to_path_buf(),
                        reason: format!("tensor `{gguf_name}`: {reason}"),
                    }
                })?;
                qtensor_from_bytes(info, out.as_slice(), device).context(what())
            }
        }
    }
}

impl WeightSource for GgufSource {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Matrices stay quantized when `options.dtype` is `None` (vectors such as norms and biases are
    /// always returned dense in f32); with `Some(dtype)` every tensor is dequantized to that dtype.
    fn get(&self, name: &str) -> Result<Weight> {
        let gguf_name = self.names.get(name).ok_or_else(|| Error::Format {
            path: self.file.path().to_path_buf(),
            reason: format!("no tensor `{name}` (HF name) in the file"),
        })?;
        let q = self.load_qtensor(gguf_name)?;
        let what = || format!("{}: dequantizing `{gguf_name}`", self.file.path().display());
        match self.options.dtype {
            None if q.rank() >= 2 => Ok(Weight::Quantized(Arc::new(q))),
            None => Ok(Weight::Dense(
                q.dequantize(&self.options.device).context(what())?,
            )),
            Some(dtype) => {
                let t = q.dequantize(&self.options.device).context(what())?;
                let t = if dtype == DType::F32 {
                    t
                } else {
                    t.to_dtype(dtype).context(what())?
                };
                Ok(Weight::Dense(t))
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.names.keys().cloned().collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let gguf_name = self.names.get(name)?;
        self.file.tensor_info(gguf_name).map(|t| t.dims.clone())
    }

    fn stored_type(&self, name: &str) -> Option<String> {
        let gguf_name = self.names.get(name)?;
        self.file
            .tensor_info(gguf_name)
            .map(|t| format!("{:?}", t.dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        assert_eq!(
            gguf_to_hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.11.attn_output.weight").as_deref(),
            Some("model.layers.11.self_attn.o_proj.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(
            gguf_to_hf_name("blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }

    /// Permuting rows the way convert_hf_to_gguf does, then un-permuting, gives the rows back.
    #[test]
    fn unpermute_inverts_llamacpp_permute() {
        let (n_head, head_dim, row_bytes) = (3usize, 8usize, 5usize);
        let rows = n_head * head_dim;
        let hf: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 7 % 251) as u8).collect();
        // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2): gguf[h, i, j] = hf[h, j, i].
        let mut gguf = vec![0u8; hf.len()];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..head_dim / 2 {
                    let src = h * head_dim + j * head_dim / 2 + i;
                    let dst = h * head_dim + i * 2 + j;
                    gguf[dst * row_bytes..(dst + 1) * row_bytes]
                        .copy_from_slice(&hf[src * row_bytes..(src + 1) * row_bytes]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, rows, n_head).unwrap(), hf);
    }

    #[test]
    fn rejects_garbage_without_panic() {
        assert!(parse_header(b"").is_err());
        assert!(parse_header(b"GGUF").is_err());
        let mut bad = b"GGUF".to_vec();
        bad.extend(7u32.to_le_bytes());
        assert!(parse_header(&bad).unwrap_err().contains("version 7"));
        let mut huge = b"GGUF".to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        assert!(parse_header(&huge).unwrap_err().contains("tensor count"));
    }
}
