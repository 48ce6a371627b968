//! LoRA training: JSONL data to token ids and masked labels, the causal-LM loss, AdamW, learning-rate
//! schedules, the training loop, atomic PEFT-layout checkpoints, metrics and the loss curve.
//!
//! The library never prints: progress goes to a callback that the CLI turns into a progress bar.

pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod cuda_engine;
pub mod data;
pub mod engine_layout;
pub mod engine_steps;
pub mod loss;
pub mod metrics;
pub mod optimizer;
/// Data-parallel training: the `Collective` seam, its in-process and NCCL implementations, the
/// sharded step and the rank runner.
pub mod parallel;
pub mod plot;
pub mod schedule;
mod session;
pub mod trainer;
