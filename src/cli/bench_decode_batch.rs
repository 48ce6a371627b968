//! `wick bench decode-batch`: decode of several sequences at once on CUDA through the batch decode
//! engine (`generate::cuda_decode::batch`), beside the batch-1 engine in the same process — the shape
//! of llama-batched-bench's parallel sequences (`-npp 512 -ntg 128 -npl 8`).
//!
//! Correctness first: every sequence gets its own short random prompt and decodes `--compare` greedy
//! tokens; each sequence's logits must match the batch-1 engine run on that sequence alone (same
//! weights and maths, another summation order) within `--tolerance`, with identical greedy tokens.
//! Speed: each sequence gets its own `--prompt-tokens` random prompt (fed one step at a time: the
//! batch engine has no batched prefill), then `--decode-tokens` greedy steps, every step's tokens read
//! back to the host (as a generator would); tokens/s counts every sequence's tokens.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::path::PathBuf;

/// Options of `wick bench decode-batch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct Q4_1) or a .gguf file.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// CUDA device.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Sequences decoded together (1..=8).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Prompt length in tokens (per sequence).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded per sequence in the timed run.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Greedy tokens per sequence compared with the batch-1 engine.
    #[arg(long, default_value_t = 16)]
    pub compare: usize,
    /// Largest max |logit difference| accepted against the batch-1 engine.
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f32,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `wick bench decode-batch`.
#[cfg(feature = "cuda")]
pub fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;
    use wick::formats::{open_model, LoadOptions};
    use wick::generate::cuda_decode::batch::BatchDecodeEngine;
    use wick::generate::cuda_decode::DecodeEngine;

    let path = wick::formats::fetch::resolve_model_arg(&args.model)?;
    let device = wick::device::parse_device(&args.device)?;
    anyhow::ensure!(
        device.is_cuda(),
        "wick bench decode-batch needs a CUDA device"
    );
    let files = open_model(
        &path,
        &LoadOptions {
            device: Device::Cpu,
            dtype: None,
        },
    )?;
    let config = files.config.clone();
    let vocab = config.vocab_size as u32;
    let positions = (args.prompt_tokens + args.decode_tokens + 1).max(args.compare + 17);
    let start = Instant::now();
    let mut batch = BatchDecodeEngine::new(
        &config,
        files.weights.as_ref(),
        &device,
        args.batch,
        positions,
    )
    .context("building the CUDA batch decode engine")?;
    let build_s = start.elapsed().as_secs_f64();
    let mut single = DecodeEngine::new(&config, files.weights.as_ref(), &device)
        .context("building the batch-1 CUDA decode engine")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut prompt =
        |len: usize| -> Vec<u32> { (0..len).map(|_| rng.random_range(0..vocab)).collect() };

    // Correctness: each sequence's own 16-token prompt, then greedy tokens; both engines on f32
    // activations (the batched mat-vecs' maths), then back to the default.
    single.use_int8_activations(false);
    batch.use_int8_activations(false);
    let prompts: Vec<Vec<u32>> = (0..args.batch).map(|_| prompt(16)).collect();
    for t in 0..16 {
        let tokens: Vec<u32> = prompts.iter().map(|p| p[t]).collect();
        batch.step(&tokens)?;
    }
    let (max_diff, identical) =
        compare_with_batch1(&mut batch, &mut single, &prompts, config.vocab_size, &args)?;
    single.use_int8_activations(true);
    batch.use_int8_activations(true);
    let ok = max_diff <= args.tolerance && identical;
    println!(
        "batch engine vs batch-1 engine: {} sequences x {} positions, max |dlogit| {max_diff:.3e} (tolerance {:.1e}), greedy tokens identical: {identical}",
        args.batch, args.compare, args.tolerance
    );

    // Speed: graph, then eager launches, from the same prompts.
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|_| prompt(args.prompt_tokens))
        .collect();
    let runs = timings(&mut batch, &prompts, &args)?;
    batch.use_graph();
    let report = serde_json::json!({
        "benchmark": "wick bench decode-batch",
        "model": path.display().to_string(),
        "device": std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone()),
        "date": std::env::var("WICK_RUN_DATE").unwrap_or_default(),
        "batch": args.batch,
        "launches_per_step": batch.launches_per_step(),
        "engine_build_s": build_s,
        "compare_positions": args.compare,
        "max_abs_logit_diff_vs_batch1": max_diff,
        "tolerance": args.tolerance,
        "greedy_tokens_identical": identical,
        "ok": ok,
        "timings": runs,
    });
    super::bench::emit_report(&report, args.out.as_deref())?;
    anyhow::ensure!(
        ok,
        "batch engine differs from the batch-1 engine: max |dlogit| {max_diff:.3e}, greedy identical {identical}"
    );
    Ok(())
}

/// After the prompts (already stepped by `batch`), `args.compare` greedy positions of every
/// sequence (logits of `vocab` entries), then each sequence again through the batch-1 engine:
/// (max |logit difference|, greedy tokens identical).
#[cfg(feature = "cuda")]
fn compare_with_batch1(
    batch: &mut wick::generate::cuda_decode::batch::BatchDecodeEngine,
    single: &mut wick::generate::cuda_decode::DecodeEngine,
    prompts: &[Vec<u32>],
    vocab: usize,
    args: &Args,
) -> anyhow::Result<(f32, bool)> {
    let mut batch_logits = vec![Vec::new(); args.batch];
    let mut batch_tokens = vec![Vec::new(); args.batch];
    for _ in 0..args.compare {
        let logits = batch.logits()?;
        let greedy = batch.greedy()?;
        for b in 0..args.batch {
            batch_logits[b].push(logits[b * vocab..(b + 1) * vocab].to_vec());
            batch_tokens[b].push(greedy[b].0);
        }
        let next: Vec<u32> = greedy.iter().map(|g| g.0).collect();
        batch.step(&next)?;
    }
    let mut max_diff = 0f32;
    let mut identical = true;
    for b in 0..args.batch {
        single.reset();
        for &t in &prompts[b] {
            single.step(t)?;
        }
        for i in 0..args.compare {
            let logits = single.logits()?;
            let (id, _) = single.greedy()?;
            let diff = logits
                .iter()
                .zip(&batch_logits[b][i])
                .map(|(a, c)| (a - c).abs())
                .fold(0f32, f32::max);
            max_diff = max_diff.max(diff);
            identical &= id == batch_tokens[b][i];
            single.step(id)?;
        }
    }
    Ok((max_diff, identical))
}

/// Speed: the prompts stepped, then `args.decode_tokens` greedy steps, with the graph and with
/// eager launches; one JSON row each.
#[cfg(feature = "cuda")]
fn timings(
    batch: &mut wick::generate::cuda_decode::batch::BatchDecodeEngine,
    prompts: &[Vec<u32>],
    args: &Args,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use std::time::Instant;
    let mut runs = Vec::new();
    for graph in [true, false] {
        if graph {
            batch.use_graph();
        } else {
            batch.force_eager("bench decode-batch: eager comparison");
        }
        batch.reset();
        let t0 = Instant::now();
        for t in 0..args.prompt_tokens {
            let tokens: Vec<u32> = prompts.iter().map(|p| p[t]).collect();
            batch.step(&tokens)?;
        }
        let mut next: Vec<u32> = batch.greedy()?.iter().map(|g| g.0).collect();
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..args.decode_tokens {
            batch.step(&next)?;
            next = batch.greedy()?.iter().map(|g| g.0).collect();
        }
        let decode_s = t1.elapsed().as_secs_f64();
        let tokens_per_s = (args.batch * args.decode_tokens) as f64 / decode_s;
        println!(
            "{}: prompt {} x {} (stepped) {:.1} ms, decode {} x {}: {:.1} tok/s ({:.3} ms per step)",
            if graph { "graph" } else { "eager" },
            args.batch,
            args.prompt_tokens,
            prefill_s * 1e3,
            args.batch,
            args.decode_tokens,
            tokens_per_s,
            decode_s * 1e3 / args.decode_tokens as f64
        );
        runs.push(serde_json::json!({
            "path": if graph { format!("wick batch engine ({:?})", batch.mode()) } else { "wick batch engine (eager launches)".to_string() },
            "batch": args.batch,
            "prompt_tokens": args.prompt_tokens,
            "prompt_stepped_ms": prefill_s * 1e3,
            "decode_tokens_per_sequence": args.decode_tokens,
            "decode_tokens_per_second": tokens_per_s,
            "ms_per_step": decode_s * 1e3 / args.decode_tokens as f64,
        }));
    }
    Ok(runs)
}

/// Without the `cuda` feature there is no engine to measure.
#[cfg(not(feature = "cuda"))]
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("wick bench decode-batch needs a build with `--features cuda`")
}
