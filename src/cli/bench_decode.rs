//! `wick bench decode`: batch-1 decode on CUDA through wick's decode engine (`generate::cuda_decode`:
//! quantized mat-vec kernels, one CUDA graph per token) beside the Candle path (Candle ops + QMatMul),
//! in one process on the same GGUF file. Prints and writes:
//! - correctness against the Candle path with the weights dequantized to dense f32 (the engine's maths:
//!   dequantized weights times f32 activations; only the summation order differs), both fed the f32
//!   path's greedy tokens so positions stay aligned: (a) the engine's batched prefill
//!   (`DecodeEngine::prefill`, what generation uses: the GEMM attention where it fits, and again with
//!   the one-kernel attention forced), (b) the engine stepping the whole prompt itself,
//!   (c) the engine taking over the f32 path's prefill KV cache (`load_prefix`, the fallback), each
//!   for `--compare` positions (the first compares the prompt's last logits); max |logit
//!   difference| <= `--tolerance`. The
//!   quantized Candle path (QMatMul quantizes activations to Q8_1, so its logits differ by O(1)) is
//!   compared on greedy tokens only, as information;
//! - speed at two shapes: prompt of `--prompt-tokens` then `--decode-tokens` (llama-batched-bench
//!   pp512+tg128 at the defaults) and prompt of 1 token then 128 (llama-bench tg128): prefill tokens/s
//!   (prompts of >= `BATCHED_PREFILL_MIN` tokens through the engine's batched prefill, as generation
//!   does; median of `--prefill-reps` runs) and decode tokens/s (each token read back to the host),
//!   for the engine with the graph, the engine eagerly, and the Candle path, plus the old prefill
//!   (Candle's batched forward + cache handoff) as its own row; a JSON summary line at the end.

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
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded in the timed runs.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Tokens compared with the Candle path (logits and greedy ids).
    #[arg(long, default_value_t = 32)]
    pub compare: usize,
    /// Largest max |logit difference| accepted against the dense-f32 Candle path. Same weights and
    /// maths, f32 accumulation in another order over 30 layers: expected ~1e-3 on logits of magnitude
    /// ~10-30; a wrong RoPE, cache row or softmax gives O(1).
    #[arg(long, default_value_t = 1e-2)]
    pub tolerance: f32,
    /// Prefills timed per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub prefill_reps: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct CompareRow {
    /// "engine batched prefill" (GEMM attention), "engine batched prefill (attention kernel)",
    /// "engine steps" (the engine stepped the prompt) or "candle prefill handoff".
    run: &'static str,
    position: usize,
    max_abs_logit_diff: f32,
    f32_token: u32,
    engine_token: u32,
    device_argmax: u32,
    quantized_candle_token: u32,
}

#[derive(Serialize)]
struct Timing {
    path: String,
    prompt_tokens: usize,
    prefill_path: String,
    prefill_ms: f64,
    prefill_tokens_per_second: f64,
    decode_tokens: usize,
    decode_tokens_per_second: f64,
    ms_per_token: f64,
}

#[derive(Serialize)]
struct PrefillProfile {
    prompt_tokens: usize,
    total_gpu_us: f64,
    #[cfg(feature = "cuda")]
    kinds: Vec<wick::generate::cuda_decode::engine::prefill::PrefillKindTime>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    device: String,
    date: String,
    engine_mode: String,
    launches_per_step: usize,
    /// Launches of the engine's batched prefill of `--prompt-tokens` tokens.
    prefill_launches: usize,
    /// GPU time of one prefill chunk of the prompt per kernel kind (events between launches, behind
    /// a spin kernel), when the prompt fits one chunk.
    prefill_profile: Option<PrefillProfile>,
    weight_mb_per_step: f64,
    engine_build_s: f64,
    compare: Vec<CompareRow>,
    max_abs_logit_diff: f32,
    tolerance: f32,
    greedy_tokens_identical_f32: bool,
    greedy_tokens_identical_quantized_candle: bool,
    timings: Vec<Timing>,
    ok: bool,
}
/// Runs `wick bench decode`.
#[cfg(feature = "cuda")]
pub fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use candle_core::{DType, Device, Tensor};
    use std::time::Instant;
    use wick::formats::{open_model, LoadOptions};
    use wick::generate::cuda_decode::{DecodeEngine, BATCHED_PREFILL_MIN};
    use wick::generate::sampler::argmax;
    use wick::models::kv_cache::KvCache;
    use wick::models::llama::Llama;

    let path = wick::formats::fetch::resolve_model_arg(&args.model)?;
    let device = wick::device::parse_device(&args.device)?;
    anyhow::ensure!(device.is_cuda(), "wick bench decode needs a CUDA device");
    // The engine reads the raw blocks from a CPU view of the file; the Candle models load on the GPU.
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
    let load = |dtype: Option<DType>| -> anyhow::Result<Llama> {
        let options = LoadOptions {
            device: device.clone(),
            dtype,
        };
        let files = open_model(&path, &options)?;
        Ok(Llama::load(&config, files.weights.as_ref(), &options)?)
    };
    // Quantized (QMatMul, Q8_1 activations) and dense f32 (dequantized weights: the engine's maths).
    let model = load(None)?;
    let dense = load(Some(DType::F32))?;

    // A prompt of exactly `prompt_tokens` ids: a fixed text, repeated.
    let text = "The history of the printing press begins in the fifteenth century, when movable \
                type changed how books were made, sold and read across Europe. ";
    let base = cpu_files.tokenizer.encode(text, false)?;
    let make_prompt =
        |n: usize| -> Vec<u32> { base.iter().cycle().take(n.max(1)).copied().collect() };
    let prompt = make_prompt(args.prompt_tokens);
    let positions = prompt.len() + args.compare.max(args.decode_tokens).max(128) + 1;
    anyhow::ensure!(
        positions <= engine.shape().max_seq,
        "{positions} positions exceed the engine's cache of {}",
        engine.shape().max_seq
    );

    let logits_of = |m: &Llama, ids: &[u32], cache: &mut KvCache| {
        let input = Tensor::new(ids, &device)?.unsqueeze(0)?;
        anyhow::Ok(
            m.forward_last(&input, cache)?
                .squeeze(0)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        )
    };
    let max_abs_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(
                0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            )
    };

    // Correctness: (a) the engine steps the prompt; (b) it takes over the f32 path's prefill cache.
    let mut compare = Vec::with_capacity(4 * args.compare);
    for run in [
        "engine batched prefill",
        "engine batched prefill (attention kernel)",
        "engine steps",
        "candle prefill handoff",
    ] {
        let mut cache = dense.new_cache(1);
        let mut want = logits_of(&dense, &prompt, &mut cache)?;
        let mut qcache = model.new_cache(1);
        let mut qwant = logits_of(&model, &prompt, &mut qcache)?;
        engine.reset();
        if run == "engine batched prefill" {
            // The GEMM attention (every chunk whose keys fit its scratch, as generation runs it).
            engine.prefill(&prompt)?;
        } else if run == "engine batched prefill (attention kernel)" {
            engine.use_prefill_attention_kernel(true)?;
            engine.prefill(&prompt)?;
            engine.use_prefill_attention_kernel(false)?;
        } else if run == "engine steps" {
            for &id in &prompt {
                engine.step(id)?;
            }
        } else {
            engine.load_prefix(&cache)?;
            // The engine has no logits for the last prompt position: its first step is the next token.
            let id = argmax(&want);
            want = logits_of(&dense, &[id], &mut cache)?;
            qwant = logits_of(&model, &[id], &mut qcache)?;
            engine.step(id)?;
        }
        for _ in 0..args.compare {
            let got = engine.logits()?;
            let (device_argmax, _) = engine.greedy()?;
            let f32_token = argmax(&want);
            compare.push(CompareRow {
                run,
                position: engine.position() - 1,
                max_abs_logit_diff: max_abs_diff(&got, &want),
                f32_token,
                engine_token: argmax(&got),
                device_argmax,
                quantized_candle_token: argmax(&qwant),
            });
            want = logits_of(&dense, &[f32_token], &mut cache)?;
            qwant = logits_of(&model, &[f32_token], &mut qcache)?;
            engine.step(f32_token)?;
        }
    }
    let max_diff = compare
        .iter()
        .map(|r| r.max_abs_logit_diff)
        .fold(0f32, f32::max);
    let identical_f32 = compare
        .iter()
        .all(|r| r.f32_token == r.engine_token && r.engine_token == r.device_argmax);
    let identical_q = compare
        .iter()
        .all(|r| r.quantized_candle_token == r.engine_token);
    let engine_mode = format!("{:?}", engine.mode());
    drop(dense);
    let prefill_profile = if prompt.len() >= BATCHED_PREFILL_MIN
        && prompt.len() <= wick::generate::cuda_decode::engine::prefill::PREFILL_CHUNK
    {
        let (kinds, total_gpu_us) = engine.profile_prefill(&prompt)?;
        Some(PrefillProfile {
            prompt_tokens: prompt.len(),
            total_gpu_us,
            kinds,
        })
    } else {
        None
    };

    // Speed, at the batched-bench shape and at llama-bench's tg128 shape.
    let mut timings = Vec::new();
    let mut shapes = vec![(prompt.clone(), args.decode_tokens)];
    if args.prompt_tokens != 1 || args.decode_tokens != 128 {
        shapes.push((make_prompt(1), 128));
    }
    for (prompt, decode_tokens) in &shapes {
        let batched = prompt.len() >= BATCHED_PREFILL_MIN;
        for graph in [true, false] {
            if graph {
                engine.use_graph();
            } else {
                engine.force_eager("bench decode: eager comparison");
            }
            let mut prefill_times = Vec::with_capacity(args.prefill_reps.max(1));
            let mut id = 0;
            for _ in 0..args.prefill_reps.max(1) {
                let start = Instant::now();
                engine.reset();
                if batched {
                    engine.prefill(prompt)?;
                } else {
                    for &id in prompt {
                        engine.step(id)?;
                    }
                }
                id = engine.greedy()?.0;
                prefill_times.push(start.elapsed().as_secs_f64());
            }
            let prefill = median(&mut prefill_times);
            let start = Instant::now();
            for _ in 0..*decode_tokens {
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
            let prefill_path = if batched {
                "engine batched prefill"
            } else {
                "engine steps"
            };
            timings.push(timing(
                path,
                prompt.len(),
                prefill_path,
                prefill,
                *decode_tokens,
                decode,
            ));
        }
        if batched {
            // The previous prefill (and the fallback): Candle's batched forward + cache handoff.
            let mut times = Vec::with_capacity(args.prefill_reps.max(1));
            for _ in 0..args.prefill_reps.max(1) {
                let start = Instant::now();
                let mut cache = KvCache::with_capacity(
                    &config,
                    1,
                    prompt.len() + 1,
                    model.dtype(),
                    model.device(),
                );
                let logits = logits_of(&model, prompt, &mut cache)?;
                engine.load_prefix(&cache)?;
                engine.synchronize()?;
                std::hint::black_box(argmax(&logits));
                times.push(start.elapsed().as_secs_f64());
            }
            timings.push(timing(
                "wick engine, candle prefill handoff",
                prompt.len(),
                "candle batched forward + cache handoff",
                median(&mut times),
                0,
                0.0,
            ));
        }
        let mut times = Vec::with_capacity(args.prefill_reps.max(1));
        let mut cache = model.new_cache(1);
        let mut id = 0;
        for rep in 0..args.prefill_reps.max(1) {
            if rep > 0 {
                cache = model.new_cache(1);
            }
            let start = Instant::now();
            id = argmax(&logits_of(&model, prompt, &mut cache)?);
            times.push(start.elapsed().as_secs_f64());
        }
        let prefill = median(&mut times);
        let start = Instant::now();
        for _ in 0..*decode_tokens {
            id = argmax(&logits_of(&model, &[id], &mut cache)?);
        }
        let decode = start.elapsed().as_secs_f64();
        timings.push(timing(
            "candle (ops + QMatMul)",
            prompt.len(),
            "candle batched forward",
            prefill,
            *decode_tokens,
            decode,
        ));
    }
    engine.use_graph();

    let ok = max_diff <= args.tolerance && max_diff.is_finite();
    println!(
        "decode engine: {engine_mode}, {} launches/step, {} launches per {}-token prefill, {:.1} MB weights/step, built in {engine_build_s:.2} s",
        engine.launches_per_step(),
        engine.prefill_launches(prompt.len()),
        prompt.len(),
        engine.weight_bytes_per_step() as f64 / 1e6
    );
    println!(
        "run                     pos   max|dlogit|  f32  engine  device-argmax  quantized-candle"
    );
    for r in &compare {
        println!(
            "{:<23} {:<5} {:>11.3e}  {:>6}  {:>6}  {:>6}  {:>6}{}",
            r.run,
            r.position,
            r.max_abs_logit_diff,
            r.f32_token,
            r.engine_token,
            r.device_argmax,
            r.quantized_candle_token,
            if r.f32_token == r.engine_token && r.engine_token == r.device_argmax {
                ""
            } else {
                "  <- differs"
            }
        );
    }
    println!(
        "max |logit diff| vs dense f32 {max_diff:.3e} (tolerance {:.1e}); greedy tokens identical: \
         vs f32 {identical_f32}, vs quantized Candle {identical_q} (information)",
        args.tolerance
    );
    for run in [
        "engine batched prefill",
        "engine batched prefill (attention kernel)",
        "engine steps",
        "candle prefill handoff",
    ] {
        let rows = compare.iter().filter(|r| r.run == run);
        let worst = rows
            .clone()
            .map(|r| r.max_abs_logit_diff)
            .fold(0f32, f32::max);
        let first = rows
            .clone()
            .next()
            .map_or(f32::NAN, |r| r.max_abs_logit_diff);
        println!(
            "  {run}: max |logit diff| {worst:.3e} over {} positions (first position {first:.3e})",
            rows.count()
        );
    }
    if let Some(p) = &prefill_profile {
        println!(
            "engine prefill of {} tokens: {:.1} us of GPU time ({:.0} tok/s on the GPU alone)",
            p.prompt_tokens,
            p.total_gpu_us,
            p.prompt_tokens as f64 / (p.total_gpu_us * 1e-6)
        );
        for k in &p.kinds {
            println!(
                "  {:<22} {:>4} launches {:>9.1} us {:>5.1}%",
                k.kind,
                k.launches,
                k.gpu_us,
                100.0 * k.gpu_us / p.total_gpu_us
            );
        }
    }
    for t in &timings {
        println!(
            "{:<34} prefill {:>4} tok {:>8.2} ms {:>9.0} tok/s ({}) | decode {:>4} tok {:>8.1} tok/s {:>7.3} ms/tok",
            t.path,
            t.prompt_tokens,
            t.prefill_ms,
            t.prefill_tokens_per_second,
            t.prefill_path,
            t.decode_tokens,
            t.decode_tokens_per_second,
            t.ms_per_token
        );
    }
    let summary: Vec<serde_json::Value> = timings
        .iter()
        .map(|t| {
            serde_json::json!({
                "path": t.path,
                "prompt_tokens": t.prompt_tokens,
                "decode_tokens": t.decode_tokens,
                "prefill_tokens_per_second": t.prefill_tokens_per_second,
                "decode_tokens_per_second": t.decode_tokens_per_second,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "bench": "decode", "max_abs_logit_diff": max_diff, "ok": ok, "timings": summary })
    );
    let report = Report {
        model: path.display().to_string(),
        device: std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone()),
        date: std::env::var("WICK_RUN_DATE").unwrap_or_default(),
        engine_mode,
        launches_per_step: engine.launches_per_step(),
        prefill_launches: engine.prefill_launches(prompt.len()),
        prefill_profile,
        weight_mb_per_step: engine.weight_bytes_per_step() as f64 / 1e6,
        engine_build_s,
        compare,
        max_abs_logit_diff: max_diff,
        tolerance: args.tolerance,
        greedy_tokens_identical_f32: identical_f32,
        greedy_tokens_identical_quantized_candle: identical_q,
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
        "engine logits differ from the dense-f32 Candle path by {max_diff:.3e} > {:.1e}",
        args.tolerance
    );
    Ok(())
}

/// The median of `times` (sorted in place); 0 when empty.
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

fn timing(
    path: &str,
    prompt: usize,
    prefill_path: &str,
    prefill_s: f64,
    tokens: usize,
    decode_s: f64,
) -> Timing {
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Timing {
        path: path.into(),
        prompt_tokens: prompt,
        prefill_path: prefill_path.into(),
        prefill_ms: prefill_s * 1e3,
        prefill_tokens_per_second: rate(prompt, prefill_s),
        decode_tokens: tokens,
        decode_tokens_per_second: rate(tokens, decode_s),
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
