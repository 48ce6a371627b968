//! Train a LoRA adapter on a JSONL dataset, then answer a question with it.
//!
//! ```text
//! cargo run --release --example train -- DATA.jsonl OUT_DIR [MODEL] [STEPS]
//! ```
//! DATA.jsonl holds one example a line: `{"messages": [...]}`, `{"prompt": ..., "completion": ...}`
//! or `{"text": ...}`. MODEL is a GGUF file or a Hugging Face directory (default: SmolLM2-135M-
//! Instruct, fetched on first use). OUT_DIR receives the adapter in PEFT's layout, metrics.jsonl and
//! loss.png. The data's first user message is asked again at the end.

use std::path::PathBuf;

use wick::{
    load_jsonl, train, DType, DataOptions, Device, GenerateOptions, LoadOptions, Progress, Prompt,
    SamplingParams, TextModel, TrainConfig, TrainRun,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(data_path), Some(out_dir)) = (args.first(), args.get(1)) else {
        return Err("usage: train DATA.jsonl OUT_DIR [MODEL] [STEPS]".into());
    };
    let model_path = match args.get(2) {
        Some(path) => PathBuf::from(path),
        None => wick::formats::fetch::ensure_default_chat_model()?,
    };
    let steps: usize = args.get(3).map_or(Ok(50), |s| s.parse())?;

    // Training needs dense weights; the base stays frozen, only the adapter trains.
    let load = LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::F32),
    };
    let mut model = TextModel::open(&model_path, &load)?;
    let context = model.model.config().max_position_embeddings;
    let options = DataOptions {
        max_seq_len: 512.min(context),
        pack: false,
    };
    let data_path = PathBuf::from(data_path);
    let template = model.chat_template.as_ref();
    let data = load_jsonl(&data_path, &model.tokenizer, template, &options, context)?;
    eprintln!(
        "{}: {} examples, {} tokens trained on",
        data_path.display(),
        data.stats.examples,
        data.stats.counted_tokens
    );

    let run = TrainRun {
        config: TrainConfig {
            total_steps: steps,
            lr: 1e-3,
            ..Default::default()
        },
        ..TrainRun::new(&data, out_dir)
    };
    let (_, summary) = train(&mut model.model, run, &mut |progress| {
        if let Progress::Step { step, loss, .. } = progress {
            eprintln!("step {step}: loss {loss:.4}");
        }
    })?;
    eprintln!(
        "{} steps in {:.1} s; adapter in {}",
        summary.steps,
        summary.seconds,
        summary.adapter_dir.display()
    );

    // The adapter stays attached: ask the first question of the data again.
    let question = first_user_message(&data_path)?.unwrap_or_else(|| "Hello!".into());
    let options = GenerateOptions {
        max_tokens: 64,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let prompt = Prompt::Chat {
        system: None,
        user: &question,
    };
    let answer = model.generate(&prompt, &options, |_| {})?;
    println!("{question}\n-> {}", answer.text);
    Ok(())
}

/// The first user message (or prompt) of a JSONL dataset, if its first line has one.
fn first_user_message(path: &PathBuf) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(line)?;
    let from_messages = value["messages"].as_array().and_then(|messages| {
        messages
            .iter()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
    });
    Ok(from_messages
        .or_else(|| value["prompt"].as_str())
        .map(String::from))
}
