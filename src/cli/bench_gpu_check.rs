//! `wick bench gpu-check`: every fused kernel, every dtype, forward and backward, against the f64
//! references (wick::ops::check_suite), with outputs poisoned before each run; writes the records as
//! JSON and fails if any case is off.

use std::path::PathBuf;

use anyhow::Context as _;

/// Options of `wick bench gpu-check`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to check (cuda, cuda:N; cpu runs the same cases on the CPU ops).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Write the records here as JSON: a list of {kernel, dtype, pass, max_rel_err, tolerance, ok,
    /// device, date, ...}.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random inputs (default: fresh from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs `wick bench gpu-check`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = wick::device::parse_device(&args.device)?;
    let date = std::env::var("WICK_RUN_DATE").unwrap_or_default();
    let device_name = std::env::var("WICK_DEVICE_NAME").unwrap_or_else(|_| args.device.clone());
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("gpu-check on {device_name}, seed {seed}");
    let records = wick::ops::check_suite::run_suite(&device, &device_name, &date, seed)?;
    println!(
        "{:<18} {:>5} {:>4} {:>24} {:>11} {:>9}  ok",
        "kernel", "dtype", "pass", "shape", "max_rel_err", "tol"
    );
    for r in &records {
        println!(
            "{:<18} {:>5} {:>4} {:>24} {:>11.3e} {:>9.1e}  {}",
            r.kernel,
            r.dtype,
            r.pass,
            r.shape,
            r.max_rel_err,
            r.tolerance,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    let failed = records.iter().filter(|r| !r.ok).count();
    std::fs::write(&args.out, serde_json::to_string_pretty(&records)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} cases, {failed} failed; wrote {}",
        records.len(),
        args.out.display()
    );
    if failed > 0 {
        anyhow::bail!("{failed} kernel checks failed");
    }
    Ok(())
}
