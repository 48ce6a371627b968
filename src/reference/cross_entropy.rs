//! Cross-entropy of logits rows against labels: row i with a label l >= 0 loses
//! `(logsumexp(x_i) - x_i[l]) k` and gets the gradient `(softmax(x_i) - onehot(l)) k`, where k is
//! the weight of one counted row (1 / count for a mean over the counted rows); a negative label
//! (the ignore index) loses nothing and gets a zero gradient row.

/// max(1, number of labels >= 0): the count of a mean over the counted rows.
pub fn label_count(labels: &[i64]) -> f64 {
    (labels.iter().filter(|&&l| l >= 0).count() as f64).max(1.0)
}

/// logits: [rows, vocab], labels: [rows]; returns (row losses [rows], dlogits [rows, vocab]), each
/// weighted by k. A label >= vocab gives a NaN loss and a zero gradient row (a kernel must not read
/// out of bounds; the NaN makes a check fail).
pub fn cross_entropy(logits: &[f64], labels: &[i64], vocab: usize, k: f64) -> (Vec<f64>, Vec<f64>) {
    let mut grad = vec![0.0; logits.len()];
    let mut loss = Vec::with_capacity(labels.len());
    for ((row, &label), out) in logits.chunks(vocab).zip(labels).zip(grad.chunks_mut(vocab)) {
        if label < 0 || label as usize >= vocab {
            loss.push(if label < 0 { 0.0 } else { f64::NAN });
            continue;
        }
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        for (o, v) in out.iter_mut().zip(row) {
            *o = (v - max).exp() / sum * k;
        }
        out[label as usize] -= k;
        loss.push((max + sum.ln() - row[label as usize]) * k);
    }
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testing::{close, numeric_grad, random_values};

    #[test]
    fn cross_entropy_loss_and_gradient() {
        let (rows, vocab) = (4, 9);
        let logits = random_values(rows * vocab, 24, 3.0);
        let labels = [2, -1, 8, 0];
        let count = label_count(&labels);
        assert_eq!(count, 3.0);
        assert_eq!(label_count(&[-1, -1]), 1.0);
        let scale = 0.7;
        let (loss, grad) = cross_entropy(&logits, &labels, vocab, scale / count);
        // Loss by hand: -log softmax(x)[label] * scale / count.
        for (r, &l) in labels.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let want = if l < 0 {
                0.0
            } else {
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                -(row[l as usize].exp() / z).ln() * scale / count
            };
            assert!((loss[r] - want).abs() < 1e-12);
        }
        let total = |x: &[f64]| {
            cross_entropy(x, &labels, vocab, scale / count)
                .0
                .iter()
                .sum()
        };
        close(&grad, &numeric_grad(&logits, total), 1e-7, "grad");
        let (l2, g2) = cross_entropy(&logits[..vocab], &[9], vocab, 1.0);
        assert!(l2[0].is_nan() && g2.iter().all(|&v| v == 0.0));
    }
}
