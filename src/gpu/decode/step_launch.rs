//! One launch of a decode-step kernel, with programmatic dependent launch (PDL) where the device
//! has it (Hopper and later): the launch carries `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`,
//! so the kernel may be scheduled while the kernel before it in the stream is finishing. The
//! kernels (kernels/quant_matvec.cu, kernels/decode_step.cu) call `pdl_wait` before they read or
//! write anything an earlier kernel touches (common.cuh): what overlaps is a kernel's launch latency
//! and its weight and cache prefetches, never its reads of the previous outputs. A step is ~150
//! dependent launches of a few microseconds each (SmolLM2-135M), so the gap between two kernels
//! is a large share of it: H200, one call, same binary (bench/results/device-s12, call 3): decode
//! +4.6% (135M proxy, 512-token prompt), +1.6% at batch 8, unchanged at SmolLM2-1.7B shapes.
//! Stream capture keeps the attribute as a programmatic edge of the CUDA graph.
//!
//! `WICK_DECODE_PDL=0` launches plainly (the kernels' waits are then no-ops), for comparisons.

use std::ffi::c_void;

use candle_core::cuda_backend::cudarc::driver::sys::{
    self, CUaccessProperty, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchConfig,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, DeviceRepr, DriverError, LaunchConfig,
};

use super::lora_epilogue::L2Window;

/// Whether the decode kernels are launched with PDL: the device's compute capability is 9.0 or
/// more, unless `WICK_DECODE_PDL=0`.
pub fn programmatic_launch_default(compute_major: i32) -> bool {
    compute_major >= 9 && std::env::var("WICK_DECODE_PDL").as_deref() != Ok("0")
}

/// The arguments of one kernel launch, each a reference to a value that outlives the launch.
pub struct StepLaunch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    args: Vec<*mut c_void>,
    programmatic: bool,
    window: Option<L2Window>,
}

impl<'a> StepLaunch<'a> {
    /// A launch of `func` on `stream`, with PDL when `programmatic`.
    pub fn new(stream: &'a CudaStream, func: &'a CudaFunction, programmatic: bool) -> Self {
        Self {
            stream,
            func,
            args: Vec::with_capacity(16),
            programmatic,
            window: None,
        }
    }

    /// Marks the lines of `window` persisting in the L2 for this launch (an access-policy window
    /// attribute, kept by stream capture as the graph node's); `None`: no window.
    pub fn l2_window(&mut self, window: Option<L2Window>) -> &mut Self {
        self.window = window;
        self
    }

    /// The next kernel argument (by reference, as `cuLaunchKernel` takes it).
    pub fn arg<T: DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.args.push(value as *const T as *mut c_void);
        self
    }

    /// Launches it (`cuLaunchKernelEx`).
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and type, and every
    /// device address among them must stay valid until the stream has run the kernel.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        // SAFETY: zero is a valid bit pattern of this plain C struct (id, padding, value union).
        let mut attrs: [CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        if self.programmatic {
            attrs[n].id =
                CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if let Some(w) = self.window {
            attrs[n].id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW;
            attrs[n].value.accessPolicyWindow = sys::CUaccessPolicyWindow {
                base_ptr: w.base as *mut c_void,
                num_bytes: w.bytes,
                hitRatio: 1.0,
                hitProp: CUaccessProperty::CU_ACCESS_PROPERTY_PERSISTING,
                missProp: CUaccessProperty::CU_ACCESS_PROPERTY_NORMAL,
            };
            n += 1;
        }
        let config = CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        // SAFETY: the caller's contract; `config` and `attrs` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                self.args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }
}
