//! Fused LoRA linear: `y = x W^T (+ b) + s * (drop(x) A^T) B^T`.
//!
//! Placeholder composition of Candle ops; the fused kernels (CPU reference, CUDA, backward) replace it
//! under the CUDA-kernels issue.

use candle_core::Tensor;

use crate::models::linear::Linear;
use crate::{Context, Result};

/// x: [..., in] -> [..., out] through the base weight and the active adapter, if any.
pub fn forward(layer: &Linear, x: &Tensor, train: bool) -> Result<Tensor> {
    let y = layer.base_forward(x)?;
    let Some(lora) = &layer.lora else {
        return Ok(y);
    };
    let x_in = if train && lora.dropout > 0.0 {
        candle_nn::ops::dropout(x, lora.dropout).context("lora dropout")?
    } else {
        x.clone()
    };
    let x_in = x_in.to_dtype(lora.a.dtype()).context("lora input dtype")?;
    let low = x_in
        .broadcast_matmul(&lora.a.t().context("lora a^T")?)
        .context("lora down projection")?;
    let up = low
        .broadcast_matmul(&lora.b.t().context("lora b^T")?)
        .context("lora up projection")?;
    let up = (up * lora.scale).context("lora scale")?;
    let up = up.to_dtype(y.dtype()).context("lora output dtype")?;
    (y + up).context("adding lora update")
}
