//! wick's small-matrix product: y = x W^T (+ bias) in one kernel launch (kernels/small_matmul.cu),
//! for the shapes where launching cuBLAS costs more than the work (64x64x64, a few decode rows).
//!
//! x: [.., k], W: [n, k] (a Linear weight), bias: [n], y: [.., n]; m = the product of x's leading
//! dimensions. f32, bf16 and f16 with f32 accumulation; no workspace and no split-k, so one call is
//! one kernel and `linear_into` can be captured in a CUDA graph. The CPU reference is the plain
//! product (Candle's matmul), which `linear` computes for CPU tensors.
//!
//! Kernel choice ([`plan`]): m <= 8 takes the skinny kernel (a warp per output column, W read once);
//! larger m the tiled kernel, with 32x32 output tiles when they alone fill the GPU (132 SMs on the
//! H100) and 16x16 tiles otherwise, so a 64x64 product runs on 16 blocks instead of 4. Which shapes
//! go here at all is the dispatch table's decision (`wick bench dispatch` measures this path beside
//! cuBLAS), within [`supports`].

use candle_core::Tensor;

use crate::{Context, Result};

/// Most rows of x the skinny kernel holds in registers (SMALL_MAX_ROWS in kernels/small_matmul.cu).
pub const SKINNY_MAX_ROWS: usize = 8;
/// Largest m n k the tiled kernel is offered for (16 M multiply-adds, ~30 us of f32 work at this
/// kernel's speed): beyond it cuBLAS's tensor-core kernels win by far and the benchmark need not
/// spend time on this path.
pub const TILED_MAX_MACS: usize = 1 << 24;
/// Blocks that fill an H100 (one per SM): the tiled kernel takes 32x32 tiles once they reach this.
const FULL_GPU_BLOCKS: usize = 132;
/// Warps (output columns) per block of the skinny kernel.
const SKINNY_WARPS: usize = 8;
/// CUDA's limit on grid.y (the tiled kernel's row tiles).
const MAX_GRID_Y: usize = 65_535;

/// Whether the small kernel takes a product of x: [m, k] and W: [n, k].
pub fn supports(m: usize, n: usize, k: usize) -> bool {
    let fits_i32 = [
        m,
        n,
        k,
        m.saturating_mul(k),
        n.saturating_mul(k),
        m.saturating_mul(n),
    ]
    .iter()
    .all(|&v| v <= i32::MAX as usize);
    let sized = m <= SKINNY_MAX_ROWS
        || (m.saturating_mul(n).saturating_mul(k) <= TILED_MAX_MACS
            && m.div_ceil(16) <= MAX_GRID_Y);
    m > 0 && n > 0 && k > 0 && fits_i32 && sized
}

/// Which kernel of kernels/small_matmul.cu runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmallKernel {
    /// `small_matmul_skinny`: m <= 8, one warp per output column.
    Skinny,
    /// `small_matmul_tiled1`: 16x16 output tiles, one output per thread.
    Tiled16,
    /// `small_matmul_tiled2`: 32x32 output tiles, 2x2 outputs per thread.
    Tiled32,
}

impl SmallKernel {
    /// The kernel's name without the dtype suffix.
    pub fn name(self) -> &'static str {
        match self {
            SmallKernel::Skinny => "small_matmul_skinny",
            SmallKernel::Tiled16 => "small_matmul_tiled1",
            SmallKernel::Tiled32 => "small_matmul_tiled2",
        }
    }
}

/// A kernel and its launch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallLaunch {
    /// The kernel.
    pub kernel: SmallKernel,
    /// Blocks: (column tiles, row tiles, 1).
    pub grid: (u32, u32, u32),
    /// Threads per block.
    pub block: (u32, u32, u32),
    /// Skinny kernel only: 16-byte loads (k a multiple of the vector and x, W 16-byte aligned).
    pub vectorized: bool,
}

/// The launch for x: [m, k] times W: [n, k]^T; `vectors_ok` says whether k and the x/W offsets allow
/// 16-byte loads. Call only for shapes [`supports`] accepts.
pub fn plan(m: usize, n: usize, _k: usize, vectors_ok: bool) -> SmallLaunch {
    if m <= SKINNY_MAX_ROWS {
        return SmallLaunch {
            kernel: SmallKernel::Skinny,
            grid: (n.div_ceil(SKINNY_WARPS) as u32, 1, 1),
            block: (32 * SKINNY_WARPS as u32, 1, 1),
            vectorized: vectors_ok,
        };
    }
    let tiles32 = m.div_ceil(32) * n.div_ceil(32);
    let (kernel, tile) = if tiles32 >= FULL_GPU_BLOCKS {
        (SmallKernel::Tiled32, 32)
    } else {
        (SmallKernel::Tiled16, 16)
    };
    SmallLaunch {
        kernel,
        grid: (n.div_ceil(tile) as u32, m.div_ceil(tile) as u32, 1),
        block: (16, 16, 1),
        vectorized: false,
    }
}

/// m, n, k of x: [.., k] times w: [n, k]^T, checking that they fit (and bias: [n]).
fn dims(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (n, k) = w
        .dims2()
        .context("small matmul: weight must be [out, in]")?;
    let xk = x.dims().last().copied().unwrap_or(0);
    let bias_ok = bias.is_none_or(|b| b.dims() == [n]);
    if xk != k || !bias_ok || x.rank() == 0 {
        return Err(crate::Error::InvalidRequest(format!(
            "small matmul: x {:?}, w {:?}, bias {:?} do not fit y = x W^T + bias",
            x.dims(),
            w.dims(),
            bias.map(|b| b.dims().to_vec())
        )));
    }
    Ok((x.elem_count() / k.max(1), n, k))
}

/// y = x W^T (+ bias): on CUDA one launch of the small kernel (shapes [`supports`] takes); on the
/// CPU the plain product, which is this op's reference.
///
/// x: [.., k]; w: [n, k]; bias: [n]; returns y: [.., n].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, n, k) = dims(x, w, bias)?;
    if !x.device().is_cuda() {
        return reference(x, w, bias);
    }
    if !supports(m, n, k) {
        return Err(crate::Error::InvalidRequest(format!(
            "small matmul: m={m} n={n} k={k} is beyond the small kernel (m <= {SKINNY_MAX_ROWS} or m n k <= {TILED_MAX_MACS})"
        )));
    }
    cuda_linear(x, w, bias)
}

/// The plain product x W^T (+ bias) through Candle, on any device: the small kernel's reference.
pub fn reference(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x
        .broadcast_matmul(&w.t().context("small matmul reference")?)
        .context("small matmul reference")?;
    match bias {
        Some(b) => y.broadcast_add(b).context("small matmul reference bias"),
        None => Ok(y),
    }
}

#[cfg(feature = "cuda")]
fn cuda_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous().context("small matmul x")?;
    let w = w.contiguous().context("small matmul w")?;
    let op = cuda::SmallMatmul {
        bias: bias.map(Tensor::contiguous).transpose()?,
    };
    x.apply_op2_no_bwd(&w, &op).context("small matmul")
}

#[cfg(not(feature = "cuda"))]
fn cuda_linear(_: &Tensor, _: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
    Err(crate::Error::InvalidOption {
        option: "matmul path".into(),
        reason: "the small-matrix kernel needs a wick built with the `cuda` feature".into(),
    })
}

/// y = x W^T (+ bias) written into an existing y: [.., n] (contiguous, same dtype): no allocation,
/// so it can be captured in a CUDA graph and reused across calls. CUDA tensors only.
#[cfg(feature = "cuda")]
pub fn linear_into(y: &Tensor, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    let (m, n, k) = dims(x, w, bias)?;
    if !supports(m, n, k) {
        return Err(crate::Error::InvalidRequest(format!(
            "small matmul: m={m} n={n} k={k} is beyond the small kernel"
        )));
    }
    let op = cuda::SmallMatmul {
        bias: bias.cloned(),
    };
    y.inplace_op3(x, w, &op).context("small matmul into")
}

/// Whether launches go straight to `cuLaunchKernel` with the arguments on the stack (the default)
/// or through cudarc's launch builder (three heap vectors per launch, kept for the overhead
/// benchmark's before/after).
#[cfg(feature = "cuda")]
pub fn set_lean_launch(on: bool) {
    cuda::LEAN_LAUNCH.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Blocks `device`'s stream for about `cycles` GPU clock cycles (one tiny kernel): queued behind it,
/// later launches run back to back, so CUDA events around them time the GPU alone.
#[cfg(feature = "cuda")]
pub fn spin(device: &candle_core::CudaDevice, cycles: i64) -> Result<()> {
    cuda::spin(device, cycles).context("gpu spin kernel")
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicBool, Ordering};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        sys, CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};

    use super::super::kernels::{function, Module};
    use super::super::launch::GpuFloat;
    use super::{plan, SmallKernel};

    type CResult<T> = candle_core::Result<T>;

    pub(super) static LEAN_LAUNCH: AtomicBool = AtomicBool::new(true);

    /// The op: x and w are the custom op's operands; the bias rides along (read under its own lock).
    pub(super) struct SmallMatmul {
        pub(super) bias: Option<Tensor>,
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
        fn launch<T: GpuFloat>(
            &self,
            (x, xl): (&CudaStorage, &Layout),
            (w, wl): (&CudaStorage, &Layout),
            y: &mut CudaSlice<T>,
            y_offset: usize,
        ) -> CResult<()> {
            let (m, n, k, _) = shapes(xl, wl)?;
            if y.len() < y_offset + m * n {
                candle_core::bail!("small matmul: output too short for {m}x{n}");
            }
            let dev = &x.device;
            let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
            let bias_view: Option<CudaView<'_, T>> = match &bias_guard {
                Some((storage, bl)) => match &**storage {
                    Storage::Cuda(s) => {
                        if !bl.is_contiguous() || bl.dims() != [n] {
                            candle_core::bail!(
                                "small matmul: bias {:?}, expected [{n}]",
                                bl.dims()
                            );
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
            let launch = plan(m, n, k, vectors_ok);
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
                let count = if launch.kernel == SmallKernel::Skinny {
                    8
                } else {
                    7
                };
                stream.context().bind_to_thread().w()?;
                // SAFETY: the parameters match the kernel's signature (SKINNY_PARAMS / TILED_PARAMS
                // in kernels/small_matmul.cu) and point at live locals; the pointers address
                // buffers of the sizes the shapes describe.
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
            } else {
                let null = 0u64;
                let mut b = stream.launch_builder(&f);
                b.arg(&xv).arg(&wv);
                match &bias_view {
                    Some(bv) => b.arg(bv),
                    None => b.arg(&null),
                };
                b.arg(&mut yv).arg(&m_i).arg(&n_i).arg(&k_i);
                if launch.kernel == SmallKernel::Skinny {
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
            let (m, n, _, shape) = shapes(x.1, w.1)?;
            let dev = x.0.device.clone();
            // SAFETY: the kernel writes every element of y (checked by gpu-check with poisoning).
            let mut y = unsafe { dev.alloc::<T>(m * n) }?;
            self.launch::<T>(x, w, &mut y, 0)?;
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
            let (_, _, _, shape) = shapes(xl, wl)?;
            if !yl.is_contiguous() || yl.dims() != shape.dims() {
                candle_core::bail!(
                    "small matmul into: y {:?} must be contiguous {:?}",
                    yl.dims(),
                    shape.dims()
                );
            }
            let offset = yl.start_offset();
            match check_dtypes(&[y.dtype(), x.dtype(), w.dtype()], self.bias.as_ref())? {
                DType::F32 => self.launch::<f32>((x, xl), (w, wl), y.as_cuda_slice_mut()?, offset),
                DType::BF16 => {
                    self.launch::<half::bf16>((x, xl), (w, wl), y.as_cuda_slice_mut()?, offset)
                }
                DType::F16 => {
                    self.launch::<half::f16>((x, xl), (w, wl), y.as_cuda_slice_mut()?, offset)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_picks_the_kernel_and_covers_every_output() {
        // Decode rows: skinny, one warp per column, 8 columns per block.
        let p = plan(1, 1000, 64, true);
        assert_eq!(p.kernel, SmallKernel::Skinny);
        assert_eq!(p.grid, (125, 1, 1));
        assert_eq!(p.block, (256, 1, 1));
        assert!(p.vectorized);
        let p = plan(8, 1001, 63, false);
        assert_eq!(
            (p.kernel, p.grid.0, p.vectorized),
            (SmallKernel::Skinny, 126, false)
        );
        // 64x64: four 32x32 tiles would leave 128 SMs idle; sixteen 16x16 tiles.
        let p = plan(64, 64, 64, true);
        assert_eq!(p.kernel, SmallKernel::Tiled16);
        assert_eq!(p.grid, (4, 4, 1));
        assert!(!p.vectorized);
        // Ragged edges round up: 100 rows, 70 columns.
        let p = plan(100, 70, 17, false);
        assert_eq!((p.kernel, p.grid), (SmallKernel::Tiled16, (5, 7, 1)));
        // 512x512: 256 tiles of 32 fill the GPU.
        let p = plan(512, 512, 64, false);
        assert_eq!(p.kernel, SmallKernel::Tiled32);
        assert_eq!(p.grid, (16, 16, 1));
        for (m, n) in [(9, 7), (33, 65), (1000, 3), (4096, 64)] {
            let p = plan(m, n, 64, false);
            let tile = if p.kernel == SmallKernel::Tiled32 {
                32
            } else {
                16
            };
            assert!(p.grid.0 as usize * tile >= n && (p.grid.0 as usize - 1) * tile < n);
            assert!(p.grid.1 as usize * tile >= m && (p.grid.1 as usize - 1) * tile < m);
        }
    }

    #[test]
    fn supports_small_products_and_skinny_rows_only() {
        assert!(supports(64, 64, 64));
        assert!(supports(1, 49152, 576));
        assert!(supports(8, 4096, 4096));
        assert!(supports(256, 256, 256));
        assert!(!supports(4096, 4096, 4096));
        assert!(!supports(9, 4096, 4096));
        assert!(!supports(0, 64, 64));
        assert!(!supports(1, 1 << 31, 1));
    }

    #[test]
    fn cpu_linear_is_the_plain_product() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let (m, n, k) = (5, 7, 19);
        let mut random =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (xs, ws, bs) = (random(m * k), random(n * k), random(n));
        let dev = candle_core::Device::Cpu;
        let x = Tensor::from_slice(&xs, (1, m, k), &dev).unwrap();
        let w = Tensor::from_slice(&ws, (n, k), &dev).unwrap();
        let b = Tensor::from_slice(&bs, n, &dev).unwrap();
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.dims(), [1, m, n]);
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..m {
            for j in 0..n {
                let want = bs[j] as f64
                    + (0..k)
                        .map(|t| xs[i * k + t] as f64 * ws[j * k + t] as f64)
                        .sum::<f64>();
                let got = y[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "y[{i},{j}] = {got}, want {want}"
                );
            }
        }
        // A weight that does not fit is an error, not a panic.
        let bad = Tensor::from_slice(&ws[..n * (k - 1)], (n, k - 1), &dev).unwrap();
        assert!(linear(&x, &bad, None).is_err());
    }
}
