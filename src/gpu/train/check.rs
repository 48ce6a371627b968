//! The training kernels against their CPU references on the GPU.
