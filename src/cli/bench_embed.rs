//! `wick bench embed`: embedding throughput (texts/s) per batch size and peak memory, written as
//! Markdown + JSON with the command, date and device; optionally beside sentence-transformers numbers
//! measured on the same texts by scripts/bench_embed_st.py (see scripts/bench-embed-cpu.sh).
//!
//! The texts are the 250 sentences of tests/fixtures/embed/search_corpus.txt (25 topics, 5-20 word
//! pieces each), repeated to `--texts`. Each measured pass is one `Embedder::embed` call over all of
//! them at the given batch size (sorted by length and padded per batch, as sentence-transformers'
//! `encode` does), results copied back to the host; the median of `--repeats` passes is reported.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::DType;
use serde_json::{json, Value};
use wick::embed::{Embedder, EmbedderOptions};

const CORPUS: &str = include_str!("../../tests/fixtures/embed/search_corpus.txt");

/// Options of `wick bench embed`.
#[derive(clap::Args)]
pub struct Args {
    /// `default` (all-MiniLM-L6-v2) or a sentence-transformers model directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub batch_sizes: Vec<usize>,
    /// Texts per measured pass.
    #[arg(long, default_value_t = 256)]
    pub texts: usize,
    /// Measured passes per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Output path without extension: writes OUT.md and OUT.json. Default bench/results/embed-<device>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// JSON from scripts/bench_embed_st.py (sentence-transformers on the same texts) to set beside.
    #[arg(long)]
    pub peer: Option<PathBuf>,
}

/// Runs `wick bench embed`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => anyhow::bail!("--dtype `{other}`: expected f32, f16 or bf16"),
    };
    anyhow::ensure!(
        args.repeats > 0 && args.texts > 0,
        "--repeats and --texts must be positive"
    );
    let mut embedder = Embedder::load_with(
        &args.model,
        &device,
        EmbedderOptions {
            dtype,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading `{}`", args.model))?;
    let corpus: Vec<&str> = CORPUS.lines().filter(|l| !l.trim().is_empty()).collect();
    let texts: Vec<&str> = corpus.iter().cycle().take(args.texts).copied().collect();
    let threads = candle_core::utils::get_num_threads();
    let load_before = load_average();

    let mut results = Vec::new();
    for &batch_size in &args.batch_sizes {
        anyhow::ensure!(batch_size > 0, "batch sizes must be positive");
        results.push(measure_batch(
            &mut embedder,
            &texts,
            batch_size,
            args.repeats,
        )?);
    }
    let peak_rss_mib = vm_hwm_kib().map(|k| k as f64 / 1024.0);
    let peer: Option<Value> = match &args.peer {
        Some(path) => Some(serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?),
        None => None,
    };
    let device_kind = if args.device.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    };
    let report = json!({
        "benchmark": "embed",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "date_utc": utc_now(),
        "git_commit": git_commit(),
        "device": describe_device(device_kind),
        "threads": threads,
        "model": args.model,
        "model_dir": embedder.model_dir().display().to_string(),
        "dtype": args.dtype,
        "texts_per_pass": texts.len(),
        "repeats": args.repeats,
        "max_seq_length": embedder.max_seq_length(),
        "results": results,
        "peak_rss_mib": peak_rss_mib,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "peer": peer,
    });
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("bench/results/embed-{device_kind}")));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json_path = out.with_extension("json");
    let md_path = out.with_extension("md");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&md_path, markdown(&report))?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

/// Texts per second embedding `texts` at `batch_size`, after a warm-up: the median of `repeats`
/// passes, each read back to the host, as a result row.
fn measure_batch(
    embedder: &mut Embedder,
    texts: &[&str],
    batch_size: usize,
    repeats: usize,
) -> anyhow::Result<Value> {
    embedder.set_batch_size(batch_size);
    // Warm-up: first-use allocations, CUDA module loading.
    let warm = &texts[..texts.len().min(batch_size.max(8))];
    embedder.embed(warm)?.to_device(&candle_core::Device::Cpu)?;
    let mut rates = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let out = embedder.embed(texts)?;
        let _host: Vec<Vec<f32>> = out.to_device(&candle_core::Device::Cpu)?.to_vec2()?;
        rates.push(texts.len() as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    eprintln!(
        "batch {batch_size:>4}: {median:>9.1} texts/s (passes: {})",
        rates
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(json!({
        "batch_size": batch_size,
        "texts_per_s": median,
        "passes_texts_per_s": rates,
    }))
}

fn markdown(r: &Value) -> String {
    let peer = r.get("peer").filter(|p| !p.is_null());
    let peer_rate = |batch: u64| -> Option<f64> {
        peer?["results"]
            .as_array()?
            .iter()
            .find(|x| x["batch_size"].as_u64() == Some(batch))?["texts_per_s"]
            .as_f64()
    };
    let mut s = String::new();
    s.push_str("# Embedding throughput\n\n");
    s.push_str(&format!(
        "- command: `{}`\n- date (UTC): {}\n- commit: {}\n- device: {}, {} threads\n- model: {} ({}), dtype {}, max_seq_length {}\n- texts: {} per pass (the 250 sentences of tests/fixtures/embed/search_corpus.txt, cycled), median of {} passes\n",
        r["command"].as_str().unwrap_or(""),
        r["date_utc"].as_str().unwrap_or(""),
        r["git_commit"].as_str().unwrap_or("unknown"),
        r["device"].as_str().unwrap_or(""),
        r["threads"],
        r["model"].as_str().unwrap_or(""),
        r["model_dir"].as_str().unwrap_or(""),
        r["dtype"].as_str().unwrap_or(""),
        r["max_seq_length"],
        r["texts_per_pass"],
        r["repeats"],
    ));
    if let Some(p) = peer {
        s.push_str(&format!(
            "- peer: {} (measured by `{}` in the same script run)\n",
            p["engine"].as_str().unwrap_or("sentence-transformers"),
            p["command"].as_str().unwrap_or("scripts/bench_embed_st.py"),
        ));
    }
    s.push_str("\n| batch | wick texts/s |");
    if peer.is_some() {
        s.push_str(" sentence-transformers texts/s | wick / s-t |");
    }
    s.push_str("\n|---|---|");
    if peer.is_some() {
        s.push_str("---|---|");
    }
    s.push('\n');
    for row in r["results"].as_array().into_iter().flatten() {
        let batch = row["batch_size"].as_u64().unwrap_or(0);
        let rate = row["texts_per_s"].as_f64().unwrap_or(0.0);
        s.push_str(&format!("| {batch} | {rate:.1} |"));
        if peer.is_some() {
            match peer_rate(batch) {
                Some(p) => s.push_str(&format!(" {p:.1} | {:.2}x |", rate / p)),
                None => s.push_str(" - | - |"),
            }
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "\nPeak resident memory (VmHWM) of the wick process: {}",
        r["peak_rss_mib"]
            .as_f64()
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".into())
    ));
    if let Some(m) = peer.and_then(|p| p["peak_rss_mib"].as_f64()) {
        s.push_str(&format!("; the sentence-transformers process: {m:.0} MiB"));
    }
    s.push_str(".\n");
    s.push_str(&format!(
        "\nLoad average (1 min) before / after the wick run: {} / {}. On a shared machine numbers\n\
         above 2 mean other work competed for the 2 cores; compare wick with its peer in the same\n\
         run, not across runs.\n",
        r["load_average_before"], r["load_average_after"]
    ));
    s
}

/// The 1-minute load average (Linux), to tell a quiet machine from a busy one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident set size of this process in KiB (Linux `VmHWM`).
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn describe_device(kind: &str) -> String {
    if kind == "cuda" {
        let name = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        return name.unwrap_or_else(|| "CUDA GPU".into());
    }
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{model}, {cores} cores")
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `YYYY-MM-DD HH:MM:SS` UTC from the system clock (days-to-civil, Howard Hinnant's algorithm).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
