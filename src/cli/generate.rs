//! `wick generate`: text from a raw prompt or a chat message, streamed to stdout; timings to stderr.

use std::io::Write;

use anyhow::Context as _;
use wick::formats::fetch::resolve_model_arg;
use wick::formats::LoadOptions;
use wick::generate::{
    GenerateOptions, GenerationAdapter, Prompt, SamplingParams, StopReason, TextModel,
};
use wick::lora::ResidentAdapter;

/// Options of `wick generate`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "chat"])))]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct, fetched on first use), a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// A prompt to continue.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Feed --prompt as is, without the chat template (BOS only where the model asks for it).
    /// Without --raw, --prompt is sent through the chat template like --chat.
    #[arg(long, requires = "prompt")]
    pub raw: bool,
    /// A user message, sent through the model's chat template.
    #[arg(long, conflicts_with = "prompt")]
    pub chat: Option<String>,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep tokens at least this fraction as likely as the best one (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty over the last --repeat-last-n tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at (0: the whole context).
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed (random if not given; printed to stderr so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A LoRA adapter directory (PEFT layout: adapter_config.json + adapter_model.safetensors) to apply.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// Dequantize every weight to this dtype (f32, bf16, f16), or keep GGUF weights `quantized`.
    /// Default: quantized (as llama.cpp runs the file); `f32` skips the Q8 rounding of activations.
    #[arg(long)]
    pub dtype: Option<String>,
}

/// Runs `wick generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let path = resolve_model_arg(&args.model)?;
    let load_start = std::time::Instant::now();
    let dtype = match args.dtype.as_deref() {
        None => LoadOptions::inference(device.clone()).dtype,
        Some("quantized") => None,
        Some("f32") => Some(candle_core::DType::F32),
        Some("bf16") => Some(candle_core::DType::BF16),
        Some("f16") => Some(candle_core::DType::F16),
        Some(other) => anyhow::bail!("--dtype {other}: expected f32, bf16, f16 or quantized"),
    };
    let options = LoadOptions { device, dtype };
    let mut model =
        TextModel::open(&path, &options).with_context(|| format!("loading {}", path.display()))?;
    let mut resident = None;
    if let Some(dir) = &args.adapter {
        let adapter = wick::lora::peft_io::load_adapter(dir, model.model.device())?;
        // DoRA rescales whole rows, which the row-wise low-rank path does not do.
        let dora = adapter.layers.iter().any(|l| l.magnitude.is_some());
        if model.model.device().is_cpu() && !dora {
            // The row-wise update beside the base product (`ops::lora_delta_cpu`), the path
            // `wick serve` batches take: the same tokens here and there.
            let shapes = model.model.linear_shapes();
            resident = Some(GenerationAdapter {
                adapter: std::sync::Arc::new(ResidentAdapter::new(
                    "adapter", &adapter, &shapes, dir,
                )?),
                scale: 1.0,
            });
        } else {
            adapter.apply_for_inference(model.model.linear_layers_mut(), dir)?;
        }
        eprintln!(
            "adapter {} ({} modules)",
            dir.display(),
            adapter.layers.len()
        );
    }
    eprintln!(
        "loaded {} in {:.2} s",
        path.display(),
        load_start.elapsed().as_secs_f64()
    );
    let seed = args.seed.unwrap_or_else(rand::random);
    let generate_options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            repeat_last_n: (args.repeat_last_n > 0).then_some(args.repeat_last_n),
            seed,
        },
        stop_strings: args.stop.clone(),
        eos_token_ids: None,
        adapter: resident,
    };
    let prompt = match (&args.prompt, &args.chat) {
        (Some(text), _) if args.raw => Prompt::Raw(text),
        (Some(text), _) | (None, Some(text)) => Prompt::Chat {
            system: args.system.as_deref(),
            user: text,
        },
        (None, None) => anyhow::bail!("give --prompt or --chat"),
    };
    let (out, first_token) = stream_to_stdout_timed(&model, &prompt, &generate_options)?;
    if let Some(first) = first_token {
        // Cold-start figure (issue 8): from opening the model file to the first token on stdout,
        // CUDA module loading / PTX JIT included. scripts/device/e2e.sh reads this line.
        eprintln!(
            "\n[first token {:.3} s after the model file was opened]",
            first.duration_since(load_start).as_secs_f64()
        );
    }
    let t = out.timings;
    eprintln!(
        "\n[{} prompt tokens: {:.1} tok/s | {} generated: {:.1} tok/s decode | stop: {} | seed {seed}]",
        t.prompt_tokens,
        t.prefill_tokens_per_second(),
        out.token_ids.len(),
        t.decode_tokens_per_second(),
        describe(&out.stop_reason),
    );
    Ok(())
}

/// Generates and writes each piece to stdout as it comes. Shared with `wick quickstart`.
pub fn stream_to_stdout(
    model: &TextModel,
    prompt: &Prompt,
    options: &GenerateOptions,
) -> anyhow::Result<wick::generate::Generation> {
    stream_to_stdout_timed(model, prompt, options).map(|(out, _)| out)
}

/// As `stream_to_stdout`, also returning when the first token arrived.
fn stream_to_stdout_timed(
    model: &TextModel,
    prompt: &Prompt,
    options: &GenerateOptions,
) -> anyhow::Result<(wick::generate::Generation, Option<std::time::Instant>)> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let mut write_error = None;
    let mut first_token = None;
    let out = model.generate(prompt, options, |token| {
        first_token.get_or_insert_with(std::time::Instant::now);
        if write_error.is_none() {
            if let Err(e) = lock
                .write_all(token.text.as_bytes())
                .and_then(|_| lock.flush())
            {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    writeln!(lock).context("writing to stdout")?;
    Ok((out, first_token))
}

fn describe(reason: &StopReason) -> String {
    match reason {
        StopReason::Eos => "end of sequence".into(),
        StopReason::StopString(s) => format!("stop string {s:?}"),
        StopReason::MaxTokens => "max tokens".into(),
        StopReason::ContextFull => "context full".into(),
    }
}
