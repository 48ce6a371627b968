//! Kernels of the CUDA LoRA training engine (`train::cuda_engine`): everything of one training step
//! that is not a GEMM (embedding lookup, RMSNorm and its backward, RoPE scatter into head-major
//! layout and its transpose, causal softmax and its backward, SwiGLU, cross-entropy in place, the
//! deterministic reductions, clipped AdamW). They work on raw device pointers at fixed addresses so
//! that a micro-batch and an optimizer step can each be captured as a CUDA graph.
//!
//! `flash_attention` launches the fused causal attention (kernels/flash_attention.cu) the engine
//! uses in bf16, `attention_reference` its f64 specification.
//!
//! `reference` is the CPU specification of every kernel (f64, always compiled, unit-tested in CI);
//! `launch` launches the CUDA kernels (kernels/train_step.cu); `check` runs each kernel against its
//! reference on the GPU (part of `wick bench gpu-check`, records `trn_*`).

pub mod attention_reference;
#[cfg(feature = "cuda")]
pub mod check;
#[cfg(feature = "cuda")]
pub mod flash_attention;
#[cfg(feature = "cuda")]
pub mod launch;
pub mod reference;
