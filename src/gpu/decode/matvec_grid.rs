//! One-wave grids for the decode mat-vecs. Every mat-vec loops over its rows (grid-stride), so a
//! grid larger than the blocks the SMs hold at once adds waves: a block of the second wave starts
//! when one of the first exits and repeats the whole prologue (every sequence's x copied and
//! normalized) before its rows. The four-warps-a-row batched LoRA kernels hold two 512-thread
//! blocks an SM (SmolLM2-135M's gate/up: 384 row blocks and 16 producer blocks took two waves), so
//! their grids are sized from the kernel's occupancy, the producers counted (`launch` says where;
//! [`config`] builds every mat-vec launch's grid, one wave or capped).

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

#[cfg(test)]
mod tests {
    use super::one_wave_blocks;

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
