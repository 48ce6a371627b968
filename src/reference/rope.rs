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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testing::{close, random_values};

    #[test]
    fn rotation_keeps_norms_and_the_opposite_angle_undoes_it() {
        let (seq, dim) = (5, 8);
        let half = dim / 2;
        let x = random_values(2 * seq * dim, 50, 1.0);
        let angles: Vec<f64> = (0..seq * half)
            .map(|i| (i / half) as f64 * 0.3 + (i % half) as f64)
            .collect();
        let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
        let neg: Vec<f64> = sin.iter().map(|s| -s).collect();
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            let y = rope(&x, &cos, &sin, seq, dim, layout);
            for (a, b) in x.chunks(dim).zip(y.chunks(dim)) {
                let norm = |v: &[f64]| v.iter().map(|e| e * e).sum::<f64>();
                assert!((norm(a) - norm(b)).abs() < 1e-12);
            }
            close(
                &rope(&y, &cos, &neg, seq, dim, layout),
                &x,
                1e-14,
                "round trip",
            );
        }
        // Position 0 (angle 0 for every pair) is the identity.
        let zeros = vec![0.0; half];
        let ones = vec![1.0; half];
        assert_eq!(
            rope(&x[..dim], &ones, &zeros, 1, dim, RopeLayout::HalfSplit),
            x[..dim]
        );
    }
}
