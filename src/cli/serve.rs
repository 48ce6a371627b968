//! `wick serve`: the OpenAI-compatible server (library: `wick::serve`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use wick::formats::fetch::resolve_model_arg;
use wick::serve::{shutdown_signal, ServeConfig, Server};

/// Options of `wick serve`.
#[derive(clap::Args)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct, fetched on first use), a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// The base model's id in the API (default: the model file's name without extension).
    /// Requests may also name it `base`.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Dequantize every weight to this dtype (f32, bf16, f16), or keep GGUF weights `quantized`
    /// (default: the CPU's fast quantized kernels; batch invariance is bitwise there).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Where generation runs: `cpu`, or `cuda` / `cuda:N` for the CUDA batch decode engine (a GGUF
    /// llama-family model; up to 8 sequences per step, each with its own adapter).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tokens (prompt + generated) a sequence may hold, below the model's own context: the GPU
    /// engine sizes every row's KV cache for it (default: the model's, at most 8192 on the GPU).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Largest LoRA rank the GPU adapter pool holds (every slot is this rank; bigger adapters are
    /// refused by name). Default: 16, or the largest rank among the --adapter ones.
    #[arg(long)]
    pub max_lora_rank: Option<usize>,
    /// A LoRA adapter as NAME=DIR (PEFT layout), pinned in memory; requests use it with
    /// `"model": "NAME"`. Repeatable. More load at run time with POST /v1/load_lora_adapter.
    #[arg(long = "adapter", value_parser = parse_adapter)]
    pub adapters: Vec<(String, PathBuf)>,
    /// An embedding model for /v1/embeddings: `default` (all-MiniLM-L6-v2) or a
    /// sentence-transformers directory.
    #[arg(long)]
    pub embed_model: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (401 otherwise).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Adapters in memory at most; beyond it the least recently used unpinned one is evicted
    /// (and loaded again from its directory when asked for).
    #[arg(long, default_value_t = 8)]
    pub max_adapters: usize,
    /// Sequences per batch step at most.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Requests waiting for a batch slot at most; one more gets 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Prompt tokens read per step at most; longer prompts are read in pieces of this size.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// MiB of prompt-prefix keys and values kept for reuse on the CPU (a shared system prompt is
    /// read once per adapter); 0 turns the prefix cache off.
    #[arg(long, default_value_t = 64)]
    pub prefix_cache_mib: usize,
    /// Largest max_tokens a request may ask for (400 beyond).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// max_tokens of a request that sets none (capped by the room left in the context).
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Seconds a request may take from arrival to its last token (504 / an error event beyond).
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Seconds running requests may take to finish after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("`{s}`: expected NAME=DIR")),
    }
}

/// Runs `wick serve` until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let model = resolve_model_arg(&args.model)?;
    let dtype = match args.dtype.as_deref() {
        None | Some("quantized") => None,
        Some("f32") => Some(candle_core::DType::F32),
        Some("bf16") => Some(candle_core::DType::BF16),
        Some("f16") => Some(candle_core::DType::F16),
        Some(other) => anyhow::bail!("--dtype {other}: expected f32, bf16, f16 or quantized"),
    };
    let device = wick::device::parse_device(&args.device)?;
    let config = ServeConfig {
        model: model.clone(),
        device,
        max_lora_rank: args.max_lora_rank,
        max_context: args.max_context,
        model_id: args.served_model_name,
        dtype,
        adapters: args.adapters,
        embed_model: args.embed_model,
        max_adapters: args.max_adapters,
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        prefill_chunk: args.prefill_chunk,
        prefix_cache_bytes: args.prefix_cache_mib.saturating_mul(1 << 20),
        max_tokens: args.max_tokens,
        default_max_tokens: args.default_max_tokens,
        request_timeout: Duration::from_secs(args.request_timeout),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        api_key: args.api_key,
    };
    let server = Server::load(&config).with_context(|| format!("loading {}", model.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        let bound = listener.local_addr().context("the bound address")?;
        // Tests and scripts wait for this line to know the server is up.
        eprintln!(
            "wick serve: model `{}` listening on http://{bound}",
            server.model_id()
        );
        server.serve(listener, shutdown_signal()).await?;
        eprintln!("wick serve: stopped");
        Ok(())
    })
}
