//! The seam between the scheduler and whatever runs the model: a [`BatchDecoder`] holds the
//! sequences of the running batch (their KV caches and adapters) and runs one step of all of them
//! at a time. The scheduler only adds sequences, feeds sampled tokens, steps and frees; a batched
//! GPU engine plugs in behind the same four calls.
//!
//! [`CpuBatchDecoder`] runs the ragged forward (`Llama::forward_ragged`): every step stacks the rows
//! of every active sequence (one token per decoding sequence, a chunk of the prompt per prefilling
//! one) with each sequence's own adapter.
//!
//! Chunked prefill: a prompt of at most `prefill_chunk` tokens runs in one piece; a longer one in
//! pieces of `prefill_chunk` tokens, one per step, so decoding streams keep getting a token every
//! step while it is read. Pieces are cut at the same positions whatever else is in the batch, and
//! every row is computed on its own, so a request's logits do not depend on its batch-mates. At most
//! `prefill_chunk` prompt tokens run per step (beside the decode rows), except that the first piece
//! waiting always runs so no prompt starves.
//!
//! Prefix caching ([`super::prefix_cache`]): a prompt that starts like one read before (same
//! adapter and scale) takes the cached keys and values of the shared whole blocks and reads only
//! the rest.

use std::collections::BTreeMap;

use super::prefix_cache::{AdapterKey, PrefixCache, Reused};
use crate::generate::GenerationAdapter;
use crate::models::kv_cache::KvCache;
use crate::models::llama::{Llama, RaggedSeq};
use crate::{Error, Result};

/// A sequence's handle inside a decoder.
pub type SeqId = u64;

/// What runs the model for a continuous batch.
pub trait BatchDecoder: Send {
    /// Adds a sequence that will read `prompt` (positions for `prompt.len() + max_new` tokens are
    /// reserved) with `adapter`; its first logits come from a later [`BatchDecoder::step`].
    fn add(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        adapter: Option<GenerationAdapter>,
    ) -> Result<SeqId>;

    /// Feeds the token sampled from the sequence's latest logits; it runs at the next step.
    fn push(&mut self, seq: SeqId, token: u32) -> Result<()>;

    /// Runs one step of every sequence with work; returns the next-token logits [vocab] of every
    /// sequence that finished its prompt or decoded a token in this step.
    fn step(&mut self) -> Result<Vec<(SeqId, Vec<f32>)>>;

    /// Forgets a sequence (finished, cancelled or failed) and frees its cache.
    fn free(&mut self, seq: SeqId);

    /// Sequences held.
    fn len(&self) -> usize;

    /// Prompt tokens taken from a prefix cache instead of the model so far (0 without one).
    fn reused_prompt_tokens(&self) -> u64 {
        0
    }

    /// Whether no sequence is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct CpuSeq {
    cache: KvCache,
    /// Tokens not yet run: the rest of the prompt, or the one sampled token.
    pending: Vec<u32>,
    /// Whether `pending` is (the rest of) the prompt.
    prefilling: bool,
    adapter: Option<GenerationAdapter>,
    /// The whole prompt while it is read (for the prefix cache), then empty.
    prompt: Vec<u32>,
}

/// [`BatchDecoder`] on the CPU path (`Llama::forward_ragged`).
#[derive(Debug)]
pub struct CpuBatchDecoder {
    model: Llama,
    seqs: BTreeMap<SeqId, CpuSeq>,
    next_id: SeqId,
    prefill_chunk: usize,
    prefixes: PrefixCache,
}

/// Bytes of prompt keys and values [`CpuBatchDecoder::new`] keeps for reuse.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 64 << 20;

impl CpuBatchDecoder {
    /// A decoder over `model` that reads prompts `prefill_chunk` tokens per step at most and keeps
    /// up to [`DEFAULT_PREFIX_CACHE_BYTES`] of prompt prefixes for reuse.
    pub fn new(model: Llama, prefill_chunk: usize) -> Self {
        Self {
            model,
            seqs: BTreeMap::new(),
            next_id: 1,
            prefill_chunk: prefill_chunk.max(1),
            prefixes: PrefixCache::new(DEFAULT_PREFIX_CACHE_BYTES),
        }
    }

    /// The same with `bytes` of prefix cache (0: none).
    pub fn with_prefix_cache(mut self, bytes: usize) -> Self {
        self.prefixes = PrefixCache::new(bytes);
        self
    }

    /// The rows of the next step: (sequence, tokens to run).
    fn plan(&self) -> Vec<(SeqId, usize)> {
        let mut plan = Vec::new();
        let mut budget = self.prefill_chunk;
        let mut prefilled = false;
        for (&id, seq) in &self.seqs {
            if seq.pending.is_empty() {
                continue;
            }
            if !seq.prefilling {
                plan.push((id, seq.pending.len()));
                continue;
            }
            let piece = seq.pending.len().min(self.prefill_chunk);
            if piece <= budget || !prefilled {
                plan.push((id, piece));
                budget = budget.saturating_sub(piece);
                prefilled = true;
            }
        }
        plan
    }
}

impl BatchDecoder for CpuBatchDecoder {
    fn add(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        adapter: Option<GenerationAdapter>,
    ) -> Result<SeqId> {
        let config = self.model.config();
        if prompt.is_empty() {
            return Err(Error::InvalidRequest("empty prompt".into()));
        }
        if prompt.len() > config.max_position_embeddings {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens, more than the model's context of {}",
                prompt.len(),
                config.max_position_embeddings
            )));
        }
        let mut cache = KvCache::with_capacity(
            config,
            1,
            prompt.len() + max_new,
            self.model.dtype(),
            self.model.device(),
        );
        let Reused(reused) =
            self.prefixes
                .restore(AdapterKey::of(adapter.as_ref()), prompt, &mut cache)?;
        let id = self.next_id;
        self.next_id += 1;
        self.seqs.insert(
            id,
            CpuSeq {
                cache,
                pending: prompt[reused..].to_vec(),
                prefilling: true,
                adapter,
                prompt: prompt.to_vec(),
            },
        );
        Ok(id)
    }

    fn push(&mut self, seq: SeqId, token: u32) -> Result<()> {
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or_else(|| Error::InvalidRequest(format!("no sequence {seq}")))?;
        if !s.pending.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "sequence {seq} still has {} tokens to run",
                s.pending.len()
            )));
        }
        s.pending.push(token);
        Ok(())
    }

    fn step(&mut self) -> Result<Vec<(SeqId, Vec<f32>)>> {
        let plan = self.plan();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(plan.len());
        let mut ids = Vec::with_capacity(plan.len());
        // Borrow each planned sequence mutably once: walk the map in key order with the plan.
        let mut planned = plan.iter().peekable();
        for (&id, seq) in self.seqs.iter_mut() {
            let Some(&&(pid, take)) = planned.peek() else {
                break;
            };
            if pid != id {
                continue;
            }
            planned.next();
            let last = take == seq.pending.len();
            rows.push(RaggedSeq {
                tokens: &seq.pending[..take],
                cache: &mut seq.cache,
                lora: seq.adapter.as_ref().map(|a| a.seq_lora()),
                logits: last,
            });
            ids.push((id, take));
        }
        let logits = self.model.forward_ragged(&mut rows)?;
        drop(rows);
        let mut out = Vec::new();
        for ((id, take), logits) in ids.into_iter().zip(logits) {
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.pending.drain(..take);
                if seq.pending.is_empty() && seq.prefilling {
                    seq.prefilling = false;
                    let prompt = std::mem::take(&mut seq.prompt);
                    let key = AdapterKey::of(seq.adapter.as_ref());
                    self.prefixes.insert(key, &prompt, &seq.cache)?;
                }
            }
            if let Some(logits) = logits {
                out.push((id, logits));
            }
        }
        Ok(out)
    }

    fn free(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }

    fn reused_prompt_tokens(&self) -> u64 {
        self.prefixes.reused_tokens
    }
}
