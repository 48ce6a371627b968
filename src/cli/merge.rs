//! `wick merge` (being built).

/// Options of `wick merge`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `wick merge`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`wick merge` is not built yet")
}
