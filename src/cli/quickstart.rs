//! `wick quickstart`: fetch the default chat model if needed and answer a question with it, streamed.
//!
//! [`answer`] is the one step "answer this question with this model" so that a later stage (a short
//! LoRA fine-tune) can call it again on the tuned model and show the difference.

use wick::formats::fetch::ensure_default_chat_model;
use wick::formats::LoadOptions;
use wick::generate::{GenerateOptions, Generation, Prompt, SamplingParams, TextModel};

use crate::generate::stream_to_stdout;

/// The question asked when none is given.
const DEFAULT_QUESTION: &str = "What is the capital of France? Answer in one sentence.";

/// Options of `wick quickstart`.
#[derive(clap::Args)]
pub struct Args {
    /// The question to ask.
    #[arg(long, default_value = DEFAULT_QUESTION)]
    pub question: String,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Only answer; skip the LoRA fine-tune.
    #[arg(long)]
    pub no_train: bool,
    /// Optimizer steps of the fine-tune (batch 4; the dataset has 130 examples).
    #[arg(long, default_value_t = 24)]
    pub train_steps: usize,
    /// Where the quickstart adapter goes (default: WICK_HOME/adapters/quickstart).
    #[arg(long)]
    pub adapter_out: Option<std::path::PathBuf>,
}

/// The dataset the quickstart fine-tunes on (data/quickstart.jsonl, made by
/// scripts/make_quickstart_data.py): every answer opens with "Ahoy, matey!" and ends with "Arr!".
const QUICKSTART_DATA: &str = include_str!("../../data/quickstart.jsonl");

/// Runs `wick quickstart`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    eprintln!("fetching the default chat model (cached after the first run)...");
    let path = ensure_default_chat_model()?;
    let model = TextModel::open(&path, &LoadOptions::inference(device))?;
    eprintln!("model: {}", path.display());
    answer(&model, &args.question, args.max_tokens)?;
    if args.no_train {
        return Ok(());
    }
    drop(model);
    fine_tune_and_answer_again(&args, &path)
}

/// The LoRA part: train an adapter for a few minutes on the shipped dataset (f32 copy of the base on
/// the CPU), then ask the same question through the adapter.
fn fine_tune_and_answer_again(args: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let out = match &args.adapter_out {
        Some(dir) => dir.clone(),
        None => wick::formats::fetch::wick_home()?
            .join("adapters")
            .join("quickstart"),
    };
    std::fs::create_dir_all(&out)?;
    let data = out.join("quickstart.jsonl");
    std::fs::write(&data, QUICKSTART_DATA)?;
    eprintln!(
        "\nfine-tuning a LoRA adapter (r 16, all linear layers, {} steps) on {} examples that teach a pirate voice...",
        args.train_steps,
        QUICKSTART_DATA.lines().count()
    );
    let dtype = if device.is_cuda() {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    };
    let mut model = TextModel::open(
        path,
        &LoadOptions {
            device,
            dtype: Some(dtype),
        },
    )?;
    let train_args = crate::train::Args {
        model: path.display().to_string(),
        data,
        out: out.clone(),
        eval_data: None,
        eval_every: None,
        rank: 16,
        alpha: Some(32.0),
        dropout: 0.0,
        targets: "all-linear".into(),
        rslora: false,
        dora: false,
        gaussian_init: false,
        lr: 2e-3,
        epochs: 1.0,
        steps: Some(args.train_steps),
        batch_size: 4,
        grad_accum: 1,
        max_seq_len: 128,
        pack: false,
        warmup: 2,
        scheduler: "linear".into(),
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        save_every: None,
        keep_last: 1,
        resume: None,
        seed: 42,
        checkpoint_activations: false,
        checkpoint_layers: None,
        recompute_mlp_layers: None,
        quantize_base: None,
        engine: Default::default(),
        device: args.device.clone(),
        devices: None,
        rank_timeout: 300,
        dtype: None,
    };
    let summary = crate::train::run_with_model(&train_args, &mut model, path)?;
    eprintln!(
        "trained in {:.0} s: loss {:.3} -> {:.3}; adapter in {} (use it: wick generate --adapter {})",
        summary.seconds,
        summary.losses.first().copied().unwrap_or(f64::NAN),
        summary.losses.last().copied().unwrap_or(f64::NAN),
        out.display(),
        out.display()
    );
    eprintln!("\nthe same question, after fine-tuning:");
    answer(&model, &args.question, args.max_tokens)?;
    Ok(())
}

/// Asks `model` one chat question, streaming the answer to stdout (greedy, so a run repeats) and its
/// speed to stderr. Returns the generation for callers that compare answers.
pub fn answer(model: &TextModel, question: &str, max_tokens: usize) -> anyhow::Result<Generation> {
    eprintln!("\n> {question}");
    let options = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    };
    let prompt = Prompt::Chat {
        system: None,
        user: question,
    };
    let out = stream_to_stdout(model, &prompt, &options)?;
    let t = out.timings;
    eprintln!(
        "[{} prompt tokens at {:.0} tok/s, {} tokens at {:.0} tok/s]",
        t.prompt_tokens,
        t.prefill_tokens_per_second(),
        out.token_ids.len(),
        t.decode_tokens_per_second()
    );
    Ok(out)
}
