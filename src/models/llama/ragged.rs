//! A ragged batch step: several sequences, each with its own KV cache, position, number of new
//! tokens (one when decoding, a chunk of its prompt when prefilling) and LoRA adapter, in one
//! forward. What a continuous-batching server runs at every step.
//!
//! Rows of every sequence are stacked into one [tokens, hidden] matrix for the projections, the
//! norms and the MLP, so each weight is read once per step for the whole batch; each projection adds
//! every sequence's own low-rank update to its rows (`Linear::forward_rows`). Attention runs per
//! sequence on its own cache, exactly as a batch-1 forward does.
//!
//! Batch invariance: every op here computes a row on its own (the quantized kernel quantizes and
//! multiplies each row separately, the norms and the LoRA update are per row, attention per
//! sequence), so a sequence's logits are bitwise those of running it alone with the same tokens per
//! step (`tests` below checks it against [`Llama::forward_last`]).

use candle_core::{Device, Tensor};

use super::{causal_mask, decode_pool, Llama, PositionTables};
use crate::models::kv_cache::KvCache;
use crate::models::linear::RowsLora;
use crate::ops::lora_delta_cpu::LowRankCpu;
use crate::ops::rms_norm::{add_rms_norm, rms_norm};
use crate::ops::swiglu::swiglu;
use crate::{Context, Error, Result};

/// An adapter as one sequence uses it: one slot per projection (`Llama::linear_layers` order) and
/// the scale its updates are multiplied by.
#[derive(Debug, Clone, Copy)]
pub struct SeqLora<'a> {
    pub layers: &'a [Option<LowRankCpu>],
    pub scale: f32,
}

/// One sequence's share of a ragged step.
#[derive(Debug)]
pub struct RaggedSeq<'a> {
    /// The new tokens: positions `cache.len()..cache.len() + tokens.len()`.
    pub tokens: &'a [u32],
    /// This sequence's cache (batch 1); the new positions are appended.
    pub cache: &'a mut KvCache,
    /// Its adapter, if any.
    pub lora: Option<SeqLora<'a>>,
    /// Whether to return the logits of its last new token.
    pub logits: bool,
}

impl Llama {
    /// Runs one step for every sequence; returns, per sequence, its last token's logits [vocab] when
    /// it asked for them. Every sequence's cache advances by its token count. On error no cache has
    /// advanced (positions written past `len()` are overwritten by the next step).
    pub fn forward_ragged(&self, seqs: &mut [RaggedSeq<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        self.check_ragged(seqs)?;
        let decode_only = seqs.iter().all(|s| s.tokens.len() == 1);
        // The same single-thread pool as a batch-1 decode step (see `Llama::run`).
        match decode_pool() {
            Some(pool) if decode_only && matches!(self.device, Device::Cpu) => {
                pool.install(|| self.ragged_inner(seqs))
            }
            _ => self.ragged_inner(seqs),
        }
    }

    fn check_ragged(&self, seqs: &[RaggedSeq<'_>]) -> Result<()> {
        let linears = self.layers.len() * 7;
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "ragged step: sequence {i} has no token"
                )));
            }
            if s.cache.batch() != 1 {
                return Err(Error::InvalidRequest(format!(
                    "ragged step: sequence {i}'s cache is for batch {}, not 1",
                    s.cache.batch()
                )));
            }
            s.cache.check_room(s.tokens.len())?;
            if let Some(&bad) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(Error::InvalidRequest(format!(
                    "ragged step: token id {bad} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            if let Some(lora) = &s.lora {
                if lora.layers.len() != linears {
                    return Err(Error::InvalidRequest(format!(
                        "ragged step: sequence {i}'s adapter has {} slots, the model {linears} projections",
                        lora.layers.len()
                    )));
                }
            }
        }
        if seqs.is_empty() {
            return Err(Error::InvalidRequest("ragged step: no sequence".into()));
        }
        Ok(())
    }

    fn ragged_inner(&self, seqs: &mut [RaggedSeq<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let mut starts = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        for s in seqs.iter() {
            starts.push(ids.len());
            ids.extend_from_slice(s.tokens);
        }
        let rows = ids.len();
        let x = self
            .embed_tokens
            .index_select(&Tensor::new(ids.as_slice(), &self.device)?, 0)
            .context("token embedding")?;
        let mut tables = Vec::with_capacity(seqs.len());
        let mut masks = Vec::with_capacity(seqs.len());
        for s in seqs.iter() {
            let (offset, t) = (s.cache.len(), s.tokens.len());
            tables.push(PositionTables {
                cos: self.rotary.cos.narrow(0, offset, t)?,
                sin: self.rotary.sin.narrow(0, offset, t)?,
                cos_q: self.rotary.cos_q.narrow(0, offset, t)?,
                sin_q: self.rotary.sin_q.narrow(0, offset, t)?,
            });
            masks.push(if t > 1 {
                Some(causal_mask(t, offset, &self.device)?)
            } else {
                None
            });
        }
        // The row groups of projection `index`: each sequence's rows with its pair for it.
        let loras: Vec<(usize, usize, Option<SeqLora>)> = seqs
            .iter()
            .zip(&starts)
            .map(|(s, &start)| (start, s.tokens.len(), s.lora))
            .collect();
        let groups = |index: usize| {
            loras
                .iter()
                .map(|&(start, len, lora)| RowsLora {
                    start,
                    len,
                    lora: lora.and_then(|l| l.layers[index].as_ref().map(|p| (p, l.scale))),
                })
                .collect::<Vec<RowsLora>>()
        };
        let eps = self.config.rms_norm_eps;
        let mut residual = x;
        let mut normed = rms_norm(&residual, &self.layers[0].input_layernorm, eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let g: Vec<Vec<RowsLora>> = (0..7).map(|j| groups(i * 7 + j)).collect();
            let a = &layer.self_attn;
            let q = a.q_proj.forward_rows(&normed, &g[0])?;
            let k = a.k_proj.forward_rows(&normed, &g[1])?;
            let v = a.v_proj.forward_rows(&normed, &g[2])?;
            let mut outs = Vec::with_capacity(seqs.len());
            for (s, seq) in seqs.iter_mut().enumerate() {
                let (start, t) = (starts[s], seq.tokens.len());
                let out = a.attend(
                    &q.narrow(0, start, t)?,
                    &k.narrow(0, start, t)?,
                    &v.narrow(0, start, t)?,
                    1,
                    t,
                    &tables[s],
                    masks[s].as_ref(),
                    Some((&mut *seq.cache, i)),
                    false,
                )?;
                outs.push(out.reshape((t, a.heads * a.head_dim))?);
            }
            let attn_in = Tensor::cat(&outs, 0).context("ragged attention rows")?;
            let attn = a.o_proj.forward_rows(&attn_in, &g[3])?;
            (normed, residual) =
                add_rms_norm(&attn, &residual, &layer.post_attention_layernorm, eps)?;
            let m = &layer.mlp;
            let gate = m.gate_proj.forward_rows(&normed, &g[4])?;
            let up = m.up_proj.forward_rows(&normed, &g[5])?;
            let mlp = m.down_proj.forward_rows(&swiglu(&gate, &up)?, &g[6])?;
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => &next.input_layernorm,
                None => &self.norm,
            };
            (normed, residual) = add_rms_norm(&mlp, &residual, next_norm, eps)?;
        }
        for s in seqs.iter_mut() {
            s.cache.advance(s.tokens.len());
        }
        self.ragged_logits(seqs, &starts, &normed, rows)
    }

    /// The LM head on the last row of each sequence that asked for logits.
    fn ragged_logits(
        &self,
        seqs: &[RaggedSeq<'_>],
        starts: &[usize],
        normed: &Tensor,
        rows: usize,
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let last: Vec<u32> = seqs
            .iter()
            .zip(starts)
            .filter(|(s, _)| s.logits)
            .map(|(s, &start)| (start + s.tokens.len() - 1) as u32)
            .collect();
        let mut out = vec![None; seqs.len()];
        if last.is_empty() {
            return Ok(out);
        }
        debug_assert!(last.iter().all(|&r| (r as usize) < rows));
        let picked = normed
            .index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)
            .context("last rows")?;
        let logits = self
            .lm_head
            .forward(&picked)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()
            .context("reading logits")?;
        let mut logits = logits.into_iter();
        for (slot, s) in out.iter_mut().zip(seqs) {
            if s.logits {
                *slot = logits.next();
            }
        }
        Ok(out)
    }
}
