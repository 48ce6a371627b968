//! GGUF v2/v3 files: a bounds-checked header parser of wick's own, and a
//! [`WeightSource`](crate::formats::WeightSource) over the tensors with llama.cpp names mapped to
//! Hugging Face names.
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
//!
//! Layout: `header` parses the bytes, `file` holds an open file and builds Candle tensors, `source`
//! maps names and un-permutes Q/K. Writing: `writer` serialises a file, `quantize`/`quantize_k` are
//! ggml's reference quantizers, `export` turns a model's HF-named weights into a llama.cpp GGUF. The tokenizer built from GGUF metadata is in
//! [`crate::formats::tokenizer`], the config in [`crate::formats::config`].

mod export;
mod file;
mod header;
mod quantize;
mod quantize_k;
mod source;
mod writer;

pub use export::{build_gguf, export_gguf, hf_to_gguf_name, tensor_type, GgufQuant};
pub use file::{llama3_rope_scaling, GgufFile};
pub use header::{
    ggml_dtype_from_id, parse_header, value_as_f64, value_as_u64, GgufHeader, GgufTensorInfo,
};
pub use quantize::{block_layout, quantize_rows};
pub use source::{gguf_to_hf_name, permute_rows, unpermute_rows, GgufSource};
pub use writer::{ggml_type_id, GgufTensorData, GgufWriter, GGUF_ALIGNMENT};
