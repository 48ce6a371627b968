//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight`, optionally after a fused residual add.
//! (Placeholder composition of differentiable Candle ops; the fused kernel replaces it.)

use candle_core::{DType, Tensor, D};

use crate::{Context, Result};

/// x: [..., hidden], weight: [hidden] -> [..., hidden]. Statistics in f32 whatever the input dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32).context("rms_norm input")?;
    let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    let y = y.to_dtype(dtype)?.broadcast_mul(weight)?;
    Ok(y)
}

/// Returns (rms_norm(x + residual), x + residual): the sum is the next residual stream.
/// x, residual: [..., hidden], weight: [hidden].
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let sum = (x + residual).context("residual add")?;
    let normed = rms_norm(&sum, weight, eps)?;
    Ok((normed, sum))
}
