//! `wick merge`: fold a LoRA adapter into its base (`W + scale * B A`) and write an HF directory
//! (model.safetensors, config.json, tokenizer.json, tokenizer_config.json) that wick and transformers load,
//! or, with `--format gguf`, one GGUF file that llama.cpp (and Ollama) load.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use candle_core::{DType, Device};
use wick::formats::fetch::resolve_model_arg;
use wick::formats::gguf::GgufQuant;
use wick::formats::LoadOptions;
use wick::generate::TextModel;
use wick::lora::merge::{merge_into_layers, write_gguf_model, write_hf_model};
use wick::lora::peft_io::{load_adapter, write_atomic};

/// Options of `wick merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model the adapter was trained on: `default`, a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// The adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory (`--format hf`) or file (`--format gguf`).
    #[arg(long)]
    pub out: PathBuf,
    /// Weights dtype of the merged HF model: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output format: `hf` (a directory) or `gguf` (one file for llama.cpp; needs a GGUF base,
    /// whose tokenizer and metadata it keeps).
    #[arg(long, default_value = "hf")]
    pub format: String,
    /// GGUF weights: f16, q8_0, q4_1 or q4_k_m (llama.cpp's mixes, see `wick::formats::gguf::export`).
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
}

/// Tokenizer files copied as they are from an HF base directory.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Runs `wick merge`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let gguf_quant = match args.format.as_str() {
        "hf" => None,
        "gguf" => Some(GgufQuant::parse(&args.quant).ok_or_else(|| {
            anyhow::anyhow!("--quant: unknown `{}` ({})", args.quant, GgufQuant::NAMES)
        })?),
        other => anyhow::bail!("--format: unknown `{other}` (hf or gguf)"),
    };
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("--dtype: unknown `{other}` (f32, bf16 or f16)"),
    };
    let path = resolve_model_arg(&args.model)?;
    let mut model = TextModel::open(
        &path,
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(DType::F32),
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let adapter = load_adapter(&args.adapter, &Device::Cpu)?;
    merge_into_layers(&adapter, model.model.linear_layers_mut(), &args.adapter)?;
    if let Some(quant) = gguf_quant {
        let weights = model.model.named_weights()?;
        write_gguf_model(&args.out, &path, model.model.config(), weights, quant)?;
        eprintln!(
            "merged {} adapted modules of {} into {} ({:?})",
            adapter.layers.len(),
            args.adapter.display(),
            args.out.display(),
            quant
        );
        return Ok(());
    }
    let weights = model
        .model
        .named_weights()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    write_hf_model(&args.out, model.model.config(), weights)?;
    write_tokenizer(&model, &path, &args.out)?;
    eprintln!(
        "merged {} adapted modules of {} into {}",
        adapter.layers.len(),
        args.adapter.display(),
        args.out.display()
    );
    Ok(())
}

/// Copies an HF base's tokenizer files, or writes tokenizer.json + tokenizer_config.json from the
/// tokenizer wick built (GGUF base).
fn write_tokenizer(model: &TextModel, base: &Path, out: &Path) -> anyhow::Result<()> {
    if base.is_dir() && base.join("tokenizer.json").is_file() {
        for name in TOKENIZER_FILES {
            let src = base.join(name);
            if src.is_file() {
                let bytes = std::fs::read(&src).with_context(|| src.display().to_string())?;
                write_atomic(&out.join(name), &bytes)?;
            }
        }
        return Ok(());
    }
    let json = model
        .tokenizer
        .inner()
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?;
    write_atomic(&out.join("tokenizer.json"), json.as_bytes())?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": model.tokenizer.bos_token(),
        "eos_token": model.tokenizer.eos_token(),
        "add_bos_token": model.tokenizer.add_bos(),
        "model_max_length": model.model.config().max_position_embeddings,
        "chat_template": model.chat_template.as_ref().map(|t| t.source()),
    });
    write_atomic(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    Ok(())
}
