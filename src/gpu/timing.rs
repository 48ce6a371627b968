//! Measures the matmul paths of `gpu::dispatch` at one shape: time per call, pipelined (no
//! synchronisation between calls, as a model's forward pass issues them), and agreement with
//! Candle's result. `wick bench dispatch` runs it over a grid and writes the dispatch table.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::dispatch::{linear_with, MatmulPath};
use crate::{Context, Result};

/// One path's figures at one shape.
#[derive(Clone, Debug, Serialize)]
pub struct PathTiming {
    /// The path measured.
    pub path: MatmulPath,
    /// Microseconds per call, the best of `repeats` pipelined runs of `iters` calls each.
    pub us_per_call: f64,
    /// FLOP/s achieved (2 m n k per call).
    pub tflops: f64,
    /// Largest |y - y_candle| / max |y_candle| over the output.
    pub max_rel_err: f64,
}

/// Every path's figures at one shape, and the fastest.
#[derive(Clone, Debug, Serialize)]
pub struct ShapeTiming {
    /// "f32", "bf16" or "f16".
    pub dtype: String,
    /// x: [m, k], W: [n, k].
    pub m: usize,
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Calls per timed run.
    pub iters: usize,
    /// One entry per path that takes the shape, in `MatmulPath::ALL` order.
    pub paths: Vec<PathTiming>,
    /// The fastest path.
    pub best: MatmulPath,
}

/// Times y = x W^T through every path at one shape; x: [m, k], W: [n, k], seeded uniform(-1, 1).
pub fn time_linear(
    device: &Device,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
) -> Result<ShapeTiming> {
    let mut rng = rand::rngs::StdRng::seed_from_u64((m * 31 + n * 7 + k) as u64);
    let mut random =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let x = Tensor::from_vec(random(m * k), (m, k), device)?.to_dtype(dtype)?;
    let w = Tensor::from_vec(random(n * k), (n, k), device)?.to_dtype(dtype)?;
    let what = format!("timing {dtype:?} m={m} n={n} k={k}");

    let reference = linear_with(MatmulPath::Candle, &x, &w, None)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    let scale = reference.abs()?.max(0)?.to_scalar::<f32>().context(&what)? as f64;

    // Calls per run: enough for ~20 ms of work, judged from one synchronised call, 10..2000.
    linear_with(MatmulPath::Candle, &x, &w, None)?;
    device.synchronize().context(&what)?;
    let start = Instant::now();
    linear_with(MatmulPath::Candle, &x, &w, None)?;
    device.synchronize().context(&what)?;
    let one = start.elapsed().as_secs_f64();
    let iters = ((0.02 / one.max(1e-7)) as usize).clamp(10, 2000);

    let mut paths = Vec::new();
    for path in MatmulPath::ALL {
        // A path that would hand this shape to another one (the small kernel beyond its limits)
        // is not measured.
        if !path.takes(m, n, k) {
            continue;
        }
        let y = linear_with(path, &x, &w, None)?
            .to_dtype(DType::F32)?
            .flatten_all()?;
        let max_rel_err = (y - &reference)?
            .abs()?
            .max(0)?
            .to_scalar::<f32>()
            .context(&what)? as f64
            / scale.max(f64::MIN_POSITIVE);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            device.synchronize().context(&what)?;
            let start = Instant::now();
            for _ in 0..iters {
                linear_with(path, &x, &w, None)?;
            }
            device.synchronize().context(&what)?;
            best = best.min(start.elapsed().as_secs_f64() / iters as f64);
        }
        paths.push(PathTiming {
            path,
            us_per_call: best * 1e6,
            tflops: 2.0 * (m * n * k) as f64 / best / 1e12,
            max_rel_err,
        });
    }
    let best = paths
        .iter()
        .min_by(|a, b| a.us_per_call.total_cmp(&b.us_per_call))
        .map_or(MatmulPath::Candle, |p| p.path);
    Ok(ShapeTiming {
        dtype: dtype.as_str().to_string(),
        m,
        n,
        k,
        iters,
        paths,
        best,
    })
}

/// cuBLASLt products replayed from a CUDA graph at one shape.
#[cfg(feature = "cuda")]
#[derive(Clone, Debug, Serialize)]
pub struct GraphTiming {
    /// "f32", "bf16" or "f16".
    pub dtype: String,
    /// x: [m, k], W: [n, k].
    pub m: usize,
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Products recorded in the graph.
    pub kernels_per_graph: usize,
    /// Microseconds per product: the best of 3 runs of `replays` graph launches, divided by
    /// `kernels_per_graph`.
    pub us_per_kernel: f64,
    /// Largest |y - y_candle| / max |y_candle| after a replay.
    pub max_rel_err: f64,
}

/// Records `kernels_per_graph` products y = x W^T into one graph (one plan, no allocation) and
/// times its replays.
#[cfg(feature = "cuda")]
pub fn time_graph_matmul(
    device: &Device,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    kernels_per_graph: usize,
) -> Result<GraphTiming> {
    use super::cublaslt::{matmul_into, WeightLayout};
    let mut rng = rand::rngs::StdRng::seed_from_u64((m * 131 + n * 17 + k) as u64);
    let mut random =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let x = Tensor::from_vec(random(m * k), (m, k), device)?.to_dtype(dtype)?;
    let w = Tensor::from_vec(random(n * k), (n, k), device)?.to_dtype(dtype)?;
    let y = Tensor::from_vec(random(m * n), (m, n), device)?.to_dtype(dtype)?;
    let what = format!("graph timing {dtype:?} m={m} n={n} k={k}");
    // Build the plan outside the capture (plan building queries the heuristic on the host).
    matmul_into(&y, &x, &w, WeightLayout::OutIn).context(&what)?;
    device.synchronize().context(&what)?;
    let (graph, ()) = super::graph::capture(device, || {
        for _ in 0..kernels_per_graph {
            matmul_into(&y, &x, &w, WeightLayout::OutIn).context(&what)?;
        }
        Ok(())
    })?;
    graph.upload()?;
    // Clear y so the check below sees the replay's writes, not the eager call's: with random inputs
    // no element of the product is exactly zero, so an element the replay missed shows as an error.
    y.inplace_op1(&Clear)?;
    graph.replay()?;
    let reference = linear_with(MatmulPath::Candle, &x, &w, None)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    let scale = reference.abs()?.max(0)?.to_scalar::<f32>().context(&what)? as f64;
    let got = y.to_dtype(DType::F32)?.flatten_all()?;
    let max_rel_err = (got - &reference)?
        .abs()?
        .max(0)?
        .to_scalar::<f32>()
        .context(&what)? as f64
        / scale.max(f64::MIN_POSITIVE);

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
    Ok(GraphTiming {
        dtype: dtype.as_str().to_string(),
        m,
        n,
        k,
        kernels_per_graph,
        us_per_kernel: best * 1e6,
        max_rel_err,
    })
}

/// Sets a CUDA tensor to zero in place (no allocation).
#[cfg(feature = "cuda")]
struct Clear;

#[cfg(feature = "cuda")]
impl candle_core::InplaceOp1 for Clear {
    fn name(&self) -> &'static str {
        "clear"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("clear is used on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        s: &mut candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        let stream = s.device().cuda_stream();
        let range = l.start_offset()..l.start_offset() + l.shape().elem_count();
        let result = match s.dtype() {
            DType::F32 => {
                stream.memset_zeros(&mut s.as_cuda_slice_mut::<f32>()?.slice_mut(range.clone()))
            }
            DType::BF16 => stream.memset_zeros(
                &mut s
                    .as_cuda_slice_mut::<half::bf16>()?
                    .slice_mut(range.clone()),
            ),
            DType::F16 => stream
                .memset_zeros(&mut s.as_cuda_slice_mut::<half::f16>()?.slice_mut(range.clone())),
            other => return Err(candle_core::Error::UnsupportedDTypeForOp(other, "clear")),
        };
        result.map_err(|e| candle_core::Error::Cuda(format!("clear: {e:?}").into()))
    }
}
