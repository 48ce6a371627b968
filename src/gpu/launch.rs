//! Launchers for wick's kernels (kernels/*.cu): pick the kernel for the dtype, size the grid, pass
//! the device pointers at the layouts' offsets. Each returns a new `CudaStorage`; the ops in
//! src/ops/ call these from their `cuda_fwd`. f32, bf16 and f16 only (f64 stays on the CPU).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, WithDType};

use super::kernels::{function, Module};

type Result<T> = candle_core::Result<T>;

static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// While on, every kernel output is filled with NaN before the kernel runs, so that elements a
/// kernel fails to write are caught (`wick bench gpu-check`). Costs a host-to-device copy per output.
pub fn set_poison(on: bool) {
    POISON.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// An output buffer of `len` elements: uninitialised, or NaN while poisoning is on.
fn alloc_out<T: GpuFloat>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel writes its whole output (checked by gpu-check with poisoning on).
    let mut out = unsafe { dev.alloc::<T>(len)? };
    if POISON.load(std::sync::atomic::Ordering::Relaxed) && len > 0 {
        let nan = vec![T::from_f64(f64::NAN); len];
        dev.memcpy_htod(nan.as_slice(), &mut out)?;
    }
    Ok(out)
}

/// A new output of `len` elements (NaN while poisoning is on) that `fill` writes by its launches;
/// an empty output launches nothing.
fn output<T: GpuFloat>(
    dev: &CudaDevice,
    len: usize,
    fill: impl FnOnce(&mut CudaSlice<T>) -> Result<()>,
) -> Result<CudaStorage> {
    let mut out = alloc_out::<T>(dev, len)?;
    if len > 0 {
        fill(&mut out)?;
    }
    Ok(storage(dev, out))
}

/// The element types the kernels are instantiated for.
pub trait GpuFloat: DeviceRepr + WithDType + ValidAsZeroBits {
    /// Kernel-name suffix: `f32`, `bf16`, `f16`.
    const SUFFIX: &'static str;
    /// Wraps a slice as a Candle storage slice.
    fn wrap(s: CudaSlice<Self>) -> S;
    /// The typed slice of a storage slice of this dtype.
    fn unwrap(s: &S) -> Result<&CudaSlice<Self>>;
    /// The typed mutable slice of a storage slice of this dtype.
    fn unwrap_mut(s: &mut S) -> Result<&mut CudaSlice<Self>>;
}

macro_rules! gpu_float {
    ($t:ty, $v:ident, $suffix:literal) => {
        impl GpuFloat for $t {
            const SUFFIX: &'static str = $suffix;
            fn wrap(s: CudaSlice<Self>) -> S {
                S::$v(s)
            }
            fn unwrap(s: &S) -> Result<&CudaSlice<Self>> {
                match s {
                    S::$v(s) => Ok(s),
                    _ => candle_core::bail!("wick kernel: expected {} storage", $suffix),
                }
            }
            fn unwrap_mut(s: &mut S) -> Result<&mut CudaSlice<Self>> {
                match s {
                    S::$v(s) => Ok(s),
                    _ => candle_core::bail!("wick kernel: expected {} storage", $suffix),
                }
            }
        }
    };
}
gpu_float!(f32, F32, "f32");
gpu_float!(half::bf16, BF16, "bf16");
gpu_float!(half::f16, F16, "f16");

/// Calls `$f::<T>(args)` with T the Rust type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            other => candle_core::bail!("wick CUDA kernels support f32, bf16 and f16, not {other:?}"),
        }
    };
}

/// Defines `pub fn $name(first: &CudaStorage, ...)` that runs `$body` with `T` the Rust type of
/// the first argument's dtype (a launcher's arguments are written once; the body is the launch).
macro_rules! launcher {
    (
        $(#[$m:meta])*
        pub fn $name:ident<$t:ident>(
            $first:ident: &CudaStorage,
            $($arg:ident: $ty:ty),* $(,)?
        ) -> $ret:ty $body:block
    ) => {
        $(#[$m])*
        pub fn $name($first: &CudaStorage, $($arg: $ty),*) -> $ret {
            $(#[$m])*
            fn go<$t: GpuFloat>($first: &CudaStorage, $($arg: $ty),*) -> $ret $body
            by_dtype!($first.dtype(), go($first, $($arg),*))
        }
    };
}

/// The view of `s` starting at the layout's offset (the rest of the buffer: strided readers index
/// past the contiguous span).
fn view<'a, T: GpuFloat>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    Ok(T::unwrap(&s.slice)?.slice(l.start_offset()..))
}

fn kernel<T: GpuFloat>(
    dev: &CudaDevice,
    module: Module,
    name: &'static str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaFunction> {
    function(dev, module, name, T::SUFFIX)
}

fn storage<T: GpuFloat>(dev: &CudaDevice, s: CudaSlice<T>) -> CudaStorage {
    CudaStorage {
        slice: T::wrap(s),
        device: dev.clone(),
    }
}

/// Threads per row for row-wise kernels that keep up to 8 elements per thread in registers.
fn row_block(n: usize) -> u32 {
    (n.div_ceil(8)).next_power_of_two().clamp(32, 1024) as u32
}

/// Most 16-byte vectors per thread the forward row kernels hold in registers (MAXV in
/// kernels/softmax.cu and kernels/rms_norm.cu).
const ROW_MAX_VECS: usize = 8;
/// Largest block of the forward row kernels (their `__launch_bounds__`).
const ROW_MAX_THREADS: usize = 512;

/// Vectors per thread the row plan aims for; 0 = the default (4). `wick bench kernels --row-vecs`
/// sets it to compare plans on the same machine.
static ROW_VECS_TARGET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets the 16-byte vectors per thread the forward row kernels (softmax, RMSNorm) aim for (1..=8;
/// `None` restores the default, 4). For benchmarks: every setting gives the same results.
pub fn set_row_vecs_per_thread(target: Option<usize>) {
    let v = target.map_or(0, |t| t.clamp(1, ROW_MAX_VECS));
    ROW_VECS_TARGET.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Block size and vectors per thread (`vpt`) of the forward row kernels for rows of `n` elements.
/// Rows that split into 16-byte vectors (and start 16-byte aligned) are held in registers, `vpt`
/// vectors per thread, with the block sized so that vpt is near the target: fewer, fatter threads
/// than one vector each, so each thread has several loads in flight and the block reduction is
/// short. Longer rows (more than 512 * 8 vectors: 16k f32, 32k bf16) get vpt 0, the online path.
/// Other rows: the scalar paths (8 elements per thread in registers up to 4096 elements).
fn row_plan<T: GpuFloat>(n: usize, aligned: bool) -> (u32, i32) {
    let per_vec = 16 / std::mem::size_of::<T>();
    if n % per_vec != 0 || !aligned {
        return (
            (n.div_ceil(8))
                .next_power_of_two()
                .clamp(32, ROW_MAX_THREADS) as u32,
            0,
        );
    }
    let vecs = n / per_vec;
    let target = match ROW_VECS_TARGET.load(std::sync::atomic::Ordering::Relaxed) {
        0 => 4,
        t => t,
    };
    let block = vecs
        .div_ceil(target)
        .next_power_of_two()
        .clamp(32, ROW_MAX_THREADS);
    let vpt = vecs.div_ceil(block);
    if vpt <= ROW_MAX_VECS {
        (block as u32, vpt as i32)
    } else {
        (ROW_MAX_THREADS as u32, 0)
    }
}

/// `grid` blocks of `block` threads, no dynamic shared memory.
fn config(grid: u32, block: u32) -> LaunchConfig {
    config_2d((grid, 1), block)
}

/// A (x, y) grid of `block`-thread blocks, no dynamic shared memory.
fn config_2d(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks of a grid-stride launch over `items` work items, `threads` a block: enough for one item
/// a thread, at most 16 blocks per SM of the H100's 132 (beyond, threads loop).
pub(crate) fn grid_blocks(items: usize, threads: usize) -> u32 {
    items.div_ceil(threads).clamp(1, 132 * 16) as u32
}

/// A grid-stride launch over `n` items with `block`-thread blocks ([`grid_blocks`]), no dynamic
/// shared memory.
pub(crate) fn grid_1d(n: usize, block: u32) -> LaunchConfig {
    config(grid_blocks(n, block as usize), block)
}

fn rows_cols(l: &Layout) -> (usize, usize) {
    let n = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / n, n)
}

// After the macros and helpers above, which the children use (textual macro scope).
mod decode_attention;
mod lora;

pub use decode_attention::decode_attention;
pub use lora::{lora_linear, lora_linear_small_into};

launcher! {
    /// Row-wise kernel with one input and one output of the same shape (`softmax`), sized by
    /// `row_plan`.
    pub fn rowwise1<T>(
        s: &CudaStorage,
        l: &Layout,
        name: &'static str,
    ) -> Result<CudaStorage> {
        let dev = &s.device;
        let (rows, n) = rows_cols(l);
        let x = view::<T>(s, l)?;
        output::<T>(dev, rows * n, |out| {
            let f = kernel::<T>(dev, Module::Softmax, name)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let n_i = n as i32;
            let per_vec = 16 / std::mem::size_of::<T>();
            let (block, vpt) = row_plan::<T>(n, l.start_offset() % per_vec == 0);
            b.arg(&x).arg(out).arg(&n_i).arg(&vpt);
            unsafe { b.launch(config(rows as u32, block)) }.w()?;
            Ok(())
        })
    }
}

launcher! {
    /// Row-wise kernel with two inputs (`softmax_backward`: y, dy).
    pub fn rowwise2<T>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        name: &'static str,
    ) -> Result<CudaStorage> {
        let dev = &s1.device;
        let (rows, n) = rows_cols(l1);
        let (a, b2) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        output::<T>(dev, rows * n, |out| {
            let f = kernel::<T>(dev, Module::Softmax, name)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let n_i = n as i32;
            b.arg(&a).arg(&b2).arg(out).arg(&n_i);
            let cfg = config(rows as u32, row_block(n).max(256));
            unsafe { b.launch(cfg) }.w()?;
            Ok(())
        })
    }
}

launcher! {
    /// RMSNorm; with a residual, returns [2, ...]: (normed, x + residual).
    pub fn rms_norm<T>(
        x: &CudaStorage,
        xl: &Layout,
        residual: Option<(&CudaStorage, &Layout)>,
        w: &CudaStorage,
        wl: &Layout,
        eps: f32,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let (rows, n) = rows_cols(xl);
        let parts = if residual.is_some() { 2 } else { 1 };
        // Rows of n >= 1 elements: the output is empty exactly when there are no rows.
        output::<T>(dev, parts * rows * n, |out| {
            let xv = view::<T>(x, xl)?;
            let wv = view::<T>(w, wl)?;
            let f = kernel::<T>(dev, Module::RmsNorm, "rms_norm")?;
            let stream = dev.cuda_stream();
            let null = 0u64;
            let rv;
            let mut b = stream.launch_builder(&f);
            b.arg(&xv);
            match residual {
                Some((r, rl)) => {
                    rv = view::<T>(r, rl)?;
                    b.arg(&rv);
                }
                None => {
                    b.arg(&null);
                }
            }
            let (rows_i, n_i) = (rows as i32, n as i32);
            let per_vec = 16 / std::mem::size_of::<T>();
            let aligned = [Some(xl), Some(wl), residual.map(|r| r.1)]
                .iter()
                .flatten()
                .all(|l| l.start_offset() % per_vec == 0);
            let (block, vpt) = row_plan::<T>(n, aligned);
            b.arg(&wv)
                .arg(out)
                .arg(&rows_i)
                .arg(&n_i)
                .arg(&eps)
                .arg(&vpt);
            unsafe { b.launch(config(rows as u32, block)) }.w()?;
            Ok(())
        })
    }
}

launcher! {
    /// RMSNorm backward: returns [rows * n + n]: dx then dw.
    pub fn rms_norm_backward<T>(
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
        eps: f32,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let (rows, n) = rows_cols(xl);
        let mut out = alloc_out::<T>(dev, rows * n + n)?;
        let parts = rows.clamp(1, 264);
        let mut partial = unsafe { dev.alloc::<f32>(parts * n)? };
        let stream = dev.cuda_stream();
        {
            let (xv, wv, dyv) = (view::<T>(x, xl)?, view::<T>(w, wl)?, view::<T>(dy, dyl)?);
            let mut dx = out.slice_mut(0..rows * n);
            let f = kernel::<T>(dev, Module::RmsNorm, "rms_norm_backward")?;
            let mut b = stream.launch_builder(&f);
            let (rows_i, n_i) = (rows as i32, n as i32);
            b.arg(&xv).arg(&wv).arg(&dyv).arg(&mut dx).arg(&mut partial);
            b.arg(&rows_i).arg(&n_i).arg(&eps);
            let cfg = config(parts as u32, row_block(n).max(128));
            unsafe { b.launch(cfg) }.w()?;
        }
        {
            let mut dw = out.slice_mut(rows * n..);
            let f = kernel::<T>(dev, Module::RmsNorm, "rms_norm_dw")?;
            let mut b = stream.launch_builder(&f);
            let (parts_i, n_i) = (parts as i32, n as i32);
            b.arg(&partial).arg(&mut dw).arg(&parts_i).arg(&n_i);
            unsafe { b.launch(grid_1d(n, 256)) }.w()?;
        }
        Ok(storage(dev, out))
    }
}

launcher! {
    /// RoPE on x [b, h, seq, d] (strided in the first three dims).
    pub fn rope<T>(
        x: &CudaStorage,
        xl: &Layout,
        cos: &CudaStorage,
        cl: &Layout,
        sin: &CudaStorage,
        sl: &Layout,
        interleaved: bool,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let dims = xl.dims();
        let st = xl.stride();
        let len = xl.shape().elem_count();
        let mut out = alloc_out::<T>(dev, len)?;
        let pairs = len / 2;
        if pairs == 0 {
            return Ok(storage(dev, out));
        }
        let (xv, cv, sv) = (view::<T>(x, xl)?, view::<T>(cos, cl)?, view::<T>(sin, sl)?);
        let f = kernel::<T>(dev, Module::Rope, "rope")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (h, seq, d) = (dims[1] as i32, dims[2] as i32, dims[3] as i32);
        let (s0, s1, s2) = (st[0] as i64, st[1] as i64, st[2] as i64);
        let inter = interleaved as i32;
        let pairs_u = pairs as u64;
        b.arg(&xv).arg(&cv).arg(&sv).arg(&mut out);
        b.arg(&h)
            .arg(&seq)
            .arg(&d)
            .arg(&s0)
            .arg(&s1)
            .arg(&s2)
            .arg(&inter)
            .arg(&pairs_u);
        unsafe { b.launch(grid_1d(pairs, 256)) }.w()?;
        Ok(storage(dev, out))
    }
}

launcher! {
    /// Elementwise kernel of two inputs (`swiglu`).
    pub fn elementwise2<T>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        name: &'static str,
    ) -> Result<CudaStorage> {
        let dev = &s1.device;
        let n = l1.shape().elem_count();
        output::<T>(dev, n, |out| {
            let (a, c) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
            let f = kernel::<T>(dev, Module::Swiglu, name)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let n_u = n as u64;
            b.arg(&a).arg(&c).arg(out).arg(&n_u);
            unsafe { b.launch(grid_1d(n, 256)) }.w()?;
            Ok(())
        })
    }
}

launcher! {
    /// SwiGLU backward: returns [2, n]: (dgate, dup).
    pub fn swiglu_backward<T>(
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<CudaStorage> {
        let dev = &g.device;
        let n = gl.shape().elem_count();
        output::<T>(dev, 2 * n, |out| {
            let (gv, uv, dv) = (view::<T>(g, gl)?, view::<T>(u, ul)?, view::<T>(dy, dyl)?);
            let f = kernel::<T>(dev, Module::Swiglu, "swiglu_backward")?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let n_u = n as u64;
            b.arg(&gv).arg(&uv).arg(&dv).arg(out).arg(&n_u);
            unsafe { b.launch(grid_1d(n, 256)) }.w()?;
            Ok(())
        })
    }
}

launcher! {
    /// Cross-entropy: per-row losses (f32, divided by the count) and, when asked, the gradient.
    pub fn cross_entropy<T>(
        logits: &CudaStorage,
        ll: &Layout,
        labels: &CudaStorage,
        lab_l: &Layout,
        want_grad: bool,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        let dev = &logits.device;
        let (rows, vocab) = rows_cols(ll);
        let labels = match &labels.slice {
            S::I64(s) => s.slice(lab_l.start_offset()..),
            _ => candle_core::bail!("cross-entropy labels must be i64"),
        };
        let mut losses = alloc_out::<f32>(dev, rows)?;
        let mut grad = if want_grad {
            Some(alloc_out::<T>(dev, rows * vocab)?)
        } else {
            None
        };
        if rows > 0 {
            let stream = dev.cuda_stream();
            let mut count = unsafe { dev.alloc::<f32>(1)? };
            let rows_i = rows as i32;
            let f = function(dev, Module::CrossEntropy, "cross_entropy_count", "")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&labels).arg(&rows_i).arg(&mut count);
            let one_block = config(1, 1024);
            unsafe { b.launch(one_block) }.w()?;

            let x = view::<T>(logits, ll)?;
            let f = kernel::<T>(dev, Module::CrossEntropy, "cross_entropy")?;
            let mut b = stream.launch_builder(&f);
            let null = 0u64;
            let vocab_i = vocab as i32;
            b.arg(&x).arg(&labels).arg(&count).arg(&mut losses);
            match grad.as_mut() {
                Some(g) => b.arg(g),
                None => b.arg(&null),
            };
            b.arg(&vocab_i);
            let cfg = config(rows as u32, row_block(vocab).max(256));
            unsafe { b.launch(cfg) }.w()?;
        }
        let losses = storage(dev, losses);
        Ok((losses, grad.map(|g| storage(dev, g))))
    }
}
