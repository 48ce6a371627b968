//! `wick bench cpu-adapter`: CPU decode speed with a LoRA adapter beside the same model without one
//! (issue 14, item 1), and a batch of sequences each with its own adapter beside the same batch
//! without adapters (what `wick serve` runs). Written as Markdown with the command, date, CPU and
//! load average.
//!
//! Per round, in turn (so background load on a shared machine hits every variant alike):
//! - `base`: `--gen-tokens` one-token forwards of the plain model (`Llama::forward_last`, the path
//!   of `wick generate` without an adapter);
//! - `adapter`: the same through the ragged forward with a seeded rank-`--rank` all-linear adapter
//!   (the path of `wick generate --adapter` and `wick serve` on the CPU);
//! - `slot (before)`: the same adapter in the model's `Linear` slots through the Candle LoRA op, the
//!   path `wick generate --adapter` took before (first round only: it is slow);
//! - `batch N base` / `batch N x N adapters`: N sequences per ragged step, without adapters and each
//!   with a different adapter.
//!
//! Medians over rounds; the ratio column is against `base` (or `batch N base`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use wick::generate::TextModel;
use wick::lora::config::TargetModules;
use wick::lora::{Adapter, LoraConfig, ResidentAdapter};
use wick::models::llama::{Llama, RaggedSeq, SeqLora};

use super::bench_cpu::{load_average, pseudo_random_tokens};

/// Options of `wick bench cpu-adapter`.
#[derive(clap::Args)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct Q4_1) or a GGUF file.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Adapter rank (all-linear).
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Prompt tokens before decoding starts.
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Decode steps timed per variant and round.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Sequences of the batch variants (0: skip them).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Measured rounds after one warm-up round.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Markdown output file.
    #[arg(long, default_value = "bench/results/cpu-adapter-decode.md")]
    pub out: PathBuf,
}

/// A seeded all-linear adapter with B drawn small but non-zero (PEFT's B = 0 would cost the same,
/// but a zero update could hide a wrong path).
fn random_adapter(model: &Llama, rank: usize, seed: u64) -> anyhow::Result<Adapter> {
    let config = LoraConfig {
        r: rank,
        lora_alpha: 2.0 * rank as f64,
        target_modules: TargetModules::parse("all-linear")?,
        ..LoraConfig::default()
    };
    let adapter = Adapter::init(config, &model.linear_shapes(), seed, &Device::Cpu)?;
    for (i, layer) in adapter.layers.iter().enumerate() {
        let (out, r) = layer.b.as_tensor().dims2()?;
        let b =
            wick::check::random_tensor(&[out, r], DType::F32, &Device::Cpu, seed + i as u64, 0.02)?;
        layer.b.set(&b)?;
    }
    Ok(adapter)
}

/// Tokens per second of `steps` one-token forwards of `seqs` sequences after a prompt, through
/// the ragged forward with each sequence's adapter (`None`: none).
fn ragged_rate(
    model: &Llama,
    adapters: &[Option<&ResidentAdapter>],
    prompt: &[u32],
    steps: usize,
) -> anyhow::Result<f64> {
    let mut caches: Vec<_> = adapters.iter().map(|_| model.new_cache(1)).collect();
    let run =
        |caches: &mut Vec<wick::models::kv_cache::KvCache>, tokens: &[u32]| -> anyhow::Result<()> {
            let mut seqs: Vec<RaggedSeq<'_>> = caches
                .iter_mut()
                .zip(adapters)
                .map(|(cache, a)| RaggedSeq {
                    tokens,
                    cache,
                    lora: seq_lora(*a),
                    logits: true,
                })
                .collect();
            model.forward_ragged(&mut seqs)?;
            Ok(())
        };
    run(&mut caches, prompt)?;
    let tokens = pseudo_random_tokens(steps, model.config().vocab_size as u32, 3);
    let start = Instant::now();
    for t in &tokens {
        run(&mut caches, std::slice::from_ref(t))?;
    }
    Ok((steps * adapters.len()) as f64 / start.elapsed().as_secs_f64())
}

fn seq_lora(a: Option<&ResidentAdapter>) -> Option<SeqLora<'_>> {
    a.map(|a| SeqLora {
        layers: a.layers(),
        scale: a.scale(),
    })
}

/// Tokens per second of the plain batch-1 path (`forward_last`).
fn base_rate(model: &Llama, prompt: &[u32], steps: usize) -> anyhow::Result<f64> {
    let mut cache = model.new_cache(1);
    model.forward_last(
        &Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?,
        &mut cache,
    )?;
    let tokens = pseudo_random_tokens(steps, model.config().vocab_size as u32, 3);
    let start = Instant::now();
    for &t in &tokens {
        model.forward_last(&Tensor::new(&[[t]], &Device::Cpu)?, &mut cache)?;
    }
    Ok(steps as f64 / start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The markdown report: command, model, adapter, CPU and loads, then each variant's median rate,
/// its ratio to its baseline and every round's rate.
fn markdown(
    args: &Args,
    path: &std::path::Path,
    modules: usize,
    loads: &[f64],
    rates: &[Vec<f64>],
    med: &[f64],
) -> anyhow::Result<String> {
    let mut md = String::new();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    writeln!(md, "# CPU decode with a LoRA adapter\n")?;
    writeln!(md, "- command: `{command}`")?;
    writeln!(
        md,
        "- model: {} ({} threads for the quantized matmuls: {})",
        path.display(),
        candle_core::utils::get_num_threads(),
        wick::ops::quant_matmul_cpu::kernel_name()
    )?;
    writeln!(md, "- adapter: rank {} all-linear ({} projections), {} prompt tokens, {} decode steps per variant and round, {} rounds after a warm-up", args.rank, modules, args.prompt_tokens, args.gen_tokens, args.rounds)?;
    writeln!(
        md,
        "- CPU: {cpu}; load average at each round's start: {}",
        loads
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        md,
        "\n| variant | tok/s (median) | ratio | rounds |\n|---|---|---|---|"
    )?;
    let rows = [
        (
            "base (`wick generate`, no adapter)",
            med[0],
            med[0],
            &rates[0],
        ),
        (
            "adapter (`wick generate --adapter`, `wick serve`)",
            med[1],
            med[0],
            &rates[1],
        ),
        (
            "adapter in the Linear slots, Candle op (before)",
            med[2],
            med[0],
            &rates[2],
        ),
        (
            "batch of N, no adapters (ragged step)",
            med[3],
            med[3],
            &rates[3],
        ),
        (
            "batch of N, N different adapters (ragged step)",
            med[4],
            med[3],
            &rates[4],
        ),
    ];
    // Variants that did not run (the batch rows under `--batch 0`) are left out.
    for (name, v, reference, all) in rows.into_iter().filter(|r| !r.3.is_empty()) {
        let name = name.replace('N', &args.batch.max(1).to_string());
        writeln!(
            md,
            "| {name} | {v:.1} | {:.3} | {} |",
            v / reference,
            all.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        )?;
    }
    Ok(md)
}

/// Runs `wick bench cpu-adapter`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.gen_tokens > 0 && args.prompt_tokens > 0,
        "--rounds, --gen-tokens and --prompt-tokens must be positive"
    );
    let path = wick::formats::fetch::resolve_model_arg(&args.model)?;
    let text = TextModel::open(&path, &Default::default())
        .with_context(|| format!("loading {}", path.display()))?;
    let model = &text.model;
    let shapes = model.linear_shapes();
    let n = args.batch.max(1);
    let mut residents = Vec::new();
    let mut first_adapter = None;
    for i in 0..n {
        let adapter = random_adapter(model, args.rank, 7 + 100 * i as u64)?;
        residents.push(Arc::new(ResidentAdapter::new(
            &format!("a{i}"),
            &adapter,
            &shapes,
            "bench".as_ref(),
        )?));
        first_adapter.get_or_insert(adapter);
    }
    let first_adapter = first_adapter.expect("at least one adapter");
    let mut slot_model = model.clone();
    first_adapter.apply(slot_model.linear_layers_mut(), "bench".as_ref())?;
    let prompt = pseudo_random_tokens(args.prompt_tokens, model.config().vocab_size as u32, 1);
    let steps = args.gen_tokens;
    let names = [
        "base",
        "adapter",
        "slot (before)",
        "batch base",
        "batch adapters",
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut loads = Vec::new();
    for round in 0..=args.rounds {
        loads.push(load_average());
        let measured = round > 0;
        let r = [
            base_rate(model, &prompt, steps)?,
            ragged_rate(model, &[Some(&residents[0])], &prompt, steps)?,
            if round <= 1 {
                base_rate(&slot_model, &prompt, steps.min(16))?
            } else {
                f64::NAN
            },
            if args.batch > 0 {
                ragged_rate(model, &vec![None; n], &prompt, steps)?
            } else {
                f64::NAN
            },
            if args.batch > 0 {
                ragged_rate(
                    model,
                    &residents
                        .iter()
                        .map(|a| Some(a.as_ref()))
                        .collect::<Vec<_>>(),
                    &prompt,
                    steps,
                )?
            } else {
                f64::NAN
            },
        ];
        eprintln!(
            "round {round}{}: {}",
            if measured { "" } else { " (warm-up)" },
            names
                .iter()
                .zip(r)
                .map(|(n, v)| format!("{n} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if measured {
            for (all, v) in rates.iter_mut().zip(r) {
                if v.is_finite() {
                    all.push(v);
                }
            }
        }
    }
    let med: Vec<f64> = rates
        .iter_mut()
        .map(|v| if v.is_empty() { f64::NAN } else { median(v) })
        .collect();
    let md = markdown(&args, &path, residents[0].modules(), &loads, &rates, &med)?;
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    print!("{md}");
    Ok(())
}
