//! `wick bench dispatch`: times every matmul path (Candle, cuBLASLt, wick's small kernel) over a
//! grid of shapes on the GPU, checks the dispatch table's choice against the best at every shape,
//! and writes the results (and, with --write-table, the dispatch table `gpu::dispatch::linear` reads).

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
    #[arg(long, default_value = "f32,bf16,f16", value_delimiter = ',')]
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
    /// Measure every shape a second time and check the (new or compiled) table's choice against the
    /// best of that second pass: the "chosen path within 5% of the best" check, on fresh timings.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    confirm: bool,
    /// Run without wick's overhead cures (Candle's and cudarc's defaults), for comparison.
    #[arg(long)]
    no_cures: bool,
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

fn us(t: &ShapeTiming, p: MatmulPath) -> f64 {
    t.paths
        .iter()
        .find(|x| x.path == p)
        .map_or(f64::NAN, |x| x.us_per_call)
}

/// The time of the path `table` chooses at t's shape over the best time there (1.0 = the best).
fn chosen_over_best(table: &DispatchTable, t: &ShapeTiming, dtype: DType) -> (MatmulPath, f64) {
    let chosen = table.choose(dtype, t.m, t.n, t.k);
    // A path that does not take the shape hands it to cuBLASLt (dispatch::linear_with).
    let runs = if chosen.takes(t.m, t.n, t.k) {
        chosen
    } else {
        MatmulPath::CublasLt
    };
    let best = us(t, t.best);
    (chosen, us(t, runs) / best)
}

/// One shape's check of the table's choice.
#[derive(serde::Serialize)]
struct Check {
    dtype: String,
    m: usize,
    n: usize,
    k: usize,
    chosen: MatmulPath,
    best: MatmulPath,
    chosen_over_best: f64,
}

/// The (m, n, k) grid: every `--tokens` count against every `--weights` NxK, plus the squares when
/// asked; sorted, each once.
fn shapes_of(args: &Args) -> anyhow::Result<Vec<(usize, usize, usize)>> {
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
    Ok(shapes)
}

/// Times every path at every shape and dtype, printing a row each.
fn measure_grid(
    device: &candle_core::Device,
    dtypes: &[DType],
    shapes: &[(usize, usize, usize)],
) -> anyhow::Result<Vec<(DType, ShapeTiming)>> {
    let mut results: Vec<(DType, ShapeTiming)> = Vec::new();
    println!(
        "{:>5} {:>6} {:>6} {:>6}  {:>10} {:>11} {:>10}  {:>9} {:>10}  best",
        "dtype", "m", "n", "k", "candle us", "cublasLt us", "small us", "TFLOP/s", "rel err"
    );
    for &dtype in dtypes {
        for &(m, n, k) in shapes {
            let t = time_linear(device, dtype, m, n, k)?;
            let best = t
                .paths
                .iter()
                .find(|x| x.path == t.best)
                .expect("best is one of the paths");
            let worst_err = t.paths.iter().map(|p| p.max_rel_err).fold(0.0, f64::max);
            println!(
                "{:>5} {:>6} {:>6} {:>6}  {:>10.2} {:>11.2} {:>10.2}  {:>9.2} {:>10.2e}  {}",
                t.dtype,
                m,
                n,
                k,
                us(&t, MatmulPath::Candle),
                us(&t, MatmulPath::CublasLt),
                us(&t, MatmulPath::Small),
                best.tflops,
                worst_err,
                t.best.name()
            );
            results.push((dtype, t));
        }
    }
    Ok(results)
}

/// The chosen path's time over the best, on a second, independent pass when `confirm` (the first
/// pass chose the table, so it cannot judge it), else on the first.
fn check_choices(
    device: &candle_core::Device,
    table: &DispatchTable,
    results: &[(DType, ShapeTiming)],
    confirm: bool,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    if confirm {
        println!("confirming on a second pass ...");
    }
    for (dtype, first) in results {
        let t = if confirm {
            time_linear(device, *dtype, first.m, first.n, first.k)?
        } else {
            first.clone()
        };
        let (chosen, ratio) = chosen_over_best(table, &t, *dtype);
        checks.push(Check {
            dtype: t.dtype.clone(),
            m: t.m,
            n: t.n,
            k: t.k,
            chosen,
            best: t.best,
            chosen_over_best: ratio,
        });
    }
    Ok(checks)
}

/// The overhead issue's figure: products replayed from a CUDA graph, per kernel (cuBLASLt, the
/// small path's planned kernel, the tiled kernel forced), with cuBLASLt's plan.
#[cfg(feature = "cuda")]
fn graph_timings(device: &candle_core::Device) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut graphs = Vec::new();
    for (dtype, shape) in [
        (DType::F32, (64, 64, 64)),
        (DType::BF16, (64, 64, 64)),
        (DType::BF16, (1, 1024, 1024)),
    ] {
        use wick::gpu::small_matmul::{choose_kernel, SmallKernel};
        let lt = wick::gpu::timing::time_graph_matmul(device, dtype, shape, 100)?;
        // The small path's planned kernel, and the tiled kernel forced at the same shape.
        let small = wick::gpu::overhead::time_graph_small(device, None, dtype, shape, 100)?;
        let tiled = wick::gpu::overhead::time_graph_small(
            device,
            Some(SmallKernel::Tiled16),
            dtype,
            shape,
            100,
        )?;
        let planned = format!("small {}", choose_kernel(shape.0, shape.1, shape.2).name());
        // What cuBLASLt's heuristic picked at this shape (split-k, reduction, workspace).
        let plan = match device {
            candle_core::Device::Cuda(cuda) => Some(
                wick::gpu::cublaslt::LtContext::for_device(cuda)?.plan_info(dtype, shape, false)?,
            ),
            _ => None,
        };
        println!("cuBLASLt plan {:?} {shape:?}: {plan:?}", dtype);
        for (path, g) in [
            ("cublas-lt", lt),
            (planned.as_str(), small),
            ("small small_matmul_tiled1 (forced)", tiled),
        ] {
            println!(
                    "graph {:>34} {:>5} {:>6} {:>6} {:>6}  {:>9.2} us per product ({} per graph), rel err {:.2e}",
                    path, g.dtype, g.m, g.n, g.k, g.us_per_kernel, g.kernels_per_graph, g.max_rel_err
                );
            let plan = (path == "cublas-lt").then_some(plan).flatten();
            graphs.push(serde_json::json!({"path": path, "timing": g, "cublaslt_plan": plan}));
        }
    }
    Ok(graphs)
}

/// Prints the worst chosen-over-best ratio and every shape more than 5% slower than its best;
/// returns (worst ratio, count of those shapes).
fn print_checks(checks: &[Check]) -> (f64, usize) {
    let over: Vec<&Check> = checks
        .iter()
        .filter(|c| c.chosen_over_best > 1.05)
        .collect();
    let worst = checks
        .iter()
        .map(|c| c.chosen_over_best)
        .fold(1.0, f64::max);
    println!(
        "chosen path vs best: worst {worst:.3}x, {} of {} shapes more than 5% slower than the best",
        over.len(),
        checks.len()
    );
    for c in &over {
        println!(
            "  {:>5} {:>6} {:>6} {:>6}: {} at {:.3}x the best ({})",
            c.dtype,
            c.m,
            c.n,
            c.k,
            c.chosen.name(),
            c.chosen_over_best,
            c.best.name()
        );
    }
    (worst, over.len())
}

/// Runs `wick bench dispatch`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    #[cfg(feature = "cuda")]
    {
        let cures = if args.no_cures {
            wick::gpu::overhead::Cures::NONE
        } else {
            wick::gpu::overhead::Cures::ALL
        };
        let applied = wick::gpu::overhead::apply(&device, cures)?;
        println!("overhead cures: {}", applied.label());
    }
    let shapes = shapes_of(&args)?;
    let dtypes = args
        .dtypes
        .iter()
        .map(|d| parse_dtype(d))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let started = std::time::Instant::now();
    let results = measure_grid(&device, &dtypes, &shapes)?;
    println!("grid measured in {:.1} s", started.elapsed().as_secs_f64());

    let date = std::env::var("WICK_RUN_DATE").unwrap_or_default();
    let device_name = std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    // The table this run would write (the best path per shape), or the compiled one without
    // --write-table: the one whose choices are checked.
    let new_table = DispatchTable {
        source: format!("{command} on {device_name}, {date}"),
        entries: results
            .iter()
            .map(|(_, t)| DispatchEntry {
                dtype: t.dtype.clone(),
                m: t.m,
                n: t.n,
                k: t.k,
                path: t.best,
            })
            .collect(),
    };
    let table = if args.write_table.is_some() {
        &new_table
    } else {
        wick::gpu::dispatch::table()
    };

    // The check: the chosen path's time over the best (see `check_choices`).
    let checks = check_choices(&device, table, &results, args.confirm)?;
    let (worst, over) = print_checks(&checks);

    #[cfg(feature = "cuda")]
    let graphs = graph_timings(&device)?;
    #[cfg(not(feature = "cuda"))]
    let graphs: Vec<serde_json::Value> = Vec::new();

    if let Some(path) = &args.out {
        let shapes: Vec<&ShapeTiming> = results.iter().map(|(_, t)| t).collect();
        let json = serde_json::json!({
            "command": command, "device": device_name, "date": date,
            "cures": !args.no_cures,
            "seconds": started.elapsed().as_secs_f64(),
            "shapes": shapes, "graphs": graphs,
            "check": {
                "table": if args.write_table.is_some() { "written by this run" } else { "compiled into wick" },
                "pass": if args.confirm { "second" } else { "first" },
                "worst_chosen_over_best": worst,
                "shapes_over_5_percent": over,
                "shapes": checks,
            },
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.write_table {
        std::fs::write(path, serde_json::to_string_pretty(&new_table)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
