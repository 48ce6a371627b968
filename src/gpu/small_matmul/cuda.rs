//! The CUDA side of the small matmul: the custom op, its launch (through a launch builder, or raw
//! `cuLaunchKernel` when lean launches are on) and the entry points `super` wraps.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};

use super::{plan, plan_kernel, SmallKernel};
use crate::gpu::kernels::{function, Module};
use crate::gpu::launch::GpuFloat;

type CResult<T> = candle_core::Result<T>;

pub(super) static LEAN_LAUNCH: AtomicBool = AtomicBool::new(true);

/// The op: x and w are the custom op's operands; the bias rides along (read under its own lock).
pub(super) struct SmallMatmul {
    pub(super) bias: Option<Tensor>,
    /// A kernel forced by the caller; `None`: the planned one.
    pub(super) kernel: Option<SmallKernel>,
}

fn shapes(xl: &Layout, wl: &Layout) -> CResult<(usize, usize, usize, Shape)> {
    if !xl.is_contiguous() || !wl.is_contiguous() {
        candle_core::bail!("small matmul: x and w must be contiguous");
    }
    let (n, k) = wl.shape().dims2()?;
    let x_dims = xl.dims();
    if x_dims.last() != Some(&k) {
        candle_core::bail!("small matmul: x {x_dims:?} does not end in k = {k}");
    }
    let m = xl.shape().elem_count() / k.max(1);
    let mut out = x_dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = n;
    }
    Ok((m, n, k, Shape::from(out)))
}

impl SmallMatmul {
    /// Launches into y[y_offset..]; (m, n, k) from `shapes` (computed once by the caller).
    fn launch<T: GpuFloat>(
        &self,
        (x, xl): (&CudaStorage, &Layout),
        (w, wl): (&CudaStorage, &Layout),
        (m, n, k): (usize, usize, usize),
        y: &mut CudaSlice<T>,
        y_offset: usize,
    ) -> CResult<()> {
        if y.len() < y_offset + m * n {
            candle_core::bail!("small matmul: output too short for {m}x{n}");
        }
        let dev = &x.device;
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias_view: Option<CudaView<'_, T>> = match &bias_guard {
            Some((storage, bl)) => match &**storage {
                Storage::Cuda(s) => {
                    if !bl.is_contiguous() || bl.dims() != [n] {
                        candle_core::bail!("small matmul: bias {:?}, expected [{n}]", bl.dims());
                    }
                    Some(T::unwrap(&s.slice)?.slice(bl.start_offset()..))
                }
                _ => candle_core::bail!("small matmul: bias is not on the GPU"),
            },
            None => None,
        };
        let per_vec = 16 / std::mem::size_of::<T>();
        let vectors_ok = k % per_vec == 0
            && xl.start_offset() % per_vec == 0
            && wl.start_offset() % per_vec == 0;
        let launch = match self.kernel {
            Some(kernel) => plan_kernel(kernel, m, n, vectors_ok),
            None => plan(m, n, k, vectors_ok),
        };
        if launch.kernel == SmallKernel::Skinny && m > super::SKINNY_MAX_ROWS {
            candle_core::bail!("small matmul: the skinny kernel takes at most 8 rows, not {m}");
        }
        let f = function(dev, Module::SmallMatmul, launch.kernel.name(), T::SUFFIX)?;
        let xv = T::unwrap(&x.slice)?.slice(xl.start_offset()..);
        let wv = T::unwrap(&w.slice)?.slice(wl.start_offset()..);
        let mut yv = y.slice_mut(y_offset..);
        let (m_i, n_i, k_i, vec_i) = (m as i32, n as i32, k as i32, launch.vectorized as i32);
        let cfg = LaunchConfig {
            grid_dim: launch.grid,
            block_dim: launch.block,
            shared_mem_bytes: 0,
        };
        let stream = dev.cuda_stream();
        if LEAN_LAUNCH.load(Ordering::Relaxed) {
            // Raw pointers: the device_ptr guards record nothing on a single stream, and the
            // launch is ordered on that stream after every earlier use of these buffers.
            let (x_ptr, _gx) = xv.device_ptr(&stream);
            let (w_ptr, _gw) = wv.device_ptr(&stream);
            let (y_ptr, _gy) = yv.device_ptr_mut(&stream);
            let bias_ptr = bias_view
                .as_ref()
                .map(|b| b.device_ptr(&stream))
                .map_or(0, |(p, _)| p);
            let count = if launch.takes_vec_arg() { 8 } else { 7 };
            let pointers = [x_ptr, w_ptr, bias_ptr, y_ptr];
            launch_raw(&f, &cfg, &stream, pointers, [m_i, n_i, k_i, vec_i], count)?;
        } else {
            let null = 0u64;
            let mut b = stream.launch_builder(&f);
            b.arg(&xv).arg(&wv);
            match &bias_view {
                Some(bv) => b.arg(bv),
                None => b.arg(&null),
            };
            b.arg(&mut yv).arg(&m_i).arg(&n_i).arg(&k_i);
            if launch.takes_vec_arg() {
                b.arg(&vec_i);
            }
            // SAFETY: as above; the builder checks nothing about the signature either.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(())
    }

    fn run<T: GpuFloat>(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
    ) -> CResult<(CudaStorage, Shape)> {
        let (m, n, k, shape) = shapes(x.1, w.1)?;
        let dev = x.0.device.clone();
        // SAFETY: the kernel writes every element of y (checked by gpu-check with poisoning).
        let mut y = unsafe { dev.alloc::<T>(m * n) }?;
        self.launch::<T>(x, w, (m, n, k), &mut y, 0)?;
        Ok((
            CudaStorage {
                slice: T::wrap(y),
                device: dev,
            },
            shape,
        ))
    }
}

fn check_dtypes(dtypes: &[DType], bias: Option<&Tensor>) -> CResult<DType> {
    let d = dtypes[0];
    if dtypes.iter().any(|x| *x != d) || bias.is_some_and(|b| b.dtype() != d) {
        candle_core::bail!(
            "small matmul: mixed dtypes {dtypes:?}, bias {:?}",
            bias.map(|b| b.dtype())
        );
    }
    Ok(d)
}

impl candle_core::CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> CResult<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("small matmul op runs on CUDA; gpu::small_matmul::linear routes CPU tensors to the reference")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        match check_dtypes(&[x.dtype(), w.dtype()], self.bias.as_ref())? {
            DType::F32 => self.run::<f32>((x, xl), (w, wl)),
            DType::BF16 => self.run::<half::bf16>((x, xl), (w, wl)),
            DType::F16 => self.run::<half::f16>((x, xl), (w, wl)),
            other => Err(candle_core::Error::UnsupportedDTypeForOp(
                other,
                "small matmul",
            )),
        }
    }
}

impl candle_core::InplaceOp3 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-matmul-into"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> CResult<()> {
        candle_core::bail!("small matmul into runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> CResult<()> {
        let (m, n, k, shape) = shapes(xl, wl)?;
        let dims = (m, n, k);
        if !yl.is_contiguous() || yl.dims() != shape.dims() {
            candle_core::bail!(
                "small matmul into: y {:?} must be contiguous {:?}",
                yl.dims(),
                shape.dims()
            );
        }
        let offset = yl.start_offset();
        match check_dtypes(&[y.dtype(), x.dtype(), w.dtype()], self.bias.as_ref())? {
            DType::F32 => {
                self.launch::<f32>((x, xl), (w, wl), dims, y.as_cuda_slice_mut()?, offset)
            }
            DType::BF16 => {
                self.launch::<half::bf16>((x, xl), (w, wl), dims, y.as_cuda_slice_mut()?, offset)
            }
            DType::F16 => {
                self.launch::<half::f16>((x, xl), (w, wl), dims, y.as_cuda_slice_mut()?, offset)
            }
            other => Err(candle_core::Error::UnsupportedDTypeForOp(
                other,
                "small matmul",
            )),
        }
    }
}

pub(super) fn spin(dev: &CudaDevice, cycles: i64) -> CResult<()> {
    let f = function(dev, Module::SmallMatmul, "gpu_spin", "")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&cycles);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: gpu_spin(long long) takes one 64-bit integer.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Launches `f` through `cuLaunchKernel` with the small-matmul parameters (x, w, bias, y pointers;
/// m, n, k, vectorized), the first `count` of them: no launch builder, for the decode step's
/// per-launch overhead.
fn launch_raw(
    f: &CudaFunction,
    cfg: &LaunchConfig,
    stream: &CudaStream,
    pointers: [u64; 4],
    dims: [i32; 4],
    count: usize,
) -> CResult<()> {
    let [x_ptr, w_ptr, bias_ptr, y_ptr] = pointers;
    let [m_i, n_i, k_i, vec_i] = dims;
    let mut params: [*mut c_void; 8] = [
        &x_ptr as *const _ as *mut c_void,
        &w_ptr as *const _ as *mut c_void,
        &bias_ptr as *const _ as *mut c_void,
        &y_ptr as *const _ as *mut c_void,
        &m_i as *const _ as *mut c_void,
        &n_i as *const _ as *mut c_void,
        &k_i as *const _ as *mut c_void,
        &vec_i as *const _ as *mut c_void,
    ];
    stream.context().bind_to_thread().w()?;
    // SAFETY: the parameters match the kernel's signature (SKINNY_PARAMS / TILED_PARAMS in
    // kernels/small_matmul.cu) and point at live locals; the pointers address buffers of the sizes
    // the shapes describe.
    unsafe {
        sys::cuLaunchKernel(
            f.cu_function(),
            cfg.grid_dim.0,
            cfg.grid_dim.1,
            cfg.grid_dim.2,
            cfg.block_dim.0,
            cfg.block_dim.1,
            cfg.block_dim.2,
            0,
            stream.cu_stream(),
            params[..count].as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .w()?;
    }
    Ok(())
}
