//! The LoRA part of a decode mat-vec launch (`LoraEpi` in kernels/quant_matvec.cu): where each
//! sequence's adapter slot, A, B and xa values are, and how a launch's producer blocks split the
//! shrink (`LoraEpilogue::for_block`, used by the launchers in `launch`).

use super::launch::MV1_MAX_WARPS;

/// The LoRA part of a mat-vec launch (`LoraEpi` in kernels/quant_matvec.cu, passed by value):
/// each sequence b with `slots[b] >= 0` gets `sum_j xa[b, seg(r) R + j] B_slot[r, j]` added to
/// output row r (B pre-scaled by the adapter's scale). `b == 0`: no adapters in this launch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraEpilogue {
    /// B of slot 0 for the launch's output rows ([rows, rank] f32 per slot; the swiglu kernels read
    /// the up projection's B at `rows * rank` floats after the gate's).
    pub b: u64,
    /// Floats from one slot's B to the next.
    pub slot_stride: i64,
    /// x A^T per sequence, [nb, xa_stride] f32.
    pub xa: u64,
    /// Each sequence's slot, [nb] i32, negative for none.
    pub slots: u64,
    /// A of slot 0 ([a_rows, k] f32 per slot): the launch computes xa (producer blocks of their
    /// own, from the x they normalize), which must hold [`XA_PENDING`] values before the
    /// launch; 0: xa is already computed (by an earlier launch of the step).
    pub a: u64,
    /// Floats from one slot's A to the next.
    pub a_slot_stride: i64,
    /// Floats per B row and per xa segment.
    pub rank: i32,
    /// Floats per sequence in `xa`.
    pub xa_stride: i32,
    /// Rows `[0, e0)` read xa segment 0, `[e0, e1)` segment 1, the rest segment 2.
    pub e0: i32,
    pub e1: i32,
    /// Rows of A (the group's segments times the rank).
    pub a_rows: i32,
    /// Warps of a producer block on one (sequence, row of A) task: set by the launchers
    /// ([`LoraEpilogue::for_block`]); 0 elsewhere.
    pub task_warps: i32,
    /// Producer blocks of the launch, set by [`LoraEpilogue::for_block`]; 0 elsewhere.
    pub producers: i32,
}

/// The bits of an xa value its producer has not stored yet (XA_PENDING in kernels/quant_matvec.cu).
pub const XA_PENDING: u32 = u32::MAX;

impl LoraEpilogue {
    /// This epilogue as a launch of `block_warps`-warp blocks over `k` inputs for `batch`
    /// sequences passes it: producer tasks of as many warps as keep a lane's loads few (k / 512, a
    /// power of two) in the batched blocks, several tasks a block at small k (a block per task made
    /// 384 producer blocks for q/k/v at batch 8); the batch-1 blocks keep one task of all their
    /// warps. Also counts the launch's producer blocks (`lora_producers` in
    /// kernels/quant_matvec.cu reads the count).
    pub(super) fn for_block(&self, block_warps: usize, k: usize, batch: usize) -> Self {
        let task_warps = if batch == 1 && block_warps <= MV1_MAX_WARPS {
            block_warps
        } else {
            let want = (k / 512).clamp(1, block_warps);
            1 << want.ilog2()
        };
        let producers = if self.b == 0 || self.a == 0 {
            0
        } else {
            (batch * self.a_rows.max(0) as usize).div_ceil(block_warps / task_warps)
        };
        Self {
            task_warps: task_warps as i32,
            producers: producers as i32,
            ..*self
        }
    }
}

// SAFETY: plain old data with the C layout of `LoraEpi` (6 pointers/int64, then 7 int32; the same
// tail padding on both sides).
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for LoraEpilogue {}
