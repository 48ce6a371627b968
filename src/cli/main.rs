//! The `wick` command line. The only place that prints or draws progress bars; every subcommand
//! lives in its own file with an `Args` struct and a `run` function.

mod bench;
mod bench_cpu;
mod bench_cpu_adapter;
mod bench_decode;
mod bench_decode_batch;
mod bench_decode_lora;
mod bench_dispatch;
mod bench_embed;
mod bench_gpu_check;
mod bench_kernels;
#[cfg(feature = "cuda")]
mod bench_overhead;
mod bench_parity;
mod bench_train;
mod embed;
mod generate;
mod merge;
mod models;
mod quickstart;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Fine-tune small language models with LoRA, generate text and embed text for search.
#[derive(Parser)]
#[command(name = "wick", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt or a chat message.
    Generate(generate::Args),
    /// Fetch, list and describe models.
    #[command(subcommand)]
    Models(models::Command),
    /// Fetch the default model and show it working (and learning).
    Quickstart(quickstart::Args),
    /// Fine-tune a LoRA adapter.
    Train(train::Args),
    /// Merge a LoRA adapter into its base model and write an HF directory.
    Merge(merge::Args),
    /// Embed texts into vectors.
    Embed(embed::EmbedArgs),
    /// Build a reusable search index over a corpus.
    Index(embed::IndexArgs),
    /// Search a corpus or an index with a query.
    Search(embed::SearchArgs),
    /// Serve the model and its adapters over an OpenAI-compatible HTTP API.
    Serve(serve::Args),
    /// Benchmarks (CPU and GPU).
    #[command(subcommand)]
    Bench(bench::Command),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WICK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Models(cmd) => models::run(cmd),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Train(args) => train::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Embed(args) => embed::run_embed(args),
        Command::Index(args) => embed::run_index(args),
        Command::Search(args) => embed::run_search(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
