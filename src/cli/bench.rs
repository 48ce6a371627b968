//! `wick bench` (being built).

/// `wick bench` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// CPU prefill/decode benchmark.
    Cpu(super::bench_cpu::Args),
    /// CPU decode with a LoRA adapter beside the same model without one; a batch with one adapter
    /// per sequence beside the same batch without adapters.
    CpuAdapter(super::bench_cpu_adapter::Args),
    /// Time every GPU matmul path over a grid of shapes; write the dispatch table.
    Dispatch(super::bench_dispatch::Args),
    /// Batch-1 decode through wick's CUDA decode engine beside the Candle path (speed, logits).
    Decode(super::bench_decode::Args),
    /// Several sequences decoded at once through the CUDA batch decode engine, checked against the
    /// batch-1 engine (llama-batched-bench's parallel sequences).
    DecodeBatch(super::bench_decode_batch::Args),
    /// What unmerged LoRA adapters cost the CUDA decode engines (batch 1 and N, per-sequence
    /// adapters), on a GGUF or a random model at SmolLM2 shapes.
    DecodeLora(super::bench_decode_lora::Args),
    /// Check every fused kernel against the f64 references on the device; write JSON records.
    GpuCheck(super::bench_gpu_check::Args),
    /// Time the fused kernels at the CUDA-kernels issue's shapes.
    Kernels(super::bench_kernels::Args),
    /// Where the time of a small GPU op goes (checks, allocation, launch, sync, GPU), per cure.
    #[cfg(feature = "cuda")]
    Overhead(super::bench_overhead::Args),
    /// Embedding throughput (texts/s per batch size) and peak memory.
    Embed(super::bench_embed::Args),
    /// LoRA training tokens/s and peak memory.
    Train(super::bench_train::Args),
    /// Greedy tokens on a device (weights dequantized to f32) against the CPU, same process.
    Parity(super::bench_parity::Args),
}

/// Prints a benchmark's JSON record on stdout and, with `--out`, writes it there too (pretty, whole
/// or not at all: a reader never sees half a record).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn emit_report(
    report: &serde_json::Value,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    println!("{report}");
    if let Some(out) = out {
        let text = serde_json::to_string_pretty(report)? + "\n";
        wick::lora::peft_io::write_atomic(out, text.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Runs `wick bench`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Dispatch(args) => super::bench_dispatch::run(args),
        Command::Decode(args) => super::bench_decode::run(args),
        Command::DecodeBatch(args) => super::bench_decode_batch::run(args),
        Command::DecodeLora(args) => super::bench_decode_lora::run(args),
        Command::GpuCheck(args) => super::bench_gpu_check::run(args),
        Command::Kernels(args) => super::bench_kernels::run(args),
        #[cfg(feature = "cuda")]
        Command::Overhead(args) => super::bench_overhead::run(args),
        Command::Embed(args) => super::bench_embed::run(args),
        Command::Train(args) => super::bench_train::run(args),
        Command::Cpu(args) => super::bench_cpu::run(args),
        Command::CpuAdapter(args) => super::bench_cpu_adapter::run(args),
        Command::Parity(args) => super::bench_parity::run(args),
    }
}
