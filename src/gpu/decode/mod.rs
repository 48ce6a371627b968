//! Kernels of the CUDA decode engine (`generate::cuda_decode`): quantized matrix-vector products on
//! raw GGML blocks with RMSNorm / residual / SwiGLU fused, the embedding lookup, attention with RoPE
//! and the KV-cache write fused, and the greedy argmax. They work on raw device pointers at fixed
//! addresses so that one decode step can be captured as a CUDA graph.
//!
//! `reference` (block formats, mat-vecs, norms) and `attention_reference` (RoPE, the KV cache,
//! attention) are the CPU specification of every kernel (always compiled, unit-tested), calling
//! `crate::reference` for each op's maths; `launch`
//! launches the CUDA kernels (kernels/quant_matvec.cu, kernels/decode_step.cu); `check` runs each
//! kernel against its reference on the GPU (part of `wick bench gpu-check`).

pub mod attention_reference;
pub mod blocks_reference;
#[cfg(feature = "cuda")]
pub mod check;
#[cfg(feature = "cuda")]
pub mod check_lora;
#[cfg(feature = "cuda")]
pub mod check_prefill;
#[cfg(feature = "cuda")]
pub mod launch;
pub mod lora_reference;
#[cfg(feature = "cuda")]
pub mod prefill;
pub mod reference;

use candle_core::quantized::GgmlDType;

/// The GGML block formats the decode kernels read (layouts: kernels/ggml_blocks.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// f16 d, 16 bytes of 4-bit q: w = d (q - 8).
    Q4_0,
    /// f16 d, f16 m, 16 bytes of 4-bit q: w = d q + m.
    Q4_1,
    /// f16 d, 32 signed bytes q: w = d q.
    Q8_0,
    /// f16 d, 4 bytes of high bits, 16 bytes of low nibbles: w = d (q - 16).
    Q5_0,
    /// f16 d, f16 m, high bits, low nibbles: w = d q + m.
    Q5_1,
    /// Super-blocks of 256: f16 d, f16 dmin, 6-bit scales and mins per 32, 4-bit q.
    Q4K,
    /// As Q4K with a fifth bit per weight.
    Q5K,
    /// Super-blocks of 256: 6-bit q, an 8-bit scale per 16, f16 d.
    Q6K,
}

/// Weights per block of the 32-weight formats, and the unit the kernels split every row into
/// (a K-quant super-block is 8 such blocks).
pub const BLOCK: usize = 32;

/// Every format, in the order of the launchers' function tables.
pub const QUANT_TYPES: [QuantType; 8] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q8_0,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

impl QuantType {
    /// The format of a GGML dtype, `None` when the decode kernels do not read it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        QUANT_TYPES.into_iter().find(|q| q.ggml() == dtype)
    }

    /// The GGML dtype of this format.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// Position in [`QUANT_TYPES`] (the kernels' format code).
    pub fn code(self) -> usize {
        QUANT_TYPES
            .iter()
            .position(|&q| q == self)
            .expect("every format is listed")
    }

    /// Weights per block: 32, or 256 for the K-quants (a row's length must be a multiple).
    pub fn block_weights(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// Bytes per block of [`QuantType::block_weights`] weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Bytes of one row of `k` weights (`k` a multiple of [`QuantType::block_weights`]).
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_weights() * self.block_bytes()
    }

    /// Kernel-name suffix (`qmv_q4_1`, `qmv_q6_K`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q4K => "q4_K",
            Self::Q5K => "q5_K",
            Self::Q6K => "q6_K",
        }
    }
}
