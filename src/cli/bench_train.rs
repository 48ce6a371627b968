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
    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// Checkpoint only the first N decoder layers (implies --checkpoint-activations).
    #[arg(long)]
    pub checkpoint_layers: Option<usize>,
    /// Recompute the MLP's gate and up outputs of the N layers after the checkpointed ones in the
    /// backward instead of keeping them (CUDA training engine).
    #[arg(long)]
    pub recompute_mlp_layers: Option<usize>,
    /// `auto`: on CUDA, train through the CUDA training engine (captured forward, backward and
    /// AdamW) when it supports the model and adapter; `off`: always through Candle's autograd.
    #[arg(long, default_value = "auto")]
    pub engine: wick::train::engine_steps::EnginePolicy,
    /// Keep a GGUF's blocks as the frozen base (QLoRA, as `wick train` does by default) instead of
    /// a dense copy: on the CPU Q4_1/Q8_0 through ops::quant_linear, on CUDA any format through the
    /// training engine (bf16 activations, one layer dequantized at a time).
    #[arg(long)]
    pub quantized_base: bool,
    /// Quantize a dense base's projections at load (`wick train --quantize-base`): q4_k, q4_1,
    /// q5_0, q6_k or q8_0.
    #[arg(long)]
    pub quantize_base: Option<String>,
    /// Write `<out>.json` and `<out>.md` (e.g. bench/results/train-cpu).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A field of `/proc/self/status` in bytes (`VmHWM`: peak resident set, `VmRSS`: current), if known.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set of this process in bytes (Linux `VmHWM`), if known.
fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Current resident set in bytes (Linux `VmRSS`), if known.
fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// Device memory in use on a CUDA device, `total - free` from the driver (`cuMemGetInfo` through
/// cudarc's `CudaContext::mem_get_info`): every allocation of every process on the card, the CUDA
/// context and whatever the stream-ordered pool holds. Candle keeps no allocator statistics.
#[cfg(feature = "cuda")]
fn device_used_bytes(device: &candle_core::Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some((total - free) as u64)
}

#[cfg(not(feature = "cuda"))]
fn device_used_bytes(_device: &candle_core::Device) -> Option<u64> {
    None
}

/// Polls [`device_used_bytes`] every millisecond on its own thread and keeps the maximum, so a peak
/// inside a step (freed before the step ends) is seen too.
struct DeviceMemorySampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Option<u64>>,
}

impl DeviceMemorySampler {
    fn start(device: &candle_core::Device) -> Option<Self> {
        device_used_bytes(device)?;
        let device = device.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = None;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(device_used_bytes(&device));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            peak.max(device_used_bytes(&device))
        });
        Some(Self { stop, handle })
    }

    fn finish(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// A device-memory table cell: GiB, or a dash where there is no device figure (the CPU).
fn device_cell(bytes: Option<u64>) -> String {
    bytes.map_or("—".into(), |b| {
        format!("{:.2}", b as f64 / (1u64 << 30) as f64)
    })
}

/// `rows` examples of `seq_len` seeded random tokens, every position trained on.
fn random_dataset(vocab: u32, rows: usize, seq_len: usize) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let rows: Vec<Example> = (0..rows)
        .map(|_| {
            let ids: Vec<u32> = (0..seq_len).map(|_| rng.random_range(0..vocab)).collect();
            Example {
                labels: ids.iter().map(|t| *t as i64).collect(),
                input_ids: ids,
            }
        })
        .collect();
    Dataset {
        path: PathBuf::from("random tokens"),
        rows,
        stats: Default::default(),
        pad_id: 0,
    }
}

/// The figures of the markdown table and notes (GiB, seconds; device figures in bytes, None on
/// the CPU).
struct Figures {
    seconds_per_step: f64,
    tokens_per_s: f64,
    peak_rss: f64,
    rss_after_load: f64,
    device_peak: Option<u64>,
    device_after_load: Option<u64>,
    device_before_load: f64,
    warmup_s: f64,
}

/// Writes OUT.json (the record) and OUT.md (command, machine, model, the table, the notes).
fn write_report(
    out: &std::path::Path,
    args: &Args,
    record: &serde_json::Value,
    f: &Figures,
    (path, dtype): (&std::path::Path, DType),
    machine: &str,
    engine: &str,
) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_string_pretty(record)? + "\n",
    )?;
    let mut md = std::fs::File::create(out.with_extension("md"))?;
    writeln!(md, "# LoRA training throughput ({})\n", args.device)?;
    writeln!(md, "Command: `wick bench train --model {} --rank {} --seq-len {} --batch-size {} --steps {} --warmup-steps {} --device {}{}{}{}`\n", args.model, args.rank, args.seq_len, args.batch_size, args.steps, args.warmup_steps, args.device, if args.checkpoint_activations { " --checkpoint-activations" } else { "" }, args.checkpoint_layers.map(|n| format!(" --checkpoint-layers {n}")).unwrap_or_default() + &args.recompute_mlp_layers.map(|n| format!(" --recompute-mlp-layers {n}")).unwrap_or_default(), if args.quantized_base { " --quantized-base" } else { "" })?;
    if let Some(name) = &args.quantize_base {
        writeln!(md, "Base projections quantized to {name} at load.\n")?;
    }
    let base = if args.quantized_base {
        "the GGUF's blocks kept quantized (QLoRA)".to_string()
    } else {
        format!("{dtype:?} (the GGUF dequantized)")
    };
    writeln!(md, "Machine: {machine} (shared with other work while measured). Model: {}, {base}, r {} on every linear layer.\n", path.display(), args.rank)?;
    writeln!(
        md,
        "| seq | batch | s/step | tokens/s | peak RSS (GiB) | RSS after load (GiB) | device peak in use (GiB) | device in use after load (GiB) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    writeln!(
        md,
        "| {} | {} | {:.2} | {:.1} | {:.2} | {:.2} | {} | {} |",
        args.seq_len,
        args.batch_size,
        f.seconds_per_step,
        f.tokens_per_s,
        f.peak_rss,
        f.rss_after_load,
        device_cell(f.device_peak),
        device_cell(f.device_after_load)
    )?;
    if f.device_peak.is_some() {
        writeln!(md, "\nDevice memory: `total - free` from cuMemGetInfo, polled every 1 ms during the run; it includes the CUDA context ({:.2} GiB in use before the model was loaded) and what the allocator pool keeps.", f.device_before_load)?;
    }
    writeln!(md, "\nPath: {}. Warm-up (loading excluded; the first step including engine setup and graph capture): {:.2} s.", engine, f.warmup_s)?;
    writeln!(md, "\nEvery step is the full trainer step: forward, causal-LM loss, backward, clipping, AdamW. JSON: `{}`.", out.with_extension("json").display())?;
    Ok(())
}

/// Time and memory after each step, printed as they come: resident set now and its peak so far
/// (CPU), device memory in use (CUDA), in GiB. A figure that grows step after step is a leak.
#[derive(Default)]
struct StepLog {
    times: Vec<f64>,
    rss: Vec<f64>,
    peak_rss: Vec<f64>,
    device_used: Vec<f64>,
}

impl StepLog {
    fn push(
        &mut self,
        step: usize,
        total: usize,
        loss: f64,
        seconds: f64,
        device: &candle_core::Device,
    ) {
        let (rss, peak) = (rss_bytes(), peak_rss_bytes());
        let used = device_used_bytes(device);
        let gib = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / (1u64 << 30) as f64);
        let device_note = used.map_or(String::new(), |u| {
            format!(", device in use {:.2} GiB", gib(Some(u)))
        });
        eprintln!(
            "step {step}/{total}: {seconds:.2} s, loss {loss:.6}, RSS {:.2} GiB (peak {:.2}){device_note}",
            gib(rss),
            gib(peak)
        );
        self.times.push(seconds);
        self.rss.push(gib(rss));
        self.peak_rss.push(gib(peak));
        self.device_used.push(gib(used));
    }
}

/// The CPU's model name from /proc/cpuinfo (empty where there is none).
fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// Constant-rate LoRA training on every linear layer at the bench's rank, batch and steps.
fn train_config(args: &Args, total: usize) -> anyhow::Result<TrainConfig> {
    Ok(TrainConfig {
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
        activation_checkpointing: args.checkpoint_activations || args.checkpoint_layers.is_some(),
        checkpoint_layers: args.checkpoint_layers,
        recompute_mlp_layers: args.recompute_mlp_layers,
        ..TrainConfig::default()
    })
}

/// The model as the bench trains it: bf16 on CUDA, f32 on the CPU, or the GGUF's blocks kept
/// quantized (activations bf16 on CUDA); with that dtype.
fn load_model(
    args: &Args,
    path: &std::path::Path,
    device: candle_core::Device,
) -> anyhow::Result<(TextModel, DType)> {
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let cuda = device.is_cuda();
    let mut model = TextModel::open(
        path,
        &LoadOptions {
            device,
            dtype: (!args.quantized_base).then_some(dtype),
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    if args.quantized_base && cuda {
        // QLoRA on CUDA: the blocks stay on the device, activations bf16 (the training engine).
        model.model = model.model.clone().with_activation_dtype(dtype)?;
    }
    if let Some(name) = &args.quantize_base {
        let format = wick::models::llama::quantize_base::base_format(name)?;
        model.model.quantize_projections(format)?;
    }
    Ok((model, dtype))
}

/// Runs `wick bench train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let device_before_load = device_used_bytes(&device);
    let path = resolve_model_arg(&args.model)?;
    let (mut model, dtype) = load_model(&args, &path, device)?;
    let rss_after_load = peak_rss_bytes();
    let device_after_load = device_used_bytes(&model.model.device().clone());
    let vocab = model.model.config().vocab_size as u32;
    let total = args.warmup_steps + args.steps;
    let data = random_dataset(vocab, args.batch_size * total, args.seq_len);
    let config = train_config(&args, total)?;
    let out_dir = tempfile::tempdir()?;
    let train_device = model.model.device().clone();
    let sampler = DeviceMemorySampler::start(&train_device);
    let mut log = StepLog::default();
    let mut last = Instant::now();
    let mut on_progress = |p: &Progress| {
        if let Progress::Step { step, loss, .. } = p {
            let seconds = last.elapsed().as_secs_f64();
            log.push(*step, total, *loss, seconds, &train_device);
            last = Instant::now();
        }
    };
    let run = TrainRun {
        config,
        engine: args.engine,
        ..TrainRun::new(&data, out_dir.path())
    };
    let (_, summary) = train(&mut model.model, run, &mut on_progress)?;
    let device_peak = sampler.and_then(DeviceMemorySampler::finish);
    let step_times = &log.times;
    let timed = &step_times[args.warmup_steps.min(step_times.len())..];
    let seconds: f64 = timed.iter().sum();
    let tokens = (timed.len() * args.batch_size * args.seq_len) as f64;
    let tokens_per_s = tokens / seconds.max(1e-9);
    let peak = peak_rss_bytes();
    let gib = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / (1u64 << 30) as f64);
    let cpu = cpu_model_name();
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let record = serde_json::json!({
        "benchmark": "wick bench train",
        "model": path.display().to_string(),
        "device": args.device,
        "cpu": cpu,
        "threads": threads,
        "dtype": format!("{dtype:?}"),
        "base": if args.quantized_base { "quantized (GGUF blocks)" } else { "dense" },
        "rank": args.rank,
        "targets": "all-linear",
        "activation_checkpointing": args.checkpoint_activations || args.checkpoint_layers.is_some(),
        "checkpoint_layers": args.checkpoint_layers,
        "recompute_mlp_layers": args.recompute_mlp_layers,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "timed_steps": timed.len(),
        "seconds_per_step": seconds / timed.len().max(1) as f64,
        "tokens_per_s": tokens_per_s,
        "peak_rss_gib": gib(peak),
        "rss_after_load_gib": gib(rss_after_load),
        "warmup_seconds": step_times.first(),
        "path": summary.engine_mode.clone().unwrap_or_else(|| "candle autograd".into()),
        "step_seconds": step_times,
        "step_rss_gib": log.rss,
        "step_peak_rss_gib": log.peak_rss,
        "device_memory_method": if device_peak.is_some() { "cuMemGetInfo (total - free) polled every 1 ms on a thread: includes the CUDA context and the allocator pool" } else { "none (CPU)" },
        "device_peak_used_gib": gib(device_peak),
        "device_used_before_load_gib": gib(device_before_load),
        "device_used_after_load_gib": gib(device_after_load),
        "step_device_used_gib": log.device_used,
        "losses": summary.losses,
        "wick_version": env!("CARGO_PKG_VERSION"),
        "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    println!("{}", serde_json::to_string_pretty(&record)?);
    if let Some(out) = &args.out {
        let figures = Figures {
            seconds_per_step: seconds / timed.len().max(1) as f64,
            tokens_per_s,
            peak_rss: gib(peak),
            rss_after_load: gib(rss_after_load),
            device_peak,
            device_after_load,
            device_before_load: gib(device_before_load),
            warmup_s: step_times.first().copied().unwrap_or(f64::NAN),
        };
        let engine = summary.engine_mode.as_deref().unwrap_or("candle autograd");
        let machine = format!("{cpu}, {threads} threads");
        write_report(
            out,
            &args,
            &record,
            &figures,
            (&path, dtype),
            &machine,
            engine,
        )?;
    }
    Ok(())
}
