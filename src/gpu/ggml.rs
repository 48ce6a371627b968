//! GGML block formats on the GPU, shared by the decode engine (`gpu::decode`: mat-vecs on the blocks,
//! the prefill's dense weights) and the training engine's quantized base (`train::cuda_engine`):
//! the format codes every kernel switches on, and the launcher of kernels/dequant.cu (blocks to
//! dense rows in f32 or bf16).

use candle_core::quantized::GgmlDType;

/// The weight formats the kernels read (layouts: kernels/ggml_blocks.cuh): GGML's block formats and
/// dense f32/f16/bf16 rows, which the kernels read as blocks of 32 plain values.
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
    /// Dense f32 weights (read as 32-weight blocks of plain values, no scale).
    F32,
    /// Dense f16 weights.
    F16,
    /// Dense bf16 weights (HF checkpoints).
    BF16,
}

/// Weights per block of the 32-weight formats, and the unit the kernels split every row into
/// (a K-quant super-block is 8 such blocks).
pub const BLOCK: usize = 32;

/// Every format, in the order of the launchers' function tables.
pub const QUANT_TYPES: [QuantType; 11] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q8_0,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
    QuantType::F32,
    QuantType::F16,
    QuantType::BF16,
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
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::BF16 => GgmlDType::BF16,
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
            Self::F32 => 128,
            Self::F16 | Self::BF16 => 64,
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
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// Whether the weights are plain values (no quantization).
    pub fn is_dense(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }
}

/// The matrices of one `dequant_layer` launch: (blocks address, format, number of 32-weight blocks).
pub type DequantSegment = (u64, QuantType, usize);

/// Most matrices one `dequant_layer` launch takes.
pub const DEQUANT_SEGMENTS: usize = 5;

#[cfg(feature = "cuda")]
pub use dequant::DequantKernels;

#[cfg(feature = "cuda")]
mod dequant {
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, DType};

    use super::{DequantSegment, DEQUANT_SEGMENTS};
    use crate::gpu::kernels::{function, Module};
    use crate::gpu::launch::grid_1d;

    type Result<T> = candle_core::Result<T>;

    /// kernels/dequant.cu on one device, launching on Candle's stream.
    pub struct DequantKernels {
        stream: Arc<CudaStream>,
        f32: CudaFunction,
        bf16: CudaFunction,
    }

    impl DequantKernels {
        /// Loads kernels/dequant.cu on `dev`.
        pub fn load(dev: &CudaDevice) -> Result<Self> {
            let f = |name: &'static str| function(dev, Module::Dequant, name, "");
            Ok(Self {
                stream: dev.cuda_stream(),
                f32: f("dequant_layer")?,
                bf16: f("dequant_layer_bf16")?,
            })
        }

        /// Dequantizes up to [`DEQUANT_SEGMENTS`] matrices into `dst` (`dtype`: f32, or bf16 for
        /// the training engine's quantized base), one after the other, each as its row-major
        /// [rows, k] (`blocks` = rows * k / 32).
        pub fn dequant_layer(
            &self,
            dst: u64,
            dtype: DType,
            segments: &[DequantSegment],
        ) -> Result<()> {
            let function = match dtype {
                DType::F32 => &self.f32,
                DType::BF16 => &self.bf16,
                other => {
                    return Err(candle_core::Error::Msg(format!(
                        "dequant_layer: {other:?} output (f32 or bf16)"
                    )))
                }
            };
            if segments.len() > DEQUANT_SEGMENTS {
                return Err(candle_core::Error::Msg(format!(
                    "dequant_layer: {} matrices, at most {DEQUANT_SEGMENTS}",
                    segments.len()
                )));
            }
            let mut src = [0u64; DEQUANT_SEGMENTS];
            let mut quant = [0i32; DEQUANT_SEGMENTS];
            let mut blocks = [0i64; DEQUANT_SEGMENTS];
            for (i, &(p, q, n)) in segments.iter().enumerate() {
                src[i] = p;
                quant[i] = q.code() as i32;
                blocks[i] = n as i64;
            }
            let total: i64 = blocks.iter().sum();
            if total == 0 {
                return Ok(());
            }
            let mut b = self.stream.launch_builder(function);
            b.arg(&dst);
            for s in &src {
                b.arg(s);
            }
            for q in &quant {
                b.arg(q);
            }
            for n in &blocks {
                b.arg(n);
            }
            let cfg = grid_1d(total as usize * 8, 256);
            unsafe { b.launch(cfg) }.w()?;
            Ok(())
        }
    }
}
