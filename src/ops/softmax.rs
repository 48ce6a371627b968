//! Softmax over the last dimension, `y_i = exp(x_i - max) / sum_j exp(x_j - max)`.
//! (Placeholder: Candle's op; the fused kernel with backward replaces it.)

use candle_core::Tensor;

use crate::{Context, Result};

/// x: [..., n] -> [..., n].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax_last_dim(x).context("softmax")
}
