//! The CPU specification of the fused causal attention (kernels/flash_attention.cu), in f64, on
//! the engine's head-major layouts: q, o, dO [B*H, S, d]; k, v [B*Hkv, S, d], query head h of a
//! row reading kv head h / (H / Hkv). With c = 1 / sqrt(d), per query i and key j <= i:
//! ```text
//! s_ij = c q_i.k_j    lse_i = log sum_j exp(s_ij)    P_ij = exp(s_ij - lse_i)    o_i = sum_j P_ij v_j
//! D_i = dO_i.o_i      dS_ij = P_ij (dO_i.v_j - D_i)
//! dq_i = c sum_j dS_ij k_j    dk_j = c sum_i dS_ij q_i    dv_j = sum_i P_ij dO_i
//! ```
//! (dk, dv summed over the query heads sharing the kv head; the softmax is `reference::softmax`'s).
//! `super::check` compares the kernels
//! with these on odd shapes; the tests below check the backward against finite differences.

use super::reference::HeadShape;
use crate::reference::softmax::softmax;

/// Scale c of the scores: 1 / sqrt(d).
fn scale(sh: &HeadShape) -> f64 {
    1.0 / (sh.head_dim as f64).sqrt()
}

/// The kv head (of all rows) that query head `bh` (of all rows) reads.
fn kv_of(sh: &HeadShape, bh: usize) -> usize {
    bh / (sh.heads / sh.kv_heads)
}

/// The forward's outputs.
pub struct AttentionForward {
    /// o: [B*H, S, d].
    pub o: Vec<f64>,
    /// Natural-log log-sum-exp of each query row's scaled scores: [B*H, S].
    pub lse: Vec<f64>,
}

/// The backward's outputs: dq [B*H, S, d], dk and dv [B*Hkv, S, d].
pub struct AttentionGradients {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
}

/// Row i of head `h`'s [S, d] matrix in a head-major [heads, S, d] tensor.
fn row<'a>(x: &'a [f64], sh: &HeadShape, h: usize, i: usize) -> &'a [f64] {
    let at = (h * sh.seq + i) * sh.head_dim;
    &x[at..at + sh.head_dim]
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The scaled scores s_ij, j <= i, of query head `bh`'s row i.
fn scores(q: &[f64], k: &[f64], sh: &HeadShape, bh: usize, i: usize) -> Vec<f64> {
    let kv = kv_of(sh, bh);
    (0..=i)
        .map(|j| scale(sh) * dot(row(q, sh, bh, i), row(k, sh, kv, j)))
        .collect()
}

/// The causal attention forward.
pub fn attention_forward(q: &[f64], k: &[f64], v: &[f64], sh: HeadShape) -> AttentionForward {
    let (s, d) = (sh.seq, sh.head_dim);
    let mut o = vec![0.0; sh.q_len()];
    let mut lse = vec![0.0; sh.batch_heads() * s];
    for bh in 0..sh.batch_heads() {
        let kv = kv_of(&sh, bh);
        for i in 0..s {
            let row_scores = scores(q, k, &sh, bh, i);
            let p = softmax(&row_scores, i + 1);
            // log sum_j exp(s_j) = s_j - log p_j for any j; the largest p_j loses the least.
            let (top, p_top) = p
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("a causal row sees at least its own position");
            lse[bh * s + i] = row_scores[top] - p_top.ln();
            let out = &mut o[(bh * s + i) * d..(bh * s + i + 1) * d];
            for (j, pj) in p.iter().enumerate() {
                for (y, x) in out.iter_mut().zip(row(v, &sh, kv, j)) {
                    *y += pj * x;
                }
            }
        }
    }
    AttentionForward { o, lse }
}

/// The causal attention backward from dO, given the forward's o (the kernels read it as saved, in
/// the activation dtype: pass the rounded o to match their D = dO.o).
pub fn attention_backward(
    (q, k, v): (&[f64], &[f64], &[f64]),
    o: &[f64],
    dout: &[f64],
    sh: HeadShape,
) -> AttentionGradients {
    let (s, d, c) = (sh.seq, sh.head_dim, scale(&sh));
    let mut dq = vec![0.0; sh.q_len()];
    let mut dk = vec![0.0; sh.kv_len()];
    let mut dv = vec![0.0; sh.kv_len()];
    for bh in 0..sh.batch_heads() {
        let kv = kv_of(&sh, bh);
        for i in 0..s {
            let p = softmax(&scores(q, k, &sh, bh, i), i + 1);
            let do_i = row(dout, &sh, bh, i);
            let delta = dot(do_i, row(o, &sh, bh, i));
            for (j, &pij) in p.iter().enumerate() {
                let ds = pij * (dot(do_i, row(v, &sh, kv, j)) - delta);
                let (kj, qi) = (kv * s + j, bh * s + i);
                for e in 0..d {
                    dv[kj * d + e] += pij * do_i[e];
                    dk[kj * d + e] += c * ds * q[qi * d + e];
                    dq[qi * d + e] += c * ds * k[kj * d + e];
                }
            }
        }
    }
    AttentionGradients { dq, dk, dv }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;

    /// L = sum(o * w) for fixed w: its gradient is the backward from dO = w.
    fn loss(q: &[f64], k: &[f64], v: &[f64], w: &[f64], sh: HeadShape) -> f64 {
        dot(&attention_forward(q, k, v, sh).o, w)
    }

    #[test]
    fn backward_matches_finite_differences_with_grouped_heads() {
        let sh = HeadShape {
            batch: 2,
            seq: 5,
            heads: 4,
            kv_heads: 2,
            head_dim: 3,
        };
        let q = random_values(sh.q_len(), 1, 1.5);
        let k = random_values(sh.kv_len(), 2, 1.5);
        let v = random_values(sh.kv_len(), 3, 1.0);
        let w = random_values(sh.q_len(), 4, 1.0);
        let fwd = attention_forward(&q, &k, &v, sh);
        let g = attention_backward((&q, &k, &v), &fwd.o, &w, sh);
        let h = 1e-6;
        let numeric = |which: usize, idx: usize| {
            let mut ins = [q.clone(), k.clone(), v.clone()];
            ins[which][idx] += h;
            let up = loss(&ins[0], &ins[1], &ins[2], &w, sh);
            ins[which][idx] -= 2.0 * h;
            let down = loss(&ins[0], &ins[1], &ins[2], &w, sh);
            (up - down) / (2.0 * h)
        };
        for (which, analytic) in [(0, &g.dq), (1, &g.dk), (2, &g.dv)] {
            for (idx, want) in analytic.iter().enumerate() {
                let got = numeric(which, idx);
                assert!(
                    (got - want).abs() < 1e-6 * (1.0 + want.abs()),
                    "input {which} element {idx}: finite difference {got}, backward {want}"
                );
            }
        }
    }

    #[test]
    fn forward_is_causal_softmax_attention() {
        // One head, two positions, d = 1: row 0 sees only key 0; row 1 mixes both by softmax.
        let sh = HeadShape {
            batch: 1,
            seq: 2,
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
        };
        let (q, k, v) = ([1.0, 2.0], [0.5, -1.0], [3.0, 7.0]);
        let f = attention_forward(&q, &k, &v, sh);
        assert!((f.o[0] - 3.0).abs() < 1e-12);
        assert!((f.lse[0] - 0.5).abs() < 1e-12);
        // Scaled scores of row 1 (c = 1): q1 k0 and q1 k1.
        let (s0, s1) = (2.0 * 0.5, -2.0);
        let (e0, e1) = (f64::exp(s0), f64::exp(s1));
        assert!((f.o[1] - (3.0 * e0 + 7.0 * e1) / (e0 + e1)).abs() < 1e-12);
        assert!((f.lse[1] - (e0 + e1).ln()).abs() < 1e-12);
    }
}
