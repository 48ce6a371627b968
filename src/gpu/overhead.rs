//! Per-call overhead of small GPU operations: the cures, and the probes that show where the time goes.
//!
//! A 64x64 product is ~1-5 us of GPU work, so what a call costs is mostly the host: building the
//! op, allocating the output, launching, and, where the host waits, synchronising. Measured causes
//! (Candle 0.11.1 on cudarc 0.19.10) and their cures, each switchable so `wick bench overhead` can
//! show before and after in one process:
//!
//! - **Event tracking.** cudarc creates two CUDA events for every buffer it allocates (and destroys
//!   them on drop) so that buffers shared between streams can be synchronised. Candle opens its
//!   device on one stream (the per-thread stream) and never records those events on it, so they are
//!   pure cost: four driver calls per op. Cure: `CudaContext::disable_event_tracking` while the
//!   context has a single stream (wick creates no other); refused, with a warning, otherwise.
//! - **Pool retention.** Candle allocates with `cuMemAllocAsync` from the device's default memory
//!   pool, whose release threshold is 0: at every synchronisation the pool hands its free memory
//!   back to the driver, so the next allocations map memory again. Cure: a release threshold of
//!   u64::MAX, so freed blocks stay in the pool for reuse (what PyTorch's caching allocator does).
//! - **Lean launch.** cudarc's launch builder fills three heap vectors per launch; wick's small
//!   kernel can call `cuLaunchKernel` with its arguments on the stack (`small_matmul::set_lean_launch`).
//! - **Reused output.** `*_into` variants write an existing tensor: no allocation at all, and
//!   capturable in a CUDA graph.
//! - **Stream-ordered pool reuse** (candidate, measured by `wick bench overhead`, not in
//!   [`Cures::ALL`] until a device run shows it helps): the default pool may hand a freed block to a
//!   new allocation only in stream order (no opportunistic reuse of frees whose completion the
//!   driver must query, no dependencies inserted between streams). Candle allocates and frees on
//!   one stream, where stream-order reuse is always allowed, so nothing changes but the work the
//!   driver may do per cuMemAllocAsync.
//!
//! Where an allocating small product's extra time goes (read from Candle 0.11.1 / cudarc 0.19.10;
//! `allocating_breakdown` measures each piece): cudarc's `alloc` (context check, cuCtxGetCurrent,
//! cuMemAllocAsync; two cuEventCreate without the event cure) and the free on drop
//! (cuMemFreeAsync; two cuEventDestroy), then Candle's tensor: a TensorId, `Arc<RwLock<Storage>>`,
//! the `Arc<Tensor_>`, the shape's Vec, and two clones of the `CudaDevice` (seven `Arc`s each, one
//! for the storage and one for the tensor), all released on drop. Candle owns the output's memory
//! and frees it through the driver when the tensor drops, so wick cannot recycle it; the way around
//! the allocation is the `*_into` variant (or a CUDA graph). `dispatch::linear` also chose its path
//! by scanning the dispatch table per call (~300 `log2`); the choice is now memoized.
//!
//! [`measure`] times one operation by stage with `Instant` over many calls (host) and with CUDA
//! events around calls queued behind a spin kernel (GPU alone).

use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::cudarc::driver::CudaEvent;
use candle_core::{CudaDevice, DType, Device, Tensor};
use serde::Serialize;

use super::dispatch::{linear_with, MatmulPath};
use super::small_matmul::SmallKernel;
use crate::{Context, Error, Result};

/// The host-side cures; each can be switched on or off at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cures {
    /// New buffers carry no CUDA events (single-stream contexts only).
    pub no_event_tracking: bool,
    /// The default memory pool keeps freed memory across synchronisations.
    pub pool_retention: bool,
    /// wick's small kernel launches through `cuLaunchKernel` directly.
    pub lean_launch: bool,
    /// The default memory pool reuses freed blocks in stream order only (candidate; see the module
    /// notes).
    pub pool_stream_order: bool,
}

impl Cures {
    /// Candle's and cudarc's defaults.
    pub const NONE: Cures = Cures {
        no_event_tracking: false,
        pool_retention: false,
        lean_launch: false,
        pool_stream_order: false,
    };
    /// Every measured cure: what wick runs with.
    pub const ALL: Cures = Cures {
        no_event_tracking: true,
        pool_retention: true,
        lean_launch: true,
        pool_stream_order: false,
    };

    /// A short label: "baseline" or the cures on, joined by '+'.
    pub fn label(self) -> String {
        let names: Vec<&str> = [
            (self.no_event_tracking, "no-events"),
            (self.pool_retention, "pool-keep"),
            (self.lean_launch, "lean-launch"),
            (self.pool_stream_order, "pool-stream-order"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if names.is_empty() {
            "baseline".into()
        } else {
            names.join("+")
        }
    }
}

fn cuda_device(device: &Device) -> Result<&CudaDevice> {
    match device {
        Device::Cuda(d) => Ok(d),
        other => Err(Error::InvalidOption {
            option: "device".into(),
            reason: format!("overhead cures apply to CUDA devices, not {other:?}"),
        }),
    }
}

fn driver_error(what: &str, err: impl std::fmt::Debug) -> Error {
    Error::Candle {
        context: format!("CUDA {what}"),
        source: candle_core::Error::Msg(format!("{err:?}")),
    }
}

/// Sets the cures on `device` and returns those in force (event tracking stays on where the context
/// has several streams).
pub fn apply(device: &Device, cures: Cures) -> Result<Cures> {
    let cuda = cuda_device(device)?;
    let ctx = cuda.cuda_stream().context().clone();
    let mut applied = cures;
    if cures.no_event_tracking && ctx.is_in_multi_stream_mode() {
        tracing::warn!("CUDA context has several streams: keeping cudarc's event tracking");
        applied.no_event_tracking = false;
    }
    // SAFETY: with a single stream, cudarc never records or waits on a buffer's events (it only
    // does so in multi-stream mode), so buffers without events behave the same. Turning tracking
    // back on affects only buffers created afterwards.
    unsafe {
        if applied.no_event_tracking {
            ctx.disable_event_tracking();
        } else {
            ctx.enable_event_tracking();
        }
    }
    ctx.bind_to_thread()
        .map_err(|e| driver_error("bind context", e))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = if cures.pool_retention { u64::MAX } else { 0 };
    // SAFETY: `pool` receives the device's default pool handle; the release threshold takes a
    // u64, the reuse attributes an int.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| driver_error("default memory pool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(|e| driver_error("memory pool release threshold", e))?;
        // Both default to 1 (allowed); 0 leaves stream-ordered reuse only.
        use sys::CUmemPool_attribute as A;
        for attr in [
            A::CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC,
            A::CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES,
        ] {
            let mut allow: i32 = if cures.pool_stream_order { 0 } else { 1 };
            sys::cuMemPoolSetAttribute(pool, attr, &mut allow as *mut i32 as *mut std::ffi::c_void)
                .result()
                .map_err(|e| driver_error("memory pool reuse policy", e))?;
        }
    }
    super::small_matmul::set_lean_launch(cures.lean_launch);
    Ok(applied)
}

/// Applies every cure ([`Cures::ALL`]); a no-op on other devices. Call once after opening a device.
pub fn apply_defaults(device: &Device) -> Result<()> {
    if device.is_cuda() {
        apply(device, Cures::ALL)?;
    }
    Ok(())
}

/// What to measure for one operation; every closure issues the work on the device's stream.
pub struct Probe<'a> {
    /// The host-side checks and op construction alone (no launch), if they can be separated.
    pub checks: Option<&'a dyn Fn() -> Result<()>>,
    /// Bytes of the output the call allocates (timed as one allocation and its free).
    pub alloc_bytes: Option<usize>,
    /// The launch alone into an existing output, if the op has such a variant.
    pub launch: Option<&'a dyn Fn() -> Result<()>>,
    /// One whole call as a user makes it (its result dropped).
    pub call: &'a dyn Fn() -> Result<()>,
}

/// Microseconds per call, by stage. `None` where the probe cannot separate the stage.
#[derive(Clone, Debug, Serialize)]
pub struct Stages {
    /// Shape checks, layout checks and op construction, host.
    pub checks_us: Option<f64>,
    /// Allocating and freeing the output, host.
    pub alloc_free_us: Option<f64>,
    /// Launching into an existing output, host.
    pub launch_us: Option<f64>,
    /// One whole call, host (no synchronisation: what the host spends before it can issue the next).
    pub host_us: f64,
    /// Calls issued back to back, one synchronisation at the end: the throughput of a forward pass.
    pub pipelined_us: f64,
    /// One call then a synchronisation, per call: the latency when the host needs the value.
    pub roundtrip_us: f64,
    /// GPU time per call: CUDA events around calls queued behind a spin kernel.
    pub gpu_us: f64,
}

/// Best of three runs of `iters` calls of `f`, in microseconds per call; `sync` before each run and,
/// when `sync_after`, before stopping the clock.
fn best_of_3(
    device: &Device,
    iters: usize,
    sync_after: bool,
    f: &dyn Fn() -> Result<()>,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        device.synchronize().context("overhead probe")?;
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        if sync_after {
            device.synchronize().context("overhead probe")?;
        }
        best = best.min(start.elapsed().as_secs_f64() / iters as f64);
    }
    Ok(best * 1e6)
}

/// GPU cycles the spin kernel holds the stream for: ~3 ms at the H100's 1.98 GHz, longer than the
/// host takes to queue [`GPU_CALLS`] calls at 30 us each.
const SPIN_CYCLES: i64 = 6_000_000;
/// Calls queued behind the spin kernel per GPU timing.
const GPU_CALLS: usize = 64;

fn timing_event(cuda: &CudaDevice) -> Result<CudaEvent> {
    cuda.cuda_stream()
        .context()
        .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| driver_error("event", e))
}

/// GPU microseconds per call of `f`, best of three: spin, start event, calls, end event.
pub fn gpu_time(device: &Device, f: &dyn Fn() -> Result<()>) -> Result<f64> {
    let cuda = cuda_device(device)?;
    let stream = cuda.cuda_stream();
    let (start, end) = (timing_event(cuda)?, timing_event(cuda)?);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        device.synchronize().context("gpu timing")?;
        super::small_matmul::spin(cuda, SPIN_CYCLES)?;
        start
            .record(&stream)
            .map_err(|e| driver_error("record", e))?;
        for _ in 0..GPU_CALLS {
            f()?;
        }
        end.record(&stream).map_err(|e| driver_error("record", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| driver_error("elapsed", e))?;
        best = best.min(ms as f64 * 1e3 / GPU_CALLS as f64);
    }
    Ok(best)
}

/// Times one operation by stage; `iters` calls per host timing (keep it under ~1000 so the launch
/// queue does not fill).
pub fn measure(device: &Device, probe: &Probe, iters: usize) -> Result<Stages> {
    let cuda = cuda_device(device)?;
    // Warm up: kernel modules, plans, pool.
    for _ in 0..3 {
        (probe.call)()?;
    }
    device.synchronize().context("overhead warm-up")?;
    let checks_us = probe
        .checks
        .map(|f| best_of_3(device, iters, false, f))
        .transpose()?;
    let alloc_free_us = match probe.alloc_bytes {
        Some(bytes) => {
            let alloc = || -> Result<()> {
                // SAFETY: the buffer is freed unread.
                let buf = unsafe { cuda.alloc::<u8>(bytes) }.context("probe allocation")?;
                drop(buf);
                Ok(())
            };
            Some(best_of_3(device, iters, false, &alloc)?)
        }
        None => None,
    };
    let launch_us = probe
        .launch
        .map(|f| best_of_3(device, iters, false, f))
        .transpose()?;
    let host_us = best_of_3(device, iters, false, probe.call)?;
    let pipelined_us = best_of_3(device, iters, true, probe.call)?;
    let roundtrip = || -> Result<()> {
        (probe.call)()?;
        device.synchronize().context("overhead roundtrip")
    };
    let roundtrip_us = best_of_3(device, (iters / 4).max(10), false, &roundtrip)?;
    let gpu_us = gpu_time(device, probe.call)?;
    Ok(Stages {
        checks_us,
        alloc_free_us,
        launch_us,
        host_us,
        pipelined_us,
        roundtrip_us,
        gpu_us,
    })
}

/// Seeded uniform(-1, 1) tensor of `shape` in `dtype` on `device`.
pub fn random_tensor(device: &Device, dtype: DType, shape: &[usize], seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let len = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(values, shape, device)
        .and_then(|t| t.to_dtype(dtype))
        .context("random tensor")
}

/// The matmul probes of `wick bench overhead`: y = x W^T, x: [m, k], W: [n, k], through `path`,
/// allocating y (`into` false) or writing a y made once (`into` true; Candle's path has no such
/// variant). The checks stage is what `dispatch::linear` does before it launches. `small_kernel`
/// forces a kernel of the small path into y (`None`: the one `small_matmul::plan` picks); the
/// allocating small call always takes the planned kernel.
pub fn measure_matmul(
    device: &Device,
    path: MatmulPath,
    into: bool,
    small_kernel: Option<SmallKernel>,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    iters: usize,
) -> Result<Stages> {
    let x = random_tensor(device, dtype, &[m, k], 1)?;
    let w = random_tensor(device, dtype, &[n, k], 2)?;
    let y = random_tensor(device, dtype, &[m, n], 3)?;
    let checks = || -> Result<()> {
        let (n, k) = w.dims2().context("linear")?;
        let m = x.elem_count() / k.max(1);
        std::hint::black_box(super::dispatch::choose(x.dtype(), m, n, k));
        std::hint::black_box((x.contiguous()?, w.contiguous()?));
        Ok(())
    };
    let launch_into = || -> Result<()> {
        match path {
            MatmulPath::Small => {
                super::small_matmul::linear_into_with(small_kernel, &y, &x, &w, None)
            }
            _ => super::cublaslt::matmul_into(&y, &x, &w, super::cublaslt::WeightLayout::OutIn)
                .context("cuBLASLt into"),
        }
    };
    let allocating = || -> Result<()> {
        drop(linear_with(path, &x, &w, None)?);
        Ok(())
    };
    let has_into = path != MatmulPath::Candle;
    let probe = if into && has_into {
        Probe {
            checks: Some(&checks),
            alloc_bytes: None,
            launch: Some(&launch_into),
            call: &launch_into,
        }
    } else {
        Probe {
            checks: Some(&checks),
            alloc_bytes: Some(m * n * dtype.size_in_bytes()),
            launch: has_into.then_some(&launch_into as &dyn Fn() -> Result<()>),
            call: &allocating,
        }
    };
    measure(device, &probe, iters)
}

/// Small-kernel products replayed from a CUDA graph: `kernels_per_graph` launches of
/// `small_matmul::linear_into_with(kernel, ..)` recorded once (`None`: the planned kernel); returns
/// the same figures as `timing::time_graph_matmul` does for cuBLASLt.
pub fn time_graph_small(
    device: &Device,
    kernel: Option<SmallKernel>,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    kernels_per_graph: usize,
) -> Result<super::timing::GraphTiming> {
    let linear_into = |y: &Tensor, x: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        super::small_matmul::linear_into_with(kernel, y, x, w, b)
    };
    let what = format!("small-kernel graph {kernel:?} {dtype:?} m={m} n={n} k={k}");
    let x = random_tensor(device, dtype, &[m, k], 11)?;
    let other = random_tensor(device, dtype, &[m, k], 12)?;
    let w = random_tensor(device, dtype, &[n, k], 13)?;
    let y = random_tensor(device, dtype, &[m, n], 14)?;
    linear_into(&y, &x, &w, None)?;
    device.synchronize().context(&what)?;
    let (graph, ()) = super::graph::capture(device, || {
        for _ in 0..kernels_per_graph {
            linear_into(&y, &x, &w, None)?;
        }
        Ok(())
    })?;
    graph.upload()?;
    // Overwrite y with another product, so the check below sees what the replay wrote.
    linear_into(&y, &other, &w, None)?;
    graph.replay()?;
    let reference = super::small_matmul::reference(&x, &w, None)?
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .context(&what)?;
    let got = y
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .context(&what)?;
    let max_rel_err = relative_error(&got, &reference).context(&what)?;

    let replays = 20;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        device.synchronize().context(&what)?;
        let start = Instant::now();
        for _ in 0..replays {
            graph.replay()?;
        }
        device.synchronize().context(&what)?;
        best = best.min(start.elapsed().as_secs_f64() / (replays * kernels_per_graph) as f64);
    }
    Ok(super::timing::GraphTiming {
        dtype: dtype.as_str().to_string(),
        m,
        n,
        k,
        kernels_per_graph,
        us_per_kernel: best * 1e6,
        max_rel_err,
    })
}

/// max |got - want| / max |want| of two flat f32 tensors.
pub fn relative_error(got: &Tensor, want: &Tensor) -> candle_core::Result<f64> {
    let scale = want.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    let err = (got - want)?.abs()?.max(0)?.to_scalar::<f32>()? as f64;
    Ok(err / scale.max(f64::MIN_POSITIVE))
}

/// Host microseconds per call of each stage of an allocating small product y = x W^T
/// (`dispatch::linear` on the small path), measured stage by stage so the difference between the
/// allocating call and the launch into an existing y can be read off; best of 3 runs of `iters`
/// calls each. The small kernel is the one `small_matmul::plan` picks.
#[derive(Clone, Debug, Serialize)]
pub struct AllocatingBreakdown {
    /// m, n, k.
    pub shape: (usize, usize, usize),
    /// The dispatch table's scan (`DispatchTable::choose`: log2 distances to every entry of the
    /// dtype), what `dispatch::linear` did per call before the memo.
    pub table_scan_us: f64,
    /// The memoized choice (`dispatch::choose`), what it does now.
    pub table_memo_us: f64,
    /// `small_matmul::linear`'s checks before the op: dims, `contiguous` of x and W.
    pub checks_us: f64,
    /// cudarc's allocation of the output's bytes and its free (cuMemAllocAsync + cuMemFreeAsync).
    pub alloc_free_us: f64,
    /// A Candle custom op that allocates the output and launches nothing, its tensor dropped:
    /// Candle's op dispatch, the allocation, the tensor's construction and drop.
    pub candle_alloc_op_us: f64,
    /// `small_matmul::linear_into`: Candle's in-place op and the launch, into an existing y.
    pub launch_into_us: f64,
    /// `cuLaunchKernel` alone with the same kernel and arguments (the floor of any launch).
    pub raw_launch_us: f64,
    /// `small_matmul::linear`: the allocating call without the table (what `linear_with(Small)`
    /// runs).
    pub small_linear_us: f64,
    /// The same op through Candle's `apply_op2_no_bwd` (before the device-check cut).
    pub small_linear_candle_op_us: f64,
    /// `dispatch::linear` before the memo: the table's scan, then the small path.
    pub dispatch_scan_us: f64,
    /// `dispatch::linear` as it is: the memoized choice, then the small path.
    pub dispatch_linear_us: f64,
    /// `dispatch::linear` issued back to back, one synchronisation at the end.
    pub dispatch_linear_pipelined_us: f64,
    /// `small_matmul::linear_into` issued back to back, one synchronisation at the end.
    pub launch_into_pipelined_us: f64,
}

/// A Candle op that only allocates its [m, n] output (nothing is launched): times what an
/// allocating op costs besides its kernel.
struct AllocOnly;

impl candle_core::CustomOp2 for AllocOnly {
    fn name(&self) -> &'static str {
        "alloc-only"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("alloc-only probe runs on CUDA")
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        wl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (n, k) = wl.shape().dims2()?;
        let m = xl.shape().elem_count() / k.max(1);
        let dev = x.device.clone();
        // SAFETY: the buffer is never read.
        let y = unsafe { dev.alloc::<f32>(m * n) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(y, dev),
            candle_core::Shape::from((m, n)),
        ))
    }
}

/// Measures [`AllocatingBreakdown`] for an f32 product of x: [m, k] and W: [n, k] on the small path.
pub fn allocating_breakdown(
    device: &Device,
    (m, n, k): (usize, usize, usize),
    iters: usize,
) -> Result<AllocatingBreakdown> {
    use super::dispatch::{choose, linear, linear_with, table};
    use super::small_matmul;
    let cuda = cuda_device(device)?;
    let dtype = DType::F32;
    let x = random_tensor(device, dtype, &[m, k], 31)?;
    let w = random_tensor(device, dtype, &[n, k], 32)?;
    let y = random_tensor(device, dtype, &[m, n], 33)?;
    if choose(dtype, m, n, k) != MatmulPath::Small {
        tracing::warn!("the dispatch table does not pick the small path at {m}x{n}x{k}: dispatch::linear rows time another path");
    }
    let time = |f: &dyn Fn() -> Result<()>| best_of_3(device, iters, false, f);
    let time_synced = |f: &dyn Fn() -> Result<()>| best_of_3(device, iters, true, f);
    // Warm up every path (modules, plans, memo, pool).
    drop(linear(&x, &w, None)?);
    small_matmul::linear_into(&y, &x, &w, None)?;
    device
        .synchronize()
        .context("allocating breakdown warm-up")?;

    let table_scan_us = time(&|| {
        std::hint::black_box(table().choose(dtype, m, n, k));
        Ok(())
    })?;
    let table_memo_us = time(&|| {
        std::hint::black_box(choose(dtype, m, n, k));
        Ok(())
    })?;
    let checks_us = time(&|| {
        let (_, kk) = w.dims2().context("breakdown")?;
        std::hint::black_box((x.elem_count() / kk, x.contiguous()?, w.contiguous()?));
        Ok(())
    })?;
    let bytes = m * n * dtype.size_in_bytes();
    let alloc_free_us = time(&|| {
        // SAFETY: the buffer is freed unread.
        drop(unsafe { cuda.alloc::<u8>(bytes) }.context("probe allocation")?);
        Ok(())
    })?;
    let candle_alloc_op_us = time(&|| {
        drop(
            x.apply_op2_no_bwd(&w, &AllocOnly)
                .context("alloc-only op")?,
        );
        Ok(())
    })?;
    let into = || small_matmul::linear_into(&y, &x, &w, None);
    let launch_into_us = time(&into)?;
    let raw_launch_us = raw_launch_time(device, cuda, (&x, &w, &y), (m, n, k), iters)?;
    let small_linear_us = time(&|| {
        drop(small_matmul::linear(&x, &w, None)?);
        Ok(())
    })?;
    let small_linear_candle_op_us = time(&|| {
        drop(small_matmul::linear_through_candle_op(&x, &w)?);
        Ok(())
    })?;
    let dispatch_scan = || -> Result<()> {
        let path = table().choose(dtype, m, n, k);
        drop(linear_with(path, &x, &w, None)?);
        Ok(())
    };
    let dispatch_scan_us = time(&dispatch_scan)?;
    let dispatch = || -> Result<()> {
        drop(linear(&x, &w, None)?);
        Ok(())
    };
    let dispatch_linear_us = time(&dispatch)?;
    let dispatch_linear_pipelined_us = time_synced(&dispatch)?;
    let launch_into_pipelined_us = time_synced(&into)?;
    Ok(AllocatingBreakdown {
        shape: (m, n, k),
        table_scan_us,
        table_memo_us,
        checks_us,
        alloc_free_us,
        candle_alloc_op_us,
        launch_into_us,
        raw_launch_us,
        small_linear_us,
        small_linear_candle_op_us,
        dispatch_scan_us,
        dispatch_linear_us,
        dispatch_linear_pipelined_us,
        launch_into_pipelined_us,
    })
}

/// Host microseconds of `cuLaunchKernel` alone: the planned small kernel on x, W, y's device
/// pointers, arguments built once.
fn raw_launch_time(
    device: &Device,
    cuda: &CudaDevice,
    (x, w, y): (&Tensor, &Tensor, &Tensor),
    (m, n, k): (usize, usize, usize),
    iters: usize,
) -> Result<f64> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    use std::ffi::c_void;
    let stream = cuda.cuda_stream();
    let ptr = |t: &Tensor| -> Result<u64> {
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cuda(s) = &*storage else {
            return Err(driver_error("raw launch", "tensor not on CUDA"));
        };
        let slice = s.as_cuda_slice::<f32>().context("raw launch")?;
        let (p, _guard) = slice.device_ptr(&stream);
        Ok(p + (layout.start_offset() * 4) as u64)
    };
    let (x_ptr, w_ptr, y_ptr, bias_ptr) = (ptr(x)?, ptr(w)?, ptr(y)?, 0u64);
    let launch = super::small_matmul::plan(m, n, k, k % 4 == 0);
    let f = super::kernels::function(
        cuda,
        super::kernels::Module::SmallMatmul,
        launch.kernel.name(),
        "f32",
    )
    .context("raw launch")?;
    let (m_i, n_i, k_i, vec_i) = (m as i32, n as i32, k as i32, launch.vectorized as i32);
    let params: [*const c_void; 8] = [
        &x_ptr as *const u64 as *const c_void,
        &w_ptr as *const u64 as *const c_void,
        &bias_ptr as *const u64 as *const c_void,
        &y_ptr as *const u64 as *const c_void,
        &m_i as *const i32 as *const c_void,
        &n_i as *const i32 as *const c_void,
        &k_i as *const i32 as *const c_void,
        &vec_i as *const i32 as *const c_void,
    ];
    let count = if launch.takes_vec_arg() { 8 } else { 7 };
    let mut args: Vec<*mut c_void> = params[..count].iter().map(|p| *p as *mut c_void).collect();
    let args_ptr = args.as_mut_ptr() as usize;
    let cu_stream = stream.cu_stream() as usize;
    let raw = || -> Result<()> {
        // SAFETY: the arguments match the kernel's signature (as `small_matmul`'s lean launch
        // passes them) and point at locals that outlive every launch; the buffers are live tensors.
        unsafe {
            sys::cuLaunchKernel(
                f.cu_function(),
                launch.grid.0,
                launch.grid.1,
                launch.grid.2,
                launch.block.0,
                launch.block.1,
                launch.block.2,
                0,
                cu_stream as sys::CUstream,
                args_ptr as *mut *mut c_void,
                std::ptr::null_mut(),
            )
            .result()
            .map_err(|e| driver_error("raw launch", e))
        }
    };
    let us = best_of_3(device, iters, false, &raw)?;
    device.synchronize().context("raw launch")?;
    drop(args);
    Ok(us)
}
