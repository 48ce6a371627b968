//! Causal-LM cross-entropy with an ignore index: mean over counted positions of
//! `logsumexp(logits_i) - logits_i[label_i]`, computed in f32. (Placeholder composition.)

use candle_core::{DType, Tensor, D};

use crate::{Context, Result};

/// Label value whose positions do not count (PyTorch's and PEFT's -100).
pub const IGNORE_INDEX: i64 = -100;

/// logits: [n, vocab] (any float dtype), labels: [n] i64 with `IGNORE_INDEX` for skipped positions.
/// Returns the mean loss over counted positions as an f32 scalar (0 if none count).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32).context("cross-entropy logits")?;
    let mask = labels.ge(0i64)?.to_dtype(DType::F32)?;
    let safe_labels = labels.clamp(0i64, i64::MAX)?.to_dtype(DType::U32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs
        .gather(&safe_labels.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let loss = ((picked * &mask)?.sum_all()?.neg()? / count as f64)?;
    Ok(loss)
}
