//! The LoRA part of a decode mat-vec launch (`LoraEpi` in kernels/quant_matvec.cu): where each
//! sequence's adapter slot, A, B and xa values are, how a launch's producer blocks split the shrink
//! (`LoraEpilogue::for_block`, used by the launchers in `launch`), and the L2 residency window of
//! the launch's adapter weights.

use super::launch::MV1_MAX_WARPS;
use super::matvec_grid::producer_task_warps;

/// The LoRA part of a mat-vec launch: what its kernel reads ([`LoraArgs`]) and the L2 window of its
/// adapter weights. `args.b == 0`: no adapters in this launch.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraEpilogue {
    /// The kernel's part; the launchers fill in how its producer blocks split the shrink
    /// ([`LoraEpilogue::for_block`]).
    pub args: LoraArgs,
    /// The launch's adapter weights (A and B of every slot of its group, one extent), kept in the
    /// L2's persisting set-aside ([`L2Window`]); empty: no window.
    pub resident: L2Window,
}

/// `LoraEpi` of kernels/quant_matvec.cu (passed by value, fields in its order: what a row block
/// reads first, then the producers' A): each sequence b with `slots[b] >= 0` gets
/// `sum_j xa[b, seg(r) R + j] B_slot[r, j]` added to output row r (B pre-scaled by the adapter's
/// scale).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraArgs {
    /// B of slot 0 for the launch's output rows ([rows, rank] f32 per slot; the swiglu kernels read
    /// the up projection's B at `rows * rank` floats after the gate's). 0: no adapters.
    pub b: u64,
    /// Each sequence's slot, [nb] i32, negative for none.
    pub slots: u64,
    /// x A^T per sequence, [nb, xa_stride] f32.
    pub xa: u64,
    /// Producer blocks of the launch (set by the launchers, 0 when `a` is 0; `lora_producers` in
    /// kernels/quant_matvec.cu reads the count).
    pub producers: i32,
    /// Floats per B row and per xa segment.
    pub rank: i32,
    /// Floats per sequence in `xa`.
    pub xa_stride: i32,
    /// Rows `[0, e0)` read xa segment 0, `[e0, e1)` segment 1, the rest segment 2.
    pub e0: i32,
    pub e1: i32,
    /// Warps of a producer block on one (sequence, row of A) task (set by the launchers).
    pub task_warps: i32,
    /// Floats from one slot's B to the next.
    pub slot_stride: i64,
    /// A of slot 0 ([a_rows, k] f32 per slot): the launch computes xa (producer blocks of their
    /// own, from the x they normalize), which must hold [`XA_PENDING`] values before the
    /// launch; 0: xa is already computed (by an earlier launch of the step).
    pub a: u64,
    /// Floats from one slot's A to the next.
    pub a_slot_stride: i64,
    /// Rows of A (the group's segments times the rank).
    pub a_rows: i32,
}

/// An extent of device memory whose lines a launch marks persisting in the L2
/// (`CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW`, every line of the window, the set-aside sized by
/// the adapter pool). Adapter weights are read once per step like the base weights, but the base
/// weights stream through the L2 (the 135M proxy's ~85 MB a token) and evict them: an epilogue's B
/// load then comes from HBM while the row's weights, prefetched into the L2 before the PDL wait,
/// are L2 hits, and B is the row's longest load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2Window {
    pub base: u64,
    pub bytes: usize,
}

impl L2Window {
    pub const NONE: L2Window = L2Window { base: 0, bytes: 0 };
}

/// The bits of an xa value its producer has not stored yet (XA_PENDING in kernels/quant_matvec.cu).
pub const XA_PENDING: u32 = u32::MAX;

/// Copies of each xa value a batch-1 launch's producers store (XA_COPIES in
/// kernels/quant_matvec.cu: one line read by every row of a launch queued at its L2 slice).
pub const XA_COPIES: usize = 8;

/// Sequences' worth of xa values a launch's region holds for a launch over `batch` sequences: a
/// batch-1 launch stores [`XA_COPIES`] copies, copy c where sequence c's values would be.
pub fn xa_sequences(batch: usize) -> usize {
    if batch == 1 {
        XA_COPIES
    } else {
        batch
    }
}

/// An adapter pool's xa values, which the step's last kernel (the argmax) sets back to
/// [`XA_PENDING`] for the next step; `floats == 0`: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingXa {
    pub ptr: u64,
    pub floats: usize,
}

impl PendingXa {
    pub const NONE: PendingXa = PendingXa { ptr: 0, floats: 0 };
}

impl LoraEpilogue {
    /// No adapters.
    pub const NONE: LoraEpilogue = LoraEpilogue {
        args: LoraArgs {
            b: 0,
            slot_stride: 0,
            xa: 0,
            slots: 0,
            a: 0,
            a_slot_stride: 0,
            rank: 0,
            xa_stride: 0,
            e0: 0,
            e1: 0,
            a_rows: 0,
            task_warps: 0,
            producers: 0,
        },
        resident: L2Window::NONE,
    };

    /// This epilogue as a launch of `block_warps`-warp blocks over `k` inputs for `batch`
    /// sequences passes it: its producer tasks' warps ([`producer_task_warps`]) and the launch's
    /// producer blocks (`lora_producers` in kernels/quant_matvec.cu reads the count; 0 when xa is
    /// ready).
    pub(super) fn for_block(&self, block_warps: usize, k: usize, batch: usize) -> LoraArgs {
        let batch1 = batch == 1 && block_warps <= MV1_MAX_WARPS;
        let task_warps = producer_task_warps(block_warps, k, batch1);
        let a = &self.args;
        let producers = if a.b == 0 || a.a == 0 {
            0
        } else {
            (batch * a.a_rows.max(0) as usize).div_ceil(block_warps / task_warps)
        };
        LoraArgs {
            task_warps: task_warps as i32,
            producers: producers as i32,
            ..*a
        }
    }

    /// The L2 window of a launch with this epilogue (none without adapters).
    pub(super) fn window(&self) -> Option<L2Window> {
        (self.args.b != 0 && self.resident.bytes > 0).then_some(self.resident)
    }
}

// SAFETY: plain old data with the C layout of `LoraEpi` (3 pointers, 6 int32, 3 pointers/int64, an
// int32; the same tail padding on both sides).
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for LoraArgs {}
