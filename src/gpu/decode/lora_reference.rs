//! CPU references of the decode engine's LoRA path (kernels/quant_matvec.cu: `lora_shrink` and the
//! mat-vec epilogue, Punica's BGMV shrink and expand), in f64 from the same inputs. A sequence with
//! adapter slot s gets, on output row r of a projection group,
//! `y[r] += sum_j (xn . A_s[seg(r) R + j]) B_s[r, j]`, B pre-scaled by the adapter's scale; the
//! swiglu kernels add the gate's and the up's deltas before `silu(g) * u`.

use super::reference::{dot_row, normalized, Activations};
use super::QuantType;
use crate::reference::swiglu::swiglu;

/// One adapter slot of a projection group: A stacked per segment and B pre-scaled.
#[derive(Debug, Clone, Copy)]
pub struct LoraGroup<'a> {
    /// [segments * rank, k]: the A of each projection of the group, one after the other.
    pub a: &'a [f32],
    /// [out rows, rank] (swiglu: the gate's rows, then the up's).
    pub b: &'a [f32],
    pub rank: usize,
    /// Output rows `[0, e0)` use segment 0, `[e0, e1)` segment 1, the rest segment 2.
    pub e0: usize,
    pub e1: usize,
}

impl LoraGroup<'_> {
    fn segment(&self, row: usize) -> usize {
        (row >= self.e0) as usize + (row >= self.e1) as usize
    }
}

/// `lora_shrink`: xa[j] = xn . A[j] for the `rows` rows of A ([rows, k]).
pub fn lora_shrink(xn: &[f64], a: &[f32], rows: usize) -> Vec<f64> {
    let k = xn.len();
    (0..rows)
        .map(|j| {
            a[j * k..(j + 1) * k]
                .iter()
                .zip(xn)
                .map(|(&w, x)| w as f64 * x)
                .sum()
        })
        .collect()
}

/// The delta of B row `brow` from xa segment `seg`.
fn delta(l: &LoraGroup, xa: &[f64], brow: usize, seg: usize) -> f64 {
    (0..l.rank)
        .map(|j| xa[seg * l.rank + j] * l.b[brow * l.rank + j] as f64)
        .sum()
}

/// `qmv_<q>` with its epilogue: y[r] = (accumulate ? y[r] : 0) + W[r] . xn + bias[r] + LoRA delta
/// (the base product on the activations `act` makes of xn, the shrink on xn itself).
#[allow(clippy::too_many_arguments)]
pub fn qmv_epilogue(
    q: QuantType,
    weights: &[u8],
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    y: &[f32],
    accumulate: bool,
    bias: Option<&[f32]>,
    lora: Option<&LoraGroup>,
    act: Activations,
) -> Vec<f64> {
    let xn = normalized(x, norm);
    let xa = lora.map(|l| lora_shrink(&xn, l.a, l.a.len() / xn.len()));
    let xw = act.of(x, norm);
    y.iter()
        .enumerate()
        .map(|(r, &old)| {
            let mut v = if accumulate { old as f64 } else { 0.0 } + dot_row(q, weights, r, &xw);
            v += bias.map_or(0.0, |b| b[r] as f64);
            if let (Some(l), Some(xa)) = (lora, &xa) {
                v += delta(l, xa, r, l.segment(r));
            }
            v
        })
        .collect()
}

/// `qmv_swiglu_<q>` with the LoRA deltas: y[r] = silu(Wg[r] . xn + dg) * (Wu[r] . xn + du), the
/// gate's delta from B rows 0..rows and segment 0, the up's from rows rows..2 rows and segment 1.
#[allow(clippy::too_many_arguments)]
pub fn qmv_swiglu_lora(
    q: QuantType,
    gate: &[u8],
    up: &[u8],
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    rows: usize,
    lora: Option<&LoraGroup>,
    act: Activations,
) -> Vec<f64> {
    let xn = normalized(x, norm);
    let xa = lora.map(|l| lora_shrink(&xn, l.a, l.a.len() / xn.len()));
    let xw = act.of(x, norm);
    let (g, u): (Vec<f64>, Vec<f64>) = (0..rows)
        .map(|r| {
            let (mut g, mut u) = (dot_row(q, gate, r, &xw), dot_row(q, up, r, &xw));
            if let (Some(l), Some(xa)) = (lora, &xa) {
                g += delta(l, xa, r, 0);
                u += delta(l, xa, rows + r, 1);
            }
            (g, u)
        })
        .unzip();
    swiglu(&g, &u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;

    fn f32s(n: usize, seed: u64) -> Vec<f32> {
        random_values(n, seed, 1.0)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// The epilogue's delta is (x A^T) B^T per segment: checked against the dense product of the
    /// merged weight W + B A on a Q8_0 matrix whose blocks are all zero (d = 0), so W = 0.
    #[test]
    fn lora_delta_is_the_merged_low_rank_product() {
        let (rows, k, rank) = (7, 64, 3);
        let (e0, e1) = (3, 5);
        let zero_blocks = vec![0u8; rows * QuantType::Q8_0.row_bytes(k)];
        let a = f32s(3 * rank * k, 1);
        let b = f32s(rows * rank, 2);
        let x = f32s(k, 3);
        let bias = f32s(rows, 4);
        let l = LoraGroup {
            a: &a,
            b: &b,
            rank,
            e0,
            e1,
        };
        let y0 = vec![0f32; rows];
        let got = qmv_epilogue(
            QuantType::Q8_0,
            &zero_blocks,
            &x,
            None,
            &y0,
            false,
            Some(&bias),
            Some(&l),
            Activations::F32,
        );
        for (r, g) in got.iter().enumerate() {
            let seg = if r < e0 {
                0
            } else if r < e1 {
                1
            } else {
                2
            };
            // Merged row: sum_j B[r, j] A[seg R + j, :].
            let want: f64 = (0..k)
                .map(|c| {
                    let w: f64 = (0..rank)
                        .map(|j| b[r * rank + j] as f64 * a[(seg * rank + j) * k + c] as f64)
                        .sum();
                    w * x[c] as f64
                })
                .sum::<f64>()
                + bias[r] as f64;
            assert!((g - want).abs() < 1e-9, "row {r}: {g} vs {want}");
        }
    }
}
