//! Softmax over rows, `y_i = exp(x_i - max) / sum_j exp(x_j - max)`, with backward
//! `dx_i = y_i (dy_i - sum_j dy_j y_j)`. Attention's causal and scaled variants are the caller's
//! glue: scale the scores, pass the visible prefix of each row.

/// x: [rows, n] -> y [rows, n].
pub fn softmax(x: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        out.extend(row.iter().map(|v| (v - max).exp() / sum));
    }
    out
}

/// y: the forward's output, dy: the upstream gradient, both [rows, n] -> dx [rows, n].
pub fn softmax_backward(y: &[f64], dy: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(y.len());
    for (y, dy) in y.chunks(n).zip(dy.chunks(n)) {
        let dot: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
        out.extend(y.iter().zip(dy).map(|(y, dy)| y * (dy - dot)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testing::{close, dot, numeric_grad, random_values};

    #[test]
    fn rows_sum_to_one_and_backward_matches_finite_differences() {
        let (rows, n) = (3, 7);
        let x = random_values(rows * n, 40, 4.0);
        let dy = random_values(rows * n, 41, 1.0);
        let y = softmax(&x, n);
        for row in y.chunks(n) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        }
        let want = numeric_grad(&x, |x| dot(&softmax(x, n), &dy));
        close(&softmax_backward(&y, &dy, n), &want, 1e-7, "dx");
    }
}
