//! The causal-LM loss: position `i` predicts token `i + 1`, so logits[:, :-1] are scored against
//! labels[:, 1:] with cross-entropy in f32; labels equal to `IGNORE_INDEX` (-100: prompt, padding,
//! non-assistant turns) do not count. The mean is over counted positions, as transformers computes it.

use candle_core::{Tensor, D};

use crate::ops::cross_entropy::cross_entropy;
pub use crate::ops::cross_entropy::IGNORE_INDEX;
use crate::{Context, Result};

/// logits: [batch, seq, vocab], labels: [batch, seq] i64 (unshifted: `labels[b, i]` is the token at
/// position i, or -100). Returns the mean over counted positions (f32 scalar tensor).
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (batch, seq, vocab) = logits.dims3().context("causal-LM loss logits")?;
    if seq < 2 {
        return Err(crate::Error::InvalidRequest(
            "causal-LM loss needs sequences of at least 2 tokens".into(),
        ));
    }
    let shifted_logits = logits
        .narrow(1, 0, seq - 1)?
        .reshape((batch * (seq - 1), vocab))
        .context("shifting logits")?;
    let shifted_labels = labels
        .narrow(D::Minus1, 1, seq - 1)?
        .contiguous()?
        .reshape(batch * (seq - 1))
        .context("shifting labels")?;
    cross_entropy(&shifted_logits, &shifted_labels)
}

/// Number of positions that count in `labels` ([batch][seq] rows, unshifted): labels at index >= 1
/// that are not ignored.
pub fn counted_positions(labels: &[Vec<i64>]) -> usize {
    labels
        .iter()
        .map(|row| row.iter().skip(1).filter(|l| **l != IGNORE_INDEX).count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Against the exact log-softmax computed in f64 by hand.
    #[test]
    fn shifted_and_masked() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..2 * 3 * 4)
            .map(|i| ((i * 37 % 11) as f32) * 0.3 - 1.0)
            .collect();
        let logits = Tensor::from_vec(vals.clone(), (2, 3, 4), &dev).unwrap();
        let labels_v = vec![vec![5i64, 2, 1], vec![7, IGNORE_INDEX, 3]];
        let labels = Tensor::new(labels_v.iter().flatten().copied().collect::<Vec<_>>(), &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let loss = causal_lm_loss(&logits, &labels)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let mut total = 0.0;
        let mut n = 0;
        for b in 0..2 {
            for i in 0..2 {
                let label = labels_v[b][i + 1];
                if label == IGNORE_INDEX {
                    continue;
                }
                let row = &vals[(b * 3 + i) * 4..(b * 3 + i) * 4 + 4];
                let lse = row.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
                total += lse - row[label as usize] as f64;
                n += 1;
            }
        }
        assert_eq!(n, counted_positions(&labels_v));
        assert!(
            (loss - total / n as f64).abs() < 1e-5,
            "{loss} vs {}",
            total / n as f64
        );
    }
}
