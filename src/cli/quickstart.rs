//! `wick quickstart` (being built).

/// Options of `wick quickstart`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `wick quickstart`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`wick quickstart` is not built yet")
}
