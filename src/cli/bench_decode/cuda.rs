//! The CUDA part of `wick bench decode`: the engine and the two Candle models built from one GGUF
//! file, the logit comparison, the timings, and the report (see `super` for what each measures).

use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use wick::formats::config::DecoderConfig;
use wick::formats::{open_model, LoadOptions};
use wick::generate::cuda_decode::{DecodeEngine, BATCHED_PREFILL_MIN};
use wick::generate::decode_adapter::DecodeAdapter;
use wick::generate::sampler::argmax;
use wick::models::kv_cache::KvCache;
use wick::models::llama::Llama;

use super::{median, timing, Args, CompareRow, PrefillProfile, Report, Timing};

/// The comparison runs, in order: the engine's batched prefill (GEMM attention, then the one-kernel
/// attention forced, then in f32), the engine stepping the prompt, the engine taking over Candle's
/// prefill cache; every step after them on f32 activations. Last, the engine stepping the prompt
/// on int8 activations (the engine's default step).
const RUNS: [&str; 6] = [
    "engine batched prefill",
    "engine batched prefill (attention kernel)",
    "engine batched prefill (f32)",
    "engine steps",
    "candle prefill handoff",
    "engine steps (int8 activations)",
];

/// How a run's logits are judged: its maths' own tolerance.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Precision {
    F32,
    /// The prefill's products on the TF32 tensor cores (the engine's default prefill).
    Tf32,
    /// The steps' mat-vecs on int8 activations (the engine's default step).
    Int8,
}

/// The worst |logit difference| of the f32, TF32 and int8 runs, and whether each is within its
/// tolerance.
fn judge(compare: &[CompareRow], args: &Args) -> (f32, f32, f32, bool) {
    let worst = |p: Precision| {
        compare
            .iter()
            .filter(|r| precision(r.run) == p)
            .map(|r| r.max_abs_logit_diff)
            .fold(0f32, f32::max)
    };
    let (f32_runs, tf32, int8) = (
        worst(Precision::F32),
        worst(Precision::Tf32),
        worst(Precision::Int8),
    );
    let ok = [
        (f32_runs, args.tolerance),
        (tf32, args.tf32_tolerance),
        (int8, args.int8_tolerance),
    ]
    .iter()
    .all(|&(d, t)| d.is_finite() && d <= t);
    (f32_runs, tf32, int8, ok)
}

fn precision(run: &str) -> Precision {
    if run == RUNS[0] || run == RUNS[1] {
        Precision::Tf32
    } else if run == RUNS[5] {
        Precision::Int8
    } else {
        Precision::F32
    }
}

/// Runs `wick bench decode`.
pub fn run(args: Args) -> anyhow::Result<()> {
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
    // The runs name their precision (TF32 unless "(f32)"): WICK_PREFILL_TF32 does not apply here.
    engine.use_prefill_tf32(true)?;
    // Quantized (QMatMul, Q8_1 activations) and dense f32 (dequantized weights: the engine's maths).
    let mut model = load_candle(&path, &config, &device, None)?;
    let mut dense = load_candle(&path, &config, &device, Some(DType::F32))?;
    if let Some(dir) = &args.adapter {
        attach_adapter(dir, &mut engine, &mut model, &mut dense)?;
    }

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

    let models = Models {
        device: &device,
        config: &config,
        quantized: &model,
    };
    let compare = compare_runs(&mut engine, &dense, &models, &prompt, args.compare)?;
    let engine_mode = format!("{:?}", engine.mode());
    drop(dense);
    let prefill_profile = profile_prefill(&mut engine, &prompt)?;

    // Speed, at the batched-bench shape and at llama-bench's tg128 shape.
    let mut shapes = vec![(prompt.clone(), args.decode_tokens)];
    if args.prompt_tokens != 1 || args.decode_tokens != 128 {
        shapes.push((make_prompt(1), 128));
    }
    let reps = args.prefill_reps.max(1);
    let timings = speed(&mut engine, &models, &shapes, &engine_mode, reps)?;

    let (max_diff, max_diff_tf32, max_diff_int8, ok) = judge(&compare, &args);
    let report = Report {
        model: path.display().to_string(),
        adapter: args.adapter.as_ref().map(|d| d.display().to_string()),
        device: std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone()),
        date: std::env::var("WICK_RUN_DATE").unwrap_or_default(),
        engine_mode,
        launches_per_step: engine.launches_per_step(),
        prefill_launches: engine.prefill_launches(prompt.len()),
        prefill_profile,
        weight_mb_per_step: engine.weight_bytes_per_step() as f64 / 1e6,
        engine_build_s,
        greedy_tokens_identical_f32: compare
            .iter()
            .all(|r| r.f32_token == r.engine_token && r.engine_token == r.device_argmax),
        greedy_tokens_identical_quantized_candle: compare
            .iter()
            .all(|r| r.quantized_candle_token == r.engine_token),
        compare,
        max_abs_logit_diff: max_diff,
        tolerance: args.tolerance,
        max_abs_logit_diff_tf32: max_diff_tf32,
        tf32_tolerance: args.tf32_tolerance,
        max_abs_logit_diff_int8: max_diff_int8,
        int8_tolerance: args.int8_tolerance,
        timings,
        ok,
    };
    finish(&report, prompt.len(), args.out.as_deref())
}

/// Prints the report, writes it as JSON to `out` when given, and fails when the logits are off.
fn finish(report: &Report, prompt_len: usize, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    print_report(report, prompt_len);
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    anyhow::ensure!(
        report.ok,
        "engine logits differ from the dense-f32 Candle path by {:.3e} > {:.1e}",
        report.max_abs_logit_diff,
        report.tolerance
    );
    Ok(())
}

/// The Candle side: the device, the config and the quantized model (Candle ops + QMatMul).
struct Models<'a> {
    device: &'a Device,
    config: &'a DecoderConfig,
    quantized: &'a Llama,
}

/// The last position's logits of `m` after feeding `ids` into `cache`.
fn logits_of(
    m: &Llama,
    ids: &[u32],
    cache: &mut KvCache,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
    Ok(m.forward_last(&input, cache)?
        .squeeze(0)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

/// The Candle model of `path` on `device`, in `dtype` (None: as stored; GGML blocks stay quantized).
fn load_candle(
    path: &std::path::Path,
    config: &DecoderConfig,
    device: &Device,
    dtype: Option<DType>,
) -> anyhow::Result<Llama> {
    let options = LoadOptions {
        device: device.clone(),
        dtype,
    };
    let files = open_model(path, &options)?;
    Ok(Llama::load(config, files.weights.as_ref(), &options)?)
}

/// The PEFT adapter in `dir` attached to both Candle models and loaded into the engine's slot 1
/// (unmerged, as `wick generate --adapter` runs it), selected for every later step and prefill.
fn attach_adapter(
    dir: &std::path::Path,
    engine: &mut DecodeEngine,
    model: &mut Llama,
    dense: &mut Llama,
) -> anyhow::Result<()> {
    for m in [&mut *model, &mut *dense] {
        let adapter = wick::lora::peft_io::load_adapter(dir, m.device())?;
        adapter.apply_for_inference(m.linear_layers_mut(), dir)?;
    }
    let host = DecodeAdapter::from_linears(&dense.linear_layers())?
        .with_context(|| format!("{}: no LoRA layers", dir.display()))?;
    engine.load_adapter(1, &host, None)?;
    engine.set_adapter(Some(1))?;
    println!("adapter {} on every path (engine slot 1)", dir.display());
    Ok(())
}

/// max |a - b|, infinite where a difference is NaN.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

/// Correctness: each of [`RUNS`] brings the engine to the end of the prompt, then `positions`
/// steps compare its logits with the dense f32 path's, all fed the f32 path's greedy tokens.
fn compare_runs(
    engine: &mut DecodeEngine,
    dense: &Llama,
    models: &Models,
    prompt: &[u32],
    positions: usize,
) -> anyhow::Result<Vec<CompareRow>> {
    let (model, device) = (models.quantized, models.device);
    let mut compare = Vec::with_capacity(4 * positions);
    for run in RUNS {
        let mut cache = dense.new_cache(1);
        let mut want = logits_of(dense, prompt, &mut cache, device)?;
        let mut qcache = model.new_cache(1);
        let mut qwant = logits_of(model, prompt, &mut qcache, device)?;
        engine.use_int8_activations(precision(run) == Precision::Int8);
        engine.reset();
        if run == "engine batched prefill" {
            // The GEMM attention (every chunk whose keys fit its scratch, as generation runs it).
            engine.prefill(prompt)?;
        } else if run == "engine batched prefill (attention kernel)" {
            engine.use_prefill_attention_kernel(true)?;
            engine.prefill(prompt)?;
            engine.use_prefill_attention_kernel(false)?;
        } else if run == "engine batched prefill (f32)" {
            engine.use_prefill_tf32(false)?;
            engine.prefill(prompt)?;
            engine.use_prefill_tf32(true)?;
        } else if run == "engine steps" || run == "engine steps (int8 activations)" {
            for &id in prompt {
                engine.step(id)?;
            }
        } else {
            engine.load_prefix(&cache)?;
            // The engine has no logits for the last prompt position: its first step is the next token.
            let id = argmax(&want);
            want = logits_of(dense, &[id], &mut cache, device)?;
            qwant = logits_of(model, &[id], &mut qcache, device)?;
            engine.step(id)?;
        }
        for _ in 0..positions {
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
            want = logits_of(dense, &[f32_token], &mut cache, device)?;
            qwant = logits_of(model, &[f32_token], &mut qcache, device)?;
            engine.step(f32_token)?;
        }
    }
    engine.use_int8_activations(true);
    Ok(compare)
}

/// GPU time per kernel kind of one prefill chunk of the prompt, when the prompt fits one chunk.
fn profile_prefill(
    engine: &mut DecodeEngine,
    prompt: &[u32],
) -> anyhow::Result<Option<PrefillProfile>> {
    if prompt.len() < BATCHED_PREFILL_MIN
        || prompt.len() > wick::generate::cuda_decode::engine::prefill::PREFILL_CHUNK
    {
        return Ok(None);
    }
    let (kinds, total_gpu_us) = engine.profile_prefill(prompt)?;
    Ok(Some(PrefillProfile {
        prompt_tokens: prompt.len(),
        total_gpu_us,
        kinds,
    }))
}

/// Every timing row for each (prompt, decode tokens) shape: the engine with and without the graph,
/// the cache handoff where the prompt takes the batched prefill, the Candle path. Leaves the engine
/// on its graph.
fn speed(
    engine: &mut DecodeEngine,
    models: &Models,
    shapes: &[(Vec<u32>, usize)],
    engine_mode: &str,
    reps: usize,
) -> anyhow::Result<Vec<Timing>> {
    let mut timings = Vec::new();
    // Steps on f32 activations are timed too (engine_timings), then the default is back.
    for (prompt, decode_tokens) in shapes {
        timings.extend(engine_timings(
            engine,
            prompt,
            *decode_tokens,
            engine_mode,
            reps,
        )?);
        if prompt.len() >= BATCHED_PREFILL_MIN {
            timings.push(handoff_timing(engine, models, prompt, reps)?);
        }
        timings.push(candle_timing(models, prompt, *decode_tokens, reps)?);
    }
    engine.use_graph();
    Ok(timings)
}

/// The engine's prefill (median of `reps`) and `decode_tokens` greedy steps, with the CUDA graph
/// (on f32 activations, then on int8 ones, the default) and with eager launches.
fn engine_timings(
    engine: &mut DecodeEngine,
    prompt: &[u32],
    decode_tokens: usize,
    engine_mode: &str,
    reps: usize,
) -> anyhow::Result<Vec<Timing>> {
    let batched = prompt.len() >= BATCHED_PREFILL_MIN;
    let mut timings = Vec::new();
    // f32 first: each change of activations drops the captured steps, so both graph rows capture
    // afresh (the eager row, last, leaves the int8 graph in place for the next shape).
    for (graph, int8) in [(true, false), (true, true), (false, true)] {
        engine.use_int8_activations(int8);
        if graph {
            engine.use_graph();
        } else {
            engine.force_eager("bench decode: eager comparison");
        }
        let mut prefill_times = Vec::with_capacity(reps);
        let mut id = 0;
        for _ in 0..reps {
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
        for _ in 0..decode_tokens {
            engine.step(id)?;
            id = engine.greedy()?.0;
        }
        let decode = start.elapsed().as_secs_f64();
        let path = if graph && engine_mode == "Graph" && !int8 {
            "wick engine (CUDA graph, f32 activations)"
        } else if graph && engine_mode == "Graph" {
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
            decode_tokens,
            decode,
        ));
    }
    Ok(timings)
}

/// The previous prefill (and the fallback): Candle's batched forward + cache handoff to the engine.
fn handoff_timing(
    engine: &mut DecodeEngine,
    models: &Models,
    prompt: &[u32],
    reps: usize,
) -> anyhow::Result<Timing> {
    let model = models.quantized;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let mut cache = KvCache::with_capacity(
            models.config,
            1,
            prompt.len() + 1,
            model.dtype(),
            model.device(),
        );
        let logits = logits_of(model, prompt, &mut cache, models.device)?;
        engine.load_prefix(&cache)?;
        engine.synchronize()?;
        std::hint::black_box(argmax(&logits));
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(timing(
        "wick engine, candle prefill handoff",
        prompt.len(),
        "candle batched forward + cache handoff",
        median(&mut times),
        0,
        0.0,
    ))
}

/// The Candle path (ops + QMatMul): its batched prefill (median of `reps`) and `decode_tokens`
/// greedy steps.
fn candle_timing(
    models: &Models,
    prompt: &[u32],
    decode_tokens: usize,
    reps: usize,
) -> anyhow::Result<Timing> {
    let (model, device) = (models.quantized, models.device);
    let mut times = Vec::with_capacity(reps);
    let mut cache = model.new_cache(1);
    let mut id = 0;
    for rep in 0..reps {
        if rep > 0 {
            cache = model.new_cache(1);
        }
        let start = Instant::now();
        id = argmax(&logits_of(model, prompt, &mut cache, device)?);
        times.push(start.elapsed().as_secs_f64());
    }
    let prefill = median(&mut times);
    let start = Instant::now();
    for _ in 0..decode_tokens {
        id = argmax(&logits_of(model, &[id], &mut cache, device)?);
    }
    let decode = start.elapsed().as_secs_f64();
    Ok(timing(
        "candle (ops + QMatMul)",
        prompt.len(),
        "candle batched forward",
        prefill,
        decode_tokens,
        decode,
    ))
}

/// Prints the engine's shape, the comparison table and per-run summary, the prefill profile, the
/// timings and a JSON summary line.
/// One line per compared position.
fn print_compare_rows(compare: &[CompareRow]) {
    println!(
        "run                     pos   max|dlogit|  f32  engine  device-argmax  quantized-candle"
    );
    for c in compare {
        println!(
            "{:<23} {:<5} {:>11.3e}  {:>6}  {:>6}  {:>6}  {:>6}{}",
            c.run,
            c.position,
            c.max_abs_logit_diff,
            c.f32_token,
            c.engine_token,
            c.device_argmax,
            c.quantized_candle_token,
            if c.f32_token == c.engine_token && c.engine_token == c.device_argmax {
                ""
            } else {
                "  <- differs"
            }
        );
    }
}

fn print_report(r: &Report, prompt_len: usize) {
    println!(
        "decode engine: {}, {} launches/step, {} launches per {prompt_len}-token prefill, {:.1} MB weights/step, built in {:.2} s",
        r.engine_mode,
        r.launches_per_step,
        r.prefill_launches,
        r.weight_mb_per_step,
        r.engine_build_s
    );
    print_compare_rows(&r.compare);
    println!(
        "max |logit diff| vs dense f32 {:.3e} (tolerance {:.1e}), TF32 prefill runs {:.3e} \
         (tolerance {:.1e}), int8 steps {:.3e} (tolerance {:.1e}); greedy tokens identical: vs f32 \
         {}, vs quantized Candle {} (information)",
        r.max_abs_logit_diff,
        r.tolerance,
        r.max_abs_logit_diff_tf32,
        r.tf32_tolerance,
        r.max_abs_logit_diff_int8,
        r.int8_tolerance,
        r.greedy_tokens_identical_f32,
        r.greedy_tokens_identical_quantized_candle
    );
    for run in RUNS {
        let rows = r.compare.iter().filter(|c| c.run == run);
        let worst = rows
            .clone()
            .map(|c| c.max_abs_logit_diff)
            .fold(0f32, f32::max);
        let first = rows
            .clone()
            .next()
            .map_or(f32::NAN, |c| c.max_abs_logit_diff);
        println!(
            "  {run}: max |logit diff| {worst:.3e} over {} positions (first position {first:.3e})",
            rows.count()
        );
    }
    if let Some(p) = &r.prefill_profile {
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
    for t in &r.timings {
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
    let summary: Vec<serde_json::Value> = r
        .timings
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
        serde_json::json!({ "bench": "decode", "max_abs_logit_diff": r.max_abs_logit_diff, "ok": r.ok, "timings": summary })
    );
}
