//! SwiGLU: `silu(gate) * up`, silu(g) = g * sigmoid(g). (Placeholder composition of Candle ops.)

use candle_core::Tensor;

use crate::{Context, Result};

/// gate, up: [..., intermediate] -> [..., intermediate].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    (gate.silu().context("silu")? * up).context("swiglu product")
}
