//! `wick bench kernels`: times wick's fused kernels (and Candle's own op where it has one) at the
//! CUDA-kernels issue's shapes, with synchronise-bracketed loops of many calls: time per call,
//! achieved GB/s (bytes read + written once) or TFLOP/s. benches/anchors/kernels_torch.py times
//! PyTorch eager and CUDA-graph at the same shapes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use wick::ops::check::random_tensor;

/// Options of `wick bench kernels`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to measure on.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Write the measurements here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Target wall time per measurement, in milliseconds.
    #[arg(long, default_value_t = 200)]
    target_ms: u64,
}

/// One measurement.
#[derive(Serialize)]
struct Timing {
    kernel: String,
    implementation: String,
    dtype: String,
    shape: String,
    us_per_call: f64,
    gb_per_s: Option<f64>,
    tflop_per_s: Option<f64>,
    iters: usize,
}

/// Microseconds per call of `f`, from a loop sized to take about `target_ms` (at least 20 calls),
/// bracketed by synchronisations; the best of 3 loops.
fn time_call(
    device: &Device,
    target_ms: u64,
    mut f: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<(f64, usize)> {
    for _ in 0..5 {
        f()?;
    }
    device.synchronize()?;
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    let one = start.elapsed().as_secs_f64().max(1e-6);
    let iters = ((target_ms as f64 / 1e3 / one) as usize).clamp(20, 20_000);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        device.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
    Ok((best, iters))
}

/// Runs `wick bench kernels`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let mut out: Vec<Timing> = Vec::new();
    let mut push = |kernel: &str,
                    imp: &str,
                    dtype: DType,
                    shape: String,
                    (us, iters): (f64, usize),
                    bytes: Option<f64>,
                    flops: Option<f64>| {
        let t = Timing {
            kernel: kernel.into(),
            implementation: imp.into(),
            dtype: dtype.as_str().into(),
            shape,
            us_per_call: us,
            gb_per_s: bytes.map(|b| b / us / 1e3),
            tflop_per_s: flops.map(|f| f / us / 1e6),
            iters,
        };
        println!(
            "{:<14} {:<16} {:>5} {:>22} {:>10.2} us {:>9} GB/s {:>8} TFLOP/s",
            t.kernel,
            t.implementation,
            t.dtype,
            t.shape,
            t.us_per_call,
            t.gb_per_s.map_or("-".into(), |g| format!("{g:.0}")),
            t.tflop_per_s.map_or("-".into(), |f| format!("{f:.1}")),
        );
        out.push(t);
    };
    let ms = args.target_ms;

    // LoRA linear forward: y = x W^T + s (x A^T) B^T, d_in = d_out = d.
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
            let x = random_tensor(&[t, d], dtype, &device, 1, 1.0)?;
            let w = random_tensor(&[d, d], dtype, &device, 2, 0.05)?;
            let a = random_tensor(&[r, d], dtype, &device, 3, 0.05)?;
            let b = random_tensor(&[d, r], dtype, &device, 4, 0.05)?;
            let flops = 2.0 * (t * d * d + 2 * t * d * r) as f64;
            let bytes = (dtype.size_in_bytes() * (d * d + 2 * t * d + 2 * d * r)) as f64;
            let shape = format!("t{t} d{d} r{r}");
            let fused = time_call(&device, ms, || {
                Ok(wick::ops::lora_linear::lora_linear(
                    &x,
                    Some(&w),
                    None,
                    &a,
                    &b,
                    2.0,
                )?)
            })?;
            push(
                "lora_linear",
                "wick",
                dtype,
                shape.clone(),
                fused,
                Some(bytes),
                Some(flops),
            );
            let composed = time_call(&device, ms, || {
                let base = x.matmul(&w.t()?)?;
                let low = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
                Ok((base + (low * 2.0)?)?)
            })?;
            push(
                "lora_linear",
                "candle-composed",
                dtype,
                shape,
                composed,
                Some(bytes),
                Some(flops),
            );
        }
    }

    for &(rows, n) in &[(1, 576), (128, 576), (4096, 4096), (8, 49152)] {
        for dtype in [DType::F32, DType::BF16] {
            let x = random_tensor(&[rows, n], dtype, &device, 5, 4.0)?;
            let w = random_tensor(&[n], dtype, &device, 6, 1.0)?;
            let bytes = (2 * rows * n * dtype.size_in_bytes()) as f64;
            let shape = format!("{rows}x{n}");
            let timing = time_call(&device, ms, || {
                Ok(wick::ops::softmax::softmax_last_dim(&x)?)
            })?;
            push(
                "softmax",
                "wick",
                dtype,
                shape.clone(),
                timing,
                Some(bytes),
                None,
            );
            let timing = time_call(&device, ms, || Ok(candle_nn::ops::softmax_last_dim(&x)?))?;
            push(
                "softmax",
                "candle",
                dtype,
                shape.clone(),
                timing,
                Some(bytes),
                None,
            );
            let timing = time_call(&device, ms, || {
                Ok(wick::ops::rms_norm::rms_norm(&x, &w, 1e-6)?)
            })?;
            push(
                "rms_norm",
                "wick",
                dtype,
                shape.clone(),
                timing,
                Some(bytes),
                None,
            );
            let timing = time_call(&device, ms, || Ok(candle_nn::ops::rms_norm(&x, &w, 1e-6)?))?;
            push(
                "rms_norm",
                "candle",
                dtype,
                shape,
                timing,
                Some(bytes),
                None,
            );
        }
    }

    let date = std::env::var("WICK_RUN_DATE").unwrap_or_default();
    let device_name = std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(path) = &args.out {
        let json = serde_json::json!({
            "command": command, "device": device_name, "date": date, "timings": out,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
