//! Fused operations, one per file: maths in the header comment, CPU reference, Candle custom op with
//! CPU and CUDA forward, backward, and unit tests against the reference.
//!
//! Models and the trainer call these functions on every device; each picks its fastest implementation.

pub mod check_suite;
pub mod checkpoint;
pub(crate) mod common;
pub mod cross_entropy;
pub mod decode_attention;
pub mod frozen;
pub mod lora_delta_cpu;
pub mod lora_linear;
pub mod quant_linear;
pub mod quant_matmul_cpu;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
