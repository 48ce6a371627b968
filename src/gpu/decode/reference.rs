//! CPU references of the decode kernels: the exact maths of kernels/quant_matvec.cu and
//! kernels/decode_step.cu, computed in f64 from the same inputs. The GPU check
//! (`gpu::decode::check`, run by `wick bench gpu-check`) compares each kernel with these. The block
//! formats' dequantization is here; RMSNorm and SwiGLU are `crate::reference`'s, on f32 inputs;
//! attention (RoPE, softmax, the KV cache) is in `super::attention_reference`.

use half::f16;

/// Re-exported where the launchers name it (`super::reference::AttentionShape`).
pub use super::attention_reference::AttentionShape;
use super::{QuantType, BLOCK};
use crate::reference::{rms_norm::rms_norm, swiglu::swiglu};

/// f32 values widened to f64 (exact).
fn wide(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn f16_at(bytes: &[u8], at: usize) -> f64 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f64()
}

/// Dequantizes one block of a 32-weight format (`bytes` of `q.block_bytes()`) into 32 weights;
/// the other formats through Candle's CPU dequantization ([`dequantize_row`]).
pub fn dequantize_block(q: QuantType, bytes: &[u8]) -> [f64; BLOCK] {
    let mut out = [0f64; BLOCK];
    match q {
        QuantType::Q4_0 | QuantType::Q4_1 => {
            let d = f16_at(bytes, 0);
            let (m, qs) = match q {
                QuantType::Q4_1 => (f16_at(bytes, 2), &bytes[4..20]),
                _ => (-8.0 * d, &bytes[2..18]),
            };
            for (j, &byte) in qs.iter().enumerate() {
                out[j] = d * (byte & 15) as f64 + m;
                out[j + 16] = d * (byte >> 4) as f64 + m;
            }
        }
        QuantType::Q8_0 => {
            let d = f16_at(bytes, 0);
            for (j, &byte) in bytes[2..34].iter().enumerate() {
                out[j] = d * (byte as i8) as f64;
            }
        }
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => {
            for (j, w) in out.iter_mut().enumerate() {
                *w = super::blocks_reference::dense_weight(q, bytes, j) as f64;
            }
        }
        _ => {
            let row = candle_dequantize(q, bytes, BLOCK);
            out.copy_from_slice(&row);
        }
    }
    out
}

/// `k` weights in `q` blocks dequantized by Candle on the CPU (ggml's dequantize_row_*: the
/// reference for Q5_0, Q5_1 and the K-quants, independent of wick's kernels). NaN on a Candle error
/// (malformed bytes), so a check built on it fails visibly.
pub fn candle_dequantize(q: QuantType, bytes: &[u8], k: usize) -> Vec<f64> {
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::Device;
    let out = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &Device::Cpu, q.ggml())
        .and_then(|s| QTensor::new(s, (k,)))
        .and_then(|t| t.dequantize(&Device::Cpu))
        .and_then(|t| t.to_vec1::<f32>());
    match out {
        Ok(v) => v.into_iter().map(f64::from).collect(),
        Err(_) => vec![f64::NAN; k],
    }
}

/// Dequantizes row `row` of a matrix of rows of `k` weights stored as `q` blocks.
pub fn dequantize_row(q: QuantType, weights: &[u8], row: usize, k: usize) -> Vec<f64> {
    let row_bytes = q.row_bytes(k);
    let bytes = &weights[row * row_bytes..(row + 1) * row_bytes];
    if q.block_weights() != BLOCK || matches!(q, QuantType::Q5_0 | QuantType::Q5_1) {
        return candle_dequantize(q, bytes, k);
    }
    bytes
        .chunks_exact(q.block_bytes())
        .flat_map(|block| dequantize_block(q, block))
        .collect()
}

/// What a mat-vec multiplies the weights with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// x itself (the f32 kernels).
    F32,
    /// x quantized to int8 per 32 values (the `qmv_q8x_*` kernels, [`int8_activations`]).
    Int8,
}

impl Activations {
    /// The values the products see for the input `x`, RMS-normalized with `norm` when given.
    /// Int8 quantizes x * g (g the norm's weights) per 32 values and applies the norm's scale
    /// 1 / rms(x) to the product afterwards, as the kernels do (one pass over x: the quantization
    /// grid does not depend on a uniform scale); F32 normalizes first.
    pub fn of(self, x: &[f32], norm: Option<(&[f32], f32)>) -> Vec<f64> {
        match (self, norm) {
            (Self::F32, _) => normalized(x, norm),
            (Self::Int8, None) => int8_activations(&normalized(x, None)),
            (Self::Int8, Some((g, eps))) => {
                let mean_sq =
                    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64;
                let r = 1.0 / (mean_sq + eps as f64).sqrt();
                let xg: Vec<f64> = x.iter().zip(g).map(|(&v, &w)| (v * w) as f64).collect();
                int8_activations(&xg).into_iter().map(|v| v * r).collect()
            }
        }
    }
}

/// x as the int8-activation mat-vecs see it (kernels/quant_matvec.cu, `quantize4`), in the
/// kernel's f32 operations: per block of 32 values (x rounded to f32) with amax = max |x|,
/// q = rint(x * (127 / amax)) (to nearest, ties to even), the value q * (amax / 127); a block of
/// zeros stays zero. `x.len()` is a multiple of 32 (every such format's rows are).
pub fn int8_activations(x: &[f64]) -> Vec<f64> {
    x.chunks(BLOCK)
        .flat_map(|block| {
            let amax = block.iter().fold(0f32, |m, &v| m.max((v as f32).abs()));
            let (id, d) = (127f32 / amax, amax / 127f32);
            block.iter().map(move |&v| match amax > 0.0 {
                true => ((v as f32) * id).round_ties_even() as f64 * d as f64,
                false => 0.0,
            })
        })
        .collect()
}

pub(crate) fn normalized(x: &[f32], norm: Option<(&[f32], f32)>) -> Vec<f64> {
    match norm {
        Some((w, eps)) => prefill_rms_rows(x, w, eps),
        None => x.iter().map(|&v| v as f64).collect(),
    }
}

pub(crate) fn dot_row(q: QuantType, weights: &[u8], row: usize, xn: &[f64]) -> f64 {
    dequantize_row(q, weights, row, xn.len())
        .iter()
        .zip(xn)
        .map(|(w, x)| w * x)
        .sum()
}

/// `qmv_<q>`: y[r] = (accumulate ? y[r] : 0) + W[r] . xn, with xn = rms_norm(x) when `norm` is given
/// (as `act` sees it). weights: rows x k as `q` blocks; x: [k]; y: [rows].
pub fn qmv(
    q: QuantType,
    weights: &[u8],
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    y: &[f32],
    accumulate: bool,
    act: Activations,
) -> Vec<f64> {
    let xn = act.of(x, norm);
    y.iter()
        .enumerate()
        .map(|(r, &old)| {
            let base = if accumulate { old as f64 } else { 0.0 };
            base + dot_row(q, weights, r, &xn)
        })
        .collect()
}

/// `qmv_swiglu_<q>`: y[r] = silu(Wg[r] . xn) * (Wu[r] . xn), for `rows` rows.
pub fn qmv_swiglu(
    q: QuantType,
    gate: &[u8],
    up: &[u8],
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    rows: usize,
    act: Activations,
) -> Vec<f64> {
    let xn = act.of(x, norm);
    let g: Vec<f64> = (0..rows).map(|r| dot_row(q, gate, r, &xn)).collect();
    let u: Vec<f64> = (0..rows).map(|r| dot_row(q, up, r, &xn)).collect();
    swiglu(&g, &u)
}

/// `embed_<q>`: row `token` of a `q` table with rows of `hidden` weights.
pub fn embed(q: QuantType, table: &[u8], token: usize, hidden: usize) -> Vec<f64> {
    dequantize_row(q, table, token, hidden)
}

/// `argmax_logprob`: the first index of the largest logit (NaN never wins; 0 when none is finite
/// or above -inf) and log_softmax at it.
pub fn argmax_logprob(logits: &[f32]) -> (u32, f64) {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    let max = best_value as f64;
    let sum: f64 = logits
        .iter()
        .filter(|v| **v > f32::NEG_INFINITY)
        .map(|&v| (v as f64 - max).exp())
        .sum();
    (best as u32, logits[best] as f64 - max - sum.ln())
}

/// `rms_rows`: RMSNorm of each of the `x.len() / w.len()` rows of `x` (f32, as the kernels read
/// it) with weight `w`; one row is the mat-vecs' fused norm.
pub fn prefill_rms_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    rms_norm(&wide(x), &wide(w), eps as f64).0
}

/// `embed_rows`: the rows `ids` of a `q` table with rows of `hidden` weights, one after the other.
pub fn prefill_embed_rows(q: QuantType, table: &[u8], ids: &[u32], hidden: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&id| dequantize_row(q, table, id as usize, hidden))
        .collect()
}

/// `dequant_layer`: each matrix `(format, blocks, rows, k)` dequantized to row-major [rows, k], the
/// matrices one after the other.
pub fn prefill_dequant_layer(matrices: &[(QuantType, &[u8], usize, usize)]) -> Vec<f64> {
    matrices
        .iter()
        .flat_map(|&(q, bytes, rows, k)| {
            (0..rows).flat_map(move |r| dequantize_row(q, bytes, r, k))
        })
        .collect()
}

/// `add_bias_rows`: y[i][c] + bias[c] for the rows of `y` (`bias.len()` values each).
pub fn prefill_add_bias_rows(y: &[f32], bias: &[f32]) -> Vec<f64> {
    y.chunks_exact(bias.len())
        .flat_map(|row| row.iter().zip(bias).map(|(&v, &b)| v as f64 + b as f64))
        .collect()
}

/// `swiglu_rows`: act[i][j] = silu(gu[i][j]) * gu[i][ffn + j], gu: [n, 2 ffn].
pub fn prefill_swiglu_rows(gu: &[f32], ffn: usize) -> Vec<f64> {
    let (mut g, mut u) = (Vec::new(), Vec::new());
    for row in gu.chunks_exact(2 * ffn) {
        g.extend(wide(&row[..ffn]));
        u.extend(wide(&row[ffn..]));
    }
    swiglu(&g, &u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Quantizes seeded random weights [rows, k] with Candle; returns (raw blocks, Candle's own
    /// dequantization), an independent implementation of the block formats.
    fn quantized(q: QuantType, rows: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let values: Vec<f32> = random_values(rows * k, seed, 1.0)
            .into_iter()
            .map(|v| v as f32 + 0.1)
            .collect();
        let t = Tensor::from_vec(values, (rows, k), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, q.ggml()).unwrap();
        let bytes = qt.data().unwrap().to_vec();
        let dense = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (bytes, dense)
    }

    fn f32s(len: usize, seed: u64) -> Vec<f32> {
        random_values(len, seed, 1.0)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    #[test]
    fn dequantize_matches_candle_for_every_format() {
        for (i, q) in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0]
            .into_iter()
            .enumerate()
        {
            let (rows, k) = (3, 96);
            let (bytes, dense) = quantized(q, rows, k, 10 + i as u64);
            assert_eq!(bytes.len(), rows * q.row_bytes(k), "{q:?} row bytes");
            for r in 0..rows {
                let ours = dequantize_row(q, &bytes, r, k);
                for j in 0..k {
                    let want = dense[r * k + j] as f64;
                    assert!(
                        (ours[j] - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{q:?} [{r},{j}]"
                    );
                }
            }
        }
    }

    #[test]
    fn qmv_is_the_dense_product_of_the_normalized_input() {
        let (rows, k) = (5, 64);
        for (i, q) in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0]
            .into_iter()
            .enumerate()
        {
            let seed = 20 + 3 * i as u64;
            let (bytes, dense) = quantized(q, rows, k, seed);
            let x = f32s(k, seed + 1);
            let g = f32s(k, seed + 2);
            let y0 = f32s(rows, seed + 3);
            let eps = 1e-5f32;
            let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
            let xn: Vec<f64> = (0..k)
                .map(|j| x[j] as f64 / (ms + eps as f64).sqrt() * g[j] as f64)
                .collect();
            let got = qmv(q, &bytes, &x, Some((&g, eps)), &y0, true, Activations::F32);
            for r in 0..rows {
                let want =
                    y0[r] as f64 + (0..k).map(|j| dense[r * k + j] as f64 * xn[j]).sum::<f64>();
                assert!(
                    (got[r] - want).abs() < 1e-5,
                    "{q:?} row {r}: {} vs {want}",
                    got[r]
                );
            }
            // Without the norm and without accumulation: the plain product.
            let plain = qmv(q, &bytes, &x, None, &y0, false, Activations::F32);
            let want: f64 = (0..k).map(|j| dense[j] as f64 * x[j] as f64).sum();
            assert!((plain[0] - want).abs() < 1e-5);
            // SwiGLU: silu(gate) * up, gate and up from the same rows here.
            let sw = qmv_swiglu(q, &bytes, &bytes, &x, None, rows, Activations::F32);
            let silu = want / (1.0 + (-want).exp());
            assert!((sw[0] - silu * want).abs() < 1e-5);
        }
    }

    /// Int8 activations: each block's largest magnitude maps to +-127 exactly, every value lands on
    /// the block's grid of amax / 127 within half a step, zeros stay zeros, and the mat-vec on them
    /// is the f32 mat-vec of the quantized values.
    #[test]
    fn int8_activations_are_the_blocks_grid() {
        let mut x: Vec<f64> = f32s(96, 71).into_iter().map(f64::from).collect();
        x[40] = -3.0; // block 1's largest magnitude
        x[64..96].iter_mut().for_each(|v| *v = 0.0);
        let q = int8_activations(&x);
        assert_eq!(q.len(), x.len());
        for (b, (block, qb)) in x.chunks(32).zip(q.chunks(32)).enumerate() {
            let amax = block.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (&v, &w) in block.iter().zip(qb) {
                if amax == 0.0 {
                    assert_eq!(w, 0.0, "block {b}");
                    continue;
                }
                let steps = w * 127.0 / amax;
                assert!(
                    (steps - steps.round()).abs() < 1e-4,
                    "block {b}: {w} off the grid"
                );
                assert!(
                    steps.abs() <= 127.0 + 1e-6 && (w - v).abs() <= amax / 254.0 * (1.0 + 1e-6)
                );
            }
        }
        assert!((q[40] + 3.0).abs() < 1e-6);
        let (bytes, _) = quantized(QuantType::Q4_1, 2, 96, 72);
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let y0 = [0f32; 2];
        let got = qmv(
            QuantType::Q4_1,
            &bytes,
            &xf,
            None,
            &y0,
            false,
            Activations::Int8,
        );
        let xq = int8_activations(&normalized(&xf, None));
        for (r, g) in got.iter().enumerate() {
            let want = dot_row(QuantType::Q4_1, &bytes, r, &xq);
            assert!((g - want).abs() < 1e-12, "row {r}");
        }
    }

    #[test]
    fn argmax_logprob_matches_the_sampler() {
        let mut logits = f32s(1000, 41);
        logits[17] = 5.0;
        logits[600] = 5.0;
        logits[3] = f32::NAN;
        let (id, lp) = argmax_logprob(&logits);
        assert_eq!(id, 17);
        logits[3] = -1.0;
        let want = crate::generate::sampler::log_softmax_at(&logits, 17);
        let (_, lp2) = argmax_logprob(&logits);
        assert!((lp2 - want as f64).abs() < 1e-5, "{lp2} vs {want}");
        assert!(lp.is_finite());
    }

    #[test]
    fn prefill_row_references() {
        let (n, k) = (3, 64);
        let x = f32s(n * k, 61);
        let w = f32s(k, 62);
        let y = prefill_rms_rows(&x, &w, 1e-5);
        assert_eq!(y.len(), n * k);
        assert_eq!(&y[k..2 * k], &prefill_rms_rows(&x[k..2 * k], &w, 1e-5)[..]);
        let gu = f32s(n * 2 * 5, 63);
        let act = prefill_swiglu_rows(&gu, 5);
        let (g, u) = (gu[10 + 2] as f64, gu[10 + 5 + 2] as f64);
        assert!((act[5 + 2] - g * u / (1.0 + (-g).exp())).abs() < 1e-12);
        for q in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            let (a, dense_a) = quantized(q, 4, 64, 64);
            let (b, dense_b) = quantized(q, 2, 96, 65);
            let all = prefill_dequant_layer(&[(q, &a, 4, 64), (q, &b, 2, 96)]);
            let want: Vec<f64> = dense_a.iter().chain(&dense_b).map(|&v| v as f64).collect();
            assert_eq!(all.len(), want.len());
            for (i, (g, w)) in all.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{q:?} [{i}]");
            }
            let rows = prefill_embed_rows(q, &a, &[3, 0, 3], 64);
            assert_eq!(&rows[..64], &dequantize_row(q, &a, 3, 64)[..]);
            assert_eq!(&rows[128..], &rows[..64]);
        }
    }
}
