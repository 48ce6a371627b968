//! Kernels of the CUDA decode engine (`generate::cuda_decode`): quantized matrix-vector products on
//! raw GGML blocks with RMSNorm / residual / SwiGLU fused, the embedding lookup, attention with RoPE
//! and the KV-cache write fused, and the greedy argmax. They work on raw device pointers at fixed
//! addresses so that one decode step can be captured as a CUDA graph.
//!
//! `reference` is the CPU specification of every kernel (always compiled, unit-tested); `launch`
//! launches the CUDA kernels (kernels/quant_matvec.cu, kernels/decode_step.cu); `check` runs each
//! kernel against its reference on the GPU (part of `wick bench gpu-check`).

#[cfg(feature = "cuda")]
pub mod check;
#[cfg(feature = "cuda")]
pub mod check_prefill;
#[cfg(feature = "cuda")]
pub mod launch;
#[cfg(feature = "cuda")]
pub mod prefill;
pub mod reference;

use candle_core::quantized::GgmlDType;

/// The GGML block formats the decode kernels read (32 weights per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// f16 d, 16 bytes of 4-bit q: w = d (q - 8).
    Q4_0,
    /// f16 d, f16 m, 16 bytes of 4-bit q: w = d q + m.
    Q4_1,
    /// f16 d, 32 signed bytes q: w = d q.
    Q8_0,
}

/// Weights per block in every supported format.
pub const BLOCK: usize = 32;

impl QuantType {
    /// The format of a GGML dtype, `None` when the decode kernels do not read it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The GGML dtype of this format.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of one row of `k` weights (`k` a multiple of 32).
    pub fn row_bytes(self, k: usize) -> usize {
        k / BLOCK * self.block_bytes()
    }

    /// Kernel-name suffix (`qmv_q4_1`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
        }
    }
}
