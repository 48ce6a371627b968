//! Rotary position embedding. Each pair `(a, b)` of a head at position p is rotated by its angle:
//! `a' = a cos - b sin`, `b' = a sin + b cos`, with cos/sin taken at row p of the tables. The
//! backward is the rotation by the opposite angle (pass `-sin`).

/// How the rotated pairs are laid out inside a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pair (i, i + d/2): HF LLaMA/Qwen2 and llama.cpp NEOX.
    HalfSplit,
    /// Pair (2i, 2i + 1): GPT-J and llama.cpp's LLaMA kernels.
    Interleaved,
}

/// x: [rows, dim] where row r is at position r % seq; cos, sin: [seq, dim / 2]. Returns the rotated
/// [rows, dim]. One head at one position: `seq` = 1 and that position's table rows.
pub fn rope(
    x: &[f64],
    cos: &[f64],
    sin: &[f64],
    seq: usize,
    dim: usize,
    layout: RopeLayout,
) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0.0; x.len()];
    for (row, (src, dst)) in x.chunks(dim).zip(out.chunks_mut(dim)).enumerate() {
        let p = row % seq;
        for i in 0..half {
            let (ia, ib) = match layout {
                RopeLayout::HalfSplit => (i, i + half),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (c, s) = (cos[p * half + i], sin[p * half + i]);
            dst[ia] = src[ia] * c - src[ib] * s;
            dst[ib] = src[ia] * s + src[ib] * c;
        }
    }
    out
}
