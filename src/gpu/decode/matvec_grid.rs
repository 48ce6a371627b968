//! One-wave grids for the decode mat-vecs. Every mat-vec loops over its rows (grid-stride), so a
//! grid larger than the blocks the SMs hold at once adds waves: a block of the second wave starts
//! when one of the first exits and repeats the whole prologue (every sequence's x copied and
//! normalized) before its rows. The four-warps-a-row batched LoRA kernels hold two 512-thread
//! blocks an SM (SmolLM2-135M's gate/up: 384 row blocks and 16 producer blocks took two waves), so
//! their grids are sized from the kernel's occupancy, the producers counted (`launch` says where;
//! [`config`] builds every mat-vec launch's grid, one wave or capped). The LoRA producer blocks'
//! split of their tasks ([`producer_task_warps`]) is the other half of a launch's geometry.

/// Blocks of `threads` threads and `shared` bytes of dynamic shared memory that `f` keeps resident
/// on `sms` SMs at once (the driver's occupancy calculator; at least one).
#[cfg(feature = "cuda")]
fn resident_blocks(
    f: &candle_core::cuda_backend::cudarc::driver::CudaFunction,
    threads: usize,
    shared: usize,
    sms: usize,
) -> candle_core::Result<usize> {
    use candle_core::cuda_backend::WrapErr;
    let per_sm = f
        .occupancy_max_active_blocks_per_multiprocessor(threads as u32, shared, None)
        .w()?;
    Ok((per_sm as usize).max(1) * sms)
}

/// The launch of `groups` groups of rows (a block each at most) in blocks of `warps` warps and
/// `shared` bytes, after `producers` producer blocks: one wave of the blocks `f` keeps resident when
/// `one_wave`, else a block a group up to `cap` blocks (more groups loop).
#[cfg(feature = "cuda")]
pub(super) fn config(
    f: &candle_core::cuda_backend::cudarc::driver::CudaFunction,
    groups: usize,
    warps: usize,
    shared: usize,
    producers: usize,
    one_wave: bool,
    cap: usize,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::LaunchConfig> {
    let blocks = if one_wave {
        let resident = resident_blocks(f, warps * 32, shared, super::launch::SMS)?;
        one_wave_blocks(groups, resident, producers)
    } else {
        groups.clamp(1, cap)
    };
    Ok(candle_core::cuda_backend::cudarc::driver::LaunchConfig {
        grid_dim: ((blocks + producers) as u32, 1, 1),
        block_dim: ((warps * 32) as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    })
}

/// Row blocks for `groups` groups of rows beside `producers` producer blocks, all resident in one
/// wave of `resident` blocks: as few rounds of groups a block as fit, then as few blocks as do them
/// in that many rounds (every block reads all of x in its prologue, so blocks that would only
/// shorten no block's rounds are left out).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the unit test runs without CUDA too
pub(super) fn one_wave_blocks(groups: usize, resident: usize, producers: usize) -> usize {
    let room = resident.saturating_sub(producers).max(1);
    let rounds = groups.max(1).div_ceil(room);
    groups.max(1).div_ceil(rounds)
}

/// float4 columns of A a batch-1 producer lane loads in one round (SHRINK_ROUND in
/// kernels/quant_matvec.cu).
const SHRINK_ROUND: usize = 4;

/// Warps of each LoRA producer task (one sequence and row of A, `k` inputs) in blocks of
/// `block_warps` warps (`batch1`: the batch-1 kernels' blocks). Batched: as many warps as keep a
/// lane's loads few (k / 512, a power of two), several tasks a block at small k (a block per task
/// made 384 producer blocks for q/k/v at batch 8). Batch 1: as many warps as leave each lane one
/// round of [`SHRINK_ROUND`] float4 columns (the producers' loads are the launch's critical path
/// once the rows' are one round: k = 576 in one warp was two rounds a lane; 135M adapter / none
/// 0.84x -> 0.865x, bench/results/device-s18 call 2); above k = 4096 that is a whole block of
/// the batch-1 kernels (at most 16 warps). Tasks of a warp or a few rather than a block at batch 1:
/// 0.876x -> 0.882x at SmolLM2-135M, 0.804x -> 0.865x at SmolLM2-1.7B Q8_0
/// (bench/results/device-s16 call 4).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the unit test runs without CUDA too
pub(super) fn producer_task_warps(block_warps: usize, k: usize, batch1: bool) -> usize {
    if batch1 {
        let want = (k / 4).div_ceil(32 * SHRINK_ROUND).clamp(1, block_warps);
        want.next_power_of_two().min(block_warps)
    } else {
        let want = (k / 512).clamp(1, block_warps);
        1 << want.ilog2()
    }
}

#[cfg(test)]
mod tests {
    use super::{one_wave_blocks, producer_task_warps};

    #[test]
    fn batch1_producer_tasks_leave_a_lane_one_round() {
        // SmolLM2-135M (8-warp blocks): q/k/v, o and gate/up at k 576 in two warps (144 float4
        // columns: 2.25 a lane), down at k 1536 in four; SmolLM2-1.7B's 2048 in four.
        assert_eq!(producer_task_warps(8, 576, true), 2);
        assert_eq!(producer_task_warps(8, 1536, true), 4);
        assert_eq!(producer_task_warps(8, 2048, true), 4);
        // Small k: one warp; above 4096 the whole block, also in 16-warp blocks.
        assert_eq!(producer_task_warps(8, 96, true), 1);
        assert_eq!(producer_task_warps(16, 8192, true), 16);
        assert_eq!(producer_task_warps(16, 4160, true), 16);
        assert_eq!(producer_task_warps(8, 6400, true), 8);
        assert_eq!(producer_task_warps(4, 4096, true), 4);
        // Batched: k / 512 warps, rounded down to a power of two.
        assert_eq!(producer_task_warps(4, 576, false), 1);
        assert_eq!(producer_task_warps(4, 1536, false), 2);
        assert_eq!(producer_task_warps(8, 8192, false), 8);
    }

    #[test]
    fn grids_fit_one_wave_with_balanced_rounds() {
        // SmolLM2-135M gate/up at batch 8 with adapters: 384 groups, 16 producers, 264 resident.
        assert_eq!(one_wave_blocks(384, 264, 16), 192);
        // Everything fits: one group a block.
        assert_eq!(one_wave_blocks(144, 264, 8), 144);
        assert_eq!(one_wave_blocks(248, 264, 16), 248);
        assert_eq!(one_wave_blocks(249, 264, 16), 125);
        // Producers filling the wave still leave one block.
        assert_eq!(one_wave_blocks(10, 4, 8), 1);
        assert_eq!(one_wave_blocks(0, 264, 0), 1);
    }
}
