//! # wick
//!
//! Fine-tune small language models with LoRA, generate text with them and embed text for search,
//! on NVIDIA GPUs and on the CPU, in one Rust library and binary built on Candle.
//!
//! Data flows one way: `formats` -> `models` (+ `lora`) -> `train` | `generate` | `embed` -> the CLI,
//! with `ops` (fused kernels) and `gpu` (CUDA plumbing) under all of them.

pub mod device;
pub mod embed;
pub mod error;
pub mod formats;
pub mod generate;
pub mod gpu;
pub mod lora;
pub mod models;
pub mod ops;
pub mod serve;
pub mod train;

pub use error::{Context, Error, Result};
