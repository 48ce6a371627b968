//! The forward half of a micro-batch: embedding, the decoder layers (saving what the backward
//! reads), the final norm. Per layer, with x the residual [N, D]:
//! ```text
//! n1 = rms_norm(x)                          (rstd1 saved; n1 recomputed in the backward)
//! q, k, v = n1 W^T (+ b) + s (n1 A^T) B^T   (xa = n1 A^T saved per adapted projection; b the
//!                                           frozen bias, Qwen2's, added in place after the product)
//! qh, kh, vh = rope_scatter(q, k, v)        (head-major, rotated)
//! scores = qh kh^T (f32) -> P = causal_softmax(scale * scores) -> oh = P vh   (batched over B*Hkv,
//!                                           in chunks of pairs that fit the scratch; or fused:
//!                                           kernels/flash_attention.cu, lse2 saved)
//! o = heads_to_tokens(oh)
//! h = x + o Wo^T (+ bo) + s (o Ao^T) Bo^T   (residual in the GEMM's epilogue)
//! n2 = rms_norm(h) (rstd2 saved; n2 recomputed); g, u = n2 Wg^T, n2 Wu^T (+ LoRA); a = swiglu(g, u)
//!                                           (g, u saved, or recomputed by an MLP-recomputed
//!                                           layer's backward)
//! x' = h + a Wd^T + s (a Ad^T) Bd^T
//! ```

use candle_core::DType;

use super::launcher::Launcher;
use super::layout::{DOWN, GATE, K, O, Q, UP, V};
use super::ERR;
use crate::gpu::gemm::GemmShape;
use crate::gpu::train::reference::HeadShape;
use crate::Result;

impl Launcher<'_> {
    /// The (in, out) features of projection `proj`.
    pub(super) fn proj_dims(&self, proj: usize) -> (usize, usize) {
        let d = self.dims;
        match proj {
            Q => (d.hidden, d.q_width()),
            K | V => (d.hidden, d.kv_width()),
            O => (d.q_width(), d.hidden),
            GATE | UP => (d.hidden, d.ffn),
            _ => (d.ffn, d.hidden),
        }
    }

    /// A T-typed contiguous product.
    pub(super) fn shape(&self, mnk: (usize, usize, usize), trans: (bool, bool)) -> GemmShape {
        GemmShape::contiguous(mnk, trans, self.t, self.t)
    }

    /// A product of T inputs into an f32 output (LoRA gradients, attention scores).
    pub(super) fn shape_f32(&self, mnk: (usize, usize, usize), trans: (bool, bool)) -> GemmShape {
        GemmShape::contiguous(mnk, trans, self.t, DType::F32)
    }

    /// y [n, out] = x W^T (+ residual) (+ b) + s (x A^T) B^T, saving xa = x A^T when the
    /// projection is adapted; b is the frozen bias where the projection has one. x: [n, in].
    pub(super) fn linear(
        &self,
        n: usize,
        layer: usize,
        proj: usize,
        x: u64,
        y: u64,
        residual: Option<u64>,
    ) -> Result<()> {
        let (inp, out) = self.proj_dims(proj);
        let w = self.weights.layers[layer].proj[proj];
        let base = self.shape((n, out, inp), (false, true));
        match residual {
            Some(c) => self.mm_c("base projection + residual", &base, x, w, c, y, 1.0, 1.0)?,
            None => self.mm("base projection", &base, x, w, y, 1.0, 0.0)?,
        }
        let bias = self.weights.layers[layer].bias[proj];
        if bias != 0 {
            launch!(self, "add_bias", self.k.add_bias(y, bias, n, out));
        }
        if let Some(lora) = self.lora(layer, proj) {
            let r = self.dims.rank;
            let x = self.dropped_input(n, layer, proj, x)?;
            let xa = self.shape((n, r, inp), (false, true));
            self.mm("x A^T", &xa, x, lora.a_t, lora.xa, 1.0, 0.0)?;
            let up = self.shape((n, out, r), (false, true));
            self.mm(
                "s xa B^T",
                &up,
                lora.xa,
                lora.b_t,
                y,
                self.layout.scale,
                1.0,
            )?;
        }
        Ok(())
    }

    /// The LoRA branch's input of projection `proj` of `layer`: x itself, or with LoRA dropout
    /// x * keep / (1 - p) written to the dropped-input scratch (the mask of this projection and
    /// micro-batch, `reference::lora_dropout`; the backward draws it again).
    pub(super) fn dropped_input(&self, n: usize, layer: usize, proj: usize, x: u64) -> Result<u64> {
        if self.layout.dropout <= 0.0 {
            return Ok(x);
        }
        let out = self.ptrs.dropped;
        self.lora_dropout((layer, proj), n, (x, out), false)?;
        Ok(out)
    }

    /// y (=, or += when `accumulate`) x * keep / (1 - p) over [n, in] of projection `proj` of
    /// `layer`: the mask of that projection and this micro-batch (`reference::lora_dropout`).
    pub(super) fn lora_dropout(
        &self,
        (layer, proj): (usize, usize),
        n: usize,
        (x, y): (u64, u64),
        accumulate: bool,
    ) -> Result<()> {
        let (inp, _) = self.proj_dims(proj);
        let shape = (n, inp, n / self.dims.batch);
        // Independent masks per projection: its index in `Llama::linear_layers`, as
        // `models::seeded_dropout` numbers Candle's.
        let stream = (layer * 7 + proj) as u32;
        let (seed, p) = (self.ptrs.dropout_seed, self.layout.dropout);
        launch!(
            self,
            "lora dropout",
            self.k
                .lora_dropout(x, y, shape, seed, stream, p, accumulate)
        );
        Ok(())
    }

    /// Byte offsets of the first of `first` (row, kv head) pairs in the head-major buffers at `s`
    /// positions: (qh and oh [pairs, G*S, d], kh and vh [pairs, S, d]).
    pub(super) fn pair_offsets(&self, s: usize, first: usize) -> (u64, u64) {
        let (d, e) = (self.dims, self.t.size_in_bytes());
        let kv = first * s * d.head_dim * e;
        ((kv * d.groups()) as u64, kv as u64)
    }

    /// Scores and P of one layer's attention for the `pairs` (row, kv head) pairs from `first`,
    /// from its saved qh, kh into the scratch (pair `first` at its start): scores = qh kh^T (f32),
    /// P = causal_softmax(scale * scores).
    pub(super) fn attention_probs(
        &self,
        s: usize,
        layer: usize,
        (first, pairs): (usize, usize),
    ) -> Result<()> {
        let (d, p) = (self.dims, self.ptrs);
        let (g, hd) = (d.groups(), d.head_dim);
        let scores = self.shape_f32((g * s, s, hd), (false, true)).batched(
            pairs,
            g * s * hd,
            s * hd,
            g * s * s,
        );
        let (q_off, kv_off) = self.pair_offsets(s, first);
        let (qh, kh) = (
            p.saved(p.qh, layer, d.q_width()) + q_off,
            p.saved(p.kh, layer, d.kv_width()) + kv_off,
        );
        self.mm("attention scores", &scores, qh, kh, p.scores, 1.0, 0.0)?;
        // Each chunk starts at a whole [G*S, S] block, so row r's query position is still r % S.
        let rows = pairs * g * s;
        let scale = 1.0 / (hd as f32).sqrt();
        launch!(
            self,
            "causal_softmax",
            self.k.causal_softmax(p.scores, p.probs, rows, s, scale)
        );
        Ok(())
    }

    /// The shape of the fused attention at `s` positions.
    pub(super) fn flash_shape(&self, s: usize) -> HeadShape {
        let d = self.dims;
        HeadShape {
            batch: d.batch,
            seq: s,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
        }
    }

    /// One layer's attention output oh (head-major): fused (saving the layer's lse2), or
    /// oh = P vh chunk by chunk of (row, kv head) pairs.
    fn attention(&self, s: usize, layer: usize) -> Result<()> {
        let (d, p) = (self.dims, self.ptrs);
        let (g, hd) = (d.groups(), d.head_dim);
        let vh = p.saved(p.vh, layer, d.kv_width());
        if let Some(fa) = self.flash {
            let (qh, kh) = (
                p.saved(p.qh, layer, d.q_width()),
                p.saved(p.kh, layer, d.kv_width()),
            );
            let lse = p.lse(layer, d.attention_rows());
            launch!(
                self,
                "flash attention",
                fa.forward(qh, kh, vh, p.oh, lse, self.flash_shape(s))
            );
            return Ok(());
        }
        for chunk in d.attention_chunks(s) {
            self.attention_probs(s, layer, chunk)?;
            let (q_off, kv_off) = self.pair_offsets(s, chunk.0);
            let pv = self.shape((g * s, hd, s), (false, false)).batched(
                chunk.1,
                g * s * s,
                s * hd,
                g * s * hd,
            );
            self.mm("P v", &pv, p.probs, vh + kv_off, p.oh + q_off, 1.0, 0.0)?;
        }
        Ok(())
    }

    /// Forward of decoder layer `layer` for a bucket of `s` positions, from its saved input x
    /// into `next` (x of the next layer), saving what its backward reads. The backward of an engine
    /// with activation checkpointing runs it again with `next` pointing at a scratch.
    pub(super) fn layer_forward(&self, s: usize, layer: usize, next: u64) -> Result<()> {
        let (d, p, k) = (self.dims, self.ptrs, self.k);
        let n = d.batch * s;
        let (dm, qw, kw, hd) = (d.hidden, d.q_width(), d.kv_width(), d.head_dim);
        let lw = &self.weights.layers[layer];
        self.dequantize_layer(layer)?;
        let x = p.residual(layer);
        let n1 = p.norm;
        let (rstd1, rstd2) = p.rstd(layer);
        launch!(
            self,
            "rms_norm (input)",
            k.rms_norm(x, lw.input_norm, n1, rstd1, n, dm, d.eps)
        );
        self.linear(n, layer, Q, n1, p.q, None)?;
        self.linear(n, layer, K, n1, p.k, None)?;
        self.linear(n, layer, V, n1, p.v, None)?;
        let (qh, kh, vh) = (
            p.saved(p.qh, layer, qw),
            p.saved(p.kh, layer, kw),
            p.saved(p.vh, layer, kw),
        );
        launch!(
            self,
            "rope_scatter",
            k.rope_scatter(
                p.q, p.k, p.v, p.cos, p.sin, qh, kh, vh, d.batch, s, d.heads, d.kv_heads, hd
            )
        );
        self.attention(s, layer)?;
        let o = p.saved(p.o, layer, qw);
        launch!(
            self,
            "heads_to_tokens",
            k.heads_to_tokens(p.oh, o, d.batch, s, d.heads, d.kv_heads, hd)
        );
        let h = p.saved(p.h, layer, dm);
        self.linear(n, layer, O, o, h, Some(x))?;
        let n2 = p.norm;
        launch!(
            self,
            "rms_norm (post-attention)",
            k.rms_norm(h, lw.post_norm, n2, rstd2, n, dm, d.eps)
        );
        let (gate, up) = p.saved_mlp(layer, d.ffn);
        self.linear(n, layer, GATE, n2, gate, None)?;
        self.linear(n, layer, UP, n2, up, None)?;
        launch!(self, "swiglu", k.swiglu(gate, up, p.act, n * d.ffn));
        self.linear(n, layer, DOWN, p.act, next, Some(h))?;
        Ok(())
    }

    /// Forward of every layer and the final norm for a bucket of `s` positions (ids already
    /// uploaded); leaves the final norm's output in `nf`.
    pub(super) fn forward(&self, s: usize) -> Result<()> {
        let (d, p, k) = (self.dims, self.ptrs, self.k);
        let n = d.batch * s;
        let dm = d.hidden;
        let x0 = p.residual(0);
        launch!(self, "embed", k.embed(self.weights.embed, p.ids, x0, n, dm));
        for layer in 0..d.layers {
            self.layer_forward(s, layer, p.residual(layer + 1))?;
        }
        let last = p.residual(d.layers);
        launch!(
            self,
            "rms_norm (final)",
            k.rms_norm(last, self.weights.final_norm, p.nf, p.rstd_f, n, dm, d.eps)
        );
        Ok(())
    }
}
