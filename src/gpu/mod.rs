//! CUDA plumbing: stream/handle pool, cuBLASLt cache, CUDA graphs, dispatch table. Empty without `cuda`.
