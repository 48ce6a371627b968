//! CUDA plumbing: per-device cuBLASLt handle and plan cache, CUDA graphs, and the matmul dispatch table.
//! `dispatch::linear` works on every device; the CUDA paths exist only with the `cuda` feature.

#[cfg(feature = "cuda")]
pub mod cublaslt;
pub mod decode;
pub mod dispatch;
/// The engines' error mapping (driver calls, launches), with the engine named.
#[cfg(feature = "cuda")]
pub mod engine_error;
/// Matrix products on raw device pointers through cuBLASLt (engines' GEMMs); CPU reference always.
pub mod gemm;
/// GGML block formats and their dequantization, shared by the decode and training engines.
pub mod ggml;
#[cfg(feature = "cuda")]
pub mod graph;
/// wick's own kernels (kernels/*.cu, compiled by build.rs), loaded once per device.
#[cfg(feature = "cuda")]
pub mod kernels;
/// Launchers for those kernels, called by the fused ops' `cuda_fwd`.
#[cfg(feature = "cuda")]
pub mod launch;
/// Overhead cures (event tracking, pool retention) and the per-stage timing of small ops.
#[cfg(feature = "cuda")]
pub mod overhead;
/// Raw device addresses of buffers, for the engines' launchers.
#[cfg(feature = "cuda")]
pub mod ptr;
/// wick's one-launch kernel for small matrix products (the dispatch table's `small` path).
pub mod small_matmul;
pub mod timing;
/// Kernels of the CUDA LoRA training engine (references always; launchers with `cuda`).
pub mod train;
