//! `wick bench cpu`: prefill and decode tokens/s of a GGUF decoder on the CPU, beside llama.cpp's
//! `llama-bench` on the same file, prompt length and thread count, in one run; written as Markdown +
//! JSON with the command, date and CPU (scripts/bench-cpu.sh runs it end to end).
//!
//! What is timed mirrors llama-bench's `pp` and `tg` tests:
//! - prefill: `--prompt-tokens` pseudo-random token ids in one forward from an empty KV cache, LM
//!   head on the last position only (llama-bench asks for the last position's logits only);
//! - decode: `--gen-tokens` single-token forwards from an empty cache, each on the previous cache.
//!
//! The two engines take turns, round after round (wick prefill, wick decode, then one llama-bench
//! repetition of both), so background load on a shared machine hits both alike; the median and the
//! spread over rounds are reported.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use wick::generate::TextModel;
use wick::models::llama::Llama;

/// Options of `wick bench cpu`.
#[derive(clap::Args)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct Q4_1) or a GGUF file.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens of the decode test.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Measured rounds (after one warm-up round); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// llama.cpp's llama-bench binary, run beside wick on the same file (scripts/llamacpp/build-llama-bench.sh).
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// Threads for llama-bench; wick's are Candle's (CANDLE_NUM_THREADS / RAYON_NUM_THREADS,
    /// default one per physical core), and the two are required to agree.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Output path without extension: writes OUT.md and OUT.json.
    #[arg(long, default_value = "bench/results/cpu-decode-prefill")]
    pub out: PathBuf,
}

/// Runs `wick bench cpu`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.prompt_tokens > 0 && args.gen_tokens > 0,
        "--rounds, --prompt-tokens and --gen-tokens must be positive"
    );
    let wick_threads = candle_core::utils::get_num_threads();
    anyhow::ensure!(
        wick_threads == args.threads,
        "wick would run {wick_threads} threads but --threads is {}: set CANDLE_NUM_THREADS={} (and RAYON_NUM_THREADS)",
        args.threads,
        args.threads
    );
    let path = wick::formats::fetch::resolve_model_arg(&args.model)?;
    let model = TextModel::open(&path, &Default::default())
        .with_context(|| format!("loading {}", path.display()))?;
    let vocab = model.model.config().vocab_size as u32;
    let prompt = pseudo_random_tokens(args.prompt_tokens, vocab, 1);
    let decode_tokens = pseudo_random_tokens(args.gen_tokens, vocab, 2);

    let mut wick_pp = Vec::new();
    let mut wick_tg = Vec::new();
    let mut llama_pp = Vec::new();
    let mut llama_tg = Vec::new();
    let mut llama_info = Value::Null;
    // /proc/loadavg at the start of each measured round: the machine is shared, so the load says
    // how far the absolute figures are from an idle machine (the per-round ratios are what counts).
    let mut loads = Vec::new();
    for round in 0..=args.rounds {
        let load = load_average();
        let pp = prefill_tokens_per_second(&model.model, &prompt)?;
        let tg = decode_tokens_per_second(&model.model, &decode_tokens)?;
        let peer = match &args.llama_bench {
            Some(bin) => Some(run_llama_bench(bin, &path, &args)?),
            None => None,
        };
        eprintln!(
            "round {round}{}: wick prefill {pp:.1} tok/s, decode {tg:.1} tok/s{}",
            if round == 0 { " (warm-up)" } else { "" },
            peer.as_ref()
                .map(|(p, t, _)| format!("; llama.cpp prefill {p:.1} tok/s, decode {t:.1} tok/s"))
                .unwrap_or_default()
        );
        if round == 0 {
            continue;
        }
        wick_pp.push(pp);
        wick_tg.push(tg);
        loads.push(load);
        if let Some((p, t, info)) = peer {
            llama_pp.push(p);
            llama_tg.push(t);
            llama_info = info;
        }
    }

    let command: Vec<String> = std::env::args().collect();
    let stats = |v: &[f64]| {
        if v.is_empty() {
            Value::Null
        } else {
            json!({"median": median(v), "min": v.iter().cloned().fold(f64::INFINITY, f64::min),
                   "max": v.iter().cloned().fold(0.0, f64::max), "samples": v})
        }
    };
    let ratio = |a: &[f64], b: &[f64]| {
        if b.is_empty() {
            Value::Null
        } else {
            json!(median(a) / median(b))
        }
    };
    let report = json!({
        "command": command.join(" "),
        "date_utc": shell(&["date", "-u", "+%Y-%m-%d %H:%M:%S"]),
        "commit": shell(&["git", "rev-parse", "--short", "HEAD"]),
        "cpu": cpu_description(),
        "model": path.display().to_string(),
        "model_sha256": wick::formats::fetch::sha256_file(&path)?,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "rounds": args.rounds,
        "wick": {"prefill_tok_s": stats(&wick_pp), "decode_tok_s": stats(&wick_tg),
                 "quant_matmul_kernel": wick::ops::quant_matmul_cpu::kernel_name()},
        "llama_cpp": {"prefill_tok_s": stats(&llama_pp), "decode_tok_s": stats(&llama_tg),
                      "llama_bench": args.llama_bench.as_ref().map(|p| p.display().to_string()),
                      "build": llama_info},
        "ratio_wick_over_llama_cpp": {"prefill": ratio(&wick_pp, &llama_pp), "decode": ratio(&wick_tg, &llama_tg),
            "prefill_per_round": per_round(&wick_pp, &llama_pp), "decode_per_round": per_round(&wick_tg, &llama_tg)},
        "load_average_1m_per_round": loads,
    });
    write_report(&args.out, &report)
}

/// Writes OUT.json and OUT.md (printed too) for output path `out` without extension.
fn write_report(out: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json_path = out.with_extension("json");
    let md_path = out.with_extension("md");
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, markdown(report))
        .with_context(|| format!("writing {}", md_path.display()))?;
    print!("{}", markdown(report));
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

/// wick / llama.cpp of each round (both measured back to back under the same load).
fn per_round(wick: &[f64], llama: &[f64]) -> Value {
    if llama.is_empty() {
        return Value::Null;
    }
    let ratios: Vec<f64> = wick.iter().zip(llama).map(|(w, l)| w / l).collect();
    json!({"median": median(&ratios), "samples": ratios})
}

/// The 1-minute load average (`/proc/loadavg`), NaN where unavailable.
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Deterministic token ids in 0..vocab (xorshift), like llama-bench's `rand() % n_vocab`.
pub(crate) fn pseudo_random_tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect()
}

fn prefill_tokens_per_second(model: &Llama, prompt: &[u32]) -> anyhow::Result<f64> {
    let input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    let mut cache = model.new_cache(1);
    let start = Instant::now();
    let logits = model.forward_last(&input, &mut cache)?;
    let _ = logits.to_vec2::<f32>()?;
    Ok(prompt.len() as f64 / start.elapsed().as_secs_f64())
}

fn decode_tokens_per_second(model: &Llama, tokens: &[u32]) -> anyhow::Result<f64> {
    let mut cache = model.new_cache(1);
    let start = Instant::now();
    for &token in tokens {
        let input = Tensor::new(&[token], &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward_last(&input, &mut cache)?;
        let _ = logits.to_vec2::<f32>()?;
    }
    Ok(tokens.len() as f64 / start.elapsed().as_secs_f64())
}

/// How a process ended, for an error: its exit code, or the signal that killed it (a llama-bench
/// built with -march=native on a host that reports CPU features its VM does not enable dies of
/// SIGILL with nothing on stderr).
fn exit_text(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                4 => " (SIGILL: an instruction this CPU does not run)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("killed by signal {signal}{name}");
        }
    }
    status.to_string()
}

/// One llama-bench repetition of pp and tg: (prefill tok/s, decode tok/s, build description).
fn run_llama_bench(
    bin: &std::path::Path,
    model: &std::path::Path,
    args: &Args,
) -> anyhow::Result<(f64, f64, Value)> {
    let output = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-p", &args.prompt_tokens.to_string()])
        .args(["-n", &args.gen_tokens.to_string()])
        .args(["-t", &args.threads.to_string()])
        .args(["-r", "1", "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}): {}",
        bin.display(),
        exit_text(output.status),
        String::from_utf8_lossy(&output.stderr)
    );
    let tests: Vec<Value> = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("parsing the JSON of {}", bin.display()))?;
    let find = |field: &str| {
        tests
            .iter()
            .find(|t| t[field].as_u64().unwrap_or(0) > 0)
            .ok_or_else(|| anyhow::anyhow!("llama-bench gave no test with {field} > 0"))
    };
    let pp = find("n_prompt")?;
    let tg = find("n_gen")?;
    let ts = |t: &Value| t["avg_ts"].as_f64().unwrap_or(f64::NAN);
    let info = json!({
        "build_commit": pp["build_commit"], "build_number": pp["build_number"],
        "cpu_info": pp["cpu_info"], "backends": pp["backends"], "n_threads": pp["n_threads"],
        "type_k": pp["type_k"], "flash_attn": pp["flash_attn"],
    });
    Ok((ts(pp), ts(tg), info))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn shell(command: &[&str]) -> Option<String> {
    let out = Command::new(command[0]).args(&command[1..]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{model}, {cores} cores ({})", simd.join(" "))
}

fn markdown(r: &Value) -> String {
    let num = |v: &Value| v.as_f64().map(|x| format!("{x:.1}")).unwrap_or("-".into());
    let range = |v: &Value| match (v["min"].as_f64(), v["max"].as_f64()) {
        (Some(a), Some(b)) => format!("{a:.1}-{b:.1}"),
        _ => "-".into(),
    };
    let ratio = |v: &Value| v.as_f64().map(|x| format!("{x:.2}x")).unwrap_or("-".into());
    let w = &r["wick"];
    let l = &r["llama_cpp"];
    let q = &r["ratio_wick_over_llama_cpp"];
    format!(
        "# CPU prefill and decode: wick vs llama.cpp\n\n\
         - command: `{}`\n- date (UTC): {}\n- commit: {}\n- CPU: {}, {} threads each\n\
         - model: {} (sha256 {})\n- llama.cpp: {} ({})\n\
         - {} measured rounds after a warm-up; each round runs wick prefill, wick decode, then one \
         llama-bench repetition, so both see the same background load. Median (min-max) tokens/s.\n\n\
         | engine | prefill {} tok | decode {} tok |\n|---|---|---|\n\
         | wick | {} ({}) | {} ({}) |\n| llama.cpp llama-bench | {} ({}) | {} ({}) |\n\
         | wick / llama.cpp (ratio of medians) | {} | {} |\n\
         | wick / llama.cpp (median of per-round ratios) | {} | {} |\n\n\
         1-minute load average at the start of each round (2 cores): {}\n",
        r["command"].as_str().unwrap_or(""),
        r["date_utc"].as_str().unwrap_or(""),
        r["commit"].as_str().unwrap_or(""),
        r["cpu"].as_str().unwrap_or(""),
        r["threads"],
        r["model"].as_str().unwrap_or(""),
        r["model_sha256"].as_str().unwrap_or(""),
        l["llama_bench"].as_str().unwrap_or("not run"),
        l["build"],
        r["rounds"],
        r["prompt_tokens"],
        r["gen_tokens"],
        num(&w["prefill_tok_s"]["median"]),
        range(&w["prefill_tok_s"]),
        num(&w["decode_tok_s"]["median"]),
        range(&w["decode_tok_s"]),
        num(&l["prefill_tok_s"]["median"]),
        range(&l["prefill_tok_s"]),
        num(&l["decode_tok_s"]["median"]),
        range(&l["decode_tok_s"]),
        ratio(&q["prefill"]),
        ratio(&q["decode"]),
        ratio(&q["prefill_per_round"]["median"]),
        ratio(&q["decode_per_round"]["median"]),
        r["load_average_1m_per_round"],
    )
}

#[cfg(all(test, unix))]
mod tests {
    use super::exit_text;
    use std::process::Command;

    #[test]
    fn exit_text_names_the_signal_or_the_code() {
        let killed = Command::new("sh")
            .args(["-c", "kill -ILL $$"])
            .status()
            .unwrap();
        assert_eq!(
            exit_text(killed),
            "killed by signal 4 (SIGILL: an instruction this CPU does not run)"
        );
        let failed = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(exit_text(failed), "exit status: 3");
    }
}
