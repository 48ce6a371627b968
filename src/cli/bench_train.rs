//! `wick bench train`: LoRA training throughput (tokens/s) and peak memory of the real trainer
//! (`train::trainer::train`) on fixed-length random batches, written as JSON and Markdown.
//!
//! Defaults are the measurement: SmolLM2-135M-Instruct, r 16 on every linear layer, sequence
//! 256, batch 4. Peak memory is the process's peak resident set (`VmHWM`), which includes the dense
//! f32 copy of the base (the GGUF is dequantized for training).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::DType;
use rand::{Rng, SeedableRng};
use wick::formats::fetch::resolve_model_arg;
use wick::formats::LoadOptions;
use wick::generate::TextModel;
use wick::lora::{LoraConfig, TargetModules};
use wick::train::data::{Dataset, Example};
use wick::train::schedule::ScheduleKind;
use wick::train::trainer::{train, Progress, TrainConfig, TrainRun};

/// Options of `wick bench train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct), a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Timed optimizer steps (after the warmup steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup_steps: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Write `<out>.json` and `<out>.md` (e.g. bench/results/train-cpu).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Peak resident set of this process in bytes (Linux `VmHWM`), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `wick bench train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let path = resolve_model_arg(&args.model)?;
    let mut model = TextModel::open(
        &path,
        &LoadOptions {
            device,
            dtype: Some(dtype),
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let rss_after_load = peak_rss_bytes();
    let vocab = model.model.config().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let total = args.warmup_steps + args.steps;
    let rows: Vec<Example> = (0..args.batch_size * total)
        .map(|_| {
            let ids: Vec<u32> = (0..args.seq_len)
                .map(|_| rng.random_range(0..vocab))
                .collect();
            Example {
                labels: ids.iter().map(|t| *t as i64).collect(),
                input_ids: ids,
            }
        })
        .collect();
    let data = Dataset {
        path: PathBuf::from("random tokens"),
        rows,
        stats: Default::default(),
        pad_id: 0,
    };
    let config = TrainConfig {
        lora: LoraConfig {
            r: args.rank,
            lora_alpha: 2.0 * args.rank as f64,
            target_modules: TargetModules::parse("all-linear")?,
            ..LoraConfig::default()
        },
        lr: 1e-4,
        scheduler: ScheduleKind::Constant,
        total_steps: total,
        batch_size: args.batch_size,
        shuffle: false,
        ..TrainConfig::default()
    };
    let out_dir = tempfile::tempdir()?;
    let mut step_times = Vec::new();
    let mut last = Instant::now();
    let mut on_progress = |p: &Progress| {
        if let Progress::Step { step, loss, .. } = p {
            let t = last.elapsed().as_secs_f64();
            last = Instant::now();
            eprintln!("step {step}/{total}: {t:.2} s, loss {loss:.3}");
            step_times.push(t);
        }
    };
    let run = TrainRun {
        train_data: &data,
        eval_data: None,
        config,
        out_dir: out_dir.path().to_path_buf(),
        resume: None,
        fault: Default::default(),
        stop_after_steps: None,
    };
    train(&mut model.model, run, &mut on_progress)?;
    let timed = &step_times[args.warmup_steps.min(step_times.len())..];
    let seconds: f64 = timed.iter().sum();
    let tokens = (timed.len() * args.batch_size * args.seq_len) as f64;
    let tokens_per_s = tokens / seconds.max(1e-9);
    let peak = peak_rss_bytes();
    let gib = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / (1u64 << 30) as f64);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let record = serde_json::json!({
        "benchmark": "wick bench train",
        "model": path.display().to_string(),
        "device": args.device,
        "cpu": cpu,
        "threads": threads,
        "dtype": format!("{dtype:?}"),
        "rank": args.rank,
        "targets": "all-linear",
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "timed_steps": timed.len(),
        "seconds_per_step": seconds / timed.len().max(1) as f64,
        "tokens_per_s": tokens_per_s,
        "peak_rss_gib": gib(peak),
        "rss_after_load_gib": gib(rss_after_load),
        "step_seconds": step_times,
        "wick_version": env!("CARGO_PKG_VERSION"),
        "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    println!("{}", serde_json::to_string_pretty(&record)?);
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&record)? + "\n",
        )?;
        let mut md = std::fs::File::create(out.with_extension("md"))?;
        writeln!(md, "# LoRA training throughput ({})\n", args.device)?;
        writeln!(md, "Command: `wick bench train --model {} --rank {} --seq-len {} --batch-size {} --steps {} --warmup-steps {} --device {}`\n", args.model, args.rank, args.seq_len, args.batch_size, args.steps, args.warmup_steps, args.device)?;
        writeln!(md, "Machine: {cpu}, {threads} threads (shared with other work while measured). Model: {}, {dtype:?} (the GGUF dequantized), r {} on every linear layer.\n", path.display(), args.rank)?;
        writeln!(
            md,
            "| seq | batch | s/step | tokens/s | peak RSS (GiB) | RSS after load (GiB) |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|")?;
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.1} | {:.2} | {:.2} |",
            args.seq_len,
            args.batch_size,
            seconds / timed.len().max(1) as f64,
            tokens_per_s,
            gib(peak),
            gib(rss_after_load)
        )?;
        writeln!(md, "\nEvery step is the full trainer step: forward, causal-LM loss, backward, clipping, AdamW. JSON: `{}`.", out.with_extension("json").display())?;
    }
    Ok(())
}
