//! The CUDA decode engine: decode of a LLaMA-family model (LLaMA, Mistral, Qwen2 with its q/k/v
//! biases) with GGUF-quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, mixed per
//! matrix as a Q4_K_M file mixes them) as a fixed sequence of wick's own kernels (`gpu::decode`) on
//! buffers allocated once, captured as one CUDA graph and replayed per token. The step is written
//! once for N sequences (`step`): the batch-1 engine ([`DecodeEngine`]) and the batch engine
//! (`batch`) run it at N = 1 and N <= 8. LoRA adapters stay unmerged in a pool of slots
//! (`adapters`), each sequence with its own slot: each projection group's mat-vec computes the
//! group's shrink in producer blocks and the expand in its epilogue (no launch of their own; the
//! step's argmax marks the shrinks' outputs pending for the next step).
//!
//! One step (token id and position in device memory, `state`):
//! ```text
//! x = embed(token)                                                    1 launch
//! per layer:  qkv = W_qkv rms_norm(x) (+ bias)                        5 launches per layer
//!             attn = attention(rope(q), rope(k) -> cache, v -> cache)  (the same with adapters)
//!             x += W_o attn
//!             act = silu(W_gate rms_norm(x)) * (W_up rms_norm(x))
//!             x += W_down act
//! logits = W_head rms_norm(x); (id, logprob) = argmax(logits)        2 launches
//! ```
//! Prefill of a prompt of at least [`BATCHED_PREFILL_MIN`] tokens runs batched inside the engine
//! ([`DecodeEngine::prefill`], `engine::prefill`): per layer the GGML blocks dequantized to f32 once,
//! every product one GEMM over the prompt (cuBLASLt, f32 on the TF32 tensor cores unless
//! [`DecodeEngine::use_prefill_tf32`]`(false)`), RoPE and the cache write for all
//! positions, causal attention of all queries; then the LM head on the last token. Shorter prompts run
//! the engine's step once per token. When the batched prefill fails, generation falls back to Candle's
//! batched forward (`Llama::forward` with a `KvCache`) and copies its keys and values into the engine
//! ([`DecodeEngine::load_prefix`]), with the reason logged.
//!
//! `WICK_CUDA_DECODE=candle` turns the engine off (generation then runs through Candle's ops and
//! QMatMul as before).

pub mod adapters;
pub mod batch;
/// The engines end to end against Candle on the CPU (`wick bench gpu-check`).
pub mod check;
pub mod engine;
/// Where the time of one decode step goes (`wick bench overhead`).
pub mod profile;
pub mod registry;
pub mod step;
pub mod step_graph;
pub mod weights;

pub use engine::DecodeEngine;
pub use registry::{attach, session_for, Session};

use crate::formats::config::DecoderConfig;

/// Positions the engine's KV cache holds at most (bounds the cache and the attention scratch).
pub const MAX_SEQ_CAP: usize = 8192;

/// Shortest prompt prefilled batched (the engine's prefill: ~300 launches whatever the length);
/// shorter ones step through the engine (one graph replay per token).
pub const BATCHED_PREFILL_MIN: usize = 8;

/// Whether the environment turned the engine off (`WICK_CUDA_DECODE=candle`).
pub fn disabled_by_env() -> bool {
    std::env::var("WICK_CUDA_DECODE").is_ok_and(|v| v.eq_ignore_ascii_case("candle"))
}

/// The shapes of one engine, from the model's config.
#[derive(Debug, Clone, Copy)]
pub struct EngineShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub eps: f32,
    /// Positions of the KV cache.
    pub max_seq: usize,
}

impl EngineShape {
    /// The shape for `cfg`, or why the engine cannot run it.
    pub fn new(cfg: &DecoderConfig) -> Result<Self, String> {
        let shape = Self {
            layers: cfg.num_hidden_layers,
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            ffn: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
            max_seq: cfg.max_position_embeddings.min(MAX_SEQ_CAP),
        };
        let q_out = shape.heads * shape.head_dim;
        for (what, k) in [
            ("hidden_size", shape.hidden),
            ("intermediate_size", shape.ffn),
            ("heads * head_dim", q_out),
        ] {
            if k % crate::gpu::decode::BLOCK != 0 {
                return Err(format!("{what} {k} is not a multiple of 32"));
            }
            if k > crate::gpu::decode::launch::MAX_MATVEC_K {
                return Err(format!(
                    "{what} {k} exceeds the mat-vec kernel's shared-memory limit"
                ));
            }
        }
        if shape.kv_heads == 0 || shape.heads % shape.kv_heads != 0 {
            return Err("heads not a multiple of kv heads".into());
        }
        if crate::gpu::decode::launch::attention_threads(shape.head_dim).is_none() {
            return Err(format!(
                "head_dim {} has no attention block size",
                shape.head_dim
            ));
        }
        Ok(shape)
    }

    /// The attention kernel's shape.
    pub fn attention(&self) -> crate::gpu::decode::reference::AttentionShape {
        crate::gpu::decode::reference::AttentionShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Rows of the fused q/k/v product.
    pub fn qkv_rows(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}
