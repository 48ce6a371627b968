//! `wick bench kernels`: times wick's fused kernels (and Candle's own op where it has one) at the
//! CUDA-kernels issue's shapes: time per call, achieved GB/s (bytes read + written once) or TFLOP/s.
//! benches/anchors/kernels_torch.py times PyTorch eager and CUDA-graph at the same shapes.
//!
//! What each implementation measures (`us_per_call` is always the median of `loops` timed loops of
//! `iters` calls, each loop bracketed by device synchronisations; `us_best` is the fastest loop):
//! - `wick`, `candle`, `candle-composed`, `copy`: the public op called from Rust, pipelined (no
//!   synchronisation between calls): host work (Candle's op dispatch, the output's allocation from
//!   the stream's pool, the launch) and GPU work overlap, so a call costs the larger of the two.
//! - `wick-kernel` (few-token LoRA): the kernel alone, launched eagerly into an existing output
//!   (`gpu::launch::lora_linear_small_into`): no op dispatch, no allocation.
//! - `wick-graph` (few-token LoRA): `GRAPH_CALLS` launches of that kernel recorded in one CUDA graph,
//!   replayed; time per kernel = replay time / GRAPH_CALLS, i.e. the GPU time of one kernel plus the
//!   gap between dependent kernels in a graph, without host cost (PyTorch's `torch-cuda-graph` rows
//!   record one call per graph, so they include one graph launch per call).
//! - `copy`: `Tensor::copy` (a device-to-device copy) of the same tensor: the bandwidth that a row
//!   kernel reading and writing each byte once can at best reach.
//! - `wick-v{N}`: softmax/RMSNorm with the row plan aiming at N 16-byte vectors per thread
//!   (`--row-vecs`); `wick` is the default plan (4).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use wick::check::random_tensor;

/// Options of `wick bench kernels`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to measure on.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Write the measurements here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Target wall time per measurement, in milliseconds (split over the timed loops).
    #[arg(long, default_value_t = 200)]
    target_ms: u64,
    /// Timed loops per measurement; the median is reported.
    #[arg(long, default_value_t = 11)]
    loops: usize,
    /// Also time softmax and RMSNorm with these row plans (16-byte vectors per thread, 1..8),
    /// e.g. `2,4,8`, as implementation `wick-v{N}`.
    #[arg(long, value_delimiter = ',')]
    row_vecs: Vec<usize>,
}

/// Kernel launches recorded per CUDA graph in the `wick-graph` rows.
#[cfg(feature = "cuda")]
const GRAPH_CALLS: usize = 20;

/// One measurement.
#[derive(Serialize)]
struct Timing {
    kernel: String,
    implementation: String,
    dtype: String,
    shape: String,
    /// Median over the timed loops of the time per call.
    us_per_call: f64,
    /// The fastest loop's time per call.
    us_best: f64,
    gb_per_s: Option<f64>,
    tflop_per_s: Option<f64>,
    /// Calls per timed loop.
    iters: usize,
    /// Timed loops.
    loops: usize,
}

/// Per-call times of one measurement: (median, best) in microseconds, calls per loop, loops.
type Measured = (f64, f64, usize, usize);

/// Times `f` (which issues `calls_per_f` calls): loops sized to take `target_ms / loops` each (at
/// least 20 calls), bracketed by synchronisations, after 5 untimed calls.
fn time_loops(
    device: &Device,
    target_ms: u64,
    loops: usize,
    calls_per_f: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Measured> {
    for _ in 0..5 {
        f()?;
    }
    device.synchronize()?;
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    let one = start.elapsed().as_secs_f64().max(1e-6);
    let loops = loops.max(1);
    let iters = ((target_ms as f64 / 1e3 / loops as f64 / one) as usize).clamp(20, 20_000);
    let mut per_call = Vec::with_capacity(loops);
    for _ in 0..loops {
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        device.synchronize()?;
        per_call.push(start.elapsed().as_secs_f64() * 1e6 / (iters * calls_per_f) as f64);
    }
    per_call.sort_by(f64::total_cmp);
    Ok((
        per_call[per_call.len() / 2],
        per_call[0],
        iters * calls_per_f,
        loops,
    ))
}

/// Times a call that returns a tensor (dropped right away, as a caller would).
fn time_call(
    device: &Device,
    target_ms: u64,
    loops: usize,
    mut f: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<Measured> {
    time_loops(device, target_ms, loops, 1, || f().map(drop))
}

/// The timings so far; `push` prints each as it comes.
struct Recorder {
    out: Vec<Timing>,
}

impl Recorder {
    /// Records one timing of `kernel` by `imp`, with its bandwidth and throughput where the bytes
    /// moved and the flops are known.
    fn push(
        &mut self,
        kernel: &str,
        imp: &str,
        dtype: DType,
        shape: String,
        (us, us_best, iters, loops): Measured,
        (bytes, flops): (Option<f64>, Option<f64>),
    ) {
        let t = Timing {
            kernel: kernel.into(),
            implementation: imp.into(),
            dtype: dtype.as_str().into(),
            shape,
            us_per_call: us,
            us_best,
            gb_per_s: bytes.map(|b| b / us / 1e3),
            tflop_per_s: flops.map(|f| f / us / 1e6),
            iters,
            loops,
        };
        println!(
            "{:<14} {:<16} {:>5} {:>22} {:>10.2} us (best {:>8.2}) {:>9} GB/s {:>8} TFLOP/s",
            t.kernel,
            t.implementation,
            t.dtype,
            t.shape,
            t.us_per_call,
            t.us_best,
            t.gb_per_s.map_or("-".into(), |g| format!("{g:.0}")),
            t.tflop_per_s.map_or("-".into(), |f| format!("{f:.1}")),
        );
        self.out.push(t);
    }
}

/// LoRA linear forward: y = x W^T + s (x A^T) B^T, d_in = d_out = d; wick's op, its kernel alone
/// and from a graph (few tokens, CUDA), and Candle's composed ops.
fn lora_cases(rec: &mut Recorder, device: &Device, ms: u64, loops: usize) -> anyhow::Result<()> {
    for &(t, d, r) in &[
        (1, 1024, 8),
        (1, 1024, 16),
        (128, 1024, 8),
        (128, 1024, 16),
        (2048, 1024, 8),
        (2048, 1024, 16),
        (8192, 4096, 16),
    ] {
        for dtype in [DType::BF16, DType::F32] {
            let x = random_tensor(&[t, d], dtype, device, 1, 1.0)?;
            let w = random_tensor(&[d, d], dtype, device, 2, 0.05)?;
            let a = random_tensor(&[r, d], dtype, device, 3, 0.05)?;
            let b = random_tensor(&[d, r], dtype, device, 4, 0.05)?;
            let flops = 2.0 * (t * d * d + 2 * t * d * r) as f64;
            let bytes = (dtype.size_in_bytes() * (d * d + 2 * t * d + 2 * d * r)) as f64;
            let shape = format!("t{t} d{d} r{r}");
            let fused = time_call(device, ms, loops, || {
                Ok(wick::ops::lora_linear::lora_linear(
                    &x,
                    Some(&w),
                    None,
                    &a,
                    &b,
                    2.0,
                )?)
            })?;
            rec.push(
                "lora_linear",
                "wick",
                dtype,
                shape.clone(),
                fused,
                (Some(bytes), Some(flops)),
            );
            #[cfg(feature = "cuda")]
            if t <= 8 && device.is_cuda() {
                let (kernel_only, graph) = time_lora_small(device, ms, loops, [&x, &w, &a, &b])?;
                rec.push(
                    "lora_linear",
                    "wick-kernel",
                    dtype,
                    shape.clone(),
                    kernel_only,
                    (Some(bytes), Some(flops)),
                );
                rec.push(
                    "lora_linear",
                    "wick-graph",
                    dtype,
                    shape.clone(),
                    graph,
                    (Some(bytes), Some(flops)),
                );
            }
            let composed = time_call(device, ms, loops, || {
                let base = x.matmul(&w.t()?)?;
                let low = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
                Ok((base + (low * 2.0)?)?)
            })?;
            rec.push(
                "lora_linear",
                "candle-composed",
                dtype,
                shape,
                composed,
                (Some(bytes), Some(flops)),
            );
        }
    }

    Ok(())
}

/// Row ops (softmax, RMSNorm) by wick (and per `--row-vecs` plan on CUDA) and by Candle, beside a
/// copy of the same bytes.
fn row_cases(rec: &mut Recorder, device: &Device, args: &Args) -> anyhow::Result<()> {
    let (ms, loops) = (args.target_ms, args.loops);
    for &(rows, n) in &[(1, 576), (128, 576), (4096, 4096), (8, 49152)] {
        for dtype in [DType::F32, DType::BF16] {
            let x = random_tensor(&[rows, n], dtype, device, 5, 4.0)?;
            let w = random_tensor(&[n], dtype, device, 6, 1.0)?;
            let bytes = (2 * rows * n * dtype.size_in_bytes()) as f64;
            let shape = format!("{rows}x{n}");
            let timing = time_call(device, ms, loops, || Ok(x.copy()?))?;
            rec.push(
                "copy",
                "copy",
                dtype,
                shape.clone(),
                timing,
                (Some(bytes), None),
            );
            #[cfg(feature = "cuda")]
            for &v in &args.row_vecs {
                let imp = format!("wick-v{v}");
                wick::gpu::launch::set_row_vecs_per_thread(Some(v));
                let timing = time_call(device, ms, loops, || {
                    Ok(wick::ops::softmax::softmax_last_dim(&x)?)
                })?;
                rec.push(
                    "softmax",
                    &imp,
                    dtype,
                    shape.clone(),
                    timing,
                    (Some(bytes), None),
                );
                let timing = time_call(device, ms, loops, || {
                    Ok(wick::ops::rms_norm::rms_norm(&x, &w, 1e-6)?)
                })?;
                rec.push(
                    "rms_norm",
                    &imp,
                    dtype,
                    shape.clone(),
                    timing,
                    (Some(bytes), None),
                );
                wick::gpu::launch::set_row_vecs_per_thread(None);
            }
            let timing = time_call(device, ms, loops, || {
                Ok(wick::ops::softmax::softmax_last_dim(&x)?)
            })?;
            rec.push(
                "softmax",
                "wick",
                dtype,
                shape.clone(),
                timing,
                (Some(bytes), None),
            );
            let timing = time_call(device, ms, loops, || {
                Ok(candle_nn::ops::softmax_last_dim(&x)?)
            })?;
            rec.push(
                "softmax",
                "candle",
                dtype,
                shape.clone(),
                timing,
                (Some(bytes), None),
            );
            let timing = time_call(device, ms, loops, || {
                Ok(wick::ops::rms_norm::rms_norm(&x, &w, 1e-6)?)
            })?;
            rec.push(
                "rms_norm",
                "wick",
                dtype,
                shape.clone(),
                timing,
                (Some(bytes), None),
            );
            let timing = time_call(device, ms, loops, || {
                Ok(candle_nn::ops::rms_norm(&x, &w, 1e-6)?)
            })?;
            rec.push(
                "rms_norm",
                "candle",
                dtype,
                shape,
                timing,
                (Some(bytes), None),
            );
        }
    }

    Ok(())
}

/// Runs `wick bench kernels`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let mut rec = Recorder { out: Vec::new() };
    let (ms, loops) = (args.target_ms, args.loops);
    #[cfg(not(feature = "cuda"))]
    if !args.row_vecs.is_empty() {
        anyhow::bail!("--row-vecs sets the CUDA row plan: build with --features cuda");
    }

    lora_cases(&mut rec, &device, ms, loops)?;
    row_cases(&mut rec, &device, &args)?;

    let date = std::env::var("WICK_RUN_DATE").unwrap_or_default();
    let device_name = std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(path) = &args.out {
        let json = serde_json::json!({
            "command": command, "device": device_name, "date": date, "timings": rec.out,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The few-token LoRA kernel alone at one shape ([x, w, a, b], scale 2): launched eagerly into an
/// existing output, and replayed from a CUDA graph of `GRAPH_CALLS` launches. Checks first that the
/// graph's output equals the eager op's.
#[cfg(feature = "cuda")]
fn time_lora_small(
    device: &Device,
    target_ms: u64,
    loops: usize,
    [x, w, a, b]: [&Tensor; 4],
) -> anyhow::Result<(Measured, Measured)> {
    use wick::gpu::launch::lora_linear_small_into;
    let (t, _) = x.dims2()?;
    let (out, _) = w.dims2()?;
    let y = Tensor::zeros((t, out), x.dtype(), device)?;
    let into = || -> anyhow::Result<()> { Ok(lora_linear_small_into(&y, x, w, None, a, b, 2.0)?) };
    let kernel_only = time_loops(device, target_ms, loops, 1, into)?;
    device.synchronize()?;
    let (graph, ()) = wick::gpu::graph::capture(device, || {
        for _ in 0..GRAPH_CALLS {
            lora_linear_small_into(&y, x, w, None, a, b, 2.0)?;
        }
        Ok(())
    })?;
    graph.upload()?;
    let y_zero = Tensor::zeros((t, out), x.dtype(), device)?;
    y.slice_set(&y_zero, 0, 0)?;
    graph.replay()?;
    let want = wick::ops::lora_linear::lora_linear(x, Some(w), None, a, b, 2.0)?;
    let diff = (y.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    anyhow::ensure!(
        diff == 0.0,
        "lora graph replay differs from the eager op by {diff}"
    );
    let graph_timing = time_loops(
        device,
        target_ms,
        loops,
        GRAPH_CALLS,
        || Ok(graph.replay()?),
    )?;
    Ok((kernel_only, graph_timing))
}
