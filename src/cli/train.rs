//! `wick train` (being built).

/// Options of `wick train`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `wick train`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`wick train` is not built yet")
}
