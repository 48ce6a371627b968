//! Fused operations, one per file: maths in the header comment, CPU reference, Candle custom op with
//! CPU and CUDA forward, backward, and unit tests against the reference.

pub mod lora_linear;
