//! RMSNorm: `y = x r w` with `r = 1 / sqrt(mean(x^2) + eps)` per row (HF LlamaRMSNorm).
//!
//! Backward, per row of n elements, with `g = dy w`:
//! `dx_j = r (g_j - x_j r^2 sum_i(g_i x_i) / n)` and `dw_j = sum_rows(dy_j x_j r)`.

/// x: [rows, n] with n = w.len(); returns (y [rows, n], r [rows]).
pub fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let n = w.len();
    let mut y = Vec::with_capacity(x.len());
    let mut rstd = Vec::with_capacity(x.len() / n);
    for row in x.chunks(n) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(v, w)| v * r * w));
        rstd.push(r);
    }
    (y, rstd)
}

/// The backward at the forward's r ([`rms_norm`]'s second result): x, dy: [rows, n], w: [n];
/// returns (dx [rows, n], dw [n]).
pub fn rms_norm_backward(x: &[f64], w: &[f64], rstd: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = w.len();
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![0.0; n];
    for ((row, dy), &r) in x.chunks(n).zip(dy.chunks(n)).zip(rstd) {
        let dot: f64 = (0..n).map(|i| dy[i] * w[i] * row[i]).sum();
        for i in 0..n {
            dx.push(r * (dy[i] * w[i] - row[i] * r * r * dot / n as f64));
            dw[i] += dy[i] * row[i] * r;
        }
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testing::{close, dot, numeric_grad, random_values};

    #[test]
    fn rms_norm_rows_have_unit_rms() {
        let (rows, n) = (3, 11);
        let x = random_values(rows * n, 2, 3.0);
        let w = random_values(n, 3, 1.0);
        let (y, rstd) = rms_norm(&x, &w, 0.0);
        for r in 0..rows {
            let ms: f64 = (0..n).map(|i| (y[r * n + i] / w[i]).powi(2)).sum::<f64>() / n as f64;
            assert!((ms - 1.0).abs() < 1e-12);
            let rms = (x[r * n..(r + 1) * n].iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
            assert!((rstd[r] * rms - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, n, eps) = (3, 13, 1e-5);
        let x = random_values(rows * n, 4, 2.0);
        let w = random_values(n, 5, 1.5);
        let dy = random_values(rows * n, 6, 1.0);
        let (_, rstd) = rms_norm(&x, &w, eps);
        let (dx, dw) = rms_norm_backward(&x, &w, &rstd, &dy);
        close(
            &dx,
            &numeric_grad(&x, |x| dot(&rms_norm(x, &w, eps).0, &dy)),
            1e-7,
            "dx",
        );
        close(
            &dw,
            &numeric_grad(&w, |w| dot(&rms_norm(&x, w, eps).0, &dy)),
            1e-7,
            "dw",
        );
    }
}
