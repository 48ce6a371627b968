//! `wick bench overhead`: where the time of one small GPU operation goes (host checks, allocation,
//! launch, synchronisation, GPU), before and after each of wick's overhead cures, in one process.
//! Operations: one 64x64x64 f32 matmul through every path (allocating, and into a reused output;
//! the small path's planned dot kernel and, forced beside it, the tiled kernel) and one LoRA forward
//! (t1 d1024 r8 bf16). Then products replayed from CUDA graphs: small (dot and tiled) and cuBLASLt,
//! f32, bf16 and f16. Cures (gpu::overhead) are applied cumulatively:
//! baseline, +no event tracking, +pool retention, +lean launch. Then, with every cure on, the
//! allocating 64x64x64 product stage by stage (`overhead::allocating_breakdown`: table lookup before
//! and after the memo, allocation, Candle's op and tensor, launch, raw `cuLaunchKernel`) and one
//! decode step of the CUDA decode engine on `--decode-model` (`cuda_decode::profile`: host issue
//! eager vs graph, GPU time, per kernel kind, synchronisation). Writes JSON and markdown tables.

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::DType;
use wick::gpu::dispatch::MatmulPath;
use wick::gpu::overhead::{self, Cures, Probe, Stages};
use wick::gpu::small_matmul::{self, SmallKernel};

/// Options of `wick bench overhead`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to measure on (cuda, cuda:N).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Calls per host timing (best of 3 runs).
    #[arg(long, default_value_t = 500)]
    iters: usize,
    /// Write the measurements here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Model whose decode step is profiled: `default` (SmolLM2-135M-Instruct Q4_1), a .gguf file, or
    /// `none` to skip the decode-step breakdown.
    #[arg(long, default_value = "default")]
    decode_model: String,
    /// Tokens stepped before the decode-step profile (the profiled step's cache position).
    #[arg(long, default_value_t = 64)]
    decode_position: usize,
    /// Repetitions of each decode-step measure.
    #[arg(long, default_value_t = 20)]
    decode_reps: usize,
}

/// Builds the CUDA decode engine for `model` and profiles one step (`cuda_decode::profile`).
fn decode_profile(
    args: &Args,
    device: &candle_core::Device,
) -> anyhow::Result<Option<(String, wick::generate::cuda_decode::profile::StepProfile)>> {
    use wick::formats::{open_model, LoadOptions};
    use wick::generate::cuda_decode::{profile, DecodeEngine};
    if args.decode_model == "none" {
        return Ok(None);
    }
    let path = wick::formats::fetch::resolve_model_arg(&args.decode_model)?;
    // The engine reads the raw blocks from a CPU view of the file (as `wick bench decode`).
    let files = open_model(
        &path,
        &LoadOptions {
            device: candle_core::Device::Cpu,
            dtype: None,
        },
    )?;
    let mut engine = DecodeEngine::new(&files.config, files.weights.as_ref(), device)
        .context("building the CUDA decode engine")?;
    let step = profile::profile_step(&mut engine, device, args.decode_position, args.decode_reps)?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(Some((name, step)))
}

/// The allocating-path breakdowns (one column per set of cures) as a markdown table.
fn allocating_markdown(runs: &[(String, overhead::AllocatingBreakdown)]) -> String {
    let Some((_, first)) = runs.first() else {
        return String::new();
    };
    let (m, n, k) = first.shape;
    let rows = |b: &overhead::AllocatingBreakdown| -> Vec<(&'static str, f64)> {
        vec![
            (
                "dispatch table: scan of the entries (before)",
                b.table_scan_us,
            ),
            ("dispatch table: memoized choice (now)", b.table_memo_us),
            ("checks: dims, contiguous x and W", b.checks_us),
            (
                "allocation + free of y (cudarc: cuMemAllocAsync + cuMemFreeAsync)",
                b.alloc_free_us,
            ),
            (
                "Candle op that only allocates y (op dispatch + allocation + tensor + drop)",
                b.candle_alloc_op_us,
            ),
            (
                "raw cuLaunchKernel of the small kernel (floor)",
                b.raw_launch_us,
            ),
            (
                "small_matmul::linear_into (Candle in-place op + launch)",
                b.launch_into_us,
            ),
            (
                "small_matmul::linear now (allocating, no table)",
                b.small_linear_us,
            ),
            (
                "small_matmul::linear before: through Candle's apply_op2 (device clones)",
                b.small_linear_candle_op_us,
            ),
            (
                "dispatch::linear with the table scan (before the memo)",
                b.dispatch_scan_us,
            ),
            (
                "dispatch::linear now: memoized table + small path",
                b.dispatch_linear_us,
            ),
            (
                "pipelined: dispatch::linear",
                b.dispatch_linear_pipelined_us,
            ),
            (
                "pipelined: small_matmul::linear_into",
                b.launch_into_pipelined_us,
            ),
        ]
    };
    let mut md = format!(
        "\n### Allocating product {m}x{n}x{k} f32, stage by stage (host us per call)\n\n| stage |"
    );
    for (label, _) in runs {
        md.push_str(&format!(" {label} |"));
    }
    md.push_str(&format!("\n|---|{}\n", "---|".repeat(runs.len())));
    let columns: Vec<Vec<(&str, f64)>> = runs.iter().map(|(_, b)| rows(b)).collect();
    for (i, (what, _)) in columns[0].iter().enumerate() {
        md.push_str(&format!("| {what} |"));
        for column in &columns {
            md.push_str(&format!(" {:.2} |", column[i].1));
        }
        md.push('\n');
    }
    md
}

#[derive(serde::Serialize)]
struct Row {
    op: String,
    path: String,
    cures: String,
    #[serde(flatten)]
    stages: Stages,
}

/// "small dot (into y)": the path, the small kernel that runs (forced or planned), the output.
fn small_label(
    path: MatmulPath,
    kernel: Option<SmallKernel>,
    (m, n, k): (usize, usize, usize),
    into: bool,
) -> String {
    let kernel = match (path, kernel) {
        (MatmulPath::Small, Some(kernel)) => format!(" {} (forced)", kernel.name()),
        (MatmulPath::Small, None) => format!(" {}", small_matmul::choose_kernel(m, n, k).name()),
        _ => String::new(),
    };
    format!(
        "{}{kernel}{}",
        path.name(),
        if into { " (into y)" } else { "" }
    )
}

fn cell(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

/// Each cure step (cumulative: baseline, +no event tracking, +pool retention, every cure, and the
/// candidate on top): the 64x64x64 matmul through every path, and one LoRA forward, stage by stage.
fn cure_rows(
    device: &candle_core::Device,
    matmul: (usize, usize, usize),
    iters: usize,
) -> anyhow::Result<Vec<Row>> {
    let steps = [
        Cures::NONE,
        Cures {
            no_event_tracking: true,
            ..Cures::NONE
        },
        Cures {
            no_event_tracking: true,
            pool_retention: true,
            ..Cures::NONE
        },
        Cures::ALL,
        // The candidate cure on top of wick's defaults (not in Cures::ALL until measured).
        Cures {
            pool_stream_order: true,
            ..Cures::ALL
        },
    ];
    let (t, d, r) = (1, 1024, 8);
    let lora_x = overhead::random_tensor(device, DType::BF16, &[t, d], 21)?;
    let lora_w = (overhead::random_tensor(device, DType::BF16, &[d, d], 22)? * 0.05)?;
    let lora_a = (overhead::random_tensor(device, DType::BF16, &[r, d], 23)? * 0.05)?;
    let lora_b = (overhead::random_tensor(device, DType::BF16, &[d, r], 24)? * 0.05)?;

    let mut rows = Vec::new();
    for cures in steps {
        let applied = overhead::apply(device, cures)?;
        let label = applied.label();
        eprintln!("cures: {label}");
        // The small path plans the dot kernel at 64^3; the tiled kernel (its choice before) is
        // forced beside it into y, so one run shows both.
        for (path, into, kernel) in [
            (MatmulPath::Candle, false, None),
            (MatmulPath::CublasLt, false, None),
            (MatmulPath::Small, false, None),
            (MatmulPath::CublasLt, true, None),
            (MatmulPath::Small, true, None),
            (MatmulPath::Small, true, Some(SmallKernel::Tiled16)),
        ] {
            let stages =
                overhead::measure_matmul(device, path, into, kernel, DType::F32, matmul, iters)?;
            rows.push(Row {
                op: "matmul 64x64x64 f32".into(),
                path: small_label(path, kernel, matmul, into),
                cures: label.clone(),
                stages,
            });
        }
        let call = || -> wick::Result<()> {
            drop(wick::ops::lora_linear::lora_linear(
                &lora_x,
                Some(&lora_w),
                None,
                &lora_a,
                &lora_b,
                2.0,
            )?);
            Ok(())
        };
        let probe = Probe {
            checks: None,
            alloc_bytes: Some(t * d * 2),
            launch: None,
            call: &call,
        };
        rows.push(Row {
            op: format!("LoRA forward t{t} d{d} r{r} bf16"),
            path: "fused op".into(),
            cures: label,
            stages: overhead::measure(device, &probe, iters)?,
        });
    }
    Ok(rows)
}

/// The markdown tables: every row's stages, the products in CUDA graphs, the allocating product
/// stage by stage, and the decode step when there is one.
fn tables_markdown(
    rows: &[Row],
    graphs: &[(String, wick::gpu::timing::GraphTiming)],
    allocating: &[(String, overhead::AllocatingBreakdown)],
    decode: &Option<(String, wick::generate::cuda_decode::profile::StepProfile)>,
) -> String {
    let mut md = String::new();
    md.push_str("| op | path | cures | checks us | alloc+free us | launch us | host us/call | pipelined us/call | roundtrip us | GPU us |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let s = &row.stages;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            row.op,
            row.path,
            row.cures,
            cell(s.checks_us),
            cell(s.alloc_free_us),
            cell(s.launch_us),
            s.host_us,
            s.pipelined_us,
            s.roundtrip_us,
            s.gpu_us
        ));
    }
    md.push_str("\n| product in a CUDA graph (100 per graph) | path | us per product | rel err |\n|---|---|---|---|\n");
    for (path, g) in graphs {
        md.push_str(&format!(
            "| {}x{}x{} {} | {} | {:.2} | {:.1e} |\n",
            g.m, g.n, g.k, g.dtype, path, g.us_per_kernel, g.max_rel_err
        ));
    }
    md.push_str(&allocating_markdown(allocating));
    if let Some((model, step)) = decode {
        md.push('\n');
        md.push_str(&wick::generate::cuda_decode::profile::markdown(
            step,
            &format!("Decode step of the CUDA decode engine ({model}, batch 1)"),
        ));
    }
    md
}

/// Runs `wick bench overhead`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    anyhow::ensure!(device.is_cuda(), "wick bench overhead needs a CUDA device");
    let matmul = (64, 64, 64);
    let rows = cure_rows(&device, matmul, args.iters)?;
    // The allocating product stage by stage, with wick's cures and with the candidate on top.
    let mut allocating = Vec::new();
    for cures in [
        Cures::ALL,
        Cures {
            pool_stream_order: true,
            ..Cures::ALL
        },
    ] {
        let label = overhead::apply(&device, cures)?.label();
        allocating.push((
            label,
            overhead::allocating_breakdown(&device, matmul, args.iters)?,
        ));
    }
    // Leave the device as wick runs it.
    overhead::apply(&device, Cures::ALL)?;
    // The decode step needs a GGUF model; without one the matmul tables still come out.
    let decode = decode_profile(&args, &device).unwrap_or_else(|e| {
        eprintln!("decode-step breakdown skipped: {e:#}");
        None
    });

    let mut graphs = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for kernel in [None, Some(SmallKernel::Tiled16)] {
            let small = overhead::time_graph_small(&device, kernel, dtype, matmul, 100)?;
            graphs.push((small_label(MatmulPath::Small, kernel, matmul, false), small));
        }
        let lt = wick::gpu::timing::time_graph_matmul(&device, dtype, matmul, 100)?;
        graphs.push(("cublas-lt".into(), lt));
    }

    let md = tables_markdown(&rows, &graphs, &allocating, &decode);
    println!("{md}");

    let date = std::env::var("WICK_RUN_DATE").unwrap_or_default();
    let device_name = std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(path) = &args.out {
        let graphs: Vec<serde_json::Value> = graphs
            .iter()
            .map(|(p, g)| serde_json::json!({"path": p, "timing": g}))
            .collect();
        let json = serde_json::json!({
            "command": command, "device": device_name, "date": date,
            "iters": args.iters, "rows": rows, "graphs": graphs,
            "allocating": allocating.iter().map(|(cures, b)| serde_json::json!({"cures": cures, "stages": b})).collect::<Vec<_>>(),
            "decode_step": decode.as_ref().map(|(model, step)| serde_json::json!({"model": model, "profile": step})),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        let text = format!(
            "# Where the time goes: small GPU operations\n\n`{command}` on {device_name}, {date}.\n\n\
             Host columns: Instant over {} calls, best of 3; GPU: CUDA events around 64 calls queued behind a spin kernel.\n\
             Cures are cumulative (gpu::overhead).\n\n{md}",
            args.iters
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
