//! Launchers of the LoRA linear kernels (kernels/lora_linear.cu): the one-kernel path for few
//! tokens and small ranks (`lora_linear_small_into`, in place) and the general `lora_linear`.

use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Storage, Tensor};

use super::*;

/// Up to this many tokens the whole LoRA layer is one kernel (decode, short prompts); beyond, the
/// base product goes to cuBLAS. MAX_T in kernels/lora_linear.cu.
const LORA_SMALL_MAX_TOKENS: usize = 8;
/// Largest rank the one-kernel path holds in shared memory (MAX_R in kernels/lora_linear.cu).
const LORA_SMALL_MAX_RANK: usize = 64;

fn tensor_view<'a, T: GpuFloat>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match storage {
        Storage::Cuda(s) => view::<T>(s, layout),
        _ => candle_core::bail!("lora linear: {what} is not on the GPU"),
    }
}

/// The inputs of one `lora_linear_small` launch (views at their layouts' offsets).
struct LoraSmall<'a, T: GpuFloat> {
    x: (&'a CudaView<'a, T>, &'a Layout),
    w: (&'a CudaView<'a, T>, &'a Layout),
    bias: Option<&'a CudaView<'a, T>>,
    a: (&'a CudaView<'a, T>, &'a Layout),
    b: &'a CudaView<'a, T>,
    /// (tokens, in, out, rank).
    dims: (usize, usize, usize, usize),
    scale: f32,
}

/// One launch of the few-token kernel writing y [tokens, out]: 8 warps per block, one output row
/// per warp (out / 8 blocks: 128 for out = 1024), no allocation (so it can be captured in a graph).
fn launch_lora_small<T: GpuFloat>(
    dev: &CudaDevice,
    y: &mut CudaViewMut<'_, T>,
    p: &LoraSmall<'_, T>,
) -> Result<()> {
    let (tokens, in_f, out_f, rank) = p.dims;
    if tokens == 0 || out_f == 0 {
        return Ok(());
    }
    // 16-byte loads need 16-byte aligned rows.
    let per_vec = 16 / std::mem::size_of::<T>();
    let aligned = |l: &Layout| l.start_offset() % per_vec == 0;
    let vec = (in_f % per_vec == 0 && aligned(p.x.1) && aligned(p.a.1) && aligned(p.w.1)) as i32;
    let (t_i, in_i, out_i, r_i) = (tokens as i32, in_f as i32, out_f as i32, rank as i32);
    let f = kernel::<T>(dev, Module::LoraLinear, "lora_linear_small")?;
    let stream = dev.cuda_stream();
    let null = 0u64;
    let mut lb = stream.launch_builder(&f);
    lb.arg(p.x.0).arg(p.w.0);
    match p.bias {
        Some(bias) => lb.arg(bias),
        None => lb.arg(&null),
    };
    lb.arg(p.a.0).arg(p.b).arg(y);
    lb.arg(&t_i)
        .arg(&in_i)
        .arg(&out_i)
        .arg(&r_i)
        .arg(&p.scale)
        .arg(&vec);
    let cfg = config(out_f.div_ceil(8) as u32, 256);
    unsafe { lb.launch(cfg) }.w()?;
    Ok(())
}

/// `y = x W^T + bias + scale (x A^T) B^T` written into an existing y [t, out] by the few-token
/// kernel (t <= 8, r <= 64; contiguous tensors of one dtype on one CUDA device): no allocation, so
/// it can be recorded in a CUDA graph. Used to time the kernel alone (`wick bench kernels`).
pub fn lora_linear_small_into(
    y: &Tensor,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f32,
) -> Result<()> {
    let (tokens, _) = x.dims2()?;
    let (rank, _) = a.dims2()?;
    if tokens > LORA_SMALL_MAX_TOKENS || rank > LORA_SMALL_MAX_RANK {
        candle_core::bail!(
            "lora_linear_small_into: {tokens} tokens (at most {LORA_SMALL_MAX_TOKENS}), rank {rank} (at most {LORA_SMALL_MAX_RANK})"
        );
    }
    for t in [Some(y), Some(x), Some(w), bias, Some(a), Some(b)]
        .into_iter()
        .flatten()
    {
        if !t.is_contiguous() || t.dtype() != x.dtype() {
            candle_core::bail!("lora_linear_small_into: tensors must be contiguous, one dtype");
        }
    }
    y.inplace_op3(
        x,
        a,
        &LoraSmallInto {
            w: w.clone(),
            bias: bias.cloned(),
            b: b.clone(),
            scale,
        },
    )
}

/// The in-place op behind `lora_linear_small_into`: y (in place), x, a; W, bias and B held.
struct LoraSmallInto {
    w: Tensor,
    bias: Option<Tensor>,
    b: Tensor,
    scale: f32,
}

impl candle_core::InplaceOp3 for LoraSmallInto {
    fn name(&self) -> &'static str {
        "wick-lora-small-into"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        candle_core::bail!("lora_linear_small_into runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
        a: &CudaStorage,
        al: &Layout,
    ) -> Result<()> {
        fn go<T: GpuFloat>(
            op: &LoraSmallInto,
            y: &mut CudaStorage,
            yl: &Layout,
            x: &CudaStorage,
            xl: &Layout,
            a: &CudaStorage,
            al: &Layout,
        ) -> Result<()> {
            let dev = x.device.clone();
            let (tokens, in_f) = xl.shape().dims2()?;
            let (rank, _) = al.shape().dims2()?;
            let (out_f, _) = op.w.dims2()?;
            let (wg, bg) = (op.w.storage_and_layout(), op.b.storage_and_layout());
            let bias_guard = op.bias.as_ref().map(|t| t.storage_and_layout());
            let wv = tensor_view::<T>(&wg.0, wg.1, "base weight")?;
            let bv = tensor_view::<T>(&bg.0, bg.1, "lora b")?;
            let biasv = match &bias_guard {
                Some(g) => Some(tensor_view::<T>(&g.0, g.1, "bias")?),
                None => None,
            };
            let (xv, av) = (view::<T>(x, xl)?, view::<T>(a, al)?);
            let small = LoraSmall {
                x: (&xv, xl),
                w: (&wv, wg.1),
                bias: biasv.as_ref(),
                a: (&av, al),
                b: &bv,
                dims: (tokens, in_f, out_f, rank),
                scale: op.scale,
            };
            let start = yl.start_offset();
            let mut yv = T::unwrap_mut(&mut y.slice)?.slice_mut(start..start + tokens * out_f);
            launch_lora_small(&dev, &mut yv, &small)
        }
        by_dtype!(x.dtype(), go(self, y, yl, x, xl, a, al))
    }
}

launcher! {
    /// LoRA linear: `x W^T + bias + scale (x A^T) B^T`, or the low-rank term alone without
    /// `weight`.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_linear<T>(
        x: &CudaStorage,
        xl: &Layout,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        scale: f32,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let (tokens, in_f) = xl.shape().dims2()?;
        let (rank, _) = al.shape().dims2()?;
        let (out_f, _) = bl.shape().dims2()?;
        let stream = dev.cuda_stream();
        let w_guard = weight.map(|w| w.storage_and_layout());
        let bias_guard = bias.map(|t| t.storage_and_layout());
        let null = 0u64;
        let (t_i, out_i, r_i) = (tokens as i32, out_f as i32, rank as i32);
        if let (Some(wg), true, true) = (
            &w_guard,
            tokens <= LORA_SMALL_MAX_TOKENS,
            rank <= LORA_SMALL_MAX_RANK,
        ) {
            let mut y = alloc_out::<T>(dev, tokens * out_f)?;
            if tokens == 0 {
                return Ok(storage(dev, y));
            }
            let wv = tensor_view::<T>(&wg.0, wg.1, "base weight")?;
            let biasv = match &bias_guard {
                Some(g) => Some(tensor_view::<T>(&g.0, g.1, "bias")?),
                None => None,
            };
            let (xv, av, bv) = (view::<T>(x, xl)?, view::<T>(a, al)?, view::<T>(b, bl)?);
            let small = LoraSmall {
                x: (&xv, xl),
                w: (&wv, wg.1),
                bias: biasv.as_ref(),
                a: (&av, al),
                b: &bv,
                dims: (tokens, in_f, out_f, rank),
                scale,
            };
            launch_lora_small(dev, &mut y.slice_mut(..), &small)?;
            return Ok(storage(dev, y));
        }
        // Many tokens: cuBLAS for low = x A^T (and the base product), then one fused kernel.
        let low = x.matmul(a, (1, tokens, rank, in_f), xl, &al.transpose(0, 1)?)?;
        let (mut y, accumulate) = match &w_guard {
            Some((ws, wl)) => match &**ws {
                Storage::Cuda(ws) => (
                    x.matmul(ws, (1, tokens, out_f, in_f), xl, &wl.transpose(0, 1)?)?,
                    1i32,
                ),
                _ => candle_core::bail!("lora linear: base weight is not on the GPU"),
            },
            None => (storage(dev, alloc_out::<T>(dev, tokens * out_f)?), 0i32),
        };
        let n = tokens * out_f;
        if n > 0 {
            let low_s = T::unwrap(&low.slice)?;
            let bv = view::<T>(b, bl)?;
            let y_s = T::unwrap_mut(&mut y.slice)?;
            let f = kernel::<T>(dev, Module::LoraLinear, "lora_add_low_rank")?;
            let biasv;
            let mut lb = stream.launch_builder(&f);
            lb.arg(y_s).arg(low_s).arg(&bv);
            match &bias_guard {
                Some(g) => {
                    biasv = tensor_view::<T>(&g.0, g.1, "bias")?;
                    lb.arg(&biasv);
                }
                None => {
                    lb.arg(&null);
                }
            }
            lb.arg(&t_i)
                .arg(&out_i)
                .arg(&r_i)
                .arg(&scale)
                .arg(&accumulate);
            unsafe { lb.launch(grid_1d(n, 256)) }.w()?;
        }
        Ok(y)
    }
}
