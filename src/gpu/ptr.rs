//! Raw device addresses for the engines' launchers, which pass `u64` pointers at fixed addresses
//! (so that a step can be captured as a CUDA graph). Shared by the decode and training engines.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

/// The raw device address of a buffer, for the launchers. The buffer must outlive every launch (and
/// every captured graph) that uses the address.
pub fn device_ptr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (ptr, _sync) = slice.device_ptr(stream);
    ptr
}
