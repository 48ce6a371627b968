//! Generate a chat answer, streamed token by token.
//!
//! ```text
//! cargo run --release --example generate -- [MODEL] [QUESTION]
//! ```
//! MODEL is a GGUF file or a Hugging Face directory; without one, the default chat model
//! (SmolLM2-135M-Instruct, Q4_1) is fetched into the cache on first use.

use std::io::Write;
use std::path::PathBuf;

use wick::{Device, GenerateOptions, LoadOptions, Prompt, TextModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = match args.next() {
        Some(path) => PathBuf::from(path),
        None => wick::formats::fetch::ensure_default_chat_model()?,
    };
    let question = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".to_string());
    // Inference loading: GGUF weights stay quantized, as llama.cpp runs them.
    let model = TextModel::open(&model_path, &LoadOptions::inference(Device::Cpu))?;
    let prompt = Prompt::Chat {
        system: None,
        user: &question,
    };
    let options = GenerateOptions {
        max_tokens: 128,
        ..Default::default()
    };
    let generation = model.generate(&prompt, &options, |token| {
        print!("{}", token.text);
        let _ = std::io::stdout().flush();
    })?;
    println!();
    eprintln!(
        "{} tokens, {:.1} tokens/s ({:?})",
        generation.token_ids.len(),
        generation.timings.decode_tokens_per_second(),
        generation.stop_reason
    );
    Ok(())
}
