//! Fused operations, one per file: maths in the header comment, CPU reference, Candle custom op with
//! CPU and CUDA forward, backward, and unit tests against the reference.
//!
//! Models and the trainer call these functions on every device; each picks its fastest implementation.

pub mod cross_entropy;
pub mod lora_linear;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
