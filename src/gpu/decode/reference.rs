//! CPU references of the decode kernels: the exact maths of kernels/quant_matvec.cu and
//! kernels/decode_step.cu, computed in f64 from the same inputs. The GPU check
//! (`gpu::decode::check`, run by `wick bench gpu-check`) compares each kernel with these.

use half::f16;

use super::{QuantType, BLOCK};
use crate::gpu::gemm::{self, GemmShape};

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

/// `x * rsqrt(mean(x^2) + eps) * w` (HF LlamaRMSNorm).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let mean = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (mean + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| v as f64 * r * g as f64)
        .collect()
}

pub(crate) fn normalized(x: &[f32], norm: Option<(&[f32], f32)>) -> Vec<f64> {
    match norm {
        Some((w, eps)) => rms_norm(x, w, eps),
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

/// `qmv_<q>`: y[r] = (accumulate ? y[r] : 0) + W[r] . xn, with xn = rms_norm(x) when `norm` is given.
/// weights: rows x k as `q` blocks; x: [k]; y: [rows].
pub fn qmv(
    q: QuantType,
    weights: &[u8],
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    y: &[f32],
    accumulate: bool,
) -> Vec<f64> {
    let xn = normalized(x, norm);
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
) -> Vec<f64> {
    let xn = normalized(x, norm);
    (0..rows)
        .map(|r| {
            let g = dot_row(q, gate, r, &xn);
            let u = dot_row(q, up, r, &xn);
            g / (1.0 + (-g).exp()) * u
        })
        .collect()
}

/// `embed_<q>`: row `token` of a `q` table with rows of `hidden` weights.
pub fn embed(q: QuantType, table: &[u8], token: usize, hidden: usize) -> Vec<f64> {
    dequantize_row(q, table, token, hidden)
}

/// Shapes of one `rope_attention` call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// `rope_attention` for the token at `pos`: RoPE (half-split) on q and k with angles
/// `pos * inv_freq[i]`, k and v written to the caches ([max_seq, kv_heads, d]) at `pos`, then softmax
/// attention of each query head over positions 0..=pos of its kv head (h / (heads / kv_heads)),
/// scores times `scale`. qkv: [heads*d | kv*d | kv*d]; returns [heads, d].
pub fn rope_attention(
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    pos: usize,
    inv_freq: &[f32],
    shape: AttentionShape,
    scale: f32,
) -> Vec<f64> {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let half = d / 2;
    // Angles as the kernel forms them: an f32 product, then sin/cos.
    let angles: Vec<f64> = inv_freq.iter().map(|&f| (pos as f32 * f) as f64).collect();
    let rotate = |x: &[f32]| -> Vec<f64> {
        let mut out = vec![0f64; d];
        for i in 0..half {
            let (s, c) = angles[i].sin_cos();
            let (a, b) = (x[i] as f64, x[i + half] as f64);
            out[i] = a * c - b * s;
            out[i + half] = a * s + b * c;
        }
        out
    };
    let row = kv_heads * d;
    for kvh in 0..kv_heads {
        let k = rotate(&qkv[(heads + kvh) * d..(heads + kvh + 1) * d]);
        let v = &qkv[(heads + kv_heads + kvh) * d..(heads + kv_heads + kvh + 1) * d];
        for i in 0..d {
            k_cache[pos * row + kvh * d + i] = k[i] as f32;
            v_cache[pos * row + kvh * d + i] = v[i];
        }
    }
    let group = heads / kv_heads;
    let mut out = vec![0f64; heads * d];
    for h in 0..heads {
        let kvh = h / group;
        let q = rotate(&qkv[h * d..(h + 1) * d]);
        let scores: Vec<f64> = (0..=pos)
            .map(|t| {
                let k = &k_cache[t * row + kvh * d..t * row + kvh * d + d];
                q.iter().zip(k).map(|(a, &b)| a * b as f64).sum::<f64>() * scale as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for (t, w) in weights.iter().enumerate() {
            let v = &v_cache[t * row + kvh * d..t * row + kvh * d + d];
            for i in 0..d {
                out[h * d + i] += w / total * v[i] as f64;
            }
        }
    }
    out
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

/// `rms_rows`: [`rms_norm`] of each of the `x.len() / w.len()` rows of `x`.
pub fn prefill_rms_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    x.chunks_exact(w.len())
        .flat_map(|row| rms_norm(row, w, eps))
        .collect()
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

/// `swiglu_rows`: act[i][j] = silu(gu[i][j]) * gu[i][ffn + j], gu: [n, 2 ffn].
pub fn prefill_swiglu_rows(gu: &[f32], ffn: usize) -> Vec<f64> {
    gu.chunks_exact(2 * ffn)
        .flat_map(|row| {
            (0..ffn).map(move |j| {
                let (g, u) = (row[j] as f64, row[ffn + j] as f64);
                g / (1.0 + (-g).exp()) * u
            })
        })
        .collect()
}

/// `rope_kv_rows`: for token i of `n` (position pos0 + i), qkv row i = [q heads*d | k kv*d | v kv*d]:
/// RoPE on its q heads (returned, [n, heads * d]) and k heads with the angles of `rope_attention`;
/// the rotated k (rounded to f32) and v written to the caches ([max_seq, kv_heads, d]) at row pos0 + i.
pub fn prefill_rope_kv(
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    inv_freq: &[f32],
    pos0: usize,
    shape: AttentionShape,
) -> Vec<f64> {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let half = d / 2;
    let width = (heads + 2 * kv_heads) * d;
    let row = kv_heads * d;
    let mut q_out = Vec::with_capacity(qkv.len() / width * heads * d);
    for (i, r) in qkv.chunks_exact(width).enumerate() {
        let pos = pos0 + i;
        let angles: Vec<f64> = inv_freq.iter().map(|&f| (pos as f32 * f) as f64).collect();
        let rotate = |x: &[f32]| -> Vec<f64> {
            let mut out = vec![0f64; d];
            for j in 0..half {
                let (s, c) = angles[j].sin_cos();
                let (a, b) = (x[j] as f64, x[j + half] as f64);
                out[j] = a * c - b * s;
                out[j + half] = a * s + b * c;
            }
            out
        };
        for h in 0..heads {
            q_out.extend(rotate(&r[h * d..(h + 1) * d]));
        }
        for kvh in 0..kv_heads {
            let k = rotate(&r[(heads + kvh) * d..(heads + kvh + 1) * d]);
            let v = &r[(heads + kv_heads + kvh) * d..(heads + kv_heads + kvh + 1) * d];
            for j in 0..d {
                k_cache[pos * row + kvh * d + j] = k[j] as f32;
                v_cache[pos * row + kvh * d + j] = v[j];
            }
        }
    }
    q_out
}

/// `prefill_attention`: causal softmax attention of query row i (`q`: [n, heads * d], already
/// rotated; position pos0 + i) over cache rows 0 ..= pos0 + i of its kv head, scores times `scale`;
/// returns [n, heads * d].
pub fn prefill_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    shape: AttentionShape,
    scale: f32,
) -> Vec<f64> {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let group = heads / kv_heads;
    let row = kv_heads * d;
    let mut out = vec![0f64; q.len()];
    for (i, qi) in q.chunks_exact(heads * d).enumerate() {
        let pos = pos0 + i;
        for h in 0..heads {
            let kvh = h / group;
            let qh = &qi[h * d..(h + 1) * d];
            let scores: Vec<f64> = (0..=pos)
                .map(|t| {
                    let k = &k_cache[t * row + kvh * d..t * row + kvh * d + d];
                    qh.iter()
                        .zip(k)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let o = &mut out[i * heads * d + h * d..i * heads * d + (h + 1) * d];
            for (t, w) in weights.iter().enumerate() {
                let v = &v_cache[t * row + kvh * d..t * row + kvh * d + d];
                for j in 0..d {
                    o[j] += w / total * v[j] as f64;
                }
            }
        }
    }
    out
}

/// Row stride (floats) of the GEMM attention's scores for `keys` key positions: `keys` rounded up
/// to a multiple of 4 (16-byte rows for the softmax's vector loads and the products' alignment).
pub fn gemm_attention_ld(keys: usize) -> usize {
    keys.div_ceil(4) * 4
}

/// Floats of the scores scratch the GEMM attention needs for `n` queries against up to `keys` key
/// positions: [heads, n, gemm_attention_ld(keys)].
pub fn gemm_attention_scores_len(shape: AttentionShape, n: usize, keys: usize) -> usize {
    shape.heads * n * gemm_attention_ld(keys)
}

/// The two f32 products of the GEMM attention (`PrefillKernels::attention_gemm`) for `n` queries at
/// positions pos0 .. pos0 + n against L = pos0 + n cached keys, both batched over kv heads with the
/// group's G query heads stacked as the rows g * n + i of one product:
/// - S [heads, n, ld] = Qh K^T: Qh head-major [heads, n, d] (entry kvh at kvh G n d), K the cache
///   [L, d] rows with row stride kv_heads d (entry kvh at kvh d), trans_b;
/// - O [heads, n, d] = P V: P = S (lda ld), V as K.
///
/// Returns (S product, O product, ld).
pub fn gemm_attention_shapes(
    shape: AttentionShape,
    pos0: usize,
    n: usize,
) -> (GemmShape, GemmShape, usize) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (g, keys) = (heads / kv_heads.max(1), pos0 + n);
    let ld = gemm_attention_ld(keys);
    let f32 = candle_core::DType::F32;
    let qk = GemmShape {
        ldb: kv_heads * d,
        ldd: ld,
        ..GemmShape::contiguous((g * n, keys, d), (false, true), f32, f32)
    }
    .batched(kv_heads, g * n * d, d, g * n * ld);
    let pv = GemmShape {
        lda: ld,
        ldb: kv_heads * d,
        ..GemmShape::contiguous((g * n, d, keys), (false, false), f32, f32)
    }
    .batched(kv_heads, g * n * ld, d, g * n * d);
    (qk, pv, ld)
}

/// `prefill_causal_softmax`, in place on the scores [rows, ld]: row r (query i = r % n, position
/// pos0 + i) becomes softmax(scale s[r][j]) over j <= pos0 + i and 0 for pos0 + i < j < pos0 + n;
/// the rest of the row is left alone.
pub fn prefill_causal_softmax(s: &mut [f64], n: usize, ld: usize, pos0: usize, scale: f64) {
    for (r, row) in s.chunks_exact_mut(ld).enumerate() {
        let len = pos0 + r % n + 1;
        let max = row[..len]
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(scale * v));
        let total: f64 = row[..len].iter().map(|&v| (scale * v - max).exp()).sum();
        for v in &mut row[..len] {
            *v = (scale * *v - max).exp() / total;
        }
        for v in &mut row[len..pos0 + n] {
            *v = 0.0;
        }
    }
}

/// The GEMM attention's four steps on the CPU, through the products of
/// [`gemm_attention_shapes`] (`gemm::reference`, f64): `qh` head-major [heads, n, d], caches
/// [max_seq, kv_heads, d]; returns the token-major output [n, heads * d], which must equal
/// [`prefill_attention`] of the same queries. Pins the launcher's layouts without a GPU.
pub fn prefill_attention_gemm_layout(
    qh: &[f64],
    k_cache: &[f64],
    v_cache: &[f64],
    pos0: usize,
    shape: AttentionShape,
    scale: f64,
) -> Vec<f64> {
    let (heads, d) = (shape.heads, shape.head_dim);
    let n = qh.len() / (heads * d);
    let (qk, pv, ld) = gemm_attention_shapes(shape, pos0, n);
    // NaN where the product writes nothing (row padding): the softmax must not read it.
    let poisoned = vec![f64::NAN; gemm_attention_scores_len(shape, n, pos0 + n)];
    let mut scores = gemm::reference(&qk, qh, k_cache, &poisoned, 1.0, 0.0);
    let rows = heads * n;
    prefill_causal_softmax(&mut scores[..rows * ld], n, ld, pos0, scale);
    let oh = gemm::reference(&pv, &scores, v_cache, &vec![f64::NAN; qh.len()], 1.0, 0.0);
    let mut out = vec![0f64; qh.len()];
    for i in 0..n {
        for h in 0..heads {
            for c in 0..d {
                out[i * heads * d + h * d + c] = oh[(h * n + i) * d + c];
            }
        }
    }
    out
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
            let got = qmv(q, &bytes, &x, Some((&g, eps)), &y0, true);
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
            let plain = qmv(q, &bytes, &x, None, &y0, false);
            let want: f64 = (0..k).map(|j| dense[j] as f64 * x[j] as f64).sum();
            assert!((plain[0] - want).abs() < 1e-5);
            // SwiGLU: silu(gate) * up, gate and up from the same rows here.
            let sw = qmv_swiglu(q, &bytes, &bytes, &x, None, rows);
            let silu = want / (1.0 + (-want).exp());
            assert!((sw[0] - silu * want).abs() < 1e-5);
        }
    }

    #[test]
    fn attention_at_position_zero_returns_v_and_writes_the_rotated_key() {
        let shape = AttentionShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let d = 8;
        let qkv = f32s((4 + 2 + 2) * d, 31);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let (mut kc, mut vc) = (vec![0f32; 3 * 2 * d], vec![0f32; 3 * 2 * d]);
        let out = rope_attention(&qkv, &mut kc, &mut vc, 0, &inv, shape, 0.3);
        // One position: the softmax is 1, the output is v of the head's kv head; rope at 0 is identity.
        for h in 0..4 {
            let kvh = h / 2;
            for i in 0..d {
                assert!((out[h * d + i] - qkv[(6 + kvh) * d + i] as f64).abs() < 1e-12);
            }
        }
        assert_eq!(&kc[..2 * d], &qkv[4 * d..6 * d]);
    }

    #[test]
    fn attention_matches_a_two_position_hand_computation() {
        // One head, d = 2, inv_freq = [1]: at pos 1 the query and key rotate by 1 radian, so the
        // score with the key of position 1 is q.k (rotation preserves dot products between vectors
        // rotated by the same angle), and position 0 holds an unrotated cached key.
        let shape = AttentionShape {
            heads: 1,
            kv_heads: 1,
            head_dim: 2,
        };
        let qkv = [0.5f32, -1.0, 0.25, 0.75, 2.0, -3.0];
        let mut kc = vec![1.0f32, 0.0, 0.0, 0.0];
        let mut vc = vec![1.0f32, 1.0, 0.0, 0.0];
        let out = rope_attention(&qkv, &mut kc, &mut vc, 1, &[1.0], shape, 1.0);
        let (s, c) = 1f64.sin_cos();
        let q0 = 0.5 * c + 1.0 * s;
        let s0 = q0; // key at position 0 is (1, 0)
        let s1: f64 = 0.5 * 0.25 - 0.75;
        let (e0, e1) = (s0.exp(), s1.exp());
        let want = [
            (e0 * 1.0 + e1 * 2.0) / (e0 + e1),
            (e0 * 1.0 + e1 * -3.0) / (e0 + e1),
        ];
        assert!((out[0] - want[0]).abs() < 1e-6 && (out[1] - want[1]).abs() < 1e-6);
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
    fn prefill_rope_and_attention_equal_one_decode_step_per_token() {
        // The batched prefill of 5 tokens after 3 cached positions must give, token by token, what
        // rope_attention gives stepping those tokens (same cache rows, same outputs).
        let shape = AttentionShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
        };
        let (d, pos0, n, max_seq) = (8, 3, 5, 12);
        let width = (6 + 2 * 2) * d;
        let row = 2 * d;
        let qkv = f32s(n * width, 51);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let k0 = f32s(max_seq * row, 52);
        let v0 = f32s(max_seq * row, 53);
        let (mut kb, mut vb) = (k0.clone(), v0.clone());
        let q = prefill_rope_kv(&qkv, &mut kb, &mut vb, &inv, pos0, shape);
        let q32: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let got = prefill_attention(&q32, &kb, &vb, pos0, shape, 0.35);
        let (mut ks, mut vs) = (k0.clone(), v0.clone());
        for i in 0..n {
            let want = rope_attention(
                &qkv[i * width..(i + 1) * width],
                &mut ks,
                &mut vs,
                pos0 + i,
                &inv,
                shape,
                0.35,
            );
            for j in 0..6 * d {
                let g = got[i * 6 * d + j];
                // q rounded to f32 between the two references: ~1e-7 relative.
                assert!(
                    (g - want[j]).abs() < 1e-5,
                    "token {i} [{j}]: {g} vs {}",
                    want[j]
                );
            }
        }
        assert_eq!(kb, ks, "cache keys");
        assert_eq!(vb, vs, "cache values");
        // Rows beyond the prompt untouched.
        assert_eq!(&kb[(pos0 + n) * row..], &k0[(pos0 + n) * row..]);
    }

    #[test]
    fn prefill_row_references() {
        let (n, k) = (3, 64);
        let x = f32s(n * k, 61);
        let w = f32s(k, 62);
        let y = prefill_rms_rows(&x, &w, 1e-5);
        assert_eq!(y.len(), n * k);
        assert_eq!(&y[k..2 * k], &rms_norm(&x[k..2 * k], &w, 1e-5)[..]);
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

    #[test]
    fn gemm_attention_layout_matches_the_attention_reference() {
        // (heads, kv_heads, d, pos0, n): GQA with odd head counts, MHA, later chunks, keys not a
        // multiple of 4, one query.
        for (i, &(heads, kv_heads, d, pos0, n)) in [
            (9usize, 3usize, 8usize, 0usize, 7usize),
            (9, 3, 8, 5, 6),
            (7, 7, 4, 3, 1),
            (15, 5, 4, 0, 9),
            (8, 2, 8, 13, 4),
            (3, 1, 4, 2, 3),
        ]
        .iter()
        .enumerate()
        {
            let shape = AttentionShape {
                heads,
                kv_heads,
                head_dim: d,
            };
            let max_seq = pos0 + n + 2;
            let seed = 40 + 3 * i as u64;
            let q = f32s(n * heads * d, seed);
            let kc = f32s(max_seq * kv_heads * d, seed + 1);
            let vc = f32s(max_seq * kv_heads * d, seed + 2);
            let scale = 1.0 / (d as f32).sqrt();
            let want = prefill_attention(&q, &kc, &vc, pos0, shape, scale);
            let mut qh = vec![0f64; q.len()];
            for t in 0..n {
                for h in 0..heads {
                    for c in 0..d {
                        qh[(h * n + t) * d + c] = q[t * heads * d + h * d + c] as f64;
                    }
                }
            }
            let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let got = prefill_attention_gemm_layout(
                &qh,
                &wide(&kc),
                &wide(&vc),
                pos0,
                shape,
                scale as f64,
            );
            assert_eq!(got.len(), want.len());
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-12,
                    "h{heads} kv{kv_heads} d{d} pos0 {pos0} n{n}: element {j}: {g} vs {w}"
                );
            }
            // The products are valid shapes and the scratch holds them.
            let (qk, pv, ld) = gemm_attention_shapes(shape, pos0, n);
            assert_eq!(qk.invalid(), None);
            assert_eq!(pv.invalid(), None);
            assert!(qk.d_len() <= gemm_attention_scores_len(shape, n, pos0 + n));
            assert!(qk.b_len() <= kc.len() && pv.b_len() <= vc.len());
            assert_eq!(ld % 4, 0);
        }
    }
}
