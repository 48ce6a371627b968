//! `wick bench dispatch`: times every matmul path over a grid of shapes on the GPU and writes the
//! results (and, with --write-table, the dispatch table that `gpu::dispatch::linear` reads).

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::DType;
use wick::gpu::dispatch::{DispatchEntry, DispatchTable, MatmulPath};
use wick::gpu::timing::{time_linear, ShapeTiming};

/// Options of `wick bench dispatch`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to measure on (cuda, cuda:N).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Dtypes to measure, comma-separated.
    #[arg(long, default_value = "f32,bf16", value_delimiter = ',')]
    dtypes: Vec<String>,
    /// Token counts (m), comma-separated.
    #[arg(
        long,
        default_value = "1,8,64,128,512,2048,8192",
        value_delimiter = ','
    )]
    tokens: Vec<usize>,
    /// Weight shapes n x k (out x in), comma-separated.
    #[arg(
        long,
        default_value = "64x64,576x576,1536x576,576x1536,1024x1024,4096x4096,49152x576",
        value_delimiter = ','
    )]
    weights: Vec<String>,
    /// Also measure the square 64x64x64 and 4096x4096x4096 products of the overhead issue.
    #[arg(long, default_value_t = true)]
    squares: bool,
    /// Write every measurement here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the dispatch table (the fastest path per shape) here, e.g. src/gpu/dispatch_table.json.
    #[arg(long)]
    write_table: Option<PathBuf>,
}

fn parse_dtype(name: &str) -> anyhow::Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => anyhow::bail!("--dtypes: unknown dtype `{other}` (f32, bf16, f16)"),
    }
}

/// Runs `wick bench dispatch`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let mut shapes = Vec::new();
    for weight in &args.weights {
        let (n, k) = weight
            .split_once('x')
            .and_then(|(n, k)| Some((n.parse::<usize>().ok()?, k.parse::<usize>().ok()?)))
            .with_context(|| format!("--weights: `{weight}` is not NxK"))?;
        shapes.extend(args.tokens.iter().map(|&m| (m, n, k)));
    }
    if args.squares {
        shapes.extend([(64, 64, 64), (4096, 4096, 4096)]);
    }
    shapes.sort_unstable();
    shapes.dedup();

    let mut results: Vec<ShapeTiming> = Vec::new();
    println!(
        "{:>5} {:>6} {:>6} {:>6}  {:>12} {:>12}  {:>9} {:>10}  best",
        "dtype", "m", "n", "k", "candle us", "cublasLt us", "TFLOP/s", "rel err"
    );
    for dtype in &args.dtypes {
        let dtype = parse_dtype(dtype)?;
        for &(m, n, k) in &shapes {
            let t = time_linear(&device, dtype, m, n, k)?;
            let us = |p: MatmulPath| {
                t.paths
                    .iter()
                    .find(|x| x.path == p)
                    .map_or(f64::NAN, |x| x.us_per_call)
            };
            let best = t
                .paths
                .iter()
                .find(|x| x.path == t.best)
                .expect("best is one of the paths");
            let worst_err = t.paths.iter().map(|p| p.max_rel_err).fold(0.0, f64::max);
            println!(
                "{:>5} {:>6} {:>6} {:>6}  {:>12.2} {:>12.2}  {:>9.2} {:>10.2e}  {}",
                t.dtype,
                m,
                n,
                k,
                us(MatmulPath::Candle),
                us(MatmulPath::CublasLt),
                best.tflops,
                worst_err,
                t.best.name()
            );
            results.push(t);
        }
    }

    // The overhead issue's figure: products replayed from a CUDA graph, per kernel.
    #[cfg(feature = "cuda")]
    let graphs = {
        let mut graphs = Vec::new();
        for (dtype, shape) in [
            (DType::F32, (64, 64, 64)),
            (DType::BF16, (64, 64, 64)),
            (DType::BF16, (1, 1024, 1024)),
        ] {
            let g = wick::gpu::timing::time_graph_matmul(&device, dtype, shape, 100)?;
            println!(
                "graph {:>5} {:>6} {:>6} {:>6}  {:>9.2} us per product ({} per graph), rel err {:.2e}",
                g.dtype, g.m, g.n, g.k, g.us_per_kernel, g.kernels_per_graph, g.max_rel_err
            );
            graphs.push(g);
        }
        graphs
    };
    #[cfg(not(feature = "cuda"))]
    let graphs: Vec<()> = Vec::new();

    let date = std::env::var("WICK_RUN_DATE").unwrap_or_default();
    let device_name = std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(path) = &args.out {
        let json = serde_json::json!({
            "command": command, "device": device_name, "date": date, "shapes": results, "graphs": graphs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.write_table {
        let table = DispatchTable {
            source: format!("{command} on {device_name}, {date}"),
            entries: results
                .iter()
                .map(|t| DispatchEntry {
                    dtype: t.dtype.clone(),
                    m: t.m,
                    n: t.n,
                    k: t.k,
                    path: t.best,
                })
                .collect(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&table)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
