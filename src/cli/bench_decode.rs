//! `wick bench decode`: batch-1 decode on CUDA through wick's decode engine (`generate::cuda_decode`:
//! quantized mat-vec kernels, one CUDA graph per token) beside the Candle path (Candle ops + QMatMul),
//! in one process on the same GGUF file. Prints and writes:
//! - correctness against the Candle path with the weights dequantized to dense f32 (the engine's maths:
//!   dequantized weights times f32 activations; only the summation order differs), both fed the f32
//!   path's greedy tokens so positions stay aligned: (a) the engine's batched prefill
//!   (`DecodeEngine::prefill`, what generation uses: TF32 products, the GEMM attention where it
//!   fits; again with the one-kernel attention forced; and again in full f32), (b) the engine
//!   stepping the whole prompt itself, (c) the engine taking over the f32 path's prefill KV cache
//!   (`load_prefix`, the fallback), each for `--compare` positions (the first compares the
//!   prompt's last logits), the steps on f32 activations; max |logit difference| <= `--tolerance`,
//!   or `--tf32-tolerance` for the two TF32 prefill runs; (d) the engine stepping the prompt on
//!   int8 activations (its default step), at `--int8-tolerance`. The
//!   quantized Candle path (QMatMul quantizes activations to Q8_1, so its logits differ by O(1)) is
//!   compared on greedy tokens only, as information; with `--adapter DIR` every path runs with that
//!   PEFT adapter (the engine's unmerged adapter path against Candle's attached one);
//! - speed at two shapes: prompt of `--prompt-tokens` then `--decode-tokens` (llama-batched-bench
//!   pp512+tg128 at the defaults) and prompt of 1 token then 128 (llama-bench tg128): prefill tokens/s
//!   (prompts of >= `BATCHED_PREFILL_MIN` tokens through the engine's batched prefill, as generation
//!   does; median of `--prefill-reps` runs) and decode tokens/s (each token read back to the host),
//!   for the engine with the graph (f32 activations, then int8), the engine eagerly, and the Candle
//!   path, plus the old prefill
//!   (Candle's batched forward + cache handoff) as its own row; a JSON summary line at the end.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::path::PathBuf;

use serde::Serialize;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub use cuda::run;

/// Options of `wick bench decode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `default` (SmolLM2-135M-Instruct Q4_1), a .gguf file or an HF directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// CUDA device.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded in the timed runs.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Tokens compared with the Candle path (logits and greedy ids).
    #[arg(long, default_value_t = 32)]
    pub compare: usize,
    /// Largest max |logit difference| accepted against the dense-f32 Candle path. Same weights and
    /// maths, f32 accumulation in another order over 30 layers: expected ~1e-3 on logits of magnitude
    /// ~10-30; a wrong RoPE, cache row or softmax gives O(1).
    #[arg(long, default_value_t = 1e-2)]
    pub tolerance: f32,
    /// The same for the runs whose prefill multiplies on the TF32 tensor cores (the default
    /// prefill): inputs rounded to a 10-bit mantissa, ~1e-3 relative per product.
    #[arg(long, default_value_t = 0.2)]
    pub tf32_tolerance: f32,
    /// The same for the steps on int8 activations (the engine's default step): every mat-vec's
    /// input rounded to 8 bits per 32 values, as llama.cpp's and Candle's quantized matmul's
    /// (whose logits differ from dense f32 by O(1) at 30 layers).
    #[arg(long, default_value_t = 2.0)]
    pub int8_tolerance: f32,
    /// Prefills timed per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub prefill_reps: usize,
    /// A PEFT adapter directory: the engine runs with it unmerged (adapter slot 1), both Candle
    /// models with it attached (`apply_for_inference`), so the comparison and the timings are those
    /// of the adapter path at this model's shapes.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct CompareRow {
    /// "engine batched prefill" (GEMM attention), "engine batched prefill (attention kernel)",
    /// "engine steps" (the engine stepped the prompt) or "candle prefill handoff".
    run: &'static str,
    position: usize,
    max_abs_logit_diff: f32,
    f32_token: u32,
    engine_token: u32,
    device_argmax: u32,
    quantized_candle_token: u32,
}

#[derive(Serialize)]
struct Timing {
    path: String,
    prompt_tokens: usize,
    prefill_path: String,
    prefill_ms: f64,
    prefill_tokens_per_second: f64,
    decode_tokens: usize,
    decode_tokens_per_second: f64,
    ms_per_token: f64,
}

#[derive(Serialize)]
struct PrefillProfile {
    prompt_tokens: usize,
    total_gpu_us: f64,
    #[cfg(feature = "cuda")]
    kinds: Vec<wick::generate::cuda_decode::engine::prefill::PrefillKindTime>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    /// The adapter directory every path ran with, if any.
    adapter: Option<String>,
    device: String,
    date: String,
    engine_mode: String,
    launches_per_step: usize,
    /// Launches of the engine's batched prefill of `--prompt-tokens` tokens.
    prefill_launches: usize,
    /// GPU time of one prefill chunk of the prompt per kernel kind (events between launches, behind
    /// a spin kernel), when the prompt fits one chunk.
    prefill_profile: Option<PrefillProfile>,
    weight_mb_per_step: f64,
    engine_build_s: f64,
    compare: Vec<CompareRow>,
    /// Over the runs in full f32 (judged at `tolerance`).
    max_abs_logit_diff: f32,
    tolerance: f32,
    /// Over the TF32 prefill runs (judged at `tf32_tolerance`).
    max_abs_logit_diff_tf32: f32,
    tf32_tolerance: f32,
    /// Over the run stepping on int8 activations (judged at `int8_tolerance`).
    max_abs_logit_diff_int8: f32,
    int8_tolerance: f32,
    greedy_tokens_identical_f32: bool,
    greedy_tokens_identical_quantized_candle: bool,
    timings: Vec<Timing>,
    ok: bool,
}
/// The median of `times` (sorted in place); 0 when empty.
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

fn timing(
    path: &str,
    prompt: usize,
    prefill_path: &str,
    prefill_s: f64,
    tokens: usize,
    decode_s: f64,
) -> Timing {
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Timing {
        path: path.into(),
        prompt_tokens: prompt,
        prefill_path: prefill_path.into(),
        prefill_ms: prefill_s * 1e3,
        prefill_tokens_per_second: rate(prompt, prefill_s),
        decode_tokens: tokens,
        decode_tokens_per_second: rate(tokens, decode_s),
        ms_per_token: if tokens > 0 {
            decode_s * 1e3 / tokens as f64
        } else {
            0.0
        },
    }
}

/// Without the `cuda` feature there is no engine to measure.
#[cfg(not(feature = "cuda"))]
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("wick bench decode needs a build with --features cuda")
}
