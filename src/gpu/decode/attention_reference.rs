//! CPU references of the decode engine's attention kernels: `rope_attention` (one token,
//! kernels/decode_step.cu) and the prefill's `rope_kv_rows`, `prefill_attention` and GEMM attention
//! (kernels/prefill.cu, `super::prefill`), in f64 from the same inputs. RoPE and softmax are
//! `crate::reference`'s; what is here is the layout: the fused qkv row, the KV caches
//! ([max_seq, kv_heads, d]), grouped-query heads, causal positions and the GEMM layouts.

use crate::gpu::gemm::{self, GemmShape};
use crate::reference::rope::{rope, RopeLayout};
use crate::reference::softmax::softmax;

/// Shapes of one `rope_attention` call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One head `x` [d] rotated half-split by the angles of position `pos`, formed as the kernels form
/// them: an f32 product `pos * inv_freq[i]`, then sin/cos in f64.
fn rotate_at(x: &[f32], pos: usize, inv_freq: &[f32]) -> Vec<f64> {
    let angles: Vec<f64> = inv_freq.iter().map(|&f| (pos as f32 * f) as f64).collect();
    let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    rope(&x, &cos, &sin, 1, x.len(), RopeLayout::HalfSplit)
}

/// Rotates the k heads of one qkv row ([heads*d | kv*d | kv*d]) at `pos` and writes them (rounded to
/// f32) and the v heads to cache row `pos`.
fn write_kv(
    qkv_row: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    pos: usize,
    inv_freq: &[f32],
    shape: AttentionShape,
) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let row = kv_heads * d;
    for kvh in 0..kv_heads {
        let k = rotate_at(
            &qkv_row[(heads + kvh) * d..(heads + kvh + 1) * d],
            pos,
            inv_freq,
        );
        let v = &qkv_row[(heads + kv_heads + kvh) * d..(heads + kv_heads + kvh + 1) * d];
        for i in 0..d {
            k_cache[pos * row + kvh * d + i] = k[i] as f32;
            v_cache[pos * row + kvh * d + i] = v[i];
        }
    }
}

/// Softmax attention of one query head `q` [d] over cache rows 0 ..= `last` of kv head `kvh`,
/// scores times `scale`; returns [d].
fn attend(
    q: &[f64],
    k_cache: &[f32],
    v_cache: &[f32],
    kvh: usize,
    last: usize,
    shape: AttentionShape,
    scale: f32,
) -> Vec<f64> {
    let d = shape.head_dim;
    let row = shape.kv_heads * d;
    let at = |t: usize| t * row + kvh * d..t * row + kvh * d + d;
    let scores: Vec<f64> = (0..=last)
        .map(|t| {
            let k = &k_cache[at(t)];
            q.iter().zip(k).map(|(a, &b)| a * b as f64).sum::<f64>() * scale as f64
        })
        .collect();
    let mut out = vec![0f64; d];
    for (t, p) in softmax(&scores, scores.len()).iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&v_cache[at(t)]) {
            *o += p * v as f64;
        }
    }
    out
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
    write_kv(qkv, k_cache, v_cache, pos, inv_freq, shape);
    let (heads, d) = (shape.heads, shape.head_dim);
    let group = heads / shape.kv_heads;
    (0..heads)
        .flat_map(|h| {
            let q = rotate_at(&qkv[h * d..(h + 1) * d], pos, inv_freq);
            attend(&q, k_cache, v_cache, h / group, pos, shape, scale)
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
    let (heads, d) = (shape.heads, shape.head_dim);
    let width = (heads + 2 * shape.kv_heads) * d;
    let mut q_out = Vec::with_capacity(qkv.len() / width * heads * d);
    for (i, r) in qkv.chunks_exact(width).enumerate() {
        let pos = pos0 + i;
        for h in 0..heads {
            q_out.extend(rotate_at(&r[h * d..(h + 1) * d], pos, inv_freq));
        }
        write_kv(r, k_cache, v_cache, pos, inv_freq, shape);
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
    let (heads, d) = (shape.heads, shape.head_dim);
    let group = heads / shape.kv_heads;
    let mut out = Vec::with_capacity(q.len());
    for (i, qi) in q.chunks_exact(heads * d).enumerate() {
        for h in 0..heads {
            let qh: Vec<f64> = qi[h * d..(h + 1) * d].iter().map(|&v| v as f64).collect();
            out.extend(attend(
                &qh,
                k_cache,
                v_cache,
                h / group,
                pos0 + i,
                shape,
                scale,
            ));
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
        let scaled: Vec<f64> = row[..len].iter().map(|&v| scale * v).collect();
        row[..len].copy_from_slice(&softmax(&scaled, len));
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

    fn f32s(len: usize, seed: u64) -> Vec<f32> {
        random_values(len, seed, 1.0)
            .into_iter()
            .map(|v| v as f32)
            .collect()
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
