//! The CPU specification of the training kernels (kernels/train_step.cu), in f64: each function is
//! the maths of the kernel of the same name, on the same layouts (see `super::launch`). The GPU
//! check (`super::check`) feeds both the same (rounded) inputs; the unit tests below check these
//! against exact maths, finite differences and `train::optimizer::AdamW`. The ops' maths (RMSNorm,
//! RoPE, softmax, SwiGLU, cross-entropy) is `crate::reference`'s, called with this engine's layouts;
//! what is here is the layout glue and the engine-only steps (embedding, head moves, AdamW).

use crate::reference::rms_norm::rms_norm_backward;
use crate::reference::rope::{rope, RopeLayout};
use crate::reference::softmax::{softmax, softmax_backward};

/// The attention layout of one micro-batch: `batch` rows of `seq` tokens (token t = b*seq + s),
/// `heads` query heads grouped over `kv_heads` (head h uses kv head h / (heads / kv_heads)),
/// `head_dim` per head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HeadShape {
    /// Tokens of the micro-batch (N = batch * seq).
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// Query heads of all rows (B*H).
    pub fn batch_heads(&self) -> usize {
        self.batch * self.heads
    }

    /// Elements of q (and o, dq): N * H * d.
    pub fn q_len(&self) -> usize {
        self.tokens() * self.heads * self.head_dim
    }

    /// Elements of k (and v, dk, dv): N * Hkv * d.
    pub fn kv_len(&self) -> usize {
        self.tokens() * self.kv_heads * self.head_dim
    }

    /// Index of element i of head h at token t in a token-major [N, h_count * d] matrix.
    fn token_index(&self, t: usize, h: usize, h_count: usize, i: usize) -> usize {
        (t * h_count + h) * self.head_dim + i
    }

    /// Index of element i of head h at token t in a head-major [B, h_count, S, d] tensor.
    fn head_index(&self, t: usize, h: usize, h_count: usize, i: usize) -> usize {
        let (b, s) = (t / self.seq, t % self.seq);
        ((b * h_count + h) * self.seq + s) * self.head_dim + i
    }
}

/// x[t, :] = table[ids[t], :]; table [vocab, width].
pub fn embed(table: &[f64], ids: &[i32], width: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * width..(id as usize + 1) * width]
                .iter()
                .copied()
        })
        .collect()
}

/// `rms_norm_backward`: dx of RMSNorm at the given r per row (w frozen, so no dw), added onto `dx0`
/// when given (the accumulating variant). x, dy, dx0: [rows, w.len()].
pub fn rms_norm_backward_dx(
    x: &[f64],
    w: &[f64],
    rstd: &[f64],
    dy: &[f64],
    dx0: Option<&[f64]>,
) -> Vec<f64> {
    let (dx, _dw) = rms_norm_backward(x, w, rstd, dy);
    match dx0 {
        Some(dx0) => dx.iter().zip(dx0).map(|(a, b)| a + b).collect(),
        None => dx,
    }
}

/// cos, sin tables [seq, d/2] of RoPE: angle(pos, i) = pos * inv_freq[i], computed in f32 as HF
/// does (`models::llama::rope_inverse_frequencies` gives inv_freq).
pub fn rope_tables(inv_freq: &[f32], seq: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(seq * inv_freq.len());
    let mut sin = Vec::with_capacity(seq * inv_freq.len());
    for pos in 0..seq {
        for &f in inv_freq {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// Moves heads between token-major [N, h_count*d] and head-major [B, h_count, S, d], rotating
/// each head by `sign` times its position's angle when `rotate` (sign 0: copy).
fn move_heads(
    src: &[f64],
    shape: HeadShape,
    h_count: usize,
    to_heads: bool,
    tables: Option<(&[f64], &[f64], f64)>,
) -> Vec<f64> {
    let d = shape.head_dim;
    let half = d / 2;
    let mut out = vec![0.0; src.len()];
    for t in 0..shape.tokens() {
        for h in 0..h_count {
            let (from, to) = if to_heads {
                (
                    shape.token_index(t, h, h_count, 0),
                    shape.head_index(t, h, h_count, 0),
                )
            } else {
                (
                    shape.head_index(t, h, h_count, 0),
                    shape.token_index(t, h, h_count, 0),
                )
            };
            let x = &src[from..from + d];
            match tables {
                Some((cos, sin, sign)) => {
                    let pos = t % shape.seq;
                    let at = pos * half..(pos + 1) * half;
                    // HF rotate-half by sign times the angle: one row of the RoPE reference.
                    let signed_sin: Vec<f64> = sin[at.clone()].iter().map(|s| sign * s).collect();
                    let rotated = rope(x, &cos[at], &signed_sin, 1, d, RopeLayout::HalfSplit);
                    out[to..to + d].copy_from_slice(&rotated);
                }
                None => out[to..to + d].copy_from_slice(x),
            }
        }
    }
    out
}

/// (qh, kh, vh): token-major q [N, H*d], k, v [N, Hkv*d] to head-major [B, H, S, d],
/// [B, Hkv, S, d]; q and k rotated at their position (cos, sin [S, d/2]), v copied.
pub fn rope_scatter(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    cos: &[f64],
    sin: &[f64],
    shape: HeadShape,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        move_heads(q, shape, shape.heads, true, Some((cos, sin, 1.0))),
        move_heads(k, shape, shape.kv_heads, true, Some((cos, sin, 1.0))),
        move_heads(v, shape, shape.kv_heads, true, None),
    )
}

/// The transpose of [`rope_scatter`]: head-major gradients back to token-major, rotated by -angle.
pub fn rope_gather_backward(
    dqh: &[f64],
    dkh: &[f64],
    dvh: &[f64],
    cos: &[f64],
    sin: &[f64],
    shape: HeadShape,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        move_heads(dqh, shape, shape.heads, false, Some((cos, sin, -1.0))),
        move_heads(dkh, shape, shape.kv_heads, false, Some((cos, sin, -1.0))),
        move_heads(dvh, shape, shape.kv_heads, false, None),
    )
}

/// oh [B, H, S, d] -> o [N, H*d].
pub fn heads_to_tokens(oh: &[f64], shape: HeadShape) -> Vec<f64> {
    move_heads(oh, shape, shape.heads, false, None)
}

/// o [N, H*d] -> oh [B, H, S, d].
pub fn tokens_to_heads(o: &[f64], shape: HeadShape) -> Vec<f64> {
    move_heads(o, shape, shape.heads, true, None)
}

/// p [rows, s]: softmax over j <= r % s of scale * scores[r, j], 0 beyond.
pub fn causal_softmax(scores: &[f64], s: usize, scale: f64) -> Vec<f64> {
    let mut p = vec![0.0; scores.len()];
    for (r, (row, out)) in scores.chunks(s).zip(p.chunks_mut(s)).enumerate() {
        let len = r % s + 1;
        let scaled: Vec<f64> = row[..len].iter().map(|&v| scale * v).collect();
        out[..len].copy_from_slice(&softmax(&scaled, len));
    }
    p
}

/// ds = scale p (dp - sum_{j <= r % s} p dp), 0 beyond the diagonal: the gradient w.r.t. the
/// scores of <dp, causal_softmax(scores)>.
pub fn causal_softmax_backward(p: &[f64], dp: &[f64], s: usize, scale: f64) -> Vec<f64> {
    let mut ds = vec![0.0; p.len()];
    for (r, ((pr, dr), out)) in p
        .chunks(s)
        .zip(dp.chunks(s))
        .zip(ds.chunks_mut(s))
        .enumerate()
    {
        let len = r % s + 1;
        let dp_visible = softmax_backward(&pr[..len], &dr[..len], len);
        for (o, d) in out[..len].iter_mut().zip(dp_visible) {
            *o = scale * d;
        }
    }
    ds
}

/// y [rows, cols] + bias [cols] broadcast over the rows.
pub fn add_bias(y: &[f64], bias: &[f64]) -> Vec<f64> {
    y.iter()
        .enumerate()
        .map(|(i, v)| v + bias[i % bias.len()])
        .collect()
}

/// Sum of x.
pub fn sum(x: &[f64]) -> f64 {
    x.iter().sum()
}

/// Sum of x^2.
pub fn sum_squares(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}

/// AdamW's constants as the adamw kernel reads them: the fields of `train::optimizer::AdamWConfig`
/// (the layer above fills this from its config; `gpu` does not import `train`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConstants {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConstants {
    /// torch.optim.AdamW's defaults with weight decay 0 (as `AdamWConfig::default`).
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Values in the adamw kernel's `hyper` array.
pub const ADAMW_HYPER: usize = 10;

/// The `hyper` array of the adamw kernel for optimizer step `step` (1-based, as torch counts):
/// [lr, beta1, beta2, eps, weight_decay, 1 - beta1^step, 1 - beta2^step, max_norm (0: none),
/// 1 - beta1, 1 - beta2]. Each is computed in f64 and rounded once, as torch rounds the Python
/// floats it passes to its f32 kernels (1 - beta from the rounded beta is 1.3e-5 off at 0.999).
pub fn adamw_hyper(
    config: &AdamConstants,
    lr: f64,
    step: usize,
    max_norm: Option<f64>,
) -> [f32; ADAMW_HYPER] {
    let t = step as i32;
    [
        lr as f32,
        config.beta1 as f32,
        config.beta2 as f32,
        config.eps as f32,
        config.weight_decay as f32,
        (1.0 - config.beta1.powi(t)) as f32,
        (1.0 - config.beta2.powi(t)) as f32,
        max_norm.unwrap_or(0.0) as f32,
        (1.0 - config.beta1) as f32,
        (1.0 - config.beta2) as f32,
    ]
}

/// Clipped AdamW on f64 state, the adamw kernel's maths: returns false (and changes nothing) when
/// `gnorm_sq` or `loss` is not finite. hyper as [`adamw_hyper`].
pub fn adamw(
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    hyper: &[f64; ADAMW_HYPER],
    gnorm_sq: f64,
    loss: f64,
) -> bool {
    if !gnorm_sq.is_finite() || !loss.is_finite() {
        return false;
    }
    let [lr, beta1, beta2, eps, weight_decay, bc1, bc2, max_norm, c1, c2] = *hyper;
    let clip = if max_norm > 0.0 {
        (max_norm / (gnorm_sq.sqrt() + 1e-6)).min(1.0)
    } else {
        1.0
    };
    for i in 0..param.len() {
        let g = grad[i] * clip;
        param[i] *= 1.0 - lr * weight_decay;
        m[i] = beta1 * m[i] + c1 * g;
        v[i] = beta2 * v[i] + c2 * g * g;
        param[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;
    use crate::reference::rms_norm::rms_norm;

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err / scale <= tol, "{what}: rel err {:.3e}", err / scale);
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Central finite differences of f at x, one coordinate at a time.
    fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let h = 1e-6;
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                xp[i] = x[i] + h;
                let up = f(&xp);
                xp[i] = x[i] - h;
                let down = f(&xp);
                xp[i] = x[i];
                (up - down) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn embed_copies_rows() {
        let table = random_values(7 * 5, 1, 1.0);
        let x = embed(&table, &[3, 0, 6, 3], 5);
        assert_eq!(&x[..5], &table[15..20]);
        assert_eq!(&x[5..10], &table[..5]);
        assert_eq!(&x[10..15], &table[30..35]);
        assert_eq!(&x[15..], &table[15..20]);
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let (rows, n, eps) = (3, 13, 1e-5);
        let x = random_values(rows * n, 4, 2.0);
        let w = random_values(n, 5, 1.5);
        let dy = random_values(rows * n, 6, 1.0);
        let dx0 = random_values(rows * n, 7, 1.0);
        let (_, rstd) = rms_norm(&x, &w, eps);
        let want = numeric_grad(&x, |x| dot(&rms_norm(x, &w, eps).0, &dy));
        close(
            &rms_norm_backward_dx(&x, &w, &rstd, &dy, None),
            &want,
            1e-7,
            "dx",
        );
        let acc = rms_norm_backward_dx(&x, &w, &rstd, &dy, Some(&dx0));
        let want_acc: Vec<f64> = want.iter().zip(&dx0).map(|(a, b)| a + b).collect();
        close(&acc, &want_acc, 1e-7, "dx accumulated");
    }

    fn shape() -> HeadShape {
        HeadShape {
            batch: 2,
            seq: 5,
            heads: 6,
            kv_heads: 2,
            head_dim: 6,
        }
    }

    fn tables(shape: HeadShape) -> (Vec<f64>, Vec<f64>) {
        let inv: Vec<f32> = (0..shape.head_dim / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / shape.head_dim as f32))
            .collect();
        let (c, s) = rope_tables(&inv, shape.seq);
        (
            c.iter().map(|&v| v as f64).collect(),
            s.iter().map(|&v| v as f64).collect(),
        )
    }

    #[test]
    fn rope_scatter_places_and_rotates_heads() {
        let sh = shape();
        let (n, d, half) = (sh.tokens(), sh.head_dim, sh.head_dim / 2);
        let (cos, sin) = tables(sh);
        let q = random_values(n * sh.heads * d, 8, 1.0);
        let k = random_values(n * sh.kv_heads * d, 9, 1.0);
        let v = random_values(n * sh.kv_heads * d, 10, 1.0);
        let (qh, kh, vh) = rope_scatter(&q, &k, &v, &cos, &sin, sh);
        // Token t = 1*5 + 3 (batch 1, position 3), head 4: qh[1, 4, 3, :].
        let (t, h, pos) = (8, 4, 3);
        let src = &q[(t * sh.heads + h) * d..][..d];
        let dst = &qh[((sh.heads + h) * sh.seq + pos) * d..][..d];
        for i in 0..half {
            let a = pos as f64 * (1.0 / 10000f64.powf(2.0 * i as f64 / d as f64));
            let (c, s) = (a.cos(), a.sin());
            assert!((dst[i] - (src[i] * c - src[i + half] * s)).abs() < 1e-6);
            assert!((dst[i + half] - (src[i] * s + src[i + half] * c)).abs() < 1e-6);
        }
        // Position 0 is not rotated; v is copied.
        let (t, h) = (5, 1);
        assert_eq!(
            &kh[(sh.kv_heads + h) * sh.seq * d..][..d],
            &k[(t * sh.kv_heads + h) * d..][..d]
        );
        let (t, h, pos) = (4, 1, 4);
        assert_eq!(
            &vh[(h * sh.seq + pos) * d..][..d],
            &v[(t * sh.kv_heads + h) * d..][..d]
        );
    }

    #[test]
    fn rope_gather_backward_is_the_transpose_of_rope_scatter() {
        let sh = shape();
        let (n, d) = (sh.tokens(), sh.head_dim);
        let (cos, sin) = tables(sh);
        let (lq, lk) = (n * sh.heads * d, n * sh.kv_heads * d);
        let (q, k, v) = (
            random_values(lq, 11, 1.0),
            random_values(lk, 12, 1.0),
            random_values(lk, 13, 1.0),
        );
        let (yq, yk, yv) = (
            random_values(lq, 14, 1.0),
            random_values(lk, 15, 1.0),
            random_values(lk, 16, 1.0),
        );
        let (jq, jk, jv) = rope_scatter(&q, &k, &v, &cos, &sin, sh);
        let (tq, tk, tv) = rope_gather_backward(&yq, &yk, &yv, &cos, &sin, sh);
        let lhs = dot(&jq, &yq) + dot(&jk, &yk) + dot(&jv, &yv);
        let rhs = dot(&q, &tq) + dot(&k, &tk) + dot(&v, &tv);
        assert!(
            (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        // The map is orthogonal for exact sin/cos pairs: gather(scatter(x)) = x to f32 table rounding.
        let (bq, bk, bv) = rope_gather_backward(&jq, &jk, &jv, &cos, &sin, sh);
        close(&bq, &q, 1e-6, "q round trip");
        close(&bk, &k, 1e-6, "k round trip");
        assert_eq!(bv, v);
    }

    #[test]
    fn heads_and_tokens_are_inverse_permutations() {
        let sh = shape();
        let o = random_values(sh.tokens() * sh.heads * sh.head_dim, 17, 1.0);
        let oh = tokens_to_heads(&o, sh);
        assert_eq!(heads_to_tokens(&oh, sh), o);
        // oh[b=1, h=2, s=4, i=5] = o[t=9, 2*d + 5].
        let d = sh.head_dim;
        assert_eq!(
            oh[((sh.heads + 2) * sh.seq + 4) * d + 5],
            o[9 * sh.heads * d + 2 * d + 5]
        );
    }

    #[test]
    fn causal_softmax_normalizes_the_visible_prefix() {
        let s = 7;
        let rows = 3 * s;
        let scores = random_values(rows * s, 18, 4.0);
        let p = causal_softmax(&scores, s, 0.37);
        for r in 0..rows {
            let len = r % s + 1;
            let row = &p[r * s..(r + 1) * s];
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(row[len..].iter().all(|&v| v == 0.0));
            // Ratio of two visible entries is exp(scale * difference).
            if len > 1 {
                let want = (0.37 * (scores[r * s] - scores[r * s + len - 1])).exp();
                assert!((row[0] / row[len - 1] - want).abs() < 1e-10 * want);
            }
        }
    }

    #[test]
    fn causal_softmax_backward_matches_finite_differences() {
        let (s, scale) = (6, 0.6);
        let rows = 2 * s;
        let scores = random_values(rows * s, 19, 2.0);
        let dp = random_values(rows * s, 20, 1.0);
        let p = causal_softmax(&scores, s, scale);
        let want = numeric_grad(&scores, |x| dot(&causal_softmax(x, s, scale), &dp));
        close(
            &causal_softmax_backward(&p, &dp, s, scale),
            &want,
            1e-7,
            "ds",
        );
    }

    #[test]
    fn adamw_matches_the_optimizer() {
        use candle_core::{Device, Tensor, Var};
        use std::collections::HashMap;
        let n = 23;
        // Tests may reach the layer above: the optimizer is the specification of the kernel.
        let config = crate::train::optimizer::AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let constants = AdamConstants {
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        };
        let p0 = random_values(n, 25, 1.0);
        let var = Var::from_tensor(
            &Tensor::from_vec(
                p0.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                n,
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let mut opt =
            crate::train::optimizer::AdamW::new(vec![("p".into(), var.clone())], config).unwrap();
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        for step in 1..=3 {
            let g = random_values(n, 26 + step as u64, 0.5);
            let lr = 1e-2 * step as f64;
            let gt = Tensor::from_vec(
                g.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                n,
                &Device::Cpu,
            )
            .unwrap();
            opt.step(&HashMap::from([("p".to_string(), gt)]), lr)
                .unwrap();
            // The kernel's hyper array, unrounded.
            let t = step as i32;
            let hyper = [
                lr,
                config.beta1,
                config.beta2,
                config.eps,
                config.weight_decay,
                1.0 - config.beta1.powi(t),
                1.0 - config.beta2.powi(t),
                0.0,
                1.0 - config.beta1,
                1.0 - config.beta2,
            ];
            let rounded = adamw_hyper(&constants, lr, step, None);
            for (a, b) in rounded.iter().zip(&hyper) {
                assert!((*a as f64 - b).abs() <= 1e-7 * b.abs());
            }
            assert!(adamw(&mut p, &g, &mut m, &mut v, &hyper, 1.0, 2.0));
        }
        let got: Vec<f64> = var
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as f64)
            .collect();
        close(&got, &p, 1e-6, "params after 3 steps");
        let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        let m_opt: Vec<f64> = state["p.exp_avg"]
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as f64)
            .collect();
        close(&m_opt, &m, 1e-6, "exp_avg");
    }

    #[test]
    fn adamw_clips_and_skips() {
        let n = 5;
        let g = random_values(n, 30, 2.0);
        let hyper = [1e-2, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.001, 1.0, 0.1, 0.001];
        let gnorm_sq = sum_squares(&g);
        // Clipped to norm 1 == unclipped with the gradient scaled by 1 / (norm + 1e-6).
        let c = 1.0 / (gnorm_sq.sqrt() + 1e-6);
        assert!(c < 1.0);
        let (mut p1, mut m1, mut v1) = (vec![0.5; n], vec![0.0; n], vec![0.0; n]);
        adamw(&mut p1, &g, &mut m1, &mut v1, &hyper, gnorm_sq, 1.0);
        let gs: Vec<f64> = g.iter().map(|v| v * c).collect();
        let mut no_clip = hyper;
        no_clip[7] = 0.0;
        let (mut p2, mut m2, mut v2) = (vec![0.5; n], vec![0.0; n], vec![0.0; n]);
        adamw(&mut p2, &gs, &mut m2, &mut v2, &no_clip, 123.0, 1.0);
        close(&p1, &p2, 1e-14, "clipped");
        close(&m1, &m2, 1e-14, "clipped m");
        // A norm below max_norm is not scaled.
        let (mut p3, mut m3, mut v3) = (vec![0.5; n], vec![0.0; n], vec![0.0; n]);
        let mut big = hyper;
        big[7] = 1e3;
        adamw(&mut p3, &g, &mut m3, &mut v3, &big, gnorm_sq, 1.0);
        let (mut p4, mut m4, mut v4) = (vec![0.5; n], vec![0.0; n], vec![0.0; n]);
        adamw(&mut p4, &g, &mut m4, &mut v4, &no_clip, gnorm_sq, 1.0);
        assert_eq!(p3, p4);
        // Non-finite norm or loss: nothing changes.
        for (gn, loss) in [(f64::NAN, 1.0), (f64::INFINITY, 1.0), (1.0, f64::NAN)] {
            let (mut p, mut m, mut v) = (vec![0.5; n], vec![0.1; n], vec![0.2; n]);
            assert!(!adamw(&mut p, &g, &mut m, &mut v, &hyper, gn, loss));
            assert_eq!((p, m, v), (vec![0.5; n], vec![0.1; n], vec![0.2; n]));
        }
    }

    #[test]
    fn sums_are_exact_on_small_integers() {
        let x = [1.0, -2.0, 3.0, 4.5];
        assert_eq!(sum(&x), 6.5);
        assert_eq!(sum_squares(&x), 1.0 + 4.0 + 9.0 + 20.25);
    }
}
