//! [`DecodeEngine::prefill`]: the prompt through the engine in chunks of up to [`PREFILL_CHUNK`]
//! tokens, every matrix product as one GEMM over the chunk (cuBLASLt, `gpu::gemm`) on the layer's
//! GGML blocks dequantized to f32 once per chunk, keys and values written straight into the
//! engine's cache. A child module of `engine` (it drives the engine's private buffers).
//!
//! Precision: the products run on the TF32 tensor cores by default (f32 values rounded to a 10-bit
//! mantissa, f32 accumulation), the precision of llama.cpp's f16 prefill GEMMs with f32's range: at
//! SmolLM2-1.7B shapes the f32 GEMMs were 85% of a 512-token chunk, and TF32 cut them from 34.7 to
//! 5.9 ms on an H200 (bench/results/device-s10). [`DecodeEngine::use_prefill_tf32`]`(false)` (or
//! `WICK_PREFILL_TF32=0` when the prefill state is built, for `wick generate` / `wick serve`)
//! multiplies in full f32 instead: then the prefill's logits equal stepping the prompt token by
//! token up to the summation order (~1e-6 relative); with TF32 they differ by ~1e-3 relative
//! (`wick bench decode`: max |logit diff| ~1e-2 at 24 layers; `dec_engine_prefill` checks both).
//!
//! One chunk of n tokens at positions pos .. pos + n (kernels/prefill.cu, launchers
//! `gpu::decode::prefill`):
//! ```text
//! X = embed(ids)                                                     1 launch
//! per layer:  W = dequant(q/k/v | o | gate | up | down)     13 launches (10: kernel attention)
//!             QKV = rms_norm(X) W_qkv^T (+ bias)            (GEMM, bias: 1 launch)
//!             rope(Q) -> Qh [heads, n, d]; rope(K), V -> cache rows pos..pos+n
//!             A = causal_attention(Qh, cache 0..=pos+i)               4 launches (GEMM path)
//!             X += A W_o^T (+ bias)                         (GEMM, beta 1)
//!             GU = rms_norm(X) [W_gate | W_up]^T            (GEMM)
//!             X += (silu(G) * U) W_down^T                   (GEMM, beta 1)
//! ```
//! Attention (`gpu::decode::prefill`): the GEMM formulation (S = Qh K^T batched over kv heads, the
//! offset causal softmax in place, O = P V, O to token-major rows: 4 launches, 13 per layer) for
//! every chunk whose keys (pos + n) fit the scores scratch [heads, chunk, keys] f32: up to
//! [`GEMM_ATTENTION_MAX_KEYS`] keys and [`GEMM_ATTENTION_SCRATCH_BYTES`] (SmolLM2-135M, 9 heads:
//! 4096 keys, 75.5 MB); chunks with more keys, and every chunk after
//! [`DecodeEngine::use_prefill_attention_kernel`]`(true)`, use the one-kernel attention (rope rotates
//! Q in place; 10 launches per layer).
//! After the last chunk: logits = W_head rms_norm(X[n - 1]) (the decode step's `qmv`) and the greedy
//! (id, logprob) (`argmax`): 2 launches, so [`DecodeEngine::greedy`] / [`DecodeEngine::logits`] and
//! the following steps see what stepping the prompt would have left (up to the products' precision,
//! below).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{DType, Device};

use super::{DecodeEngine, ERR};
use crate::generate::cuda_decode::adapters::{Group, GROUPS};
use crate::generate::cuda_decode::EngineShape;
use crate::gpu::decode::launch::device_ptr;
use crate::gpu::decode::prefill::{
    gemm_attention_scores_len, prefill_query_tile, DequantSegment, PrefillKernels, DEQUANT_SEGMENTS,
};
use crate::gpu::decode::BLOCK;
use crate::gpu::gemm::{Gemm, GemmShape};
use crate::{Error, Result};

/// Most tokens one prefill chunk holds (the chunk buffers are sized for it, or for the cache when
/// smaller).
pub const PREFILL_CHUNK: usize = 512;

/// Most key positions (pos + n) for which a chunk's attention takes the GEMM path.
pub const GEMM_ATTENTION_MAX_KEYS: usize = 4096;

/// Most bytes of the GEMM attention's scores scratch; fewer keys when heads x chunk x keys f32
/// would exceed it.
pub const GEMM_ATTENTION_SCRATCH_BYTES: usize = 96 << 20;

/// Launches of one prefill chunk through `layers` layers: the embedding, then 13 per layer with the
/// GEMM attention (`gemm_attention`), 10 with the attention kernel; one more per bias
/// (`EngineWeights::bias_launches`).
pub fn launches_per_chunk(layers: usize, gemm_attention: bool) -> usize {
    1 + if gemm_attention { 13 } else { 10 } * layers
}

/// Tokens per prefill chunk for `shape`.
fn chunk_tokens(s: &EngineShape) -> usize {
    PREFILL_CHUNK.min(s.max_seq)
}

/// Most keys (pos + n) a chunk may have for the GEMM attention, for `shape` (0: never).
pub fn gemm_attention_keys(s: &EngineShape) -> usize {
    let chunk = chunk_tokens(s);
    // Rounded down to a multiple of 4 so rows of gemm_attention_ld(keys) floats stay in the budget.
    let by_bytes = GEMM_ATTENTION_SCRATCH_BYTES / (s.heads.max(1) * chunk.max(1) * 4) / 4 * 4;
    s.max_seq.min(GEMM_ATTENTION_MAX_KEYS).min(by_bytes)
}

/// The prefill's kernels, GEMM handle and chunk buffers (allocated on the first prefill).
pub(super) struct PrefillState {
    kernels: PrefillKernels,
    gemm: Arc<Gemm>,
    /// Tokens per chunk.
    chunk: usize,
    _owned: Vec<CudaSlice<f32>>,
    ids: CudaSlice<i32>,
    ids_ptr: u64,
    /// [chunk, hidden] residual stream.
    x: u64,
    /// [chunk, hidden] normalized rows.
    xn: u64,
    /// [chunk, qkv_rows] q | k | v per token.
    qkv: u64,
    /// [chunk, heads * head_dim] attention output.
    attn: u64,
    /// [chunk, 2 * ffn] gate | up.
    gu: u64,
    /// [chunk, ffn] SwiGLU output.
    act: u64,
    /// Most keys for the GEMM attention (0: none).
    gemm_keys: usize,
    /// [heads, chunk, d] rotated queries, then the attention output, head-major (GEMM attention).
    qh: u64,
    /// [heads, chunk, gemm_keys] scores and probabilities (GEMM attention).
    scores: u64,
    /// Every chunk through the attention kernel.
    kernel_attention: bool,
    /// The products on the TF32 tensor cores (the default) instead of in full f32.
    tf32: bool,
    /// [chunk, 3 rank] x A^T of the chunk's tokens for an adapter's group (allocated for the
    /// first prefill with an adapter, at the pool's rank).
    lora_xa: Option<CudaSlice<f32>>,
    /// One layer's weights in f32: qkv [qkv_rows, hidden] | o [hidden, qd] | gate, up [ffn, hidden]
    /// | down [hidden, ffn].
    w: u64,
}

/// Element offsets of the matrices in the dequantized layer buffer.
struct LayerOffsets {
    o: usize,
    gate: usize,
    down: usize,
    total: usize,
}

fn layer_offsets(s: &EngineShape) -> LayerOffsets {
    let (h, qd) = (s.hidden, s.heads * s.head_dim);
    let o = s.qkv_rows() * h;
    let gate = o + h * qd;
    let down = gate + 2 * s.ffn * h;
    LayerOffsets {
        o,
        gate,
        down,
        total: down + h * s.ffn,
    }
}

impl PrefillState {
    /// Whether a chunk of `n` tokens at `pos` takes the GEMM attention.
    fn gemm_attention(&self, pos: usize, n: usize) -> bool {
        !self.kernel_attention && pos + n <= self.gemm_keys
    }

    fn new(engine: &DecodeEngine) -> Result<Self> {
        let Device::Cuda(dev) = &engine.device else {
            return Err(Error::InvalidRequest(
                "the engine's prefill needs a CUDA device".into(),
            ));
        };
        let s = engine.shape;
        if prefill_query_tile(s.attention()).is_none() {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine prefill: {} query heads of dim {} per kv head exceed the attention kernel's shared memory",
                s.heads / s.kv_heads,
                s.head_dim
            )));
        }
        let kernels = PrefillKernels::load(dev).map_err(ERR.launch("(loading prefill kernels)"))?;
        let gemm = Gemm::for_device(dev).map_err(ERR.launch("(creating the GEMM handle)"))?;
        let stream = kernels.stream().clone();
        let chunk = chunk_tokens(&s);
        let (h, qd) = (s.hidden, s.heads * s.head_dim);
        let gemm_keys = gemm_attention_keys(&s);
        let scores_len = gemm_attention_scores_len(s.attention(), chunk, gemm_keys);
        let alloc = |n: usize, what: &str| -> Result<CudaSlice<f32>> {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| ERR.driver(what, e))
        };
        let owned = vec![
            alloc(chunk * h, "prefill x")?,
            alloc(chunk * h, "prefill normalized x")?,
            alloc(chunk * s.qkv_rows(), "prefill qkv")?,
            alloc(chunk * qd, "prefill attention output")?,
            alloc(chunk * 2 * s.ffn, "prefill gate/up")?,
            alloc(chunk * s.ffn, "prefill activation")?,
            alloc(layer_offsets(&s).total, "prefill layer weights")?,
            alloc(
                if gemm_keys > 0 { chunk * qd } else { 1 },
                "prefill head-major q",
            )?,
            alloc(scores_len.max(1), "prefill attention scores")?,
        ];
        let ids = stream
            .alloc_zeros::<i32>(chunk)
            .map_err(|e| ERR.driver("prefill ids", e))?;
        let p: Vec<u64> = owned.iter().map(|b| device_ptr(b, &stream)).collect();
        tracing::info!(
            "CUDA decode engine prefill: chunks of {chunk} tokens, GEMM attention up to {gemm_keys} keys, {:.1} MB of buffers",
            owned.iter().map(|b| b.len() * 4).sum::<usize>() as f64 / 1e6
        );
        Ok(Self {
            kernels,
            gemm,
            chunk,
            ids_ptr: device_ptr(&ids, &stream),
            ids,
            x: p[0],
            xn: p[1],
            qkv: p[2],
            attn: p[3],
            gu: p[4],
            act: p[5],
            w: p[6],
            gemm_keys,
            qh: p[7],
            scores: p[8],
            kernel_attention: false,
            // WICK_PREFILL_TF32=0: full f32 products (a prefill that matches stepping to ~1e-6).
            tf32: !std::env::var("WICK_PREFILL_TF32").is_ok_and(|v| v == "0"),
            lora_xa: None,
            _owned: owned,
        })
    }
}

impl PrefillState {
    /// `shape` (f32) on the TF32 tensor cores when the prefill runs in TF32.
    fn precision(&self, shape: GemmShape) -> GemmShape {
        GemmShape {
            tf32: self.tf32,
            ..shape
        }
    }

    /// Y [n, out] = X [n, k] W^T (W stored [out, k], as the weights), plus Y when `accumulate`.
    fn linear(
        &self,
        (x, w, y): (u64, u64, u64),
        (n, k, out): (usize, usize, usize),
        accumulate: bool,
        what: &'static str,
    ) -> Result<()> {
        let shape = GemmShape::contiguous((n, out, k), (false, true), DType::F32, DType::F32);
        self.gemm
            .run(
                &self.precision(shape),
                x,
                w,
                y,
                1.0,
                if accumulate { 1.0 } else { 0.0 },
            )
            .map_err(ERR.launch(what))
    }
}

impl DecodeEngine {
    /// Runs the prompt `tokens` at positions `position() ..` through the engine in batched chunks
    /// (see `generate::cuda_decode::prefill`): keys and values land in the cache, the position
    /// advances by `tokens.len()`, and the logits and greedy result are those of the last token, as
    /// if [`DecodeEngine::step`] had run once per token (up to the TF32 rounding of the products,
    /// see the module comment). Asynchronous like `step`.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        let s = self.shape;
        if tokens.is_empty() {
            return Err(Error::InvalidRequest(
                "CUDA decode engine: prefill of an empty prompt".into(),
            ));
        }
        if self.pos + tokens.len() > s.max_seq {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine: {} cached + {} prompt positions exceed its cache of {}",
                self.pos,
                tokens.len(),
                s.max_seq
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= s.vocab) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                s.vocab
            )));
        }
        self.prefill_state()?;
        let Some(mut p) = self.prefill.take() else {
            return Err(Error::InvalidRequest(
                "CUDA decode engine: prefill state missing".into(),
            ));
        };
        let result = self.prefill_chunks(&mut p, tokens);
        self.prefill = Some(p);
        result
    }

    /// Launches of one chunk of this engine's model (its biases and the adapter's products
    /// included).
    fn chunk_launches(&self, gemm_attention: bool) -> usize {
        // Per layer and group, `prefill_lora`'s shrink and one expand per xa segment.
        let lora = if self.adapter.is_some() {
            let per_layer: usize = GROUPS.iter().map(|g| 1 + g.projections().len()).sum();
            per_layer * self.shape.layers
        } else {
            0
        };
        launches_per_chunk(self.shape.layers, gemm_attention) + self.weights.bias_launches() + lora
    }

    /// Launches of a prefill of `tokens` prompt tokens from an empty cache (position 0).
    pub fn prefill_launches(&self, tokens: usize) -> usize {
        let s = &self.shape;
        let chunk = chunk_tokens(s);
        let keys = match &self.prefill {
            Some(p) if p.kernel_attention => 0,
            _ => gemm_attention_keys(s),
        };
        let mut pos = 0;
        let mut launches = 2;
        while pos < tokens {
            let n = chunk.min(tokens - pos);
            launches += self.chunk_launches(pos + n <= keys);
            pos += n;
        }
        launches
    }

    /// Every later prefill chunk through the one-kernel attention (`on`), or back to the GEMM
    /// attention where its scratch holds the chunk's keys (the default). Builds the prefill state
    /// (kernels, buffers) when there is none yet.
    pub fn use_prefill_attention_kernel(&mut self, on: bool) -> Result<()> {
        self.prefill_state()?.kernel_attention = on;
        Ok(())
    }

    /// Every later prefill's products on the TF32 tensor cores (`on`, the default) or in full f32
    /// (see the module comment for what each gives). Builds the prefill state when there is none.
    pub fn use_prefill_tf32(&mut self, on: bool) -> Result<()> {
        self.prefill_state()?.tf32 = on;
        Ok(())
    }

    /// The prefill state, built (kernels, buffers) when there is none yet.
    fn prefill_state(&mut self) -> Result<&mut PrefillState> {
        if self.prefill.is_none() {
            self.prefill = Some(PrefillState::new(self)?);
        }
        self.prefill
            .as_mut()
            .ok_or_else(|| Error::InvalidRequest("prefill state missing".into()))
    }

    fn prefill_chunks(&mut self, p: &mut PrefillState, tokens: &[u32]) -> Result<()> {
        let stream = self.kernels.stream().clone();
        if let (Some(pool), Some(_)) = (&self.adapters, self.adapter) {
            let need = p.chunk * 3 * pool.rank();
            if p.lora_xa.as_ref().is_none_or(|b| b.len() < need) {
                p.lora_xa = Some(
                    stream
                        .alloc_zeros::<f32>(need)
                        .map_err(|e| ERR.driver("prefill adapter x A^T", e))?,
                );
            }
        }
        let chunks: Vec<&[u32]> = tokens.chunks(p.chunk).collect();
        let last_n = chunks.last().map_or(0, |c| c.len());
        for chunk in chunks {
            let ids: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
            let mut dst = p.ids.slice_mut(0..ids.len());
            stream
                .memcpy_htod(&ids, &mut dst)
                .map_err(|e| ERR.driver("writing prompt ids", e))?;
            self.launch_prefill_chunk(p, ids.len(), &mut |_| Ok(()))?;
            self.pos += ids.len();
        }
        // Logits and greedy result of the last prompt token, as the step leaves them.
        let (w, b, h) = (&self.weights, &self.buffers, self.shape.hidden);
        let head = w.head();
        let last_row = p.x + ((last_n - 1) * h * 4) as u64;
        let final_norm = w.norms_ptr + (2 * self.shape.layers * h * 4) as u64;
        self.kernels
            .qmv(
                head.quant,
                head.ptr,
                last_row,
                final_norm,
                b.logits_ptr,
                self.shape.vocab,
                h,
                self.shape.eps,
                false,
                &crate::gpu::decode::launch::Epilogue::NONE,
            )
            .map_err(ERR.launch("prefill lm_head"))?;
        self.kernels
            .argmax(b.logits_ptr, self.shape.vocab, b.result_ptr, 0)
            .map_err(ERR.launch("prefill argmax"))?;
        Ok(())
    }

    /// The adapter's group `g` of `layer` on the chunk's `n` rows, when the sequence has one:
    /// xa = X_in A^T (one GEMM), then Y[:, segment rows] += xa[:, segment] B_segment^T (one GEMM per
    /// segment, beta 1; B is pre-scaled): the same delta the step's epilogue adds, for every token.
    /// `y` holds rows of `ldy` floats.
    #[allow(clippy::too_many_arguments)]
    fn prefill_lora(
        &self,
        p: &PrefillState,
        (layer, g): (usize, Group),
        x_in: u64,
        (y, ldy): (u64, usize),
        n: usize,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        let (Some(pool), Some(slot)) = (&self.adapters, self.adapter) else {
            return Ok(());
        };
        let xa = p
            .lora_xa
            .as_ref()
            .map(|b| device_ptr(b, self.kernels.stream()))
            .ok_or_else(|| Error::InvalidRequest("prefill adapter scratch missing".into()))?;
        let sg = pool.slot_group(layer, g, slot);
        p.linear(
            (x_in, sg.a, xa),
            (n, sg.k, sg.a_rows),
            false,
            "prefill adapter shrink",
        )?;
        mark("lora")?;
        for (j, &(row0, rows)) in sg.segments.iter().enumerate() {
            let shape = p.precision(GemmShape {
                lda: sg.a_rows,
                ldd: ldy,
                ..GemmShape::contiguous((n, rows, sg.rank), (false, true), DType::F32, DType::F32)
            });
            let a = xa + (j * sg.rank * 4) as u64;
            let b = sg.b + (row0 * sg.rank * 4) as u64;
            p.gemm
                .run(&shape, a, b, y + (row0 * 4) as u64, 1.0, 1.0)
                .map_err(ERR.launch("prefill adapter expand"))?;
            mark("lora")?;
        }
        Ok(())
    }

    /// The launches of one chunk of `n` tokens (ids already in `p.ids`) at position `self.pos`,
    /// calling `mark(kind)` after each (the profile's events).
    fn launch_prefill_chunk(
        &self,
        p: &PrefillState,
        n: usize,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        let (k, s, b, w) = (&p.kernels, &self.shape, &self.buffers, &self.weights);
        let (h, qd, eps) = (s.hidden, s.heads * s.head_dim, s.eps);
        let off = layer_offsets(s);
        let wp = |elems: usize| p.w + (elems * 4) as u64;
        let norm = |i: usize| w.norms_ptr + (i * h * 4) as u64;
        let cache_layer = (s.max_seq * s.kv_heads * s.head_dim * 4) as u64;
        let attention = s.attention();
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let gemm_attention = p.gemm_attention(self.pos, n);
        k.embed_rows(w.embed.quant, w.embed.ptr, p.ids_ptr, p.x, n, h)
            .map_err(ERR.launch("prefill embed"))?;
        mark("embed")?;
        for (i, l) in w.layers.iter().enumerate() {
            dequant_layer(k, l, p.w)?;
            mark("dequant")?;
            k.rms_rows(p.x, norm(2 * i), p.xn, n, h, eps)
                .map_err(ERR.launch("prefill input norm"))?;
            mark("rms_norm")?;
            p.linear(
                (p.xn, wp(0), p.qkv),
                (n, h, s.qkv_rows()),
                false,
                "prefill qkv",
            )?;
            mark("gemm q/k/v")?;
            self.prefill_lora(p, (i, Group::Qkv), p.xn, (p.qkv, s.qkv_rows()), n, mark)?;
            if l.qkv_bias_ptr != 0 {
                k.add_bias_rows(p.qkv, l.qkv_bias_ptr, n, s.qkv_rows())
                    .map_err(ERR.launch("prefill q/k/v bias"))?;
                mark("bias")?;
            }
            let (kc, vc) = (
                b.k_cache + i as u64 * cache_layer,
                b.v_cache + i as u64 * cache_layer,
            );
            let qh = if gemm_attention { p.qh } else { 0 };
            k.rope_kv_rows(p.qkv, kc, vc, w.inv_freq_ptr, qh, self.pos, n, attention)
                .map_err(ERR.launch("prefill rope + cache write"))?;
            mark("rope + kv write")?;
            if gemm_attention {
                k.attention_gemm(
                    &p.gemm,
                    (p.qh, kc, vc),
                    (p.scores, p.attn),
                    self.pos,
                    n,
                    attention,
                    (scale, p.tf32),
                    &mut |kind| {
                        mark(kind).map_err(|e| candle_core::Error::Msg(format!("profile: {e}")))
                    },
                )
                .map_err(ERR.launch("prefill GEMM attention"))?;
            } else {
                k.attention(p.qkv, kc, vc, p.attn, self.pos, n, attention, scale)
                    .map_err(ERR.launch("prefill attention"))?;
                mark("attention")?;
            }
            p.linear((p.attn, wp(off.o), p.x), (n, qd, h), true, "prefill o_proj")?;
            mark("gemm o_proj (+x)")?;
            self.prefill_lora(p, (i, Group::O), p.attn, (p.x, h), n, mark)?;
            if l.o_bias_ptr != 0 {
                k.add_bias_rows(p.x, l.o_bias_ptr, n, h)
                    .map_err(ERR.launch("prefill o_proj bias"))?;
                mark("bias")?;
            }
            self.prefill_mlp(p, i, n, mark)?;
        }
        Ok(())
    }

    /// Layer `i`'s MLP on the chunk's n rows (the layer's weights already dequantized in `p.w`):
    /// X += (silu(G) * U) W_down^T with GU = rms_norm(X) [W_gate | W_up]^T, adapter included.
    fn prefill_mlp(
        &self,
        p: &PrefillState,
        i: usize,
        n: usize,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        let (k, s, w) = (&p.kernels, &self.shape, &self.weights);
        let (h, ffn) = (s.hidden, s.ffn);
        let off = layer_offsets(s);
        let wp = |elems: usize| p.w + (elems * 4) as u64;
        let norm = w.norms_ptr + ((2 * i + 1) * h * 4) as u64;
        k.rms_rows(p.x, norm, p.xn, n, h, s.eps)
            .map_err(ERR.launch("prefill post-attention norm"))?;
        mark("rms_norm")?;
        p.linear(
            (p.xn, wp(off.gate), p.gu),
            (n, h, 2 * ffn),
            false,
            "prefill gate/up",
        )?;
        mark("gemm gate/up")?;
        self.prefill_lora(p, (i, Group::GateUp), p.xn, (p.gu, 2 * ffn), n, mark)?;
        k.swiglu_rows(p.gu, p.act, n, ffn)
            .map_err(ERR.launch("prefill swiglu"))?;
        mark("swiglu")?;
        p.linear(
            (p.act, wp(off.down), p.x),
            (n, ffn, h),
            true,
            "prefill down_proj",
        )?;
        mark("gemm down_proj (+x)")?;
        self.prefill_lora(p, (i, Group::Down), p.act, (p.x, h), n, mark)
    }
}

/// Dequantizes one layer's matrices to f32, consecutive from `dst`: q/k/v (1 or 3 matrices), o,
/// gate, up, down; a launch takes at most DEQUANT_SEGMENTS of them (a split q/k/v needs two).
fn dequant_layer(
    kernels: &PrefillKernels,
    layer: &crate::generate::cuda_decode::weights::LayerWeights,
    mut dst: u64,
) -> Result<()> {
    let blocks = |m: &super::DeviceMatrix| m.rows * m.cols / BLOCK;
    let segments: Vec<DequantSegment> = layer
        .qkv
        .iter()
        .chain([&layer.o, &layer.gate, &layer.up, &layer.down])
        .map(|m| (m.ptr, m.quant, blocks(m)))
        .collect();
    for part in segments.chunks(DEQUANT_SEGMENTS) {
        kernels
            .dequant_layer(dst, candle_core::DType::F32, part)
            .map_err(ERR.launch("prefill dequant"))?;
        dst += part.iter().map(|s| (s.2 * BLOCK * 4) as u64).sum::<u64>();
    }
    Ok(())
}

/// GPU time of one kernel kind in a profiled prefill chunk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrefillKindTime {
    /// "dequant", "gemm q/k/v", "attention", ... (the marks of the chunk's launch sequence).
    pub kind: String,
    /// Launches of this kind in the chunk.
    pub launches: usize,
    /// GPU microseconds spent in this kind.
    pub gpu_us: f64,
}

/// GPU cycles of the spin kernel queued before a profiled chunk (~10 ms at 1.98 GHz): longer than
/// the host takes to issue ~300 launches with an event after each, so the events time the GPU.
const PROFILE_SPIN_CYCLES: i64 = 20_000_000;

impl DecodeEngine {
    /// Prefills `tokens` (at most one chunk, from position 0) with a CUDA event after every launch,
    /// queued behind a spin kernel, and returns the GPU time per kernel kind (launch order of first
    /// appearance) and the chunk's total GPU time in microseconds. Leaves the engine as
    /// [`DecodeEngine::prefill`] would, except for the logits (not computed: call `prefill` again).
    pub fn profile_prefill(&mut self, tokens: &[u32]) -> Result<(Vec<PrefillKindTime>, f64)> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        let Device::Cuda(dev) = self.device.clone() else {
            return Err(Error::InvalidRequest(
                "the engine's prefill needs a CUDA device".into(),
            ));
        };
        self.reset();
        // Validates, builds the state, warms the GEMM plans for this length.
        self.prefill(tokens)?;
        self.reset();
        let Some(mut p) = self.prefill.take() else {
            return Err(Error::InvalidRequest(
                "CUDA decode engine: prefill state missing".into(),
            ));
        };
        let result = (|| -> Result<(Vec<PrefillKindTime>, f64)> {
            if tokens.len() > p.chunk {
                return Err(Error::InvalidRequest(format!(
                    "profile_prefill: {} tokens exceed one chunk of {}",
                    tokens.len(),
                    p.chunk
                )));
            }
            let stream = self.kernels.stream().clone();
            let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
            let mut dst = p.ids.slice_mut(0..ids.len());
            stream
                .memcpy_htod(&ids, &mut dst)
                .map_err(|e| ERR.driver("writing prompt ids", e))?;
            let launches = self.chunk_launches(p.gemm_attention(0, tokens.len()));
            let events = (0..=launches)
                .map(|_| {
                    stream
                        .context()
                        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                        .map_err(|e| ERR.driver("event", e))
                })
                .collect::<Result<Vec<_>>>()?;
            stream.synchronize().map_err(|e| ERR.driver("sync", e))?;
            crate::gpu::small_matmul::spin(&dev, PROFILE_SPIN_CYCLES)?;
            events[0]
                .record(&stream)
                .map_err(|e| ERR.driver("record", e))?;
            let mut order: Vec<&'static str> = Vec::with_capacity(launches);
            self.launch_prefill_chunk(&p, ids.len(), &mut |kind| {
                let e = events.get(order.len() + 1).ok_or_else(|| {
                    Error::InvalidRequest("profile_prefill: more launches than events".into())
                })?;
                e.record(&stream).map_err(|e| ERR.driver("record", e))?;
                order.push(kind);
                Ok(())
            })?;
            stream.synchronize().map_err(|e| ERR.driver("sync", e))?;
            let mut kinds: Vec<PrefillKindTime> = Vec::new();
            for (i, kind) in order.iter().enumerate() {
                let us = events[i]
                    .elapsed_ms(&events[i + 1])
                    .map_err(|e| ERR.driver("elapsed", e))? as f64
                    * 1e3;
                match kinds.iter_mut().find(|k| k.kind == *kind) {
                    Some(k) => {
                        k.launches += 1;
                        k.gpu_us += us;
                    }
                    None => kinds.push(PrefillKindTime {
                        kind: kind.to_string(),
                        launches: 1,
                        gpu_us: us,
                    }),
                }
            }
            let total = events[0]
                .elapsed_ms(&events[order.len()])
                .map_err(|e| ERR.driver("elapsed", e))? as f64
                * 1e3;
            Ok((kinds, total))
        })();
        self.prefill = Some(p);
        self.pos = if result.is_ok() { tokens.len() } else { 0 };
        result
    }
}
