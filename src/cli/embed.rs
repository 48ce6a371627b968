//! `wick embed`, `wick index`, `wick search` (being built).

/// Options of `wick embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {}
/// Options of `wick index`.
#[derive(clap::Args)]
pub struct IndexArgs {}
/// Options of `wick search`.
#[derive(clap::Args)]
pub struct SearchArgs {}

/// Runs `wick embed`.
pub fn run_embed(_args: EmbedArgs) -> anyhow::Result<()> {
    anyhow::bail!("`wick embed` is not built yet")
}
/// Runs `wick index`.
pub fn run_index(_args: IndexArgs) -> anyhow::Result<()> {
    anyhow::bail!("`wick index` is not built yet")
}
/// Runs `wick search`.
pub fn run_search(_args: SearchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`wick search` is not built yet")
}
