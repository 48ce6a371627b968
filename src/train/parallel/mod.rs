//! Data-parallel LoRA training: several ranks (threads of one process, one per device) each train
//! on their slice of every global batch and combine gradients with one all-reduce per optimizer
//! step. See docs/DESIGN.md ("Data-parallel training") for the design and its guarantees.
//!
//! - `collective`: the [`Collective`] seam (all-reduce, broadcast, barrier, abort, timeouts);
//! - `local`: the in-process implementation (tests, CPU ranks, GPUs without NCCL);
//! - `nccl`: NCCL between GPUs (feature `nccl`);
//! - `step`: the sharded step and evaluation on Candle's autograd;
//! - `run`: the rank threads and how a failure becomes every rank's error.

pub mod collective;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod run;
pub mod step;

pub use collective::{Collective, ReduceOp};
pub use local::LocalCollective;
pub use run::{train_data_parallel, train_ranks, ParallelOptions};
