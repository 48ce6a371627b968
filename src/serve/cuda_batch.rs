//! [`CudaBatchDecoder`]: the server's [`BatchDecoder`] on the CUDA batch decode engine
//! (`generate::cuda_decode::batch`): up to 8 sequences per step, each in a row of the engine with
//! its own KV cache, position and adapter slot (Punica's BGMV: a batch whose sequences use
//! different adapters is still one launch per projection group). Rows without a request run idle
//! (token 0 at position 0, output ignored): the captured step has a fixed shape.
//!
//! Adapters live in the engine's pool of slots at a fixed rank (`max_rank`, like vLLM's
//! `--max-lora-rank`): a request's adapter (and its `lora_scale`) takes a slot the first time and
//! shares it with every later sequence that uses the same one; a slot no sequence uses is reloaded
//! for another adapter, least recently used first. There are at least as many slots as rows, so a
//! sequence always finds one.
//!
//! Prompts are read one token per step beside the other rows' decode tokens (the engine's batched
//! prefill is batch-1 only), so a long prompt costs one step per token.

use candle_core::Device;

use super::batch::{BatchDecoder, SeqId};
use crate::formats::config::DecoderConfig;
use crate::formats::weights::WeightSource;
use crate::generate::cuda_decode::batch::BatchDecodeEngine;
use crate::generate::decode_adapter::DecodeAdapter;
use crate::generate::GenerationAdapter;
use crate::{Error, Result};

/// A sequence in a row of the engine.
#[derive(Debug)]
struct Row {
    id: SeqId,
    /// Tokens not yet run: the rest of the prompt, or the one sampled token.
    pending: Vec<u32>,
    /// Tokens the row may hold (prompt + max_new).
    limit: usize,
    /// Tokens run so far.
    run: usize,
    slot: Option<usize>,
}

/// What an adapter slot holds: which resident adapter at which request scale, how many rows use
/// it, and when it was last taken.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlotUse {
    adapter: u64,
    scale_bits: u32,
    users: usize,
    last_used: u64,
}

/// [`BatchDecoder`] on one CUDA device.
pub struct CudaBatchDecoder {
    engine: BatchDecodeEngine,
    rows: Vec<Option<Row>>,
    slots: Vec<Option<SlotUse>>,
    max_rank: usize,
    positions: usize,
    vocab: usize,
    next_id: SeqId,
    tick: u64,
    /// Whether the engine's per-row adapter slots must be written before the next step.
    slots_dirty: bool,
}

// SAFETY: the only non-Send parts are the engine's CUDA graphs (raw CUgraph/CUgraphExec handles).
// CUDA driver objects belong to a context, not a thread, and cudarc makes the context current on
// every call; a graph needs its calls serialized, which single ownership gives: the decoder is
// moved to the scheduler thread once and used only there.
unsafe impl Send for CudaBatchDecoder {}

impl CudaBatchDecoder {
    /// An engine of `rows` rows (1..=8) of at most `positions` tokens each over the model's
    /// weights, with a pool for adapters of rank up to `max_rank`.
    pub fn new(
        config: &DecoderConfig,
        source: &dyn WeightSource,
        device: &Device,
        rows: usize,
        positions: usize,
        max_rank: usize,
    ) -> Result<Self> {
        let engine = BatchDecodeEngine::new(config, source, device, rows, positions)?;
        // The decoder moves to the scheduler thread: let the uploads queued here finish first, so
        // nothing of this thread's stream work is still in flight when the other thread starts.
        engine.synchronize()?;
        let slots = engine.adapter_slots();
        Ok(Self {
            engine,
            rows: (0..rows).map(|_| None).collect(),
            slots: vec![None; slots],
            max_rank: max_rank.max(1),
            positions,
            vocab: config.vocab_size,
            next_id: 1,
            tick: 0,
            slots_dirty: false,
        })
    }

    /// Tokens a sequence may hold (prompt + generated).
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// The slot holding `adapter` at its scale, loaded into a free or least recently used idle
    /// slot the first time.
    fn acquire(&mut self, adapter: &GenerationAdapter) -> Result<usize> {
        let resident = &adapter.adapter;
        if resident.rank() > self.max_rank {
            return Err(Error::InvalidRequest(format!(
                "adapter `{}` has rank {}, more than the GPU adapter pool holds ({}; --max-lora-rank)",
                resident.name(),
                resident.rank(),
                self.max_rank
            )));
        }
        self.tick += 1;
        let key = (resident.id(), adapter.scale.to_bits());
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| (s.adapter, s.scale_bits) == key))
        {
            let s = self.slots[slot].as_mut().expect("found above");
            s.users += 1;
            s.last_used = self.tick;
            return Ok(slot);
        }
        let slot = self
            .slots
            .iter()
            .position(|s| s.is_none())
            .or_else(|| {
                (0..self.slots.len())
                    .filter(|&i| self.slots[i].is_some_and(|s| s.users == 0))
                    .min_by_key(|&i| self.slots[i].map_or(0, |s| s.last_used))
            })
            .ok_or_else(|| {
                Error::InvalidRequest(
                    "every GPU adapter slot is in use by a running sequence".into(),
                )
            })?;
        let packed = DecodeAdapter::from_resident(resident, adapter.scale)?;
        self.slots[slot] = None;
        self.engine.load_adapter(slot, &packed, self.max_rank)?;
        self.slots[slot] = Some(SlotUse {
            adapter: key.0,
            scale_bits: key.1,
            users: 1,
            last_used: self.tick,
        });
        Ok(slot)
    }

    fn release(&mut self, slot: Option<usize>) {
        if let Some(s) = slot
            .and_then(|i| self.slots.get_mut(i))
            .and_then(|s| s.as_mut())
        {
            s.users = s.users.saturating_sub(1);
        }
    }

    fn row_of(&self, seq: SeqId) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.id == seq))
    }
}

impl BatchDecoder for CudaBatchDecoder {
    fn add(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        adapter: Option<GenerationAdapter>,
    ) -> Result<SeqId> {
        if prompt.is_empty() {
            return Err(Error::InvalidRequest("empty prompt".into()));
        }
        let limit = prompt.len() + max_new;
        if limit > self.positions {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens and asks for {max_new} more, more than the GPU engine's \
                 {} positions per sequence",
                prompt.len(),
                self.positions
            )));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab
            )));
        }
        let row = self.rows.iter().position(|r| r.is_none()).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "the GPU engine's {} rows are all running (the scheduler's --max-batch must not exceed them)",
                self.rows.len()
            ))
        })?;
        let slot = adapter.as_ref().map(|a| self.acquire(a)).transpose()?;
        let id = self.next_id;
        self.next_id += 1;
        self.engine.reset_row(row);
        self.rows[row] = Some(Row {
            id,
            pending: prompt.to_vec(),
            limit,
            run: 0,
            slot,
        });
        self.slots_dirty = true;
        Ok(id)
    }

    fn push(&mut self, seq: SeqId, token: u32) -> Result<()> {
        let row = self
            .row_of(seq)
            .ok_or_else(|| Error::InvalidRequest(format!("no sequence {seq}")))?;
        let r = self.rows[row].as_mut().expect("found above");
        if !r.pending.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "sequence {seq} still has {} tokens to run",
                r.pending.len()
            )));
        }
        if token as usize >= self.vocab || r.run >= r.limit {
            return Err(Error::InvalidRequest(format!(
                "sequence {seq}: token {token} cannot run (vocabulary {}, {} of {} positions used)",
                self.vocab, r.run, r.limit
            )));
        }
        r.pending.push(token);
        Ok(())
    }

    fn step(&mut self) -> Result<Vec<(SeqId, Vec<f32>)>> {
        let tokens: Vec<Option<u32>> = self
            .rows
            .iter()
            .map(|r| r.as_ref().and_then(|r| r.pending.first().copied()))
            .collect();
        if tokens.iter().all(|t| t.is_none()) {
            return Ok(Vec::new());
        }
        if self.slots_dirty {
            let slots: Vec<Option<usize>> = self
                .rows
                .iter()
                .map(|r| r.as_ref().and_then(|r| r.slot))
                .collect();
            self.engine.set_adapters(&slots)?;
            self.slots_dirty = false;
        }
        self.engine.step_rows(&tokens)?;
        let mut ready = Vec::new();
        for (b, r) in self.rows.iter_mut().enumerate() {
            let Some(r) = r.as_mut() else { continue };
            if tokens[b].is_none() {
                continue;
            }
            r.pending.remove(0);
            r.run += 1;
            if r.pending.is_empty() {
                ready.push((b, r.id));
            }
        }
        if ready.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.engine.logits()?;
        let v = self.vocab;
        Ok(ready
            .into_iter()
            .map(|(b, id)| (id, logits[b * v..(b + 1) * v].to_vec()))
            .collect())
    }

    fn free(&mut self, seq: SeqId) {
        if let Some(row) = self.row_of(seq) {
            let slot = self.rows[row].take().and_then(|r| r.slot);
            self.release(slot);
            self.slots_dirty = true;
        }
    }

    fn len(&self) -> usize {
        self.rows.iter().filter(|r| r.is_some()).count()
    }
}
