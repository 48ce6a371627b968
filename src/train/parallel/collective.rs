//! The seam between data-parallel training and the transport that moves gradients between ranks:
//! an in-process CPU implementation for tests and CPU runs (`local`), NCCL between GPUs (`nccl`).
//!
//! Every operation is collective: all ranks call the same operations in the same order, each with a
//! buffer of the same length. A rank that fails calls [`Collective::abort`]; from then on every
//! rank's pending and later operations return [`Error::RankFailed`] naming it. An operation that
//! waits longer than the group's timeout for the other ranks fails the same way, naming the ranks
//! that did not arrive, so a dead or hung rank stops the run instead of hanging it.

use candle_core::Tensor;

use crate::{Error, Result};

/// How [`Collective::all_reduce`] combines the ranks' buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum. The trainer uses this: each rank's gradient is already weighted by its
    /// share of the global batch's tokens, so the sum is the single-rank gradient exactly (a mean
    /// would be exact only when every rank holds the same number of counted tokens).
    Sum,
    /// Element-wise mean (sum / world size), as PyTorch DDP averages.
    Mean,
}

/// One rank's handle on a group of ranks.
pub trait Collective: Send {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    /// How many ranks the group has.
    fn world_size(&self) -> usize;

    /// Combines `flat` (a 1-D f32 tensor on this rank's device, the same length on every rank)
    /// over all ranks. Every rank receives the same values, bit for bit.
    fn all_reduce(&self, flat: &Tensor, op: ReduceOp) -> Result<Tensor>;

    /// Every rank receives rank `root`'s `flat` (1-D f32, the same length on every rank).
    fn broadcast(&self, flat: &Tensor, root: usize) -> Result<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Marks this rank as failed: every rank's pending and later operations return
    /// [`Error::RankFailed`] with this rank and `reason`. Idempotent; the first failure wins.
    fn abort(&self, reason: &str);
}

/// The error every rank sees when `rank` failed.
pub fn rank_failed(rank: usize, world_size: usize, reason: impl Into<String>) -> Error {
    Error::RankFailed {
        rank,
        world_size,
        reason: reason.into(),
    }
}

/// Checks that `flat` is a 1-D f32 tensor, the buffer shape every operation takes.
pub(crate) fn check_flat(flat: &Tensor, what: &str) -> Result<usize> {
    match (flat.dims(), flat.dtype()) {
        ([n], candle_core::DType::F32) => Ok(*n),
        (dims, dtype) => Err(Error::InvalidRequest(format!(
            "{what}: expected a 1-D f32 buffer, got {dims:?} {dtype:?}"
        ))),
    }
}
