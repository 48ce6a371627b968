//! Shapes, sequence buckets, the flat LoRA parameter layout and the host side of a micro-batch's
//! inputs (padding, label shifting), none of which touches the device.
//!
//! Token t = b * S + s of a bucket of S positions sits at position s of row b; the buffers are sized
//! for the largest bucket (`batch * seq` tokens) and a smaller bucket uses their first B * S rows.
//!
//! Pure host code for the CUDA training engine (`train::cuda_engine`), compiled without CUDA so
//! that its tests run in CI.

use crate::lora::Adapter;
use crate::models::llama::Llama;
use crate::train::loss::IGNORE_INDEX;
use crate::{Error, Result};

/// Sequence buckets are multiples of this many positions (capped at the engine's `seq`).
pub const BUCKET: usize = 64;

/// Alignment of each tensor in the flat parameter buffers, in elements (512 bytes of f32): keeps
/// every cuBLASLt operand 256-byte aligned (the alignment `Gemm::prepare` plans for) in f32 and bf16.
pub const PARAM_ALIGN: usize = 128;

/// By default the f32 attention-scores scratch holds at most this many bytes (P and dS, in T, at most as many
/// elements), unless one (row, kv head) pair's [G*S, S] block alone is larger. Attention runs over
/// the B * Hkv pairs in chunks that fit: at SmolLM2-135M batch 8 x 512 (24 pairs of 3 MiB) that is
/// one chunk, as unchunked; at 8 x 2048 (48 MiB each) 2 pairs a chunk, 12 chunks, instead of
/// 1.2 GB of scores. Chunks of 2 pairs still make [6144 x 2048 x 64] batched products, large
/// enough to keep the GPU busy.
pub const ATTENTION_SCRATCH_BYTES: usize = 128 << 20;

/// The model's shapes and the engine's batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rank: usize,
    pub batch: usize,
    /// Largest sequence length (the largest bucket).
    pub seq: usize,
    pub eps: f32,
    /// Most bytes of the f32 attention-scores scratch (see [`Dims::attention_scratch`]).
    pub attention_scratch_bytes: usize,
    /// Attention runs fused (kernels/flash_attention.cu: bf16, head dim 64 or 128): no scores
    /// scratch, the log-sum-exp of each query row saved per layer instead.
    pub flash_attention: bool,
    /// Activation checkpointing of layers `0..checkpointed_layers` (at most `layers`): they share
    /// one slot of the saved activations other than x (see
    /// `cuda_engine::EngineOptions::checkpointed_layers`); every other layer has its own.
    pub checkpointed_layers: usize,
    /// Selective recompute of layers `checkpointed_layers..checkpointed_layers +
    /// mlp_recomputed_layers`: they save everything but the MLP's gate and up outputs (two thirds
    /// of a layer's saved activations at Llama shapes), which their backward recomputes from the
    /// post-attention norm (two GEMMs instead of a whole layer forward). They share the g / u slot
    /// of the checkpointed layers ([`Dims::mlp_slots`]).
    pub mlp_recomputed_layers: usize,
    /// QLoRA: projections kept as GGML blocks, dequantized one layer at a time into a scratch of
    /// one layer's seven matrices in T (`cuda_engine::weights`).
    pub quantized_base: bool,
}

/// Where each layer keeps its saved activations other than x: the checkpointed layers (the first
/// `checkpointed`) share slot 0, recomputing theirs in the backward before using them; every other
/// layer has a slot of its own after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationSlots {
    pub layers: usize,
    pub checkpointed: usize,
}

impl ActivationSlots {
    /// Slots of each saved per-layer buffer.
    pub fn count(&self) -> usize {
        self.layers - self.checkpointed + usize::from(self.checkpointed > 0)
    }
    /// The slot of layer `layer`.
    pub fn of(&self, layer: usize) -> usize {
        if layer < self.checkpointed {
            0
        } else {
            layer - self.checkpointed + usize::from(self.checkpointed > 0)
        }
    }
}

impl Dims {
    /// Query heads per kv head.
    pub fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Width of q (and of the attention output).
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Width of k and v.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Slots of each saved per-layer activation other than x ([`ActivationSlots`]).
    pub fn activation_slots(&self) -> ActivationSlots {
        ActivationSlots {
            layers: self.layers,
            checkpointed: self.checkpointed_layers.min(self.layers),
        }
    }
    /// Slots of the saved gate and up outputs: shared by the checkpointed and the MLP-recomputed
    /// layers, one per other layer.
    pub fn mlp_slots(&self) -> ActivationSlots {
        ActivationSlots {
            layers: self.layers,
            checkpointed: (self.checkpointed_layers + self.mlp_recomputed_layers).min(self.layers),
        }
    }
    /// Whether layer `layer` recomputes its activations in the backward.
    pub fn checkpointed(&self, layer: usize) -> bool {
        layer < self.checkpointed_layers
    }
    /// Whether layer `layer` (not checkpointed) recomputes its gate and up outputs in the
    /// backward.
    pub fn mlp_recomputed(&self, layer: usize) -> bool {
        !self.checkpointed(layer) && layer < self.checkpointed_layers + self.mlp_recomputed_layers
    }
    /// Tokens of the largest bucket (rows of every token-major buffer).
    pub fn max_tokens(&self) -> usize {
        self.batch * self.seq
    }
    /// (row, kv head) pairs: the batch of the attention products, each one [G*S, S] block.
    pub fn attention_pairs(&self) -> usize {
        self.batch * self.kv_heads
    }
    /// Elements of one pair's scores at `s` positions: G * s * s.
    fn pair_scores(&self, s: usize) -> usize {
        self.groups() * s * s
    }
    /// Elements of each attention scratch buffer (scores f32; P and dS in T): whole pairs' blocks
    /// at the largest bucket, as many as fit `attention_scratch_bytes` of f32 (at least one);
    /// none with fused attention.
    pub fn attention_scratch(&self) -> usize {
        if self.flash_attention {
            return 0;
        }
        let pairs = (self.attention_scratch_bytes / 4 / self.pair_scores(self.seq).max(1))
            .clamp(1, self.attention_pairs());
        pairs * self.pair_scores(self.seq)
    }
    /// The attention chunks of a bucket of `s <= seq` positions: (first pair, pairs), in order,
    /// covering every pair once, each chunk's scores fitting [`Dims::attention_scratch`].
    pub fn attention_chunks(&self, s: usize) -> Vec<(usize, usize)> {
        let total = self.attention_pairs();
        let per = (self.attention_scratch() / self.pair_scores(s).max(1)).clamp(1, total.max(1));
        (0..total)
            .step_by(per)
            .map(|first| (first, per.min(total - first)))
            .collect()
    }
    /// Query rows of the attention at the largest bucket (B * H * S): the length of each layer's
    /// saved log-sum-exp with fused attention.
    pub fn attention_rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }
    /// Every bucket length, ascending: multiples of [`BUCKET`] below `seq`, then `seq`.
    pub fn buckets(&self) -> Vec<usize> {
        let mut out: Vec<usize> = (1..)
            .map(|i| i * BUCKET)
            .take_while(|&s| s < self.seq)
            .collect();
        out.push(self.seq);
        out
    }
    /// The bucket a micro-batch of `len` positions runs in.
    pub fn bucket_for(&self, len: usize) -> usize {
        len.div_ceil(BUCKET)
            .max(1)
            .saturating_mul(BUCKET)
            .min(self.seq)
    }
}

/// The seven projections of a layer, in `Llama::linear_layers` order.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
pub const Q: usize = 0;
pub const K: usize = 1;
pub const V: usize = 2;
pub const O: usize = 3;
pub const GATE: usize = 4;
pub const UP: usize = 5;
pub const DOWN: usize = 6;

/// Where one adapted projection's A [r, in] and B [out, r] sit in the flat parameter buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraSlot {
    /// Index in `Adapter::layers`.
    pub adapter_index: usize,
    /// PEFT module path.
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
    /// Element offsets of A and B.
    pub a_offset: usize,
    pub b_offset: usize,
}

/// The flat layout of every LoRA parameter: `slots[layer][projection]`.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    pub slots: Vec<[Option<LoraSlot>; 7]>,
    /// Elements of each flat buffer (params, grads, moments), padding included.
    pub total: usize,
    pub rank: usize,
    /// alpha / r (or alpha / sqrt(r)).
    pub scale: f32,
    /// LoRA dropout probability of every adapted projection's input (PEFT's `lora_dropout`).
    pub dropout: f32,
}

fn align(n: usize) -> usize {
    n.div_ceil(PARAM_ALIGN) * PARAM_ALIGN
}

impl ParamLayout {
    /// Maps every adapter layer to (decoder layer, projection) and gives it offsets; errors name an
    /// adapted module that is not one of the seven projections, or a shape that does not fit.
    pub fn new(model: &Llama, adapter: &Adapter) -> Result<Self> {
        let layers = model.config().num_hidden_layers;
        let rank = adapter.config.r;
        let mut slots: Vec<[Option<LoraSlot>; 7]> =
            (0..layers).map(|_| Default::default()).collect();
        let linears = model.linear_layers();
        let mut total = 0usize;
        for (index, l) in adapter.layers.iter().enumerate() {
            let pos = linears
                .iter()
                .position(|(p, _)| *p == l.path)
                .ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "CUDA training engine: adapted module `{}` is not a projection of the model",
                        l.path
                    ))
                })?;
            let (layer, proj) = (pos / 7, pos % 7);
            let linear = linears[pos].1;
            let (in_f, out_f) = (linear.in_features(), linear.out_features());
            let a_dims = l.a.as_tensor().dims().to_vec();
            let b_dims = l.b.as_tensor().dims().to_vec();
            if a_dims != [rank, in_f] || b_dims != [out_f, rank] {
                return Err(Error::InvalidRequest(format!(
                    "CUDA training engine: {}: lora_A {a_dims:?} / lora_B {b_dims:?}, expected [{rank}, {in_f}] / [{out_f}, {rank}]",
                    l.path
                )));
            }
            let a_offset = total;
            total += align(rank * in_f);
            let b_offset = total;
            total += align(out_f * rank);
            slots[layer][proj] = Some(LoraSlot {
                adapter_index: index,
                path: l.path.clone(),
                in_features: in_f,
                out_features: out_f,
                a_offset,
                b_offset,
            });
        }
        Ok(Self {
            slots,
            total: total.max(PARAM_ALIGN),
            rank,
            scale: adapter.config.scale() as f32,
            dropout: adapter.config.lora_dropout,
        })
    }

    /// Every slot, in adapter order (the order of `Adapter::vars`).
    pub fn by_adapter_order(&self) -> Vec<&LoraSlot> {
        let mut all: Vec<&LoraSlot> = self.slots.iter().flatten().flatten().collect();
        all.sort_by_key(|s| s.adapter_index);
        all
    }

    /// Row of each LoRA slot's xa in the stacked xa buffer: [layer][projection], None where the
    /// projection has no adapter. The first `checkpointed` layers (activation checkpointing) share
    /// the first rows, each numbered within itself; the other layers follow, numbered in layer
    /// then projection order.
    pub fn xa_index(&self, checkpointed: usize) -> Vec<[Option<usize>; 7]> {
        let adapted = |slots: &[Option<LoraSlot>; 7]| slots.iter().flatten().count();
        let shared = self.slots.iter().take(checkpointed).map(adapted).max();
        let mut next = shared.unwrap_or(0);
        self.slots
            .iter()
            .enumerate()
            .map(|(layer, slots)| {
                let mut local = 0;
                let counter = if layer < checkpointed {
                    &mut local
                } else {
                    &mut next
                };
                slots.each_ref().map(|slot| {
                    slot.as_ref().map(|_| {
                        *counter += 1;
                        *counter - 1
                    })
                })
            })
            .collect()
    }

    /// Rows of the stacked xa buffer that [`ParamLayout::xa_index`] numbers.
    pub fn xa_rows(&self, checkpointed: usize) -> usize {
        self.xa_index(checkpointed)
            .iter()
            .flatten()
            .flatten()
            .max()
            .map_or(0, |last| last + 1)
    }
}

/// One micro-batch's device inputs for a bucket of `seq` positions: ids i32 [batch * seq] (padding
/// 0) and shifted labels i32 (label[t] = labels[b][s + 1], -1 at the last position, for ignored
/// labels and for padding), and the number of counted labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInputs {
    pub ids: Vec<i32>,
    pub labels: Vec<i32>,
    pub counted: usize,
}

/// Pads and shifts a micro-batch of `ids.len() <= dims.batch` rows into the bucket of `seq`
/// positions. Errors name the row and position of an id or label outside the vocabulary.
pub fn host_inputs(
    dims: &Dims,
    seq: usize,
    ids: &[Vec<u32>],
    labels: &[Vec<i64>],
) -> Result<HostInputs> {
    let bad = |reason: String| Error::InvalidRequest(format!("CUDA training engine: {reason}"));
    if ids.len() > dims.batch {
        return Err(bad(format!(
            "{} rows exceed the engine's batch of {}",
            ids.len(),
            dims.batch
        )));
    }
    if ids.len() != labels.len() {
        return Err(bad(format!(
            "{} rows of ids, {} rows of labels",
            ids.len(),
            labels.len()
        )));
    }
    let n = dims.batch * seq;
    let mut out_ids = vec![0i32; n];
    let mut out_labels = vec![-1i32; n];
    let mut counted = 0;
    for (b, (row_ids, row_labels)) in ids.iter().zip(labels).enumerate() {
        if row_ids.len() > seq || row_labels.len() > seq {
            return Err(bad(format!(
                "row {b}: {} ids / {} labels exceed the bucket of {seq} positions",
                row_ids.len(),
                row_labels.len()
            )));
        }
        for (s, &id) in row_ids.iter().enumerate() {
            if id as usize >= dims.vocab {
                return Err(bad(format!(
                    "row {b} position {s}: token id {id} >= vocabulary {}",
                    dims.vocab
                )));
            }
            out_ids[b * seq + s] = id as i32;
        }
        for s in 1..row_labels.len() {
            let label = row_labels[s];
            if label == IGNORE_INDEX {
                continue;
            }
            if label < 0 || label as usize >= dims.vocab {
                return Err(bad(format!(
                    "row {b} position {s}: label {label} is neither -100 nor a token id < {}",
                    dims.vocab
                )));
            }
            out_labels[b * seq + s - 1] = label as i32;
            counted += 1;
        }
    }
    Ok(HostInputs {
        ids: out_ids,
        labels: out_labels,
        counted,
    })
}

/// The RoPE tables: cos and sin f32 [seq, head_dim / 2] of `angle = position * inv_freq[i]`,
/// computed in f32 as `models::llama` does.
pub fn rope_tables(inv_freq: &[f32], seq: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(seq * inv_freq.len());
    let mut sin = Vec::with_capacity(seq * inv_freq.len());
    for p in 0..seq {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(seq: usize) -> Dims {
        Dims {
            layers: 1,
            hidden: 8,
            ffn: 16,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
            vocab: 50,
            rank: 2,
            batch: 3,
            seq,
            eps: 1e-5,
            attention_scratch_bytes: ATTENTION_SCRATCH_BYTES,
            flash_attention: false,
            checkpointed_layers: 0,
            mlp_recomputed_layers: 0,
            quantized_base: false,
        }
    }

    #[test]
    fn xa_rows_are_numbered_across_layers_or_shared_by_the_checkpointed_ones() {
        let slot = || {
            Some(LoraSlot {
                adapter_index: 0,
                path: String::new(),
                in_features: 1,
                out_features: 1,
                a_offset: 0,
                b_offset: 0,
            })
        };
        let mut slots: Vec<[Option<LoraSlot>; 7]> = vec![Default::default(), Default::default()];
        (slots[0][Q], slots[0][V], slots[0][DOWN]) = (slot(), slot(), slot());
        slots[1][K] = slot();
        let layout = ParamLayout {
            slots,
            total: PARAM_ALIGN,
            rank: 1,
            scale: 1.0,
            dropout: 0.0,
        };
        let all = layout.xa_index(0);
        assert_eq!(all[0], [Some(0), None, Some(1), None, None, None, Some(2)]);
        assert_eq!(all[1], [None, Some(3), None, None, None, None, None]);
        assert_eq!(layout.xa_rows(0), 4);
        let shared = layout.xa_index(2);
        assert_eq!(shared[0], all[0]);
        assert_eq!(shared[1][K], Some(0));
        assert_eq!(layout.xa_rows(2), 3);
        // Layer 0 checkpointed (its 3 rows first), layer 1 after them; and the other way round.
        let first = layout.xa_index(1);
        assert_eq!(first[0], all[0]);
        assert_eq!(first[1][K], Some(3));
        assert_eq!(layout.xa_rows(1), 4);
        // More than the layers: every layer.
        assert_eq!(layout.xa_index(9), shared);
    }

    #[test]
    fn mlp_recomputed_layers_share_the_checkpointed_gate_and_up_slot() {
        let mut d = smollm2(512);
        (d.layers, d.checkpointed_layers, d.mlp_recomputed_layers) = (5, 2, 2);
        let (all, mlp) = (d.activation_slots(), d.mlp_slots());
        assert_eq!(all.count(), 4);
        assert_eq!(
            (0..5).map(|l| all.of(l)).collect::<Vec<_>>(),
            [0, 0, 1, 2, 3]
        );
        assert_eq!(mlp.count(), 2);
        assert_eq!(
            (0..5).map(|l| mlp.of(l)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1]
        );
        let recomputed: Vec<bool> = (0..5).map(|l| d.mlp_recomputed(l)).collect();
        assert_eq!(recomputed, [false, false, true, true, false]);
        // Without checkpointed layers the recomputed ones take slot 0 alone.
        d.checkpointed_layers = 0;
        assert_eq!(d.mlp_slots().count(), 4);
        assert!(d.mlp_recomputed(0) && d.mlp_recomputed(1) && !d.mlp_recomputed(2));
        // None: one slot per layer, as the other activations.
        d.mlp_recomputed_layers = 0;
        assert_eq!(d.mlp_slots(), d.activation_slots());
    }

    #[test]
    fn fused_attention_needs_no_scores_scratch() {
        let mut d = smollm2(2048);
        assert!(d.attention_scratch() > 0);
        d.flash_attention = true;
        assert_eq!(d.attention_scratch(), 0);
        assert_eq!(d.attention_rows(), 8 * 9 * 2048);
    }

    #[test]
    fn buckets_cover_every_length() {
        let d = dims(150);
        assert_eq!(d.buckets(), vec![64, 128, 150]);
        assert_eq!(d.bucket_for(1), 64);
        assert_eq!(d.bucket_for(64), 64);
        assert_eq!(d.bucket_for(65), 128);
        assert_eq!(d.bucket_for(129), 150);
        assert_eq!(dims(24).buckets(), vec![24]);
        assert_eq!(dims(128).buckets(), vec![64, 128]);
    }

    /// SmolLM2-135M's attention at batch 8.
    fn smollm2(seq: usize) -> Dims {
        Dims {
            layers: 30,
            hidden: 576,
            ffn: 1536,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
            rank: 16,
            batch: 8,
            seq,
            eps: 1e-5,
            attention_scratch_bytes: ATTENTION_SCRATCH_BYTES,
            flash_attention: false,
            checkpointed_layers: 0,
            mlp_recomputed_layers: 0,
            quantized_base: false,
        }
    }

    /// Chunks cover every pair once, in order, and each fits the scratch.
    fn assert_chunks_cover(d: &Dims, s: usize) -> Vec<(usize, usize)> {
        let chunks = d.attention_chunks(s);
        let mut next = 0;
        for &(first, pairs) in &chunks {
            assert_eq!(first, next, "{d:?} s {s}: {chunks:?}");
            assert!(pairs >= 1);
            assert!(
                pairs * d.groups() * s * s <= d.attention_scratch(),
                "{d:?} s {s}"
            );
            next += pairs;
        }
        assert_eq!(next, d.attention_pairs(), "{d:?} s {s}: {chunks:?}");
        chunks
    }

    #[test]
    fn attention_chunks_fit_the_scratch() {
        // 24 pairs of 3 x 512 x 512 f32 (3 MiB): one chunk, as without chunking.
        let d = smollm2(512);
        assert_eq!(assert_chunks_cover(&d, 512), vec![(0, 24)]);
        assert_eq!(d.attention_scratch(), 24 * 3 * 512 * 512);
        // 48 MiB a pair at 2048: 2 pairs a chunk, 12 chunks, scores within 128 MiB.
        let d = smollm2(2048);
        let chunks = assert_chunks_cover(&d, 2048);
        assert_eq!(chunks.len(), 12);
        assert!(chunks.iter().all(|&(_, p)| p == 2));
        assert!(d.attention_scratch() * 4 <= ATTENTION_SCRATCH_BYTES);
        // A smaller bucket of the same engine fits more pairs per chunk (9 of 3 x 960^2 in the
        // 2 x 3 x 2048^2 scratch: the last chunk of the 24 pairs holds 6).
        let chunks = assert_chunks_cover(&d, 960);
        assert_eq!(chunks, vec![(0, 9), (9, 9), (18, 6)]);
        assert_eq!(assert_chunks_cover(&d, 64), vec![(0, 24)]);
        // One pair larger than the budget: one pair a chunk.
        let mut big = smollm2(8192);
        big.batch = 3;
        assert!(big.groups() * 8192 * 8192 * 4 > ATTENTION_SCRATCH_BYTES);
        assert_eq!(assert_chunks_cover(&big, 8192).len(), 9);
        assert_eq!(big.attention_scratch(), 3 * 8192 * 8192);
        // Every bucket of an odd shape, with a scratch of 2.5 pairs at the largest bucket.
        let mut d = dims(150);
        d.attention_scratch_bytes = 5 * 150 * 150 * 4;
        assert_eq!(d.attention_scratch(), 2 * 2 * 150 * 150);
        assert_eq!(d.attention_chunks(150), vec![(0, 2), (2, 2), (4, 2)]);
        for s in d.buckets() {
            assert_chunks_cover(&d, s);
        }
    }

    #[test]
    fn inputs_are_shifted_and_padded() {
        let d = dims(8);
        let ids = vec![vec![5u32, 6, 7, 8], vec![9, 10]];
        let labels = vec![vec![-100i64, 6, -100, 8], vec![9, 10]];
        let got = host_inputs(&d, 5, &ids, &labels).unwrap();
        assert_eq!(got.ids.len(), 15);
        assert_eq!(&got.ids[..5], &[5, 6, 7, 8, 0]);
        assert_eq!(&got.ids[5..10], &[9, 10, 0, 0, 0]);
        assert_eq!(&got.labels[..5], &[6, -1, 8, -1, -1]);
        assert_eq!(&got.labels[5..10], &[10, -1, -1, -1, -1]);
        assert!(got.labels[10..].iter().all(|&l| l == -1));
        assert!(got.ids[10..].iter().all(|&i| i == 0));
        assert_eq!(got.counted, 3);
        assert_eq!(got.counted, crate::train::loss::counted_positions(&labels));
        assert!(host_inputs(&d, 5, &[vec![50]], &[vec![1]]).is_err());
        assert!(host_inputs(&d, 5, &[vec![1, 2]], &[vec![1, -3]]).is_err());
        assert!(host_inputs(&d, 3, &[vec![1, 2, 3, 4]], &[vec![1, 2, 3, 4]]).is_err());
    }
}
