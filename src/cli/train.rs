//! `wick train`: fine-tune a LoRA adapter on a JSONL dataset, with a progress bar.
//!
//! The base model is frozen; only the adapter trains. A GGUF's blocks stay quantized as the base
//! (QLoRA): on CUDA through the training engine (bf16 activations, one layer dequantized at a
//! time), on the CPU through `ops::quant_linear` (Q4_1/Q8_0). Other models, and `--dtype`, load a
//! dense base (bf16 on CUDA, f32 on the CPU).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use candle_core::DType;
use indicatif::{ProgressBar, ProgressStyle};
use wick::formats::fetch::resolve_model_arg;
use wick::formats::LoadOptions;
use wick::generate::TextModel;
use wick::lora::config::InitLoraWeights;
use wick::lora::{LoraConfig, TargetModules};
use wick::models::llama::Llama;
use wick::train::data::{describe_dropped, load_jsonl, DataOptions, DataStats, Dataset};
use wick::train::optimizer::AdamWConfig;
use wick::train::parallel::{train_data_parallel, ParallelOptions};
use wick::train::schedule::ScheduleKind;
use wick::train::trainer::{train, Progress, TrainConfig, TrainRun, TrainSummary};

/// Options of `wick train`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct, fetched on first use), a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Training data: JSONL lines of {"text"}, {"prompt","completion"} or {"messages":[...]}.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: adapter (PEFT layout), checkpoints, metrics.jsonl, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Eval data (same format); its loss is logged every --eval-every steps and at the end.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Evaluate every N steps (with --eval-data; default: only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha (scale alpha/r; alpha/sqrt(r) with --rslora). Default: 2 * rank.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input (0 keeps resume bit-exact on the CPU).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Target modules: "all-linear" or a comma list (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, default_value = "all-linear")]
    pub targets: String,
    /// Rank-stabilised LoRA (scale alpha/sqrt(r)).
    #[arg(long)]
    pub rslora: bool,
    /// DoRA (PEFT `use_dora`): train a magnitude per output row on top of the LoRA direction.
    /// Runs on Candle's autograd (the CUDA training engine has no DoRA).
    #[arg(long)]
    pub dora: bool,
    /// Initialise A with N(0, 1/r^2) instead of Kaiming-uniform.
    #[arg(long)]
    pub gaussian_init: bool,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Passes over the data (ignored when --steps is given).
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Longest sequence; longer examples are truncated (at most the model's context).
    #[arg(long, default_value_t = 512)]
    pub max_seq_len: usize,
    /// Pack examples into rows of --max-seq-len tokens instead of padding each.
    #[arg(long)]
    pub pack: bool,
    /// Warmup steps (linear from 0 to --lr).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// constant, linear or cosine (after warmup).
    #[arg(long, default_value = "linear")]
    pub scheduler: String,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Checkpoints kept (0: all).
    #[arg(long, default_value_t = 3)]
    pub keep_last: usize,
    /// Continue from a checkpoint directory (or an output directory with checkpoints): its saved
    /// options replace the ones given here.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Seed of the adapter init and the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations: much
    /// less memory (long sequences, big batches) for about one more forward pass.
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// Checkpoint only the first N decoder layers (implies --checkpoint-activations): memory and
    /// compute between none and all.
    #[arg(long)]
    pub checkpoint_layers: Option<usize>,
    /// Recompute the MLP's gate and up outputs of the N layers after the checkpointed ones in the
    /// backward instead of keeping them: two GEMMs a layer for about two thirds of its saved
    /// activations (CUDA training engine).
    #[arg(long)]
    pub recompute_mlp_layers: Option<usize>,
    /// `auto`: on CUDA, train through the CUDA training engine (captured forward, backward and
    /// AdamW) when it supports the model and adapter; `off`: always through Candle's autograd.
    #[arg(long, default_value = "auto")]
    pub engine: wick::train::engine_steps::EnginePolicy,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data-parallel training over several devices, e.g. `cuda:0,cuda:1` (one rank per device, each
    /// its share of every batch; `cpu,cpu` simulates ranks). Replaces --device; the loss curve and
    /// checkpoints are those of a one-device run, so --resume works with any number of devices.
    #[arg(long)]
    pub devices: Option<String>,
    /// Seconds a data-parallel rank waits for the others before the run stops naming the missing
    /// ranks (covers the slowest step and rank 0's checkpoint writes).
    #[arg(long, default_value_t = 300)]
    pub rank_timeout: u64,
    /// dtype of the frozen base weights: f32, bf16 or f16 (default: a GGUF's blocks stay quantized
    /// (QLoRA: no dense copy; on CUDA through the training engine with bf16 activations, on the
    /// CPU for Q4_1/Q8_0), other models bf16 on CUDA and f32 on the CPU). `--dtype f32` on
    /// CUDA makes a run comparable with a dense CPU run (`--dtype f32` there too) to ~1e-4.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize a dense base's projections at load and train through the blocks (QLoRA from an HF
    /// checkpoint): q4_k, q4_1, q5_0, q6_k or q8_0 (the CPU trains through q4_1 and q8_0 only;
    /// on CUDA the training engine reads them all). Embedding, norms and LM head stay dense.
    #[arg(long)]
    pub quantize_base: Option<String>,
}

/// Runs `wick train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = match &args.devices {
        Some(list) => {
            let first = list.split(',').next().unwrap_or_default();
            wick::device::parse_device(first.trim())?
        }
        None => wick::device::parse_device(&args.device)?,
    };
    let path = resolve_model_arg(&args.model)?;
    // QLoRA on CUDA: the GGUF's blocks stay on the device and the training engine dequantizes
    // one layer at a time (activations bf16); where the engine cannot run, a dense bf16 base.
    let cuda_qlora = device.is_cuda() && args.dtype.is_none() && is_gguf(&path);
    let cuda_qlora = match cuda_qlora.then(|| cuda_qlora_blocker(&args)).flatten() {
        Some(reason) => {
            eprintln!("{reason}: loading the base dense in bf16 (no QLoRA)");
            false
        }
        None => cuda_qlora,
    };
    let dtype = match args.dtype.as_deref() {
        None if cuda_qlora => None,
        None if device.is_cuda() => Some(DType::BF16),
        // QLoRA: a GGUF's blocks stay the frozen base on the CPU (ops::quant_linear).
        None if is_gguf(&path) => None,
        None | Some("f32") => Some(DType::F32),
        Some("bf16") => Some(DType::BF16),
        Some("f16") => Some(DType::F16),
        Some(other) => anyhow::bail!("--dtype {other}: expected f32, bf16 or f16"),
    };
    match dtype {
        Some(dtype) => eprintln!("loading {} ({dtype:?}, base frozen)", path.display()),
        None if cuda_qlora => eprintln!(
            "loading {} (base frozen and kept as its GGML blocks on the device, activations bf16: \
             QLoRA; --dtype bf16 for a dense base)",
            path.display()
        ),
        None => eprintln!(
            "loading {} (base frozen and kept quantized: QLoRA; --dtype f32 for a dense base)",
            path.display()
        ),
    }
    let options = LoadOptions {
        device: device.clone(),
        dtype,
    };
    let mut model =
        TextModel::open(&path, &options).with_context(|| format!("loading {}", path.display()))?;
    if cuda_qlora {
        model.model = model
            .model
            .clone()
            .with_activation_dtype(DType::BF16)
            .context("bf16 activations over the quantized base")?;
    }
    let cpu_qlora = dtype.is_none() && !cuda_qlora;
    if let Some(reason) = cpu_qlora.then(|| unquantizable(&model)).flatten() {
        eprintln!("{reason}: loading the base dense in f32 instead");
        let dense = LoadOptions {
            device,
            dtype: Some(DType::F32),
        };
        model = TextModel::open(&path, &dense)
            .with_context(|| format!("loading {}", path.display()))?;
    }
    if let Some(name) = &args.quantize_base {
        quantize_base(&args, name, &mut model)?;
    }
    let summary = run_with_model(&args, &mut model, &path)?;
    eprintln!(
        "trained {} steps on {} tokens in {:.1} s ({:.0} tokens/s); final loss {:.4}{}",
        summary.steps,
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9),
        summary.losses.last().copied().unwrap_or(f64::NAN),
        summary
            .final_eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default()
    );
    eprintln!(
        "adapter: {} (adapter_config.json, adapter_model.safetensors, metrics.jsonl, loss.png)",
        summary.adapter_dir.display()
    );
    Ok(())
}

/// `--quantize-base NAME`: the dense projections of `model` to blocks, where this run can train
/// through them.
fn quantize_base(args: &Args, name: &str, model: &mut TextModel) -> anyhow::Result<()> {
    use candle_core::quantized::GgmlDType;
    let format = wick::models::llama::quantize_base::base_format(name)?;
    if model.model.device().is_cuda() {
        if let Some(reason) = cuda_qlora_blocker(args) {
            anyhow::bail!("--quantize-base on CUDA trains through the CUDA engine only; {reason}");
        }
    } else if !matches!(format, GgmlDType::Q4_1 | GgmlDType::Q8_0) {
        anyhow::bail!("--quantize-base {name}: the CPU trains through q4_1 or q8_0 blocks");
    }
    let started = std::time::Instant::now();
    model.model.quantize_projections(format)?;
    eprintln!(
        "quantized the base's projections to {format:?} in {:.1} s (QLoRA)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Why this run cannot keep a GGUF's blocks as the base on CUDA: only the CUDA training engine
/// trains through them (Candle's autograd cannot pass a gradient through QMatMul there).
fn cuda_qlora_blocker(args: &Args) -> Option<String> {
    if args.devices.is_some() {
        Some("--devices: data-parallel runs train through Candle's autograd".into())
    } else if args.engine == wick::train::engine_steps::EnginePolicy::Off {
        Some("--engine off".into())
    } else if args.dora {
        Some("--dora: the CUDA training engine has no DoRA".into())
    } else {
        None
    }
}

/// Why a quantized base cannot be trained through (a projection in a format other than Q4_1/Q8_0).
fn unquantizable(model: &TextModel) -> Option<String> {
    use candle_core::quantized::QMatMul;
    use wick::models::linear::BaseWeight;
    let m = &model.model;
    let mut linears = m.linear_layers();
    linears.push(("lm_head".into(), m.lm_head()));
    linears.into_iter().find_map(|(path, l)| match l.weight() {
        BaseWeight::Quantized(QMatMul::QTensor(q)) if !wick::ops::quant_linear::supports(q) => {
            Some(format!(
                "{path} is {:?}: QLoRA on the CPU trains through Q4_1 or Q8_0 blocks",
                q.dtype()
            ))
        }
        _ => None,
    })
}

/// Whether `path` is a GGUF file (its blocks can stay quantized as the frozen base).
fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// How many dropped lines are printed with their reason (all are counted and numbered).
const DROPPED_SHOWN: usize = 20;

/// Prints what loading a dataset found: sizes, truncation, and every dropped or blank line.
fn report_data(path: &Path, s: &DataStats, max_seq_len: usize) {
    eprintln!(
        "{}: {} examples, {} tokens ({} trained on){}",
        path.display(),
        s.examples,
        s.tokens,
        s.counted_tokens,
        if s.truncated > 0 {
            format!("; {} truncated to {max_seq_len} tokens", s.truncated)
        } else {
            String::new()
        }
    );
    if !s.dropped.is_empty() {
        eprintln!(
            "{}: dropped {} line(s): {}",
            path.display(),
            s.dropped.len(),
            describe_dropped(&s.dropped, DROPPED_SHOWN)
        );
        if s.dropped.len() > DROPPED_SHOWN {
            let rest: Vec<String> = s.dropped[DROPPED_SHOWN..]
                .iter()
                .map(|d| d.line.to_string())
                .collect();
            eprintln!("  the other dropped lines: {}", rest.join(", "));
        }
    }
    if !s.blank_lines.is_empty() {
        let lines: Vec<String> = s.blank_lines.iter().map(|l| l.to_string()).collect();
        eprintln!(
            "{}: ignored {} blank line(s): {}",
            path.display(),
            lines.len(),
            lines.join(", ")
        );
    }
}

/// Reads the data, builds the config from `args` and trains `model` (left with the adapter attached).
/// Shared with `wick quickstart`.
pub fn run_with_model(
    args: &Args,
    model: &mut TextModel,
    model_path: &Path,
) -> anyhow::Result<TrainSummary> {
    let context = model.model.config().max_position_embeddings;
    let data_options = DataOptions {
        max_seq_len: args.max_seq_len.min(context),
        pack: args.pack,
    };
    let read = |path: &Path| -> anyhow::Result<Dataset> {
        let data = load_jsonl(
            path,
            &model.tokenizer,
            model.chat_template.as_ref(),
            &data_options,
            context,
        )?;
        report_data(path, &data.stats, data_options.max_seq_len);
        Ok(data)
    };
    let train_data = read(&args.data)?;
    let eval_data = args.eval_data.as_deref().map(read).transpose()?;
    let total_steps = args.steps.unwrap_or_else(|| {
        TrainConfig::steps_for_epochs(
            args.epochs,
            train_data.rows.len(),
            args.batch_size.max(1),
            args.grad_accum.max(1),
        )
    });
    let config = train_config(args, model_path, total_steps)?;
    let bar = ProgressBar::new(total_steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut on_progress = |p: &Progress| match p {
        Progress::Start {
            step,
            total_steps,
            trainable_parameters,
        } => {
            bar.set_length(*total_steps as u64);
            bar.set_position(*step as u64);
            bar.println(format!(
                "training {trainable_parameters} adapter parameters for {total_steps} steps{}",
                if *step > 0 {
                    format!(" (resuming at step {step})")
                } else {
                    String::new()
                }
            ));
        }
        Progress::Step {
            step,
            loss,
            lr,
            tokens_per_s,
            ..
        } => {
            bar.set_position(*step as u64);
            bar.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s"
            ));
        }
        Progress::Eval { step, eval_loss } => {
            bar.println(format!("step {step}: eval loss {eval_loss:.4}"));
        }
        Progress::Checkpoint { dir, .. } => {
            bar.println(format!("checkpoint {}", dir.display()));
        }
    };
    let run = TrainRun {
        eval_data: eval_data.as_ref(),
        config,
        resume: args.resume.clone(),
        engine: args.engine,
        ..TrainRun::new(&train_data, &args.out)
    };
    let result = train_on_devices(args, model, model_path, run, &mut on_progress);
    bar.finish_and_clear();
    result
}

/// The training config of `args`: LoRA (alpha 2 r by default, the model's path as the base), the
/// schedule over `total_steps`, AdamW and the batch, checkpoint and eval settings.
fn train_config(args: &Args, model_path: &Path, total_steps: usize) -> anyhow::Result<TrainConfig> {
    let lora = LoraConfig {
        r: args.rank,
        lora_alpha: args.alpha.unwrap_or(2.0 * args.rank as f64),
        lora_dropout: args.dropout,
        target_modules: TargetModules::parse(&args.targets)?,
        use_rslora: args.rslora,
        use_dora: args.dora,
        init_lora_weights: if args.gaussian_init {
            InitLoraWeights::Named("gaussian".into())
        } else {
            InitLoraWeights::Bool(true)
        },
        base_model_name_or_path: Some(model_path.display().to_string()),
        ..LoraConfig::default()
    };
    Ok(TrainConfig {
        lora,
        lr: args.lr,
        scheduler: ScheduleKind::parse(&args.scheduler)?,
        warmup_steps: args.warmup,
        total_steps,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        shuffle: true,
        seed: args.seed,
        save_every: args.save_every,
        keep_last: args.keep_last,
        eval_every: args.eval_every,
        activation_checkpointing: args.checkpoint_activations || args.checkpoint_layers.is_some(),
        checkpoint_layers: args.checkpoint_layers,
        recompute_mlp_layers: args.recompute_mlp_layers,
    })
}

/// Trains on `--device`, or data-parallel on every device of `--devices`.
fn train_on_devices(
    args: &Args,
    model: &mut TextModel,
    model_path: &Path,
    run: TrainRun<'_>,
    on_progress: &mut dyn FnMut(&Progress),
) -> anyhow::Result<TrainSummary> {
    let Some(list) = &args.devices else {
        return Ok(train(&mut model.model, run, on_progress)?.1);
    };
    let replicas = load_replicas(list, model_path, model.model.dtype())?;
    let options = ParallelOptions {
        timeout: Duration::from_secs(args.rank_timeout),
    };
    Ok(train_data_parallel(&mut model.model, replicas, run, &options, on_progress)?.1)
}

/// The base model on every device of `--devices` but the first (rank 0, already loaded).
fn load_replicas(list: &str, model_path: &Path, dtype: DType) -> anyhow::Result<Vec<Llama>> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.len() < 2 || names.iter().any(|n| n.is_empty()) {
        anyhow::bail!("--devices {list:?}: expected two or more devices, e.g. cuda:0,cuda:1");
    }
    let mut replicas = Vec::with_capacity(names.len() - 1);
    for name in &names[1..] {
        let device = wick::device::parse_device(name)?;
        eprintln!("loading the replica for {name}");
        let options = LoadOptions {
            device,
            dtype: Some(dtype),
        };
        let model = TextModel::open(model_path, &options)
            .with_context(|| format!("loading {} on {name}", model_path.display()))?;
        replicas.push(model.model);
    }
    Ok(replicas)
}
