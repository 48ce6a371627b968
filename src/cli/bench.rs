//! `wick bench` (being built).

/// `wick bench` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// CPU prefill/decode benchmark.
    Cpu,
}

/// Runs `wick bench`.
pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("`wick bench` is not built yet")
}
