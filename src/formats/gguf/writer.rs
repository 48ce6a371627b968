//! The GGUF v3 writer: metadata in the order given, a tensor table, tensor data aligned to
//! `general.alignment` (32, the GGUF default), written atomically (a temporary file beside the target,
//! fsync, rename, fsync of the directory) so a reader sees the old file or the new one.
//!
//! Layout (all little endian), as gguf-py's `GGUFWriter` writes it: magic "GGUF", version 3, tensor
//! count (u64), metadata count (u64); each metadata entry as key string (u64 length + bytes), value type
//! (u32), value; each tensor as name, n_dims (u32), dims innermost first (u64 each), ggml type (u32),
//! data offset (u64, relative to the data section); zero padding to the alignment; then each tensor's
//! bytes followed by zero padding to the alignment.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use super::quantize::block_layout;
use crate::error::io_error;
use crate::{Error, Result};

/// Tensor data alignment of the files wick writes (the GGUF default; the key is not written).
pub const GGUF_ALIGNMENT: usize = 32;

/// The ggml type id of a storage type (inverse of [`super::ggml_dtype_from_id`]).
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// One tensor to write: its llama.cpp name, shape outermost first (`[rows, cols]`, as
/// [`super::GgufTensorInfo::dims`]), storage type and encoded bytes.
#[derive(Debug, Clone)]
pub struct GgufTensorData {
    /// llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape, outermost first.
    pub dims: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlDType,
    /// The encoded rows (`rows * row bytes of dtype`).
    pub bytes: Vec<u8>,
}

/// A GGUF file being assembled: metadata in insertion order, then tensors in insertion order.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<GgufTensorData>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key, replacing its value in place if the key is already there.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// The metadata entries so far, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Adds a tensor, checking that the bytes are exactly the shape's size in `dtype`.
    pub fn add_tensor(&mut self, tensor: GgufTensorData) -> Result<()> {
        let bad = |reason: String| {
            Error::InvalidRequest(format!("GGUF tensor `{}`: {reason}", tensor.name))
        };
        let (block, block_bytes) = block_layout(tensor.dtype)
            .ok_or_else(|| bad(format!("wick cannot write {:?}", tensor.dtype)))?;
        let Some(&cols) = tensor.dims.last() else {
            return Err(bad("no dimensions".into()));
        };
        if tensor.dims.len() > 4 || cols % block != 0 {
            return Err(bad(format!(
                "shape {:?} is not whole {:?} blocks of {block}",
                tensor.dims, tensor.dtype
            )));
        }
        let elems: usize = tensor.dims.iter().product();
        if tensor.bytes.len() != elems / block * block_bytes {
            return Err(bad(format!(
                "{} bytes for shape {:?} in {:?} (expected {})",
                tensor.bytes.len(),
                tensor.dims,
                tensor.dtype,
                elems / block * block_bytes
            )));
        }
        if self.tensors.iter().any(|t| t.name == tensor.name) {
            return Err(bad("added twice".into()));
        }
        self.tensors.push(tensor);
        Ok(())
    }

    /// The tensors so far, in file order.
    pub fn tensors(&self) -> &[GgufTensorData] {
        &self.tensors
    }

    /// Writes the file to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut out).map_err(io_error(&tmp))?;
            let file = out
                .into_inner()
                .map_err(|e| io_error(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io_error(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io_error(path))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(dir))
        })();
        if result.is_err() {
            // A failed write leaves no temporary file behind; the target is untouched.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Serialises the whole file into `out`.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut header = b"GGUF".to_vec();
        header.extend(3u32.to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut header, key);
            header.extend(value_type_id(value).to_le_bytes());
            write_value(&mut header, value);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            write_string(&mut header, &t.name);
            header.extend((t.dims.len() as u32).to_le_bytes());
            for &d in t.dims.iter().rev() {
                header.extend((d as u64).to_le_bytes());
            }
            header.extend(ggml_type_id(t.dtype).to_le_bytes());
            header.extend((offset as u64).to_le_bytes());
            offset += t.bytes.len().next_multiple_of(GGUF_ALIGNMENT);
        }
        header.resize(header.len().next_multiple_of(GGUF_ALIGNMENT), 0);
        out.write_all(&header)?;
        for t in &self.tensors {
            out.write_all(&t.bytes)?;
            let pad = t.bytes.len().next_multiple_of(GGUF_ALIGNMENT) - t.bytes.len();
            out.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// GGUF's value type ids (`GGUFValueType` in gguf-py).
fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            // The element type is the first item's; an empty array (its type is not kept by the
            // reader) is written as an array of strings, which llama.cpp reads as empty either way.
            let elem = items.first().map_or(8, value_type_id);
            out.extend(elem.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::parse_header;
    use super::*;

    #[test]
    fn written_file_parses_back_with_its_metadata_and_tensors() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        w.set("llama.block_count", Value::U32(2));
        w.set(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
        );
        w.set("llama.block_count", Value::U32(3));
        let floats: Vec<f32> = (0..6).map(|i| i as f32 * 0.25 - 0.5).collect();
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.add_tensor(GgufTensorData {
            name: "a.weight".into(),
            dims: vec![2, 3],
            dtype: GgmlDType::F32,
            bytes: bytes.clone(),
        })
        .unwrap();
        w.add_tensor(GgufTensorData {
            name: "b.weight".into(),
            dims: vec![1],
            dtype: GgmlDType::F32,
            bytes: 7.5f32.to_le_bytes().to_vec(),
        })
        .unwrap();
        let mut file = Vec::new();
        w.write_to(&mut file).unwrap();
        let header = parse_header(&file).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.metadata.len(), 3);
        assert!(matches!(
            header.metadata["llama.block_count"],
            Value::U32(3)
        ));
        assert_eq!(header.data_offset % GGUF_ALIGNMENT, 0);
        let a = &header.tensors[0];
        assert_eq!((a.name.as_str(), a.dims.clone()), ("a.weight", vec![2, 3]));
        assert_eq!(&file[a.offset..a.offset + a.size], bytes.as_slice());
        let b = &header.tensors[1];
        assert_eq!(b.offset % GGUF_ALIGNMENT, 0);
        assert_eq!(&file[b.offset..b.offset + 4], &7.5f32.to_le_bytes());
    }

    #[test]
    fn rejects_a_tensor_whose_bytes_do_not_fit_its_shape() {
        let mut w = GgufWriter::new();
        let err = w
            .add_tensor(GgufTensorData {
                name: "x".into(),
                dims: vec![2, 32],
                dtype: GgmlDType::Q8_0,
                bytes: vec![0; 34],
            })
            .unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
    }
}
