//! `wick bench decode`: batch-1 decode on CUDA through wick's decode engine (`generate::cuda_decode`:
//! quantized mat-vec kernels, one CUDA graph per token) beside the Candle path (Candle ops + QMatMul),
//! in one process on the same GGUF file. Prints and writes:
//! - correctness: for the first `--compare` tokens, the max |logit difference| engine vs Candle at each
//!   position (both fed the Candle path's greedy tokens, so positions stay aligned), whether the
//!   greedy tokens agree, and whether the device argmax equals the host argmax of the engine's logits;
//! - speed: prompt of `--prompt-tokens`, then `--decode-tokens` greedy tokens (each read back to the
//!   host, as generation does), tokens/s and ms per token, for the engine with the graph, the engine
//!   eagerly, and the Candle path.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::path::PathBuf;

use serde::Serialize;

/// Options of `wick bench decode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct Q4_1) or a .gguf file.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// CUDA device.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Tokens decoded in the timed runs.
    #[arg(long, default_value_t = 256)]
    pub decode_tokens: usize,
    /// Tokens compared with the Candle path (logits and greedy ids).
    #[arg(long, default_value_t = 32)]
    pub compare: usize,
    /// Largest max |logit difference| accepted in the comparison.
    #[arg(long, default_value_t = 2e-2)]
    pub tolerance: f32,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct CompareRow {
    position: usize,
    max_abs_logit_diff: f32,
    candle_token: u32,
    engine_token: u32,
    device_argmax: u32,
}

#[derive(Serialize)]
struct Timing {
    path: String,
    prompt_tokens: usize,
    prefill_ms: f64,
    decode_tokens: usize,
    decode_tokens_per_second: f64,
    ms_per_token: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    device: String,
    date: String,
    engine_mode: String,
    launches_per_step: usize,
    weight_mb_per_step: f64,
    engine_build_s: f64,
    compare: Vec<CompareRow>,
    max_abs_logit_diff: f32,
    greedy_tokens_identical: bool,
    timings: Vec<Timing>,
    ok: bool,
}

/// Runs `wick bench decode`.
#[cfg(feature = "cuda")]
pub fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use candle_core::{Device, Tensor};
    use std::time::Instant;
    use wick::formats::{open_model, LoadOptions};
    use wick::generate::cuda_decode::DecodeEngine;
    use wick::generate::sampler::argmax;
    use wick::models::llama::Llama;

    let path = wick::formats::fetch::resolve_model_arg(&args.model)?;
    let device = wick::device::parse_device(&args.device)?;
    anyhow::ensure!(device.is_cuda(), "wick bench decode needs a CUDA device");
    // The engine reads the raw blocks from a CPU view of the file; the Candle model loads on the GPU.
    let cpu_files = open_model(
        &path,
        &LoadOptions {
            device: Device::Cpu,
            dtype: None,
        },
    )?;
    let config = cpu_files.config.clone();
    let start = Instant::now();
    let mut engine = DecodeEngine::new(&config, cpu_files.weights.as_ref(), &device)
        .context("building the CUDA decode engine")?;
    engine.synchronize()?;
    let engine_build_s = start.elapsed().as_secs_f64();
    let options = LoadOptions {
        device: device.clone(),
        dtype: None,
    };
    let gpu_files = open_model(&path, &options)?;
    let model = Llama::load(&config, gpu_files.weights.as_ref(), &options)?;

    // A prompt of exactly `prompt_tokens` ids: a fixed text, repeated.
    let text = "The history of the printing press begins in the fifteenth century, when movable \
                type changed how books were made, sold and read across Europe. ";
    let base = cpu_files.tokenizer.encode(text, false)?;
    let prompt: Vec<u32> = base
        .iter()
        .cycle()
        .take(args.prompt_tokens.max(1))
        .copied()
        .collect();
    let positions = prompt.len() + args.compare.max(args.decode_tokens) + 1;
    anyhow::ensure!(
        positions <= engine.shape().max_seq,
        "{positions} positions exceed the engine's cache of {}",
        engine.shape().max_seq
    );

    let candle_logits = |ids: &[u32], cache: &mut wick::models::kv_cache::KvCache| {
        let input = Tensor::new(ids, &device)?.unsqueeze(0)?;
        anyhow::Ok(
            model
                .forward_last(&input, cache)?
                .squeeze(0)?
                .to_vec1::<f32>()?,
        )
    };

    // Correctness: both paths fed the Candle path's greedy tokens.
    let mut cache = model.new_cache(1);
    let mut want = candle_logits(&prompt, &mut cache)?;
    engine.reset();
    for &id in &prompt {
        engine.step(id)?;
    }
    let mut compare = Vec::with_capacity(args.compare);
    for position in 0..args.compare {
        let got = engine.logits()?;
        let (device_argmax, _) = engine.greedy()?;
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        let candle_token = argmax(&want);
        compare.push(CompareRow {
            position: prompt.len() + position,
            max_abs_logit_diff: diff,
            candle_token,
            engine_token: argmax(&got),
            device_argmax,
        });
        want = candle_logits(&[candle_token], &mut cache)?;
        engine.step(candle_token)?;
    }
    let max_diff = compare
        .iter()
        .map(|r| r.max_abs_logit_diff)
        .fold(0f32, f32::max);
    let identical = compare
        .iter()
        .all(|r| r.candle_token == r.engine_token && r.engine_token == r.device_argmax);
    let engine_mode = format!("{:?}", engine.mode());

    // Speed.
    let mut timings = Vec::new();
    for graph in [true, false] {
        if graph {
            engine.use_graph();
        } else {
            engine.force_eager("bench decode: eager comparison");
        }
        engine.reset();
        let start = Instant::now();
        for &id in &prompt {
            engine.step(id)?;
        }
        let (mut id, _) = engine.greedy()?;
        let prefill = start.elapsed();
        let start = Instant::now();
        for _ in 0..args.decode_tokens {
            engine.step(id)?;
            id = engine.greedy()?.0;
        }
        let decode = start.elapsed().as_secs_f64();
        let path = if graph && engine_mode == "Graph" {
            "wick engine (CUDA graph)"
        } else if graph {
            "wick engine (graph failed: eager)"
        } else {
            "wick engine (eager launches)"
        };
        timings.push(timing(
            path,
            prompt.len(),
            prefill.as_secs_f64(),
            args.decode_tokens,
            decode,
        ));
    }
    let mut cache = model.new_cache(1);
    let start = Instant::now();
    let mut id = argmax(&candle_logits(&prompt, &mut cache)?);
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..args.decode_tokens {
        id = argmax(&candle_logits(&[id], &mut cache)?);
    }
    let decode = start.elapsed().as_secs_f64();
    timings.push(timing(
        "candle (ops + QMatMul)",
        prompt.len(),
        prefill,
        args.decode_tokens,
        decode,
    ));

    let ok = max_diff <= args.tolerance && max_diff.is_finite();
    println!(
        "decode engine: {engine_mode}, {} launches/step, {:.1} MB weights/step, built in {engine_build_s:.2} s",
        engine.launches_per_step(),
        engine.weight_bytes_per_step() as f64 / 1e6
    );
    println!("pos   max|dlogit|  candle  engine  device-argmax");
    for r in &compare {
        println!(
            "{:<5} {:>11.3e}  {:>6}  {:>6}  {:>6}{}",
            r.position,
            r.max_abs_logit_diff,
            r.candle_token,
            r.engine_token,
            r.device_argmax,
            if r.candle_token == r.engine_token && r.engine_token == r.device_argmax {
                ""
            } else {
                "  <- differs"
            }
        );
    }
    println!(
        "max |logit diff| {max_diff:.3e} (tolerance {:.1e}); greedy tokens identical: {identical}",
        args.tolerance
    );
    for t in &timings {
        println!(
            "{:<34} prefill {:>4} tok {:>8.2} ms | decode {:>4} tok {:>8.1} tok/s {:>7.3} ms/tok",
            t.path,
            t.prompt_tokens,
            t.prefill_ms,
            t.decode_tokens,
            t.decode_tokens_per_second,
            t.ms_per_token
        );
    }
    let report = Report {
        model: path.display().to_string(),
        device: std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone()),
        date: std::env::var("WICK_RUN_DATE").unwrap_or_default(),
        engine_mode,
        launches_per_step: engine.launches_per_step(),
        weight_mb_per_step: engine.weight_bytes_per_step() as f64 / 1e6,
        engine_build_s,
        compare,
        max_abs_logit_diff: max_diff,
        greedy_tokens_identical: identical,
        timings,
        ok,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    anyhow::ensure!(
        ok,
        "engine logits differ from the Candle path by {max_diff:.3e} > {:.1e}",
        args.tolerance
    );
    Ok(())
}

fn timing(path: &str, prompt: usize, prefill_s: f64, tokens: usize, decode_s: f64) -> Timing {
    Timing {
        path: path.into(),
        prompt_tokens: prompt,
        prefill_ms: prefill_s * 1e3,
        decode_tokens: tokens,
        decode_tokens_per_second: if decode_s > 0.0 {
            tokens as f64 / decode_s
        } else {
            0.0
        },
        ms_per_token: if tokens > 0 {
            decode_s * 1e3 / tokens as f64
        } else {
            0.0
        },
    }
}

/// Without the `cuda` feature there is no engine to measure.
#[cfg(not(feature = "cuda"))]
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("wick bench decode needs a build with --features cuda")
}
