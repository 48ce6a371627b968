//! `wick bench` (being built).

/// `wick bench` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// CPU prefill/decode benchmark.
    Cpu,
    /// Time every GPU matmul path over a grid of shapes; write the dispatch table.
    Dispatch(super::bench_dispatch::Args),
    /// Embedding throughput (texts/s per batch size) and peak memory.
    Embed(super::bench_embed::Args),
}

/// Runs `wick bench`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Dispatch(args) => super::bench_dispatch::run(args),
        Command::Embed(args) => super::bench_embed::run(args),
        Command::Cpu => anyhow::bail!("`wick bench cpu` is not built yet"),
    }
}
