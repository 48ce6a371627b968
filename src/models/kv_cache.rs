//! The key/value cache of a decoder: per layer, keys and values of every position already seen.
//!
//! Layout per layer: k, v: [batch, kv_heads, capacity, head_dim], preallocated and written in place
//! (`slice_set`), so a decode step copies only the new position's keys and values. Attention reads the
//! filled prefix as a strided view `[batch, kv_heads, len, head_dim]` that matmul accepts without a
//! copy (the batch and head strides stay mergeable). The buffers start small and double up to the model's
//! context, so a short chat does not reserve memory for 8k or 128k positions.

use candle_core::{DType, Device, Tensor};

use crate::formats::config::DecoderConfig;
use crate::{Context, Error, Result};

/// Positions reserved by the first allocation when no capacity is given.
const INITIAL_CAPACITY: usize = 256;

/// One layer's keys and values.
#[derive(Debug, Clone)]
struct LayerCache {
    /// k: [batch, kv_heads, capacity, head_dim]
    k: Tensor,
    /// v: [batch, kv_heads, capacity, head_dim]
    v: Tensor,
}

/// Keys and values of every layer for the positions `0..len()`.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// Positions already stored (the position offset of the next token).
    len: usize,
    /// Positions the buffers hold now.
    capacity: usize,
    /// Positions the model supports; the buffers never grow past it.
    max_len: usize,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    /// An empty cache for `batch` sequences of the model `cfg`, growing on demand up to the context.
    pub fn new(cfg: &DecoderConfig, batch: usize, dtype: DType, device: &Device) -> Self {
        Self::with_capacity(cfg, batch, 0, dtype, device)
    }

    /// An empty cache that reserves `capacity` positions at first use (clamped to the context), for
    /// callers that know the prompt and generation length up front.
    pub fn with_capacity(
        cfg: &DecoderConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            layers: vec![None; cfg.num_hidden_layers],
            len: 0,
            capacity: capacity.min(cfg.max_position_embeddings),
            max_len: cfg.max_position_embeddings,
            batch,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Number of positions stored: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache can hold (the model's context).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Batch size the cache was made for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forgets every position (keeps the buffers for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions `len..`, e.g. to re-run a prompt suffix. `len` must not exceed `self.len()`.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `new_tokens` more positions fit the context; called before any layer runs so a long
    /// prompt fails with a clear message instead of a shape error deep in attention.
    pub fn check_room(&self, new_tokens: usize) -> Result<()> {
        if self.len + new_tokens > self.max_len {
            return Err(Error::InvalidRequest(format!(
                "{} tokens already in the context plus {new_tokens} new tokens exceed the model's \
                 context of {} tokens",
                self.len, self.max_len
            )));
        }
        Ok(())
    }

    /// Stores layer `layer`'s keys and values for the new positions `len()..len()+t` and returns the
    /// keys and values of every position `0..len()+t` as strided views. Call `advance(t)` once every
    /// layer has appended.
    /// k, v: [batch, kv_heads, t, head_dim] -> ([batch, kv_heads, len + t, head_dim], same for v).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2).context("kv cache: new keys")?;
        let needed = self.len + t;
        if needed > self.max_len {
            return Err(Error::InvalidRequest(format!(
                "position {needed} is past the model's context of {} tokens",
                self.max_len
            )));
        }
        if layer >= self.layers.len() {
            return Err(Error::InvalidRequest(format!(
                "kv cache has {} layers, layer {layer} asked for",
                self.layers.len()
            )));
        }
        if needed > self.capacity {
            self.grow(needed)?;
        }
        if self.layers[layer].is_none() {
            self.layers[layer] = Some(self.allocate()?);
        }
        let entry = self.layers[layer]
            .as_mut()
            .expect("the layer's buffers were allocated just above");
        let k = k.contiguous().context("kv cache: contiguous keys")?;
        let v = v.contiguous().context("kv cache: contiguous values")?;
        entry
            .k
            .slice_set(&k, 2, self.len)
            .context("kv cache: storing keys")?;
        entry
            .v
            .slice_set(&v, 2, self.len)
            .context("kv cache: storing values")?;
        let keys = entry.k.narrow(2, 0, needed).context("kv cache: key view")?;
        let values = entry
            .v
            .narrow(2, 0, needed)
            .context("kv cache: value view")?;
        Ok((keys, values))
    }

    /// Layer `layer`'s keys and values of positions `0..len()` as views
    /// `[batch, kv_heads, len, head_dim]` (keys after RoPE), `None` before the layer's first append.
    pub fn layer_views(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        let Some(Some(entry)) = self.layers.get(layer) else {
            return Ok(None);
        };
        let k = entry
            .k
            .narrow(2, 0, self.len)
            .context("kv cache: key view")?;
        let v = entry
            .v
            .narrow(2, 0, self.len)
            .context("kv cache: value view")?;
        Ok(Some((k, v)))
    }

    /// Records that `t` positions were appended to every layer.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Makes every layer's buffers hold at least `needed` positions, doubling the capacity (capped at
    /// the context) and copying the `len()` positions stored. Layers append in order within a step, so
    /// the first layer to need more room is the one that runs first and no layer holds more than `len()`
    /// valid positions here.
    fn grow(&mut self, needed: usize) -> Result<()> {
        let mut capacity = if self.capacity == 0 {
            INITIAL_CAPACITY
        } else {
            self.capacity
        };
        while capacity < needed {
            capacity *= 2;
        }
        self.capacity = capacity.min(self.max_len);
        let shape = (self.batch, self.kv_heads, self.capacity, self.head_dim);
        for entry in self.layers.iter_mut().filter(|e| e.is_some()) {
            let k =
                Tensor::zeros(shape, self.dtype, &self.device).context("kv cache: allocating")?;
            let v =
                Tensor::zeros(shape, self.dtype, &self.device).context("kv cache: allocating")?;
            if let Some(old) = entry.as_ref() {
                if self.len > 0 {
                    let old_k = old.k.narrow(2, 0, self.len)?.contiguous()?;
                    let old_v = old.v.narrow(2, 0, self.len)?.contiguous()?;
                    k.slice_set(&old_k, 2, 0)
                        .context("kv cache: copying keys")?;
                    v.slice_set(&old_v, 2, 0)
                        .context("kv cache: copying values")?;
                }
            }
            *entry = Some(LayerCache { k, v });
        }
        Ok(())
    }

    /// Allocates one layer's buffers at the current capacity.
    fn allocate(&self) -> Result<LayerCache> {
        let shape = (self.batch, self.kv_heads, self.capacity, self.head_dim);
        Ok(LayerCache {
            k: Tensor::zeros(shape, self.dtype, &self.device).context("kv cache: allocating")?,
            v: Tensor::zeros(shape, self.dtype, &self.device).context("kv cache: allocating")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::config::Architecture;

    fn config(layers: usize, context: usize) -> DecoderConfig {
        DecoderConfig {
            architecture: Architecture::Llama,
            vocab_size: 16,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: layers,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: context,
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    #[test]
    fn views_hold_everything_appended_across_growth() {
        let cfg = config(2, 40);
        let mut cache = KvCache::with_capacity(&cfg, 1, 2, DType::F32, &Device::Cpu);
        let mut all_k: Vec<Vec<Tensor>> = vec![Vec::new(), Vec::new()];
        let mut seed = 0.0f32;
        for &t in &[3usize, 1, 1, 6, 1, 9, 1] {
            for (layer, layer_keys) in all_k.iter_mut().enumerate() {
                let values: Vec<f32> = (0..2 * t * 2)
                    .map(|i| {
                        seed += 1.0;
                        (seed * 0.37 + i as f32).sin() + layer as f32
                    })
                    .collect();
                let k = Tensor::from_vec(values, (1, 2, t, 2), &Device::Cpu).unwrap();
                let v = (&k * 2.0).unwrap();
                let (keys, vals) = cache.append(layer, &k, &v).unwrap();
                layer_keys.push(k);
                let expected = Tensor::cat(layer_keys, 2).unwrap();
                let diff = (keys - &expected)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
                let diff = (vals - (expected * 2.0).unwrap()).unwrap().abs().unwrap();
                assert_eq!(diff.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            }
            cache.advance(t);
        }
        assert_eq!(cache.len(), 22);
        assert!(cache.check_room(18).is_ok());
        assert!(matches!(
            cache.check_room(19),
            Err(Error::InvalidRequest(_))
        ));
    }
}
