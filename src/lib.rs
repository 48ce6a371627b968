//! # wick
//!
//! Fine-tune small language models with LoRA, generate text with them and embed text for search,
//! on NVIDIA GPUs and on the CPU, in one Rust library and binary built on Candle.
//!
//! Data flows one way: `formats` -> `models` (+ `lora`) -> `train` | `generate` | `embed` -> the CLI,
//! with `ops` (fused kernels) and `gpu` (CUDA plumbing) under all of them.

/// Numeric checks against f64 references (seeded inputs, error measure, tolerances), shared by the
/// ops' unit tests and the GPU checks; it sits under `ops` and `gpu` so that both may import it.
pub mod check;
pub mod device;
pub mod embed;
pub mod error;
pub mod formats;
pub mod generate;
pub mod gpu;
pub mod lora;
pub mod models;
pub mod ops;
pub mod train;

pub use error::{Context, Error, Result};
