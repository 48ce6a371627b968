//! Rotary position embedding. Half-split (GPT-NeoX / HF `rotate_half`) and interleaved (GPT-J,
//! llama.cpp "normal") layouts. (Placeholder composition of differentiable Candle ops.)

use candle_core::{Tensor, D};

use crate::{Context, Result};

/// How the rotated pairs are laid out inside a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pair (i, i + d/2): HF LLaMA/Qwen2 and llama.cpp NEOX.
    HalfSplit,
    /// Pair (2i, 2i + 1): GPT-J and llama.cpp's LLaMA kernels.
    Interleaved,
}

/// x: [batch, heads, seq, head_dim]; cos, sin: [seq, head_dim / 2] already offset to the positions of x.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let (_b, _h, seq, dim) = x.dims4().context("rope input")?;
    let half = dim / 2;
    match layout {
        RopeLayout::HalfSplit => {
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?.reshape((1, 1, seq, dim))?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?.reshape((1, 1, seq, dim))?;
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            let cos = cos.to_dtype(x.dtype())?;
            let sin = sin.to_dtype(x.dtype())?;
            Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
        }
        RopeLayout::Interleaved => {
            let (b, h, _, _) = x.dims4()?;
            let pairs = x.reshape((b, h, seq, half, 2))?;
            let even = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
            let odd = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
            let cos = cos.reshape((1, 1, seq, half))?.to_dtype(x.dtype())?;
            let sin = sin.reshape((1, 1, seq, half))?.to_dtype(x.dtype())?;
            let new_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
            let new_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
            Ok(Tensor::stack(&[new_even, new_odd], D::Minus1)?.reshape((b, h, seq, dim))?)
        }
    }
}
