//! `wick generate` (being built).

/// Options of `wick generate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `wick generate`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`wick generate` is not built yet")
}
