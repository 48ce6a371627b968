//! wick's small-matrix product: y = x W^T (+ bias) in one kernel launch (kernels/small_matmul.cu),
//! for the shapes where launching cuBLAS costs more than the work (64x64x64, a few decode rows).
//!
//! x: [.., k], W: [n, k] (a Linear weight), bias: [n], y: [.., n]; m = the product of x's leading
//! dimensions. f32, bf16 and f16 with f32 accumulation; no workspace and no split-k, so one call is
//! one kernel and `linear_into` can be captured in a CUDA graph. The CPU reference is the plain
//! product (Candle's matmul), which `linear` computes for CPU tensors.
//!
//! Kernel choice ([`choose_kernel`], [`plan`]): few outputs and moderate k (m n <= 16384, k <= 1024,
//! and k <= 256 when m <= 8) take the dot kernel, latency first: 8 lanes per output, 16-byte loads of
//! one x row and one W row, a shuffle reduction, no shared memory, so 64x64x64 runs as 128 blocks of
//! 256 threads instead of 16 tiles. Otherwise m <= 8 takes the skinny kernel (a warp per output
//! column, W read once); larger m the tiled kernel, with 32x32 output tiles when they alone fill the
//! GPU (132 SMs on the H100) and 16x16 tiles otherwise. These cutoffs only pick among wick's own
//! kernels; which shapes go to this path at all, rather than cuBLAS, is the dispatch table's
//! decision (`wick bench dispatch` measures this path beside cuBLAS on the GPU), within [`supports`].
//! The benchmarks force a kernel ([`linear_into_with`]) to time the dot kernel against the tiled one.

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
/// Lanes that share one output in the dot kernel (DOT_LANES in kernels/small_matmul.cu).
pub const DOT_LANES: usize = 8;
/// Threads per block of the dot kernel (32 outputs).
const DOT_THREADS: usize = 256;
/// Most outputs (m n) the dot kernel is chosen for: 16384 outputs are 512 blocks of 256 threads,
/// about four per SM, one wave; beyond it the tiled kernel's reuse of x and W pays.
pub const DOT_MAX_OUTPUTS: usize = 16_384;
/// Largest k the dot kernel is chosen for (each lane walks k / 8 elements serially).
pub const DOT_MAX_K: usize = 1024;
/// Largest k the dot kernel is chosen for when m <= 8: above it the skinny kernel's 32 lanes per
/// column (and W read once for all m rows) win.
pub const DOT_SKINNY_MAX_K: usize = 256;
/// Warps (output columns) per block of the skinny kernel.
const SKINNY_WARPS: usize = 8;
/// CUDA's limit on grid.y (the tiled kernel's row tiles).
const MAX_GRID_Y: usize = 65_535;

impl SmallLaunch {
    /// Whether the kernel takes the trailing `vec` argument (SKINNY_PARAMS in the .cu file).
    pub fn takes_vec_arg(&self) -> bool {
        matches!(self.kernel, SmallKernel::Dot | SmallKernel::Skinny)
    }
}

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
    /// `small_matmul_dot`: 8 lanes per output, shuffle reduction, no shared memory.
    Dot,
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
            SmallKernel::Dot => "small_matmul_dot",
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
    /// Dot and skinny kernels only: 16-byte loads (k a multiple of the vector and x, W 16-byte aligned).
    pub vectorized: bool,
}

/// The kernel [`plan`] picks for x: [m, k] times W: [n, k]^T (see the module notes).
pub fn choose_kernel(m: usize, n: usize, k: usize) -> SmallKernel {
    let dot_k = if m <= SKINNY_MAX_ROWS {
        DOT_SKINNY_MAX_K
    } else {
        DOT_MAX_K
    };
    if m.saturating_mul(n) <= DOT_MAX_OUTPUTS && k <= dot_k {
        SmallKernel::Dot
    } else if m <= SKINNY_MAX_ROWS {
        SmallKernel::Skinny
    } else if m.div_ceil(32) * n.div_ceil(32) >= FULL_GPU_BLOCKS {
        SmallKernel::Tiled32
    } else {
        SmallKernel::Tiled16
    }
}

/// The launch for x: [m, k] times W: [n, k]^T; `vectors_ok` says whether k and the x/W offsets allow
/// 16-byte loads. Call only for shapes [`supports`] accepts.
pub fn plan(m: usize, n: usize, k: usize, vectors_ok: bool) -> SmallLaunch {
    plan_kernel(choose_kernel(m, n, k), m, n, vectors_ok)
}

/// The launch of a given kernel for x: [m, k] times W: [n, k]^T (the benchmarks force one). The
/// skinny kernel takes m <= [`SKINNY_MAX_ROWS`] only; the caller checks.
pub fn plan_kernel(kernel: SmallKernel, m: usize, n: usize, vectors_ok: bool) -> SmallLaunch {
    match kernel {
        SmallKernel::Dot => SmallLaunch {
            kernel,
            grid: ((m * n * DOT_LANES).div_ceil(DOT_THREADS) as u32, 1, 1),
            block: (DOT_THREADS as u32, 1, 1),
            vectorized: vectors_ok,
        },
        SmallKernel::Skinny => SmallLaunch {
            kernel,
            grid: (n.div_ceil(SKINNY_WARPS) as u32, 1, 1),
            block: (32 * SKINNY_WARPS as u32, 1, 1),
            vectorized: vectors_ok,
        },
        SmallKernel::Tiled16 | SmallKernel::Tiled32 => {
            let tile = if kernel == SmallKernel::Tiled32 {
                32
            } else {
                16
            };
            SmallLaunch {
                kernel,
                grid: (n.div_ceil(tile) as u32, m.div_ceil(tile) as u32, 1),
                block: (16, 16, 1),
                vectorized: false,
            }
        }
    }
}

/// Whether `kernel` (or the planned kernel, for `None`) can run x: [m, k] times W: [n, k]^T.
fn kernel_supports(kernel: Option<SmallKernel>, m: usize, n: usize, k: usize) -> Result<()> {
    if !supports(m, n, k) || (kernel == Some(SmallKernel::Skinny) && m > SKINNY_MAX_ROWS) {
        return Err(crate::Error::InvalidRequest(format!(
            "small matmul: m={m} n={n} k={k} is beyond the small kernel{} (m <= {SKINNY_MAX_ROWS} or m n k <= {TILED_MAX_MACS})",
            kernel.map_or(String::new(), |k| format!(" {}", k.name()))
        )));
    }
    Ok(())
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
    kernel_supports(None, m, n, k)?;
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
        kernel: None,
    };
    // What `apply_op2_no_bwd` does, minus its device check: Candle compares the operands' devices
    // through `Storage::device()`, which clones both `CudaDevice`s (seven `Arc`s each) and drops
    // them again, per call; comparing the device ids costs nothing. Same op, same result.
    let (storage, shape) = {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        match (&*xs, &*ws) {
            (candle_core::Storage::Cuda(xc), candle_core::Storage::Cuda(wc))
                if xc.device.id() == wc.device.id() =>
            {
                candle_core::CustomOp2::cuda_fwd(&op, xc, xl, wc, wl).context("small matmul")?
            }
            _ => {
                return Err(crate::Error::InvalidRequest(format!(
                    "small matmul: x on {:?} and w on {:?} must share one CUDA device",
                    x.device().location(),
                    w.device().location()
                )))
            }
        }
    };
    Ok(Tensor::from_storage(
        candle_core::Storage::Cuda(storage),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    ))
}

/// [`linear`]'s op through Candle's `apply_op2_no_bwd` (the path before the device-check cut), so
/// `wick bench overhead` can time both in one process. x: [.., k]; w: [n, k]; CUDA tensors.
#[cfg(feature = "cuda")]
pub fn linear_through_candle_op(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, n, k) = dims(x, w, None)?;
    kernel_supports(None, m, n, k)?;
    let op = cuda::SmallMatmul {
        bias: None,
        kernel: None,
    };
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &op)
        .context("small matmul")
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
    linear_into_with(None, y, x, w, bias)
}

/// [`linear_into`] through a given kernel (`None`: the one [`plan`] picks), so the benchmarks and
/// the GPU check can run the dot kernel and the tiled one at the same shape. The skinny kernel
/// takes m <= [`SKINNY_MAX_ROWS`] only.
#[cfg(feature = "cuda")]
pub fn linear_into_with(
    kernel: Option<SmallKernel>,
    y: &Tensor,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    let (m, n, k) = dims(x, w, bias)?;
    kernel_supports(kernel, m, n, k)?;
    let op = cuda::SmallMatmul {
        bias: bias.cloned(),
        kernel,
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
mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_picks_the_kernel_and_covers_every_output() {
        // 64x64x64: the dot kernel, 4096 outputs x 8 lanes = 128 blocks of 256 (one per SM).
        let p = plan(64, 64, 64, true);
        assert_eq!(p.kernel, SmallKernel::Dot);
        assert_eq!(p.grid, (128, 1, 1));
        assert_eq!(p.block, (256, 1, 1));
        assert!(p.vectorized && p.takes_vec_arg());
        // Few outputs, small k, any m: dot (decode rows with k <= 256 too).
        assert_eq!(choose_kernel(1, 1000, 64), SmallKernel::Dot);
        assert_eq!(choose_kernel(3, 1000, 63), SmallKernel::Dot);
        assert_eq!(choose_kernel(100, 70, 17), SmallKernel::Dot);
        assert_eq!(choose_kernel(64, 256, 1024), SmallKernel::Dot);
        // Decode rows with large k or many columns: skinny, one warp per column, W read once.
        assert_eq!(choose_kernel(1, 576, 576), SmallKernel::Skinny);
        assert_eq!(choose_kernel(8, 49152, 64), SmallKernel::Skinny);
        let p = plan(1, 1536, 576, true);
        assert_eq!(p.kernel, SmallKernel::Skinny);
        assert_eq!(p.grid, (192, 1, 1));
        assert_eq!(p.block, (256, 1, 1));
        let p = plan(8, 20001, 300, false);
        assert_eq!(
            (p.kernel, p.grid.0, p.vectorized),
            (SmallKernel::Skinny, 2501, false)
        );
        // Many outputs or large k with m > 8: tiled; 16x16 tiles until 32x32 tiles fill the GPU.
        assert_eq!(choose_kernel(64, 64, 2048), SmallKernel::Tiled16);
        let p = plan(200, 100, 64, false);
        assert_eq!((p.kernel, p.grid), (SmallKernel::Tiled16, (7, 13, 1)));
        assert!(!p.vectorized && !p.takes_vec_arg());
        let p = plan(512, 512, 64, false);
        assert_eq!(p.kernel, SmallKernel::Tiled32);
        assert_eq!(p.grid, (16, 16, 1));
        // A forced kernel keeps its own geometry.
        let p = plan_kernel(SmallKernel::Tiled16, 64, 64, true);
        assert_eq!(
            (p.kernel, p.grid, p.vectorized),
            (SmallKernel::Tiled16, (4, 4, 1), false)
        );
        for (m, n, k) in [
            (9, 7, 5),
            (33, 65, 64),
            (1000, 3, 64),
            (4096, 64, 64),
            (3, 1000, 63),
        ] {
            for kernel in [
                choose_kernel(m, n, k),
                SmallKernel::Dot,
                SmallKernel::Tiled16,
            ] {
                let p = plan_kernel(kernel, m, n, false);
                match p.kernel {
                    SmallKernel::Dot => {
                        let threads = p.grid.0 as usize * p.block.0 as usize;
                        assert!(threads >= m * n * DOT_LANES);
                        assert!(threads - m * n * DOT_LANES < p.block.0 as usize);
                    }
                    SmallKernel::Skinny => {
                        unreachable!("no shape in this loop plans the skinny kernel")
                    }
                    SmallKernel::Tiled16 | SmallKernel::Tiled32 => {
                        let tile = if p.kernel == SmallKernel::Tiled32 {
                            32
                        } else {
                            16
                        };
                        assert!(
                            p.grid.0 as usize * tile >= n && (p.grid.0 as usize - 1) * tile < n
                        );
                        assert!(
                            p.grid.1 as usize * tile >= m && (p.grid.1 as usize - 1) * tile < m
                        );
                    }
                }
            }
        }
    }

    /// The dot kernel (small_matmul_dot in kernels/small_matmul.cu) run on the CPU, thread by
    /// thread: the same grid, output mapping, k loops (16-byte vectors of `v` elements, two per
    /// step, then a tail; or scalars) and lane reduction. Returns y and how often each output was
    /// written.
    fn emulate_dot(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        (m, n, k): (usize, usize, usize),
        v: Option<usize>,
    ) -> (Vec<f32>, Vec<usize>) {
        let p = plan_kernel(SmallKernel::Dot, m, n, v.is_some());
        let threads = p.grid.0 as usize * p.block.0 as usize;
        let mut y = vec![f32::NAN; m * n];
        let mut writes = vec![0usize; m * n];
        for group in 0..threads / DOT_LANES {
            let live = group < m * n;
            let oc = if live { group } else { 0 };
            let (i, j) = (oc / n, oc % n);
            let mut lanes = [0f32; DOT_LANES];
            for (g, lane_sum) in lanes.iter_mut().enumerate() {
                let (mut acc0, mut acc1) = (0f32, 0f32);
                let dot = |acc: &mut f32, at: usize, len: usize| {
                    for t in at..at + len {
                        *acc = x[i * k + t].mul_add(w[j * k + t], *acc);
                    }
                };
                let (width, step) = match v {
                    Some(v) => (v, DOT_LANES * v),
                    None => (1, DOT_LANES),
                };
                let mut kk = g * width;
                while kk + step < k {
                    dot(&mut acc0, kk, width);
                    dot(&mut acc1, kk + step, width);
                    kk += 2 * step;
                }
                if kk < k {
                    dot(&mut acc0, kk, width);
                }
                *lane_sum = acc0 + acc1;
            }
            // __shfl_xor_sync over 4, 2, 1: lane 0 ends with the sum of all eight.
            let mut s = DOT_LANES / 2;
            while s > 0 {
                let prev = lanes;
                for (l, val) in lanes.iter_mut().enumerate() {
                    *val += prev[l ^ s];
                }
                s /= 2;
            }
            if live {
                y[group] = lanes[0] + bias[j];
                writes[group] += 1;
            }
        }
        (y, writes)
    }

    #[test]
    fn dot_kernel_reads_every_k_once_and_writes_every_output_once() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        // (m, n, k, vector width): f32 vectors of 4, bf16/f16 of 8; odd and ragged k scalar.
        for (m, n, k, v) in [
            (64, 64, 64, Some(4)),
            (3, 1000, 63, None),
            (5, 7, 1, None),
            (9, 13, 17, None),
            (2, 33, 30, None),
            (4, 5, 32, Some(4)),
            (7, 3, 36, Some(4)),
            (6, 11, 96, Some(8)),
            (1, 100, 8, Some(8)),
            (64, 256, 1024, Some(4)),
        ] {
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let (xs, ws, bs) = (random(m * k), random(n * k), random(n));
            let (y, writes) = emulate_dot(&xs, &ws, &bs, (m, n, k), v);
            assert!(
                writes.iter().all(|&c| c == 1),
                "m={m} n={n} k={k}: outputs written != once"
            );
            for (e, &got) in y.iter().enumerate() {
                let (i, j) = (e / n, e % n);
                let want = bs[j] as f64
                    + (0..k)
                        .map(|t| xs[i * k + t] as f64 * ws[j * k + t] as f64)
                        .sum::<f64>();
                // Every k term counted once: f32 rounding only (a missed or doubled term is O(1)).
                let tol = 1e-6 * (k as f64 + 1.0);
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "m={m} n={n} k={k} v={v:?}: y[{i},{j}] = {got}, want {want}"
                );
            }
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
