//! `wick models` (being built).

/// `wick models` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Fetch the default models into the cache.
    Fetch,
}

/// Runs `wick models`.
pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("`wick models` is not built yet")
}
