//! Every device allocation of the engine, made once in `TrainEngine::new`, with its byte count.
//!
//! [`plan`] lists the buffers and their sizes without touching the device (so the memory of a shape
//! can be reported anywhere); [`Buffers::new`] allocates exactly that list. Activations saved for the
//! backward are one allocation per kind spanning every layer (`layer * tokens * width` apart); the
//! scratch is shared by the layers. T is the activation dtype (`e` bytes).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::DType;

use super::layout::{Dims, ParamLayout};
use crate::gpu::ptr::device_ptr;
use crate::gpu::train::reference::ADAMW_HYPER;
use crate::{Error, Result};

/// One named buffer and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSize {
    pub name: &'static str,
    pub bytes: usize,
}

/// Floats of the grad-norm reduction's partial sums.
fn partials(n: usize) -> usize {
    crate::gpu::train::launch::sum_squares_partials(n)
}

/// The engine's buffers for `dims` (largest bucket) and `layout`, T = `dtype`, LM head in chunks of
/// `loss_chunk` tokens. The order is the allocation order.
pub fn plan(dims: &Dims, layout: &ParamLayout, dtype: DType, loss_chunk: usize) -> Vec<BufferSize> {
    let e = dtype.size_in_bytes();
    let n = dims.max_tokens();
    let l = dims.layers;
    // Slots of the saved activations other than x: one shared by the checkpointed layers, one per
    // other layer; of g and u (ms): the MLP-recomputed layers share the checkpointed ones' too.
    let (ls, ms) = (dims.activation_slots().count(), dims.mlp_slots().count());
    let (d, f, qw, kw, r) = (
        dims.hidden,
        dims.ffn,
        dims.q_width(),
        dims.kv_width(),
        dims.rank,
    );
    let chunk = loss_chunk.min(n).max(1);
    let p = layout.total;
    let mut out = vec![
        // Saved for the backward, per layer (x: one more, the final norm's input).
        ("saved x (residual in)", (l + 1) * n * d * e),
        ("saved qh (rotated q, head-major)", ls * n * qw * e),
        ("saved kh (rotated k, head-major)", ls * n * kw * e),
        ("saved vh (v, head-major)", ls * n * kw * e),
        ("saved o (attention out, token-major)", ls * n * qw * e),
        ("saved h (residual after attention)", ls * n * d * e),
        ("saved g (gate)", ms * n * f * e),
        ("saved u (up)", ms * n * f * e),
        (
            "saved xa (x A^T per adapted projection)",
            layout.xa_rows(dims.checkpointed_layers) * n * r * e,
        ),
        ("saved rstd1, rstd2 (f32)", 2 * ls * n * 4),
        ("saved final norm out", n * d * e),
        ("saved final rstd (f32)", n * 4),
        // Scratch shared by the layers.
        // n1 / n2: written by the forward's norms, recomputed from the saved x / h and rstd in
        // the backward (bitwise the same: one kernel, same inputs) instead of saved per layer.
        (NORM_OUT, n * d * e),
        ("q / dq token-major", n * qw * e),
        ("k / dk token-major", n * kw * e),
        ("v / dv token-major", n * kw * e),
        ("oh / doh head-major", n * qw * e),
        ("dqh head-major", n * qw * e),
        ("dkh head-major", n * kw * e),
        ("dvh head-major", n * kw * e),
        ("do token-major", n * qw * e),
        ("swiglu out a", n * f * e),
        ("da", n * f * e),
        ("dg", n * f * e),
        ("du", n * f * e),
        ("dn (norm-output gradient)", n * d * e),
        ("dres (residual gradient)", n * d * e),
        ("dxa", n * r * e),
        ("logits chunk / its gradient", chunk * dims.vocab * e),
        ("row loss (f32)", n * 4),
        (
            "rope cos, sin (f32)",
            2 * dims.seq * (dims.head_dim / 2) * 4,
        ),
        // LoRA parameters (f32 masters, gradients, moments; T copy for the products).
        ("lora params (f32)", p * 4),
        ("lora grads (f32)", p * 4),
        ("adamw exp_avg (f32)", p * 4),
        ("adamw exp_avg_sq (f32)", p * 4),
        ("grad-norm partials (f32)", partials(p) * 4),
        // Inputs and scalars.
        ("ids (i32)", n * 4),
        ("labels (i32)", n * 4),
        ("scalars: count, scale, loss, gnorm^2 (f32)", 4 * 4),
        ("adamw hyper (f32)", ADAMW_HYPER * 4),
    ];
    if dims.flash_attention {
        // Fused attention: each layer's log-sum-exp for the backward, and its row dots D.
        let rows = dims.attention_rows();
        out.push((SAVED_LSE, ls * rows * 4));
        out.push((ATTENTION_DELTA, rows * 4));
    } else {
        // One chunk of the attention's (row, kv head) pairs at a time (`Dims::attention_chunks`).
        let scores = dims.attention_scratch();
        out.push((SCORES, scores * 4));
        out.push((PROBS, scores * e));
        out.push((DSCORES, scores * e));
    }
    if dtype != DType::F32 {
        out.push((PARAMS_T, p * e));
    }
    if layout.dropout > 0.0 {
        // LoRA dropout: one projection's dropped input (and, in the backward, its dxa A), and the
        // micro-batch's mask seed (u64).
        let widest = d.max(f).max(qw);
        out.push((DROPPED_INPUT, n * widest * e));
        out.push((DROPOUT_SEED, 8));
    }
    if dims.quantized_base {
        out.push((LAYER_WEIGHTS, super::weights::layer_scratch_elems(dims) * e));
    }
    out.into_iter()
        .map(|(name, bytes)| BufferSize { name, bytes })
        .collect()
}

fn alloc_err(what: &str, bytes: usize, e: impl std::fmt::Debug) -> Error {
    Error::Candle {
        context: format!("CUDA training engine: allocating {what} ({bytes} bytes)"),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

/// The allocations, with the raw address of each buffer (`ptr`, in [`plan`] order) and typed
/// handles on the ones the host writes or reads.
pub struct Buffers {
    pub sizes: Vec<BufferSize>,
    /// Raw addresses, same order as `sizes`.
    ptrs: Vec<u64>,
    _raw: Vec<CudaSlice<u8>>,
    pub params: CudaSlice<f32>,
    pub grads: CudaSlice<f32>,
    pub exp_avg: CudaSlice<f32>,
    pub exp_avg_sq: CudaSlice<f32>,
    pub ids: CudaSlice<i32>,
    pub labels: CudaSlice<i32>,
    pub scalars: CudaSlice<f32>,
    pub hyper: CudaSlice<f32>,
    /// cos then sin, f32 [seq, head_dim / 2] each.
    pub rope: CudaSlice<f32>,
    /// The bf16 copy of the parameters (bits), when T is bf16.
    pub params_t: Option<CudaSlice<u16>>,
    /// LoRA dropout's mask seed (a u64 as two i32, low half first), when the adapter has dropout.
    pub dropout_seed: Option<CudaSlice<i32>>,
}

/// The name of the T copy of the parameters in [`plan`] (only when T is not f32).
pub const PARAMS_T: &str = "lora params (T copy)";
/// LoRA dropout: an adapted projection's dropped input x * keep / (1 - p) (T [tokens, in]), reused
/// in its backward for dxa A before the mask.
pub const DROPPED_INPUT: &str = "lora dropout: dropped input / dxa A (T)";
/// LoRA dropout: the micro-batch's mask seed (u64), written by the host before each micro-batch.
pub const DROPOUT_SEED: &str = "lora dropout seed (u64)";
/// QLoRA: the layer at hand's seven projections dequantized from their blocks (T).
pub const LAYER_WEIGHTS: &str = "layer weights dequantized from the base's blocks";
/// The RMSNorm output n1 / n2 of the layer at hand (T [tokens, hidden]).
pub const NORM_OUT: &str = "norm out n1 / n2 (recomputed in the backward)";
/// Fused attention: each layer's log2-sum-exp of every query row (f32 [layers, B*H*S]).
pub const SAVED_LSE: &str = "saved attention lse (f32, base 2)";
/// Fused attention: the backward's D = rowsum(dO o) (f32 [B*H*S]).
pub const ATTENTION_DELTA: &str = "attention row dots D (f32)";
/// Unfused attention: the scores / dP scratch (f32), P and dS (T).
pub const SCORES: &str = "scores / dP (f32)";
pub const PROBS: &str = "P";
pub const DSCORES: &str = "dS";

/// Indices into [`scalars`](Buffers::scalars).
pub const SCALAR_COUNT: usize = 0;
pub const SCALAR_SCALE: usize = 1;
pub const SCALAR_LOSS: usize = 2;
pub const SCALAR_GNORM_SQ: usize = 3;

impl Buffers {
    /// Allocates every buffer of [`plan`] (zeroed) on `stream`.
    pub fn new(stream: &Arc<CudaStream>, sizes: Vec<BufferSize>) -> Result<Self> {
        let mut raw = Vec::new();
        let mut ptrs = Vec::with_capacity(sizes.len());
        let f32s = |name: &str, bytes: usize| -> Result<CudaSlice<f32>> {
            stream
                .alloc_zeros::<f32>((bytes / 4).max(1))
                .map_err(|e| alloc_err(name, bytes, e))
        };
        let i32s = |name: &str, bytes: usize| -> Result<CudaSlice<i32>> {
            stream
                .alloc_zeros::<i32>((bytes / 4).max(1))
                .map_err(|e| alloc_err(name, bytes, e))
        };
        let mut typed_f32: Vec<Option<CudaSlice<f32>>> =
            vec![None, None, None, None, None, None, None];
        let mut typed_i32: Vec<Option<CudaSlice<i32>>> = vec![None, None, None];
        let mut params_t = None;
        for s in &sizes {
            let f32_slot = match s.name {
                "lora params (f32)" => Some(0),
                "lora grads (f32)" => Some(1),
                "adamw exp_avg (f32)" => Some(2),
                "adamw exp_avg_sq (f32)" => Some(3),
                "scalars: count, scale, loss, gnorm^2 (f32)" => Some(4),
                "adamw hyper (f32)" => Some(5),
                "rope cos, sin (f32)" => Some(6),
                _ => None,
            };
            let i32_slot = match s.name {
                "ids (i32)" => Some(0),
                "labels (i32)" => Some(1),
                DROPOUT_SEED => Some(2),
                _ => None,
            };
            if s.name == PARAMS_T {
                // bf16 bits, so the host can read the copy back (checks).
                let b = stream
                    .alloc_zeros::<u16>((s.bytes / 2).max(1))
                    .map_err(|e| alloc_err(s.name, s.bytes, e))?;
                ptrs.push(device_ptr(&b, stream));
                params_t = Some(b);
            } else if let Some(i) = f32_slot {
                let b = f32s(s.name, s.bytes)?;
                ptrs.push(device_ptr(&b, stream));
                typed_f32[i] = Some(b);
            } else if let Some(i) = i32_slot {
                let b = i32s(s.name, s.bytes)?;
                ptrs.push(device_ptr(&b, stream));
                typed_i32[i] = Some(b);
            } else {
                let b = stream
                    .alloc_zeros::<u8>(s.bytes.max(1))
                    .map_err(|e| alloc_err(s.name, s.bytes, e))?;
                ptrs.push(device_ptr(&b, stream));
                raw.push(b);
            }
        }
        let mut take_f32 = |i: usize, what: &str| {
            typed_f32[i]
                .take()
                .ok_or_else(|| Error::InvalidRequest(format!("buffer plan lacks {what}")))
        };
        let params = take_f32(0, "params")?;
        let grads = take_f32(1, "grads")?;
        let exp_avg = take_f32(2, "exp_avg")?;
        let exp_avg_sq = take_f32(3, "exp_avg_sq")?;
        let scalars = take_f32(4, "scalars")?;
        let hyper = take_f32(5, "hyper")?;
        let rope = take_f32(6, "rope tables")?;
        let dropout_seed = typed_i32[2].take();
        let mut take_i32 = |i: usize, what: &str| {
            typed_i32[i]
                .take()
                .ok_or_else(|| Error::InvalidRequest(format!("buffer plan lacks {what}")))
        };
        Ok(Self {
            dropout_seed,
            ids: take_i32(0, "ids")?,
            labels: take_i32(1, "labels")?,
            sizes,
            ptrs,
            _raw: raw,
            params,
            grads,
            exp_avg,
            exp_avg_sq,
            scalars,
            hyper,
            rope,
            params_t,
        })
    }

    /// The raw address of the buffer named `name` (one of [`plan`]'s names; 0 if absent, which
    /// only the T copy of the parameters is for T = f32).
    pub fn ptr(&self, name: &str) -> u64 {
        self.sizes
            .iter()
            .position(|s| s.name == name)
            .map_or(0, |i| self.ptrs[i])
    }

    /// Bytes of every allocation together.
    pub fn total_bytes(&self) -> usize {
        self.sizes.iter().map(|s| s.bytes).sum()
    }
}
