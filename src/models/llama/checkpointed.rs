//! The training forward with decoder layers checkpointed (`ops::checkpoint`; the first N, or every
//! one): the backward pass runs each such layer again instead of keeping its activations, so a
//! step holds the residual stream at each layer boundary ([batch, t, hidden] per layer) plus one
//! layer's activations at a time, for about one more forward pass of compute. Memory is what
//! limits long sequences: the attention scores alone are [batch, heads, t, t] per layer, in
//! several copies.
//!
//! Per layer the segment is `h = x + attention(norm1(x)); y = h + mlp(norm2(h))`, the same ops as
//! [`Llama::forward_train`] (which fuses each residual add with the next layer's norm instead; the
//! sums are the same, the norms are taken from the same stored sums).

use std::sync::Arc;

use candle_core::Tensor;

use super::{causal_mask, DecoderLayer, Llama, PositionTables};
use crate::ops::checkpoint::{checkpoint, GradSink, Segment};
use crate::ops::rms_norm::{add_rms_norm, rms_norm};
use crate::{Context, Error, Result};

impl Llama {
    /// Training forward with activation checkpointing of the first `checkpointed` decoder layers
    /// (the others keep their activations for autograd as in [`Llama::forward_train`]).
    /// input_ids: [batch, t] -> logits [batch, t, vocab] in the compute dtype. The gradients of the
    /// adapter tensors inside checkpointed layers do not reach the `GradStore` of `backward()`:
    /// they are summed into `sink` during it. Their adapter dropout must be 0 or seeded (the
    /// recomputation must see the same values as the forward pass).
    pub fn forward_train_checkpointed(
        &self,
        input_ids: &Tensor,
        sink: &Arc<GradSink>,
        checkpointed: usize,
    ) -> Result<Tensor> {
        let (b, t) = input_ids
            .dims2()
            .context("input ids must be [batch, seq]")?;
        let context = self.config.max_position_embeddings;
        if t == 0 || t > context {
            return Err(Error::InvalidRequest(format!(
                "{t} tokens: a training row needs 1 to {context} tokens"
            )));
        }
        let hidden = self.config.hidden_size;
        let x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)
            .context("token embedding (is a token id >= vocab?)")?
            .reshape((b, t, hidden))?;
        let tables = Arc::new(PositionTables {
            cos: self.rotary.cos.narrow(0, 0, t)?,
            sin: self.rotary.sin.narrow(0, 0, t)?,
            cos_q: self.rotary.cos_q.narrow(0, 0, t)?,
            sin_q: self.rotary.sin_q.narrow(0, 0, t)?,
        });
        let mask = if t > 1 {
            Some(causal_mask(t, 0, &self.device)?)
        } else {
            None
        };
        let eps = self.config.rms_norm_eps;
        let mut residual = x;
        for (i, layer) in self.layers.iter().enumerate() {
            if i >= checkpointed {
                residual = train_layer(layer, &residual, &tables, mask.as_ref(), eps)?;
                continue;
            }
            let mut trainable = Vec::new();
            let a = &layer.self_attn;
            let m = &layer.mlp;
            for linear in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ] {
                if let Some(lora) = &linear.lora {
                    // Seeded masks (`models::seeded_dropout`) are drawn again, the same, when the
                    // backward recomputes the layer; Candle's unseeded dropout would draw others.
                    if lora.dropout > 0.0 && lora.dropout_masks.is_none() {
                        return Err(Error::InvalidOption {
                            option: "activation checkpointing".into(),
                            reason: format!(
                                "needs LoRA dropout 0 (layer {i} has {}): the recomputed \
                                 forward would draw other dropout masks",
                                lora.dropout
                            ),
                        });
                    }
                    trainable.extend([lora.a.clone(), lora.b.clone()]);
                    if let Some(dora) = &lora.dora {
                        trainable.push(dora.magnitude.clone());
                    }
                }
            }
            let layer = layer.clone();
            let (tables, mask) = (tables.clone(), mask.clone());
            let segment: Segment =
                Arc::new(move |x: &Tensor| train_layer(&layer, x, &tables, mask.as_ref(), eps));
            residual = checkpoint(&residual, segment, trainable, sink.clone())?;
        }
        let normed = rms_norm(&residual, &self.norm, eps)?;
        self.lm_head.forward_t(&normed, true)
    }
}

/// One decoder layer of the training forward (adapter dropout on), x: [batch, t, hidden].
fn train_layer(
    layer: &DecoderLayer,
    x: &Tensor,
    tables: &PositionTables,
    mask: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let normed = rms_norm(x, &layer.input_layernorm, eps)?;
    let attn = layer.self_attn.forward(&normed, tables, mask, None, true)?;
    let (normed, h) = add_rms_norm(&attn, x, &layer.post_attention_layernorm, eps)?;
    let mlp = layer.mlp.forward(&normed, true)?;
    (mlp + h).context("residual add")
}
