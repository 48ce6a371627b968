//! What the launch sequences (`forward`, `backward`, `optimizer`) work on: the raw addresses of
//! every buffer ([`Ptrs`], resolved once) and a [`Launcher`] that borrows the engine's kernels,
//! GEMM plans, shapes and weights, and either launches or (dry) only prepares the GEMM plans.

use candle_core::DType;

use super::buffers::{self, Buffers};
use super::layout::{ActivationSlots, Dims, ParamLayout};
use super::weights::ModelWeights;
use super::ERR;
use crate::gpu::gemm::{Gemm, GemmShape};
use crate::gpu::ggml::{DequantKernels, DEQUANT_SEGMENTS};
use crate::gpu::train::flash_attention::FlashAttention;
use crate::gpu::train::launch::TrainKernels;
use crate::Result;

/// Raw addresses of the buffers, resolved once. Saved per-layer activations are one allocation per
/// kind, layer l at `l * tokens * width` elements.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ptrs {
    /// Rows of every token-major buffer (the largest bucket's tokens).
    pub(super) tokens: usize,
    pub(super) hidden: usize,
    /// Where each layer's saved activations other than x live (the checkpointed layers share one
    /// slot).
    pub(super) slots: ActivationSlots,
    /// Where each layer's saved gate and up outputs live (`Dims::mlp_slots`: the MLP-recomputed
    /// layers share the checkpointed layers' slot).
    pub(super) mlp_slots: ActivationSlots,
    /// Bytes of T.
    pub(super) e: usize,
    pub(super) x: u64,
    /// The layer at hand's n1 or n2 (not saved: recomputed in the backward).
    pub(super) norm: u64,
    pub(super) qh: u64,
    pub(super) kh: u64,
    pub(super) vh: u64,
    pub(super) o: u64,
    pub(super) h: u64,
    pub(super) g: u64,
    pub(super) u: u64,
    pub(super) xa: u64,
    pub(super) rstd: u64,
    pub(super) nf: u64,
    pub(super) rstd_f: u64,
    pub(super) q: u64,
    pub(super) k: u64,
    pub(super) v: u64,
    pub(super) oh: u64,
    pub(super) dqh: u64,
    pub(super) dkh: u64,
    pub(super) dvh: u64,
    pub(super) dout: u64,
    pub(super) act: u64,
    pub(super) dact: u64,
    pub(super) dg: u64,
    pub(super) du: u64,
    pub(super) dn: u64,
    pub(super) dres: u64,
    pub(super) dxa: u64,
    pub(super) scores: u64,
    pub(super) probs: u64,
    pub(super) dscores: u64,
    /// Fused attention only (0 otherwise): saved lse2 per layer, f32 [layers, B*H*S] at the
    /// largest bucket's rows, and the backward's D, f32 [B*H*S].
    pub(super) lse: u64,
    pub(super) delta: u64,
    pub(super) logits: u64,
    pub(super) row_loss: u64,
    pub(super) cos: u64,
    pub(super) sin: u64,
    pub(super) params: u64,
    pub(super) grads: u64,
    pub(super) exp_avg: u64,
    pub(super) exp_avg_sq: u64,
    pub(super) partials: u64,
    pub(super) ids: u64,
    pub(super) labels: u64,
    pub(super) scalars: u64,
    pub(super) hyper: u64,
    /// The T copy of the parameters (the f32 masters when T is f32).
    pub(super) params_t: u64,
    /// LoRA dropout (0 without): the dropped-input scratch and the mask seed (u64).
    pub(super) dropped: u64,
    pub(super) dropout_seed: u64,
}

impl Ptrs {
    pub(super) fn new(b: &Buffers, dims: &Dims, dtype: DType) -> Self {
        let params = b.ptr("lora params (f32)");
        let params_t = match dtype {
            DType::F32 => params,
            _ => b.ptr(buffers::PARAMS_T),
        };
        let cos = b.ptr("rope cos, sin (f32)");
        Self {
            tokens: dims.max_tokens(),
            hidden: dims.hidden,
            slots: dims.activation_slots(),
            mlp_slots: dims.mlp_slots(),
            e: dtype.size_in_bytes(),
            x: b.ptr("saved x (residual in)"),
            norm: b.ptr(buffers::NORM_OUT),
            qh: b.ptr("saved qh (rotated q, head-major)"),
            kh: b.ptr("saved kh (rotated k, head-major)"),
            vh: b.ptr("saved vh (v, head-major)"),
            o: b.ptr("saved o (attention out, token-major)"),
            h: b.ptr("saved h (residual after attention)"),
            g: b.ptr("saved g (gate)"),
            u: b.ptr("saved u (up)"),
            xa: b.ptr("saved xa (x A^T per adapted projection)"),
            rstd: b.ptr("saved rstd1, rstd2 (f32)"),
            nf: b.ptr("saved final norm out"),
            rstd_f: b.ptr("saved final rstd (f32)"),
            q: b.ptr("q / dq token-major"),
            k: b.ptr("k / dk token-major"),
            v: b.ptr("v / dv token-major"),
            oh: b.ptr("oh / doh head-major"),
            dqh: b.ptr("dqh head-major"),
            dkh: b.ptr("dkh head-major"),
            dvh: b.ptr("dvh head-major"),
            dout: b.ptr("do token-major"),
            act: b.ptr("swiglu out a"),
            dact: b.ptr("da"),
            dg: b.ptr("dg"),
            du: b.ptr("du"),
            dn: b.ptr("dn (norm-output gradient)"),
            dres: b.ptr("dres (residual gradient)"),
            dxa: b.ptr("dxa"),
            scores: b.ptr(buffers::SCORES),
            probs: b.ptr(buffers::PROBS),
            dscores: b.ptr(buffers::DSCORES),
            lse: b.ptr(buffers::SAVED_LSE),
            delta: b.ptr(buffers::ATTENTION_DELTA),
            logits: b.ptr("logits chunk / its gradient"),
            row_loss: b.ptr("row loss (f32)"),
            cos,
            sin: cos + (dims.seq * (dims.head_dim / 2) * 4) as u64,
            params,
            grads: b.ptr("lora grads (f32)"),
            exp_avg: b.ptr("adamw exp_avg (f32)"),
            exp_avg_sq: b.ptr("adamw exp_avg_sq (f32)"),
            partials: b.ptr("grad-norm partials (f32)"),
            ids: b.ptr("ids (i32)"),
            labels: b.ptr("labels (i32)"),
            scalars: b.ptr("scalars: count, scale, loss, gnorm^2 (f32)"),
            hyper: b.ptr("adamw hyper (f32)"),
            params_t,
            dropped: b.ptr(buffers::DROPPED_INPUT),
            dropout_seed: b.ptr(buffers::DROPOUT_SEED),
        }
    }

    /// The slot of layer `layer` in the saved activations (`ActivationSlots`).
    fn slot(&self, layer: usize) -> usize {
        self.slots.of(layer)
    }

    /// Layer `layer`'s slice of a saved per-layer activation of rows `width` wide (T).
    pub(super) fn saved(&self, base: u64, layer: usize, width: usize) -> u64 {
        base + (self.slot(layer) * self.tokens * width * self.e) as u64
    }

    /// Layer `layer`'s saved gate and up outputs (g, u), T [tokens, ffn] each.
    pub(super) fn saved_mlp(&self, layer: usize, ffn: usize) -> (u64, u64) {
        let at = |base: u64| base + (self.mlp_slots.of(layer) * self.tokens * ffn * self.e) as u64;
        (at(self.g), at(self.u))
    }

    /// The residual stream x entering layer `layer` (`layer == layers`: the final norm's input),
    /// T [tokens, hidden]: saved for every layer, checkpointed or not.
    pub(super) fn residual(&self, layer: usize) -> u64 {
        self.x + (layer * self.tokens * self.hidden * self.e) as u64
    }

    /// Layer `layer`'s saved lse2, f32 [B*H*S] (B*H*S at the largest bucket apart).
    pub(super) fn lse(&self, layer: usize, rows: usize) -> u64 {
        self.lse + (self.slot(layer) * rows * 4) as u64
    }

    /// Layer `layer`'s (rstd1, rstd2), f32 [tokens] each.
    pub(super) fn rstd(&self, layer: usize) -> (u64, u64) {
        let at = |i: usize| self.rstd + (i * self.tokens * 4) as u64;
        let slot = self.slot(layer);
        (at(slot), at(self.slots.count() + slot))
    }

    /// The address of scalar `i` (`buffers::SCALAR_*`).
    pub(super) fn scalar(&self, i: usize) -> u64 {
        self.scalars + 4 * i as u64
    }
}

/// The addresses of one adapted projection's parameters, gradients and saved xa.
pub(super) struct LoraPtrs {
    /// A [r, in] and B [out, r] in T.
    pub(super) a_t: u64,
    pub(super) b_t: u64,
    /// dA, dB in f32.
    pub(super) da: u64,
    pub(super) db: u64,
    /// xa [tokens, r] (T) of this layer and projection.
    pub(super) xa: u64,
}

/// What the launch sequences need, borrowed from the engine. `dry`: only build the GEMM plans
/// (no launch), so that capturing a graph finds every plan ready.
pub(super) struct Launcher<'a> {
    pub(super) k: &'a TrainKernels,
    /// The fused attention kernels, when `dims.flash_attention`.
    pub(super) flash: Option<&'a FlashAttention>,
    /// The dequant kernel, when the base is kept as GGML blocks (`dims.quantized_base`).
    pub(super) dequant: Option<&'a DequantKernels>,
    pub(super) gemm: &'a Gemm,
    pub(super) dims: &'a Dims,
    pub(super) layout: &'a ParamLayout,
    pub(super) weights: &'a ModelWeights,
    pub(super) ptrs: &'a Ptrs,
    /// Index of each adapted (layer, projection) among the saved xa buffers.
    pub(super) xa_index: &'a [[Option<usize>; 7]],
    pub(super) t: DType,
    pub(super) loss_chunk: usize,
    pub(super) dry: bool,
}

impl Launcher<'_> {
    /// D = alpha op(A) op(B) + beta D, or only its plan when dry.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mm(
        &self,
        what: &'static str,
        shape: &GemmShape,
        a: u64,
        b: u64,
        d: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.mm_c(what, shape, a, b, d, d, alpha, beta)
    }

    /// D = alpha op(A) op(B) + beta C, or only its plan when dry.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mm_c(
        &self,
        what: &'static str,
        shape: &GemmShape,
        a: u64,
        b: u64,
        c: u64,
        d: u64,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if self.dry {
            self.gemm.prepare(shape).map_err(ERR.launch(what))?;
            return Ok(());
        }
        self.gemm
            .run_c(shape, a, b, c, d, alpha, beta)
            .map_err(ERR.launch(what))
    }

    /// QLoRA: layer `layer`'s projections kept as blocks, dequantized into the layer scratch (each
    /// at its address in `proj`), runs of consecutive projections a launch of up to
    /// DEQUANT_SEGMENTS matrices each. Nothing for a dense base.
    pub(super) fn dequantize_layer(&self, layer: usize) -> Result<()> {
        let lw = &self.weights.layers[layer];
        let Some(k) = self.dequant else {
            return Ok(());
        };
        let mut at = 0;
        while at < lw.blocks.len() {
            let (first, _) = lw.blocks[at];
            let mut end = at + 1;
            while end < lw.blocks.len()
                && end - at < DEQUANT_SEGMENTS
                && lw.blocks[end].0 == lw.blocks[end - 1].0 + 1
            {
                end += 1;
            }
            let run: Vec<_> = lw.blocks[at..end].iter().map(|&(_, seg)| seg).collect();
            launch!(
                self,
                "dequantize the layer's blocks",
                k.dequant_layer(lw.proj[first], self.t, &run)
            );
            at = end;
        }
        Ok(())
    }

    /// The adapted projection's addresses, if `proj` of `layer` is adapted.
    pub(super) fn lora(&self, layer: usize, proj: usize) -> Option<LoraPtrs> {
        let slot = self.layout.slots[layer][proj].as_ref()?;
        let idx = self.xa_index[layer][proj]?;
        let (p, e) = (self.ptrs, self.t.size_in_bytes() as u64);
        Some(LoraPtrs {
            a_t: p.params_t + slot.a_offset as u64 * e,
            b_t: p.params_t + slot.b_offset as u64 * e,
            da: p.grads + slot.a_offset as u64 * 4,
            db: p.grads + slot.b_offset as u64 * 4,
            xa: p.xa + (idx * p.tokens * self.dims.rank) as u64 * e,
        })
    }
}
