//! LoRA dropout as the CUDA training engine draws it (PEFT's `lora_dropout`: the low-rank branch
//! reads `dropout(x) = x * keep / (1 - p)` instead of x; a fresh mask per adapted projection and
//! micro-batch). The mask is a pure function of (seed, stream, row, position, column), so the
//! backward regenerates it instead of storing it, a resumed run draws the same masks, and every
//! implementation (kernels/train_step.cu's `trn_lora_dropout`, the engine check's Candle model)
//! draws the same ones from this specification.
//!
//! Element (b, t, c) of an input [rows, cols] laid out as rows of `s` positions (b = row / s,
//! t = row % s): key = b << 44 | t << 24 | c (b < 2^20, t < 2^20, c < 2^24), then splitmix64 of
//! `seed ^ stream * 0x9E37_79B9_7F4A_7C15` advanced by `key * 0xD1B5_4A32_D192_ED03`; the element is
//! kept when the hash's top 24 bits are at least `threshold(p) = round(p * 2^24)`.

/// splitmix64's increment for streams, and the one for keys.
const STREAM_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
const KEY_STEP: u64 = 0xD1B5_4A32_D192_ED03;

/// The 24-bit threshold of drop probability `p` (0 <= p < 1).
pub fn threshold(p: f32) -> u32 {
    (p as f64 * (1u64 << 24) as f64).round() as u32
}

/// What a kept element is multiplied by: 1 / (1 - p), in f32 as the kernel uses it.
pub fn keep_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// Whether element (b, t, c) of stream `stream` is kept.
pub fn keep(seed: u64, stream: u32, (b, t, c): (usize, usize, usize), threshold: u32) -> bool {
    let key = ((b as u64) << 44) | ((t as u64) << 24) | c as u64;
    let mut z =
        (seed ^ (stream as u64).wrapping_mul(STREAM_STEP)).wrapping_add(key.wrapping_mul(KEY_STEP));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as u32 >= threshold
}

/// The seed of one micro-batch: the run's seed, the optimizer step (from 1) and the micro-batch's
/// index within it, mixed.
pub fn micro_batch_seed(run_seed: u64, step: u64, micro: u64) -> u64 {
    let mut z = run_seed
        .wrapping_add(step.wrapping_mul(STREAM_STEP))
        .wrapping_add(micro.wrapping_mul(KEY_STEP));
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^ (z >> 33)
}

/// `x * keep / (1 - p)` for x [rows, cols] in rows of `s` positions (the mask per element as
/// [`keep`] draws it; a dropped element is 0).
pub fn apply(x: &[f64], cols: usize, s: usize, seed: u64, stream: u32, p: f32) -> Vec<f64> {
    let (threshold, scale) = (threshold(p), keep_scale(p) as f64);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (row, c) = (i / cols, i % cols);
            if keep(seed, stream, (row / s, row % s, c), threshold) {
                v * scale
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_about_p_of_the_elements_and_scales_the_rest() {
        for p in [0.05f32, 0.1, 0.5] {
            let x = vec![1.0; 64 * 300];
            let y = apply(&x, 300, 16, 7, 3, p);
            let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
            assert!(
                (dropped - p as f64).abs() < 0.01,
                "p {p}: dropped {dropped}"
            );
            let kept: Vec<f64> = y.into_iter().filter(|&v| v != 0.0).collect();
            assert!(kept
                .iter()
                .all(|&v| (v - 1.0 / (1.0 - p as f64)).abs() < 1e-6));
        }
        assert_eq!(apply(&[2.0, 3.0], 2, 1, 1, 1, 0.0), vec![2.0, 3.0]);
    }

    #[test]
    fn masks_differ_by_stream_seed_and_position_and_not_by_padding() {
        let draw = |seed, stream, b, t| -> Vec<bool> {
            (0..256)
                .map(|c| keep(seed, stream, (b, t, c), threshold(0.5)))
                .collect()
        };
        let base = draw(1, 0, 0, 5);
        assert_eq!(base, draw(1, 0, 0, 5));
        for other in [
            draw(2, 0, 0, 5),
            draw(1, 1, 0, 5),
            draw(1, 0, 1, 5),
            draw(1, 0, 0, 6),
        ] {
            let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
            assert!(
                (80..176).contains(&same),
                "{same} of 256 equal: not independent"
            );
        }
        // Row 1 position 2 is the same element whatever the padded length s.
        let at = |s: usize| {
            apply(&vec![1.0; 3 * s * 4], 4, s, 9, 2, 0.5)[(s + 2) * 4..(s + 3) * 4].to_vec()
        };
        assert_eq!(at(3), at(8));
        assert_ne!(micro_batch_seed(1, 1, 0), micro_batch_seed(1, 1, 1));
        assert_ne!(micro_batch_seed(1, 1, 0), micro_batch_seed(1, 2, 0));
    }
}
