//! Helpers shared by the formats tests: a small GGUF writer (so tests can build valid files and then
//! corrupt them byte by byte), seeded random tensors, and a tiny HF directory writer.
#![allow(dead_code)]

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// A GGUF metadata value as written.
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// A tensor to write: llama.cpp name, GGML type id, shape outermost first, raw bytes.
pub struct RawTensor {
    pub name: String,
    pub type_id: u32,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// A tensor from a QTensor (its GGML type and blocks).
    pub fn from_qtensor(name: &str, q: &QTensor) -> Self {
        Self {
            name: name.to_string(),
            type_id: ggml_type_id(q.dtype()),
            dims: q.shape().dims().to_vec(),
            bytes: q.data().unwrap().into_owned(),
        }
    }

    /// Quantizes a dense tensor to `dtype`.
    pub fn quantize(name: &str, t: &Tensor, dtype: GgmlDType) -> Self {
        Self::from_qtensor(name, &QTensor::quantize(t, dtype).unwrap())
    }
}

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

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Serialises a GGUF v3 file (alignment 32).
pub fn gguf_bytes(metadata: &[(&str, Meta)], tensors: &[RawTensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(*v as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut out, s);
                }
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend(v.to_le_bytes());
                }
            }
            Meta::F32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend(v.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in t.dims.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.type_id.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (t.bytes.len() as u64).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for t in tensors {
        out.extend(&t.bytes);
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    out
}

/// Seeded uniform values in [-1, 1) (a tiny LCG: tests need reproducible, varied, non-constant data).
pub fn seeded(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn seeded_tensor(seed: u64, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(seeded(seed, n), dims, &Device::Cpu).unwrap()
}

/// The shape of a tiny llama model used across tests.
pub struct Tiny {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

pub const TINY: Tiny = Tiny {
    vocab: 64,
    hidden: 64,
    ffn: 96,
    layers: 2,
    heads: 4,
    kv_heads: 2,
};

impl Tiny {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// HF names and shapes of every tensor (untied: with lm_head), with the given q/k/v bias.
    pub fn hf_tensors(&self, bias: bool) -> Vec<(String, Vec<usize>)> {
        let (h, f, kv) = (self.hidden, self.ffn, self.kv_heads * self.head_dim());
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), vec![self.vocab, h]),
            ("model.norm.weight".to_string(), vec![h]),
            ("lm_head.weight".to_string(), vec![self.vocab, h]),
        ];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![h]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out
    }

    /// The HF config.json of this shape.
    pub fn config_json(&self, model_type: &str) -> serde_json::Value {
        serde_json::json!({
            "model_type": model_type,
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 256,
            "tie_word_embeddings": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
        })
    }
}

/// llama.cpp's convert-time permutation of Q/K rows (HF half-split -> interleaved), on a dense [rows, in].
pub fn llamacpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((n_head, 2, rows / n_head / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// HF name -> llama.cpp name (the test's own table, independent of the library's).
pub fn hf_to_gguf(name: &str) -> String {
    let table = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("post_attention_layernorm", "ffn_norm"),
        ("input_layernorm", "attn_norm"),
    ];
    let mut out = name.replace("model.layers.", "blk.");
    for (hf, gg) in table {
        out = out.replace(hf, gg);
    }
    out
}

/// Writes a JSON value to a file.
pub fn write_json(path: &Path, value: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}
