//! `wick bench decode-lora`: what unmerged LoRA adapters cost the CUDA decode engines, on a GGUF
//! file or on a random model at a real model's shapes (no file needed: `--model random:smollm2-135m`,
//! `random:smollm2-360m`, `random:smollm2-1.7b`, weights quantized to `--quant`).
//!
//! Correctness first: the batch engine with `--batch` sequences, each with its own random adapter
//! (rank `--rank`, all seven projections; the last sequence with none when the batch is > 1),
//! against the batch-1 engine running each sequence alone with its adapter, for `--compare` greedy
//! steps (max |logit difference| <= `--tolerance`, identical greedy tokens).
//! Speed (CUDA graphs, every token read back to the host as a generator does): batch 1 without and
//! with an adapter, then the batch engine with no adapters and with a different adapter per
//! sequence; `--decode-tokens` steps after a `--prompt-tokens` prompt stepped through the engine.
//! Prints the ratios (adapter / none) and writes JSON with `--out`; `--profile-reps N` adds the GPU
//! time per kernel kind of one eager step of every measured run (where an adapter's cost sits).

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::path::PathBuf;

/// Options of `wick bench decode-lora`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .gguf file, an HF directory, `default`, or `random:smollm2-135m|smollm2-360m|smollm2-1.7b`
    /// (random weights).
    #[arg(long, default_value = "random:smollm2-135m")]
    pub model: String,
    /// Block format of a random model's weights: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k,
    /// q4_k_m (Q4_K with Q6_K for v, down and the tied embedding, as llama.cpp mixes them), or dense
    /// bf16 / f16 (as an HF directory holds them).
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// CUDA device.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// LoRA rank of every adapter.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Sequences of the batch engine (1..=8).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Prompt tokens stepped before the timed decode.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Tokens decoded (per sequence) in each timed run.
    #[arg(long, default_value_t = 256)]
    pub decode_tokens: usize,
    /// Greedy steps compared between the batch engine and the batch-1 engine.
    #[arg(long, default_value_t = 16)]
    pub compare: usize,
    /// Largest max |logit difference| accepted against the batch-1 engine.
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f32,
    /// Also time each kernel kind of one eager step in every measured configuration (CUDA events
    /// between the launches; `cuda_decode::profile::kind_profile`), averaged over this many steps.
    #[arg(long, default_value_t = 0)]
    pub profile_reps: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A random model's config at a SmolLM2 size (the default model's tokenizer sizes).
fn smollm2_config(size: &str) -> anyhow::Result<wick::formats::config::DecoderConfig> {
    let (hidden, ffn, layers, heads, kv) = match size {
        "smollm2-135m" => (576, 1536, 30, 9, 3),
        "smollm2-360m" => (960, 2560, 32, 15, 5),
        "smollm2-1.7b" => (2048, 8192, 24, 32, 32),
        other => anyhow::bail!("unknown random model size '{other}' (smollm2-135m, -360m, -1.7b)"),
    };
    Ok(wick::formats::config::DecoderConfig {
        architecture: wick::formats::config::Architecture::Llama,
        vocab_size: 49152,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    })
}

/// Runs `wick bench decode-lora`.
#[cfg(feature = "cuda")]
pub fn run(args: Args) -> anyhow::Result<()> {
    use cuda::{Engines, Timings};

    let device = wick::device::parse_device(&args.device)?;
    anyhow::ensure!(
        device.is_cuda(),
        "wick bench decode-lora needs a CUDA device"
    );
    anyhow::ensure!((1..=8).contains(&args.batch), "--batch must be 1..=8");
    let (config, source) = cuda::load_model(&args)?;
    let mut engines = Engines::new(&args, &config, source.as_ref(), &device)?;
    let (max_diff, same_tokens) = engines.compare(&args)?;
    println!(
        "{} ({} layers), rank {} adapters on all 7 projections, {} prompt + {} decode tokens",
        args.model, config.num_hidden_layers, args.rank, args.prompt_tokens, args.decode_tokens
    );
    let timings = Timings::measure(&mut engines, &args, &device)?;
    if !timings.profiles.is_empty() {
        print!("{}", cuda::profile_markdown(&timings.profiles));
    }
    let ok = max_diff <= args.tolerance && same_tokens;
    println!(
        "batch 1 adapter/none: {:.3}x; batch {} adapters/none: {}; batch vs alone: max |logit diff| {max_diff:.2e} (<= {}), greedy tokens identical: {same_tokens} -> {}",
        timings.b1_lora / timings.b1_none,
        args.batch,
        match timings.batch_n {
            Some((n, l)) => format!("{:.3}x", l / n),
            None => "-".into(),
        },
        args.tolerance,
        if ok { "ok" } else { "FAILED" }
    );
    let bn = timings.batch_n;
    let report = serde_json::json!({
        "model": args.model,
        "quant": args.quant,
        "benchmark": "wick bench decode-lora",
        "device": std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone()),
        "date": std::env::var("WICK_RUN_DATE").unwrap_or_default(),
        "rank": args.rank,
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "launches_per_step": 3 + 5 * config.num_hidden_layers,
        "batch1_tokens_per_second": { "none": timings.b1_none, "adapter": timings.b1_lora,
            "ratio": timings.b1_lora / timings.b1_none },
        "batchN_tokens_per_second": { "none": bn.map(|b| b.0), "adapters": bn.map(|b| b.1),
            "ratio": bn.map(|(n, l)| l / n) },
        "batch_vs_alone": { "slots": format!("{:?}", engines.mixed), "max_abs_logit_diff": max_diff,
            "tolerance": args.tolerance, "greedy_tokens_identical": same_tokens },
        "ok": ok,
        "kind_profile_us_per_step": timings.profiles.iter()
            .map(|(run, kinds)| (run.clone(), serde_json::json!(kinds)))
            .collect::<serde_json::Map<_, _>>(),
    });
    super::bench::emit_report(&report, args.out.as_deref())?;
    anyhow::ensure!(
        ok,
        "the batch engine with adapters disagrees with the batch-1 engine"
    );
    Ok(())
}

/// The model, the two engines with their adapters, and the measured runs.
#[cfg(feature = "cuda")]
mod cuda {
    use std::time::Instant;

    use anyhow::Context as _;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;
    use wick::formats::config::DecoderConfig;
    use wick::formats::weights::WeightSource;
    use wick::generate::cuda_decode::batch::BatchDecodeEngine;
    use wick::generate::cuda_decode::check::{random_decode_adapter, random_source};
    use wick::generate::cuda_decode::profile::{kind_profile, KindTime};
    use wick::generate::cuda_decode::DecodeEngine;

    use super::{smollm2_config, Args};

    /// The `--quant` names of random weights.
    fn block_format(quant: &str) -> anyhow::Result<GgmlDType> {
        Ok(match quant {
            "q4_0" => GgmlDType::Q4_0,
            "q4_1" => GgmlDType::Q4_1,
            "q5_0" => GgmlDType::Q5_0,
            "q5_1" => GgmlDType::Q5_1,
            "q8_0" => GgmlDType::Q8_0,
            "q4_k" | "q4_k_m" => GgmlDType::Q4K,
            "q5_k" => GgmlDType::Q5K,
            "q6_k" => GgmlDType::Q6K,
            // Dense, as an HF directory holds its weights.
            "bf16" => GgmlDType::BF16,
            "f16" => GgmlDType::F16,
            other => {
                anyhow::bail!(
                    "--quant {other}: q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k q4_k_m bf16 f16"
                )
            }
        })
    }

    /// The GGUF file or the random model `--model` names, weights on the host.
    pub(super) fn load_model(
        args: &Args,
    ) -> anyhow::Result<(DecoderConfig, Box<dyn WeightSource>)> {
        let Some(size) = args.model.strip_prefix("random:") else {
            let path = wick::formats::fetch::resolve_model_arg(&args.model)?;
            let files = wick::formats::open_model(
                &path,
                &wick::formats::LoadOptions {
                    device: Device::Cpu,
                    dtype: None,
                },
            )?;
            return Ok((files.config, files.weights));
        };
        let cfg = smollm2_config(size)?;
        let q = block_format(&args.quant)?;
        // q4_k_m: llama.cpp's mix (Q6_K for v, down and the embedding/head). Rows that are not
        // whole super-blocks of 256 take llama.cpp's fallbacks (Q4_K -> Q5_0, Q5_K -> Q5_1,
        // Q6_K -> Q8_0), as its quantizer does at SmolLM2-135M/360M's widths.
        let mix = args.quant == "q4_k_m";
        let format = move |name: &str, dims: &[usize]| {
            let q = if mix
                && ["v_proj", "down_proj", "embed"]
                    .iter()
                    .any(|t| name.contains(t))
            {
                GgmlDType::Q6K
            } else {
                q
            };
            match (q, dims.last().is_some_and(|k| k % 256 == 0)) {
                (GgmlDType::Q4K, false) => GgmlDType::Q5_0,
                (GgmlDType::Q5K, false) => GgmlDType::Q5_1,
                (GgmlDType::Q6K, false) => GgmlDType::Q8_0,
                (q, _) => q,
            }
        };
        let source = random_source(&cfg, &format, 7)?;
        Ok((cfg, Box::new(source)))
    }

    /// The batch-1 and batch engines, each with one random adapter per sequence loaded.
    pub(super) struct Engines {
        single: DecodeEngine,
        batch: BatchDecodeEngine,
        /// Every sequence's prompt.
        prompts: Vec<Vec<u32>>,
        /// The adapter slot of each sequence in the correctness run: the last sequence without an
        /// adapter when there are several (the mixed case).
        pub(super) mixed: Vec<Option<usize>>,
        vocab: usize,
    }

    impl Engines {
        pub(super) fn new(
            args: &Args,
            config: &DecoderConfig,
            source: &dyn WeightSource,
            device: &Device,
        ) -> anyhow::Result<Self> {
            let vocab = config.vocab_size;
            let positions = args.prompt_tokens + args.decode_tokens.max(args.compare) + 2;
            let adapters: Vec<_> = (0..args.batch)
                .map(|b| random_decode_adapter(config, args.rank, 1000 + b as u64))
                .collect();
            let prompts = (0..args.batch)
                .map(|b| {
                    (0..args.prompt_tokens.max(1))
                        .map(|i| ((i * 7919 + b * 104_729 + 13) % vocab) as u32)
                        .collect()
                })
                .collect();
            let mut single = DecodeEngine::new(config, source, device)
                .context("building the CUDA decode engine")?;
            let mut batch = BatchDecodeEngine::new(config, source, device, args.batch, positions)
                .context("building the CUDA batch decode engine")?;
            for (slot, a) in adapters.iter().enumerate() {
                single.load_adapter(slot, a, None)?;
                batch.load_adapter(slot, a, args.rank)?;
            }
            let mixed = (0..args.batch)
                .map(|b| (args.batch == 1 || b + 1 < args.batch).then_some(b))
                .collect();
            Ok(Self {
                single,
                batch,
                prompts,
                mixed,
                vocab,
            })
        }

        /// Steps every sequence's prompt through the batch engine.
        fn batch_prompts(&mut self) -> anyhow::Result<()> {
            for p in 0..self.prompts[0].len() {
                let tokens: Vec<u32> = self.prompts.iter().map(|s| s[p]).collect();
                self.batch.step(&tokens)?;
            }
            Ok(())
        }

        /// Steps sequence `b`'s prompt through the batch-1 engine.
        fn single_prompt(&mut self, b: usize) -> anyhow::Result<()> {
            for &id in &self.prompts[b] {
                self.single.step(id)?;
            }
            Ok(())
        }

        /// `--compare` greedy steps of the batch-1 engine running sequence `b` alone with its
        /// slot: (logits, greedy token) per step.
        fn alone(
            &mut self,
            b: usize,
            slot: Option<usize>,
            steps: usize,
        ) -> anyhow::Result<Vec<(Vec<f32>, u32)>> {
            self.single.set_adapter(slot)?;
            self.single.reset();
            self.single_prompt(b)?;
            let mut rows = Vec::with_capacity(steps);
            for _ in 0..steps {
                let (id, _) = self.single.greedy()?;
                rows.push((self.single.logits()?, id));
                self.single.step(id)?;
            }
            Ok(rows)
        }

        /// The batch engine (mixed slots) against each sequence alone on the batch-1 engine:
        /// (max |logit difference|, greedy tokens identical).
        /// Both on f32 activations (the batched mat-vecs' maths), then back to the default.
        pub(super) fn compare(&mut self, args: &Args) -> anyhow::Result<(f32, bool)> {
            self.single.use_int8_activations(false);
            self.batch.use_int8_activations(false);
            let result = self.compare_f32(args);
            self.single.use_int8_activations(true);
            self.batch.use_int8_activations(true);
            result
        }

        fn compare_f32(&mut self, args: &Args) -> anyhow::Result<(f32, bool)> {
            let mixed = self.mixed.clone();
            self.batch.set_adapters(&mixed)?;
            self.batch.reset();
            let alone = mixed
                .iter()
                .enumerate()
                .map(|(b, slot)| self.alone(b, *slot, args.compare))
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.batch_prompts()?;
            let (mut max_diff, mut same_tokens) = (0f32, true);
            let v = self.vocab;
            for step in 0..args.compare {
                let logits = self.batch.logits()?;
                let greedy = self.batch.greedy()?;
                for (b, rows) in alone.iter().enumerate() {
                    let (want, want_id) = &rows[step];
                    let got = &logits[b * v..(b + 1) * v];
                    let d = got
                        .iter()
                        .zip(want)
                        .map(|(x, y)| (x - y).abs())
                        .fold(
                            0f32,
                            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
                        );
                    max_diff = max_diff.max(d);
                    same_tokens &= greedy[b].0 == *want_id;
                }
                let tokens: Vec<u32> = alone.iter().map(|rows| rows[step].1).collect();
                self.batch.step(&tokens)?;
            }
            Ok((max_diff, same_tokens))
        }

        /// GPU time per kernel kind of the engine's last step (`n` sequences: the batch-1
        /// engine when `n` is 1), eager, mean of `reps` repeats.
        fn kind_profile(
            &mut self,
            n: usize,
            device: &Device,
            reps: usize,
        ) -> anyhow::Result<Vec<KindTime>> {
            let (single, batch) = (&self.single, &self.batch);
            let mut launch = |mark: &mut dyn FnMut(&'static str) -> wick::Result<()>| {
                if n == 1 {
                    single.launch_step_marked(mark)
                } else {
                    batch.launch_step_marked(mark)
                }
            };
            Ok(kind_profile(device, reps, &mut launch)?)
        }

        /// Tokens per second of `--decode-tokens` greedy steps on `n` sequences (the batch-1
        /// engine when `n` is 1), every sequence with an adapter of its own or none.
        fn timed(
            &mut self,
            run: &str,
            adapter: bool,
            n: usize,
            args: &Args,
        ) -> anyhow::Result<f64> {
            let start;
            if n == 1 {
                self.single.set_adapter(adapter.then_some(0))?;
                self.single.reset();
                self.single_prompt(0)?;
                let mut id = self.single.greedy()?.0;
                start = Instant::now();
                for _ in 0..args.decode_tokens {
                    self.single.step(id)?;
                    id = self.single.greedy()?.0;
                }
            } else {
                let slots: Vec<Option<usize>> = (0..n).map(|b| adapter.then_some(b)).collect();
                self.batch.set_adapters(&slots)?;
                self.batch.reset();
                self.batch_prompts()?;
                let mut tokens: Vec<u32> = self.batch.greedy()?.iter().map(|g| g.0).collect();
                start = Instant::now();
                for _ in 0..args.decode_tokens {
                    self.batch.step(&tokens)?;
                    tokens = self.batch.greedy()?.iter().map(|g| g.0).collect();
                }
            }
            let tps = (n * args.decode_tokens) as f64 / start.elapsed().as_secs_f64();
            println!("{run:<44} {tps:>10.1} tok/s");
            Ok(tps)
        }
    }

    /// Tokens per second without and with adapters.
    pub(super) struct Timings {
        pub(super) b1_none: f64,
        pub(super) b1_lora: f64,
        /// (no adapters, a different adapter per sequence) on the batch engine, when `--batch` > 1.
        pub(super) batch_n: Option<(f64, f64)>,
        /// Per measured run (with `--profile-reps`): GPU time per kernel kind of one eager step.
        pub(super) profiles: Vec<(String, Vec<KindTime>)>,
    }

    impl Timings {
        pub(super) fn measure(
            engines: &mut Engines,
            args: &Args,
            device: &Device,
        ) -> anyhow::Result<Self> {
            let mut profiles = Vec::new();
            // Each measured run, then (with --profile-reps) the kind profile of its last step.
            let mut run = |engines: &mut Engines, name: &str, adapter: bool, n: usize| {
                let tps = engines.timed(name, adapter, n, args)?;
                if args.profile_reps > 0 {
                    let kinds = engines.kind_profile(n, device, args.profile_reps)?;
                    profiles.push((name.to_string(), kinds));
                }
                anyhow::Ok(tps)
            };
            // Warm-up: capture every graph once.
            engines.timed("warm-up (batch 1, no adapter)", false, 1, args)?;
            engines.timed("warm-up (batch 1, adapter)", true, 1, args)?;
            let b1_none = run(engines, "batch 1, no adapter", false, 1)?;
            let b1_lora = run(engines, "batch 1, rank-r adapter", true, 1)?;
            let mut batch_n = None;
            if args.batch > 1 {
                let n = args.batch;
                engines.timed("warm-up (batch N)", false, n, args)?;
                engines.timed("warm-up (batch N, adapters)", true, n, args)?;
                let none = run(engines, &format!("batch {n}, no adapters"), false, n)?;
                let lora = run(
                    engines,
                    &format!("batch {n}, {n} different adapters"),
                    true,
                    n,
                )?;
                batch_n = Some((none, lora));
            }
            Ok(Self {
                b1_none,
                b1_lora,
                batch_n,
                profiles,
            })
        }
    }

    /// The kind profiles side by side: a row per kernel kind, a column per run (us per step).
    pub(super) fn profile_markdown(profiles: &[(String, Vec<KindTime>)]) -> String {
        let mut kinds: Vec<&str> = Vec::new();
        for (_, p) in profiles {
            for k in p {
                if !kinds.contains(&k.kind.as_str()) {
                    kinds.push(&k.kind);
                }
            }
        }
        let mut md = String::from(
            "\nGPU us per step by kernel kind (eager, events between launches)\n\n| kind |",
        );
        for (run, _) in profiles {
            md.push_str(&format!(" {run} |"));
        }
        md.push_str(&format!("\n|---|{}\n", "---|".repeat(profiles.len())));
        let cell = |p: &[KindTime], kind: &str| {
            p.iter()
                .find(|k| k.kind == kind)
                .map_or("-".to_string(), |k| format!("{:.1}", k.gpu_us))
        };
        for kind in kinds.iter().copied().chain(["total"]) {
            md.push_str(&format!("| {kind} |"));
            for (_, p) in profiles {
                let v = if kind == "total" {
                    format!("{:.1}", p.iter().map(|k| k.gpu_us).sum::<f64>())
                } else {
                    cell(p, kind)
                };
                md.push_str(&format!(" {v} |"));
            }
            md.push('\n');
        }
        md
    }
}

/// Without CUDA there is nothing to measure.
#[cfg(not(feature = "cuda"))]
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("wick bench decode-lora needs a build with --features cuda")
}
