//! [`PrefixCache`]: the keys and values of prompt prefixes the CPU decoder has already read, per
//! (adapter, scale), so a request whose prompt starts the same way (a shared system prompt, a chat
//! whose earlier turns come back with every request) reads only the rest. vLLM's automatic prefix
//! caching, at the scale of a CPU server: whole prefixes in blocks of [`PREFIX_BLOCK`] tokens, a
//! byte budget, least recently used out first.
//!
//! Reuse never changes a request's output: the cached keys and values are what the model computed
//! for the same tokens at the same positions with the same adapter, and every row of the ragged
//! forward is computed on its own (its result does not depend on the rows beside it or on where a
//! prefill piece starts), so a request continues exactly as if it had read the whole prompt
//! (`tests/serve_prefix_cache.rs` compares the outputs).

use candle_core::Tensor;

use crate::generate::GenerationAdapter;
use crate::models::kv_cache::KvCache;
use crate::{Context, Result};

/// Prefixes are kept and reused in whole blocks of this many tokens.
pub const PREFIX_BLOCK: usize = 16;

/// Which adapter (and request scale) computed a prefix: its keys and values hold for it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterKey(Option<(u64, u32)>);

impl AdapterKey {
    /// The key of a sequence's adapter (None: the base model).
    pub fn of(adapter: Option<&GenerationAdapter>) -> Self {
        Self(adapter.map(|a| (a.adapter.id(), a.scale.to_bits())))
    }
}

#[derive(Debug)]
struct Entry {
    adapter: AdapterKey,
    tokens: Vec<u32>,
    /// Per layer: keys and values of positions 0..tokens.len(), [1, kv_heads, len, head_dim].
    layers: Vec<(Tensor, Tensor)>,
    bytes: usize,
    last_used: u64,
}

/// What a lookup found: how many leading prompt tokens a new cache already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reused(pub usize);

/// The cache of prompt prefixes. `budget_bytes == 0` turns it off.
#[derive(Debug)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    tick: u64,
    /// Prompt tokens read from the cache instead of the model, over the cache's life.
    pub reused_tokens: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// An empty cache holding at most `budget_bytes` of keys and values.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget_bytes,
            tick: 0,
            reused_tokens: 0,
        }
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Prefixes held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no prefix is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fills the empty `cache` with the longest cached prefix of `prompt` for `adapter`, in whole
    /// blocks and leaving at least the prompt's last token to run (its logits start the answer).
    pub fn restore(
        &mut self,
        adapter: AdapterKey,
        prompt: &[u32],
        cache: &mut KvCache,
    ) -> Result<Reused> {
        if !cache.is_empty() || prompt.len() <= PREFIX_BLOCK {
            return Ok(Reused(0));
        }
        let most = (prompt.len() - 1) / PREFIX_BLOCK * PREFIX_BLOCK;
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == adapter)
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(most)))
            .max_by_key(|&(_, n)| n);
        let Some((i, n)) = best else {
            return Ok(Reused(0));
        };
        let n = n / PREFIX_BLOCK * PREFIX_BLOCK;
        if n == 0 {
            return Ok(Reused(0));
        }
        self.tick += 1;
        let entry = &mut self.entries[i];
        entry.last_used = self.tick;
        for (layer, (k, v)) in entry.layers.iter().enumerate() {
            let k = k.narrow(2, 0, n).context("prefix cache: keys")?;
            let v = v.narrow(2, 0, n).context("prefix cache: values")?;
            cache.append(layer, &k, &v)?;
        }
        cache.advance(n);
        self.reused_tokens += n as u64;
        Ok(Reused(n))
    }

    /// Keeps the whole blocks of `prompt` that `cache` holds (a sequence that has just read its
    /// prompt), unless a held prefix for the same adapter already covers them; evicts the least
    /// recently used prefixes to stay within the budget.
    pub fn insert(&mut self, adapter: AdapterKey, prompt: &[u32], cache: &KvCache) -> Result<()> {
        let n = prompt.len().min(cache.len()) / PREFIX_BLOCK * PREFIX_BLOCK;
        if n == 0 || self.budget_bytes == 0 {
            return Ok(());
        }
        let tokens = &prompt[..n];
        if self
            .entries
            .iter()
            .any(|e| e.adapter == adapter && common_prefix(&e.tokens, tokens) == n)
        {
            return Ok(());
        }
        let mut layers = Vec::new();
        let mut bytes = 0;
        for layer in 0.. {
            let Some((k, v)) = cache.layer_views(layer)? else {
                break;
            };
            // A compact copy: the sequence's buffers are freed with it and reserve its whole length.
            let k = k.narrow(2, 0, n).and_then(|t| t.copy());
            let v = v.narrow(2, 0, n).and_then(|t| t.copy());
            let (k, v) = (
                k.context("prefix cache: copying keys")?,
                v.context("prefix cache: copying values")?,
            );
            bytes += (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes();
            layers.push((k, v));
        }
        if layers.is_empty() || bytes > self.budget_bytes {
            return Ok(());
        }
        // A held prefix this one extends is now redundant.
        self.entries.retain(|e| {
            !(e.adapter == adapter && common_prefix(&e.tokens, tokens) == e.tokens.len())
        });
        while self.bytes() + bytes > self.budget_bytes {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
        self.tick += 1;
        self.entries.push(Entry {
            adapter,
            tokens: tokens.to_vec(),
            layers,
            bytes,
            last_used: self.tick,
        });
        Ok(())
    }
}
