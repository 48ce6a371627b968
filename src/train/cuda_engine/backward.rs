//! The backward half of a micro-batch: the LM head and loss in chunks of `loss_chunk` tokens, then
//! the layers in reverse. `dres` [N, D] (T) carries the gradient of the residual stream; per layer
//! the attention's scores and P are recomputed from the saved qh, kh (never stored across layers):
//! inside the fused kernels from the saved lse2, or in the same chunks of (row, kv head) pairs as
//! the forward; the SwiGLU output `a` is recomputed from the saved g, u, and the norm outputs n1, n2
//! from the saved x, h (the same kernel on the same inputs: the same bits as the forward's).
//!
//! Per adapted projection y = x W^T (+ b) + s (x A^T) B^T with xa = x A^T saved (a bias is frozen:
//! PEFT's `bias = "none"`, the only setting wick accepts; it adds no term below):
//! ```text
//! dB += s dY^T xa        (f32 [out, r])
//! dxa = s dY B           (T [N, r])
//! dA += dxa^T x          (f32 [r, in])
//! dX (+)= dY W + dxa A
//! ```

use super::buffers::{SCALAR_COUNT, SCALAR_LOSS, SCALAR_SCALE};
use super::launcher::Launcher;
use super::layout::{DOWN, GATE, K, O, Q, UP, V};
use super::ERR;
use crate::Result;

impl Launcher<'_> {
    /// The gradients of one projection from dY [n, out] and its forward input x [n, in]: the LoRA
    /// gradients (accumulated) and dx [n, in] (overwritten, or accumulated when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_backward(
        &self,
        n: usize,
        layer: usize,
        proj: usize,
        x: u64,
        dy: u64,
        dx: u64,
        accumulate: bool,
    ) -> Result<()> {
        let (inp, out) = self.proj_dims(proj);
        let w = self.weights.layers[layer].proj[proj];
        let beta = if accumulate { 1.0 } else { 0.0 };
        let dx_shape = self.shape((n, inp, out), (false, false));
        self.mm("dY W", &dx_shape, dy, w, dx, 1.0, beta)?;
        if let Some(l) = self.lora(layer, proj) {
            let (r, s, dxa) = (self.dims.rank, self.layout.scale, self.ptrs.dxa);
            let db = self.shape_f32((out, r, n), (true, false));
            self.mm("dB = s dY^T xa", &db, dy, l.xa, l.db, s, 1.0)?;
            let dxa_shape = self.shape((n, r, out), (false, false));
            self.mm("dxa = s dY B", &dxa_shape, dy, l.b_t, dxa, s, 0.0)?;
            // With LoRA dropout the branch read x * keep / (1 - p): the same mask again.
            let x_in = self.dropped_input(n, layer, proj, x)?;
            let da = self.shape_f32((r, inp, n), (true, false));
            self.mm("dA = dxa^T x", &da, dxa, x_in, l.da, 1.0, 1.0)?;
            let dx_lora = self.shape((n, inp, r), (false, false));
            let p = self.layout.dropout;
            if p <= 0.0 {
                self.mm("dx += dxa A", &dx_lora, dxa, l.a_t, dx, 1.0, 1.0)?;
            } else {
                // dx += (dxa A) * keep / (1 - p), dxa A in the dropped-input scratch (free now).
                let t = self.ptrs.dropped;
                self.mm("dxa A", &dx_lora, dxa, l.a_t, t, 1.0, 0.0)?;
                self.lora_dropout((layer, proj), n, (t, dx), true)?;
            }
        }
        Ok(())
    }

    /// Logits, loss and their gradient chunk by chunk (the logits buffer holds one chunk, replaced
    /// in place by its gradient), the loss summed into the step's accumulator, and the final norm's
    /// backward: leaves d(x_L) in `dres`.
    pub(super) fn head_and_loss(&self, s: usize) -> Result<()> {
        let (d, p, k) = (self.dims, self.ptrs, self.k);
        let n = d.batch * s;
        let (dm, vocab, e) = (d.hidden, d.vocab, self.t.size_in_bytes() as u64);
        let chunk = self.loss_chunk.min(n).max(1);
        let head = self.weights.head;
        let mut t0 = 0;
        while t0 < n {
            let c = chunk.min(n - t0);
            let nf = p.nf + t0 as u64 * dm as u64 * e;
            let logits = self.shape((c, vocab, dm), (false, true));
            self.mm("LM head", &logits, nf, head, p.logits, 1.0, 0.0)?;
            let (labels, row_loss) = (p.labels + 4 * t0 as u64, p.row_loss + 4 * t0 as u64);
            launch!(
                self,
                "cross_entropy",
                k.cross_entropy(
                    p.logits,
                    labels,
                    p.scalar(SCALAR_COUNT),
                    p.scalar(SCALAR_SCALE),
                    row_loss,
                    c,
                    vocab
                )
            );
            let dnf = self.shape((c, dm, vocab), (false, false));
            let dn = p.dn + t0 as u64 * dm as u64 * e;
            self.mm("LM head backward", &dnf, p.logits, head, dn, 1.0, 0.0)?;
            t0 += c;
        }
        launch!(
            self,
            "sum_into (loss)",
            k.sum_into(p.row_loss, n, p.scalar(SCALAR_LOSS), true)
        );
        let last = p.residual(d.layers);
        launch!(
            self,
            "rms_norm_backward (final)",
            k.rms_norm_backward(
                last,
                self.weights.final_norm,
                p.rstd_f,
                p.dn,
                p.dres,
                n,
                dm,
                false
            )
        );
        Ok(())
    }

    /// Backward of one layer: `dres` holds d(x_{layer+1}) on entry and d(x_layer) on exit.
    pub(super) fn layer_backward(&self, s: usize, layer: usize) -> Result<()> {
        let (d, p, k) = (self.dims, self.ptrs, self.k);
        let n = d.batch * s;
        let (dm, f, qw, hd) = (d.hidden, d.ffn, d.q_width(), d.head_dim);
        let (b, kvh) = (d.batch, d.kv_heads);
        let lw = &self.weights.layers[layer];
        let (rstd1, rstd2) = p.rstd(layer);
        // MLP: x' = h + down(swiglu(gate(n2), up(n2))).
        let (gate, up) = p.saved_mlp(layer, f);
        let h = p.saved(p.h, layer, dm);
        let n2 = p.norm;
        // n2 is read by the gate / up backward below (the down backward leaves it alone).
        launch!(
            self,
            "rms_norm (post-attention, recompute)",
            k.rms_norm(h, lw.post_norm, n2, rstd2, n, dm, d.eps)
        );
        if d.mlp_recomputed(layer) {
            // Selective recompute: gate and up again from n2, as the forward made them (the same
            // products, LoRA dropout masks drawn again; xa rewritten with the same values).
            self.linear(n, layer, GATE, n2, gate, None)?;
            self.linear(n, layer, UP, n2, up, None)?;
        }
        launch!(self, "swiglu (recompute)", k.swiglu(gate, up, p.act, n * f));
        self.linear_backward(n, layer, DOWN, p.act, p.dres, p.dact, false)?;
        launch!(
            self,
            "swiglu_backward",
            k.swiglu_backward(gate, up, p.dact, p.dg, p.du, n * f)
        );
        self.linear_backward(n, layer, GATE, n2, p.dg, p.dn, false)?;
        self.linear_backward(n, layer, UP, n2, p.du, p.dn, true)?;
        launch!(
            self,
            "rms_norm_backward (post-attention)",
            k.rms_norm_backward(h, lw.post_norm, rstd2, p.dn, p.dres, n, dm, true)
        );
        // Attention: h = x + o_proj(heads_to_tokens(P vh)).
        let o = p.saved(p.o, layer, qw);
        self.linear_backward(n, layer, O, o, p.dres, p.dout, false)?;
        launch!(
            self,
            "tokens_to_heads",
            k.tokens_to_heads(p.dout, p.oh, b, s, d.heads, kvh, hd)
        );
        self.attention_backward(s, layer, o)?;
        launch!(
            self,
            "rope_gather_backward",
            k.rope_gather_backward(
                p.dqh, p.dkh, p.dvh, p.cos, p.sin, p.q, p.k, p.v, b, s, d.heads, kvh, hd
            )
        );
        let x = p.residual(layer);
        let n1 = p.norm;
        launch!(
            self,
            "rms_norm (input, recompute)",
            k.rms_norm(x, lw.input_norm, n1, rstd1, n, dm, d.eps)
        );
        self.linear_backward(n, layer, Q, n1, p.q, p.dn, false)?;
        self.linear_backward(n, layer, K, n1, p.k, p.dn, true)?;
        self.linear_backward(n, layer, V, n1, p.v, p.dn, true)?;
        launch!(
            self,
            "rms_norm_backward (input)",
            k.rms_norm_backward(x, lw.input_norm, rstd1, p.dn, p.dres, n, dm, true)
        );
        Ok(())
    }

    /// One layer's attention backward: from doh (in `oh`; token-major in `dout`) to dqh, dkh,
    /// dvh (head-major). Fused (from the saved lse2 and the layer's token-major output `o`), or
    /// chunk by chunk of (row, kv head) pairs with scores and P recomputed into the scratch.
    fn attention_backward(&self, s: usize, layer: usize, o: u64) -> Result<()> {
        let (d, p, k) = (self.dims, self.ptrs, self.k);
        let (g, hd) = (d.groups(), d.head_dim);
        let scale = 1.0 / (hd as f32).sqrt();
        let (qh, kh, vh) = (
            p.saved(p.qh, layer, d.q_width()),
            p.saved(p.kh, layer, d.kv_width()),
            p.saved(p.vh, layer, d.kv_width()),
        );
        if let Some(fa) = self.flash {
            let lse = p.lse(layer, d.attention_rows());
            launch!(
                self,
                "flash attention backward",
                fa.backward(
                    (qh, kh, vh),
                    (p.oh, p.dout, o),
                    lse,
                    p.delta,
                    (p.dqh, p.dkh, p.dvh),
                    self.flash_shape(s),
                )
            );
            return Ok(());
        }
        for chunk in d.attention_chunks(s) {
            let (first, pairs) = chunk;
            self.attention_probs(s, layer, chunk)?;
            let (q_off, kv_off) = self.pair_offsets(s, first);
            let doh = p.oh + q_off;
            // dvh [S, d] = P^T doh, the G query heads of a kv head summed by the contraction.
            let dv = self.shape((s, hd, g * s), (true, false)).batched(
                pairs,
                g * s * s,
                g * s * hd,
                s * hd,
            );
            self.mm("dv = P^T do", &dv, p.probs, doh, p.dvh + kv_off, 1.0, 0.0)?;
            // dP [G*S, S] = doh vh^T (f32, into the scores scratch).
            let dprobs = self.shape_f32((g * s, s, hd), (false, true)).batched(
                pairs,
                g * s * hd,
                s * hd,
                g * s * s,
            );
            self.mm("dP = do v^T", &dprobs, doh, vh + kv_off, p.scores, 1.0, 0.0)?;
            let rows = pairs * g * s;
            launch!(
                self,
                "causal_softmax_backward",
                k.causal_softmax_backward(p.probs, p.scores, p.dscores, rows, s, scale)
            );
            let dq = self.shape((g * s, hd, s), (false, false)).batched(
                pairs,
                g * s * s,
                s * hd,
                g * s * hd,
            );
            self.mm(
                "dq = dS k",
                &dq,
                p.dscores,
                kh + kv_off,
                p.dqh + q_off,
                1.0,
                0.0,
            )?;
            let dk = self.shape((s, hd, g * s), (true, false)).batched(
                pairs,
                g * s * s,
                g * s * hd,
                s * hd,
            );
            self.mm(
                "dk = dS^T q",
                &dk,
                p.dscores,
                qh + q_off,
                p.dkh + kv_off,
                1.0,
                0.0,
            )?;
        }
        Ok(())
    }

    /// One micro-batch for a bucket of `s` positions (inputs uploaded): count the labels, forward,
    /// loss, backward; gradients and loss accumulate.
    pub(super) fn micro_batch(&self, s: usize) -> Result<()> {
        let (d, p) = (self.dims, self.ptrs);
        let n = d.batch * s;
        launch!(
            self,
            "label_count",
            self.k.label_count(p.labels, n, p.scalar(SCALAR_COUNT))
        );
        self.forward(s)?;
        self.head_and_loss(s)?;
        for layer in (0..d.layers).rev() {
            if d.checkpointed(layer) {
                // The layer's saved activations (one layer's slots) again from its saved input;
                // its output goes to `dn`, free until the layer's backward writes it. (It also
                // refills a quantized base's layer scratch.)
                self.layer_forward(s, layer, p.dn)?;
            } else {
                self.dequantize_layer(layer)?;
            }
            self.layer_backward(s, layer)?;
        }
        Ok(())
    }
}
