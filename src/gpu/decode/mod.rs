//! Kernels of the CUDA decode engine (`generate::cuda_decode`): quantized matrix-vector products on
//! raw GGML blocks with RMSNorm / residual / SwiGLU fused, the embedding lookup, attention with RoPE
//! and the KV-cache write fused, and the greedy argmax. They work on raw device pointers at fixed
//! addresses so that one decode step can be captured as a CUDA graph.
//!
//! `reference` (block formats, mat-vecs, norms) and `attention_reference` (RoPE, the KV cache,
//! attention) are the CPU specification of every kernel (always compiled, unit-tested), calling
//! `crate::reference` for each op's maths; `launch`
//! launches the CUDA kernels (kernels/quant_matvec.cu, kernels/decode_step.cu), each through
//! `step_launch` (programmatic dependent launch), with `lora_epilogue` the LoRA part of a mat-vec
//! launch (adapter slots, xa, the shrink's producer blocks), `matvec_grid` the mat-vecs' grid sizes
//! and `attention_layout` the attention launch's geometry; `check` runs each
//! kernel against its reference on the GPU (part of `wick bench gpu-check`).

#[cfg(feature = "cuda")]
pub mod attention_layout;
pub mod attention_reference;
pub mod blocks_reference;
#[cfg(feature = "cuda")]
pub mod check;
#[cfg(feature = "cuda")]
pub mod check_lora;
#[cfg(feature = "cuda")]
pub mod check_prefill;
#[cfg(feature = "cuda")]
pub mod launch;
#[cfg(feature = "cuda")]
pub mod lora_epilogue;
pub mod lora_reference;
mod matvec_grid;
#[cfg(feature = "cuda")]
pub mod prefill;
pub mod reference;
#[cfg(feature = "cuda")]
pub mod step_launch;

/// The block formats (shared with the training engine's quantized base): `gpu::ggml`.
pub use crate::gpu::ggml::{QuantType, BLOCK, QUANT_TYPES};
