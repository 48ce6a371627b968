//! The GGUF binary reader: a bounds-checked parser of the header (magic, version, metadata, tensor
//! table) that checks every length and tensor data range against the file size before allocating.

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

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
/// The error is a plain sentence; [`super::GgufFile::open`] adds the path.
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
    let mut seen = HashSet::with_capacity(tensor_count);
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
    let tensors = raw
        .into_iter()
        .map(|(name, ne, dtype, offset)| {
            locate_tensor(name, &ne, dtype, offset, data_offset, alignment, file_len)
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        data_offset: data_offset as usize,
    })
}

/// One tensor entry placed in the file: its data at `data_offset + offset`, whole blocks per row
/// (ne[0] the innermost length), aligned, and inside the file's `file_len` bytes.
fn locate_tensor(
    name: String,
    ne: &[u64],
    dtype: GgmlDType,
    offset: u64,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> std::result::Result<GgufTensorInfo, String> {
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
        (Some(start), Some(end)) if end <= file_len => Ok(GgufTensorInfo {
            name,
            dtype,
            dims: ne.iter().rev().map(|&d| d as usize).collect(),
            offset: start as usize,
            size: size as usize,
        }),
        _ => Err(format!(
            "truncated: tensor `{name}` needs bytes {}..{} but the file has {file_len} bytes",
            data_offset.saturating_add(offset),
            data_offset.saturating_add(offset).saturating_add(size)
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
