//! How many warps share each row of a batch-1 mat-vec launch (`MatVecRows` in
//! kernels/quant_matvec.cu): blocks of `MV_WARPS` warps take `MV_WARPS / 2^s` rows each, and the
//! 2^s warps of a row each take every 2^s-th run of 32 parts of it. With fewer rows than the grid
//! has warps (SmolLM2-1.7B's o and down projections: 2048 rows for 1056 blocks of 4 warps), one
//! warp a row leaves warp slots empty and gives each warp a long serial chain of load rounds.
//! Always compiled (the rule is plain arithmetic, unit-tested without a GPU).

/// Largest split (log2) by default: four warps a row.
pub const ROW_SPLIT_MAX_LOG2: u32 = 2;

/// The cap on the split (log2): [`ROW_SPLIT_MAX_LOG2`], or `WICK_DECODE_ROW_SPLIT=1|2|4` (warps a
/// row) for measurements.
pub fn row_split_cap_log2() -> u32 {
    match std::env::var("WICK_DECODE_ROW_SPLIT").as_deref() {
        Ok("1") => 0,
        Ok("2") => 1,
        _ => ROW_SPLIT_MAX_LOG2,
    }
}

/// log2 of the warps that share each row of a launch of `rows` rows over `k` inputs, at most
/// 2^`cap_log2`: the largest split that leaves each warp at least 8 blocks of 32 weights (a part for
/// every lane: 4 parts a block) and keeps the grid, `rows * split / warps_per_block` blocks, within
/// `max_blocks` (one wave; beyond it warps loop over rows anyway).
pub fn row_split_log2(
    rows: usize,
    k: usize,
    cap_log2: u32,
    warps_per_block: usize,
    max_blocks: usize,
) -> u32 {
    let mut s = cap_log2.min(warps_per_block.trailing_zeros());
    while s > 0 && (k / 32 < 8 << s || (rows << s).div_ceil(warps_per_block) > max_blocks) {
        s -= 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_BLOCKS: usize = 132 * 8;

    #[test]
    fn splits_rows_only_where_the_grid_has_room() {
        let split = |rows, k| row_split_log2(rows, k, ROW_SPLIT_MAX_LOG2, 4, MAX_BLOCKS);
        // SmolLM2-1.7B: q/k/v (6144 rows) and gate/up (8192) fill the grid one warp a row; o and
        // down (2048 rows) take two warps a row.
        assert_eq!(split(6144, 2048), 0);
        assert_eq!(split(8192, 2048), 0);
        assert_eq!(split(2048, 2048), 1);
        assert_eq!(split(2048, 8192), 1);
        // SmolLM2-135M: k = 576 is 18 blocks, enough for two warps of 8; down (k = 1536) takes four.
        assert_eq!(split(960, 576), 1);
        assert_eq!(split(576, 1536), 2);
        assert_eq!(split(37, 96), 0);
        // The LM head (49152 rows) loops over rows one warp a row.
        assert_eq!(split(49152, 2048), 0);
    }

    #[test]
    fn the_cap_and_the_block_bound_hold() {
        assert_eq!(row_split_log2(576, 1536, 0, 4, MAX_BLOCKS), 0);
        assert_eq!(row_split_log2(576, 1536, 1, 4, MAX_BLOCKS), 1);
        assert_eq!(row_split_log2(576, 1536, 5, 4, MAX_BLOCKS), 2);
        assert_eq!(row_split_log2(576, 1536, 2, 2, MAX_BLOCKS), 1);
        // Exactly one wave at the bound, none beyond it.
        assert_eq!(row_split_log2(2112, 2048, 2, 4, MAX_BLOCKS), 1);
        assert_eq!(row_split_log2(2113, 2048, 2, 4, MAX_BLOCKS), 0);
    }
}
