//! `wick bench parity`: the CUDA-versus-CPU agreement check of the CUDA-kernels issue.
//!
//! Greedy generation of the default model with its weights dequantized to f32 must give the same first
//! tokens on CUDA as on the CPU. Both sides run in this one process on one machine (the GPU machine's
//! CPU is the CPU side), so the comparison needs no fixture. The prompts are the foundation's raw
//! prompts (the llama.cpp comparison uses the same kind of text). Writes JSON records.

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::DType;
use serde::Serialize;
use wick::device::parse_device;
use wick::formats::fetch::resolve_model_arg;
use wick::formats::LoadOptions;
use wick::generate::{greedy_token_ids, Prompt, TextModel};

/// Raw prompts: plain factual and narrative openings on which a 135M model is not near a tie.
const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, there was a little",
    "The three primary colors are",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "The largest planet in our solar system is",
];

/// Options of `wick bench parity`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct), a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// The device compared with the CPU.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Write the records here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Record {
    prompt: String,
    cpu_tokens: Vec<u32>,
    device_tokens: Vec<u32>,
    /// Leading tokens on which both sides agree.
    agreeing_prefix: usize,
    identical: bool,
    cpu_text: String,
    device_text: String,
}

/// Runs `wick bench parity`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let path = resolve_model_arg(&args.model)?;
    let device = parse_device(&args.device)?;
    let open = |device| {
        TextModel::open(
            &path,
            &LoadOptions {
                device,
                dtype: Some(DType::F32),
            },
        )
        .with_context(|| format!("loading {}", path.display()))
    };
    let cpu = open(candle_core::Device::Cpu)?;
    let other = open(device)?;
    let mut records = Vec::new();
    for prompt in PROMPTS {
        let ids = cpu.prompt_ids(&Prompt::Raw(prompt))?;
        let cpu_tokens = greedy_token_ids(&cpu.model, &ids, args.tokens)?;
        let device_tokens = greedy_token_ids(&other.model, &ids, args.tokens)?;
        let agreeing_prefix = cpu_tokens
            .iter()
            .zip(&device_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let record = Record {
            prompt: prompt.to_string(),
            identical: cpu_tokens == device_tokens,
            cpu_text: cpu.tokenizer.decode_skip_special(&cpu_tokens)?,
            device_text: cpu.tokenizer.decode_skip_special(&device_tokens)?,
            cpu_tokens,
            device_tokens,
            agreeing_prefix,
        };
        eprintln!(
            "{:<45} identical={} prefix={}/{}  {:?}",
            prompt, record.identical, record.agreeing_prefix, args.tokens, record.device_text
        );
        records.push(record);
    }
    let all = records.iter().all(|r| r.identical);
    println!(
        "{} of {} prompts identical over {} greedy tokens (CPU f32 vs {} f32)",
        records.iter().filter(|r| r.identical).count(),
        records.len(),
        args.tokens,
        args.device
    );
    if let Some(out) = &args.out {
        let json = serde_json::json!({
            "check": "greedy tokens, default model dequantized to f32, CPU vs device",
            "device": args.device,
            "all_identical": all,
            "records": records,
        });
        std::fs::write(out, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
