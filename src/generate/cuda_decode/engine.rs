//! [`DecodeEngine`]: the buffers of one batch-1 decode (activations, KV cache, token/position, logits)
//! allocated once, the step as a fixed sequence of launches on Candle's stream, captured as a CUDA
//! graph on first use and replayed per token (eager launches, with the reason logged, when capture
//! fails).

use candle_core::Device;

use super::adapters::{AdapterPool, DecodeAdapter, DEFAULT_SLOTS};
use super::step::{Step, StepBuffers, K_CACHE};
use super::step_graph::StepGraph;
use super::weights::{DeviceMatrix, EngineWeights};
use super::EngineShape;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::WeightSource;
use crate::gpu::decode::launch::{attention_shared_bytes, DecodeKernels};
use crate::gpu::engine_error::EngineErrors;
use crate::models::kv_cache::KvCache;
use crate::{Error, Result};

/// The batched prefill ([`DecodeEngine::prefill`]), in its own file.
#[path = "prefill.rs"]
pub mod prefill;

pub use super::step_graph::StepMode;

pub(super) const ERR: EngineErrors = EngineErrors("CUDA decode engine");

/// Batch-1 decode of one model on one CUDA device. See the module documentation of
/// `generate::cuda_decode` for the step.
pub struct DecodeEngine {
    device: Device,
    kernels: DecodeKernels,
    shape: EngineShape,
    weights: EngineWeights,
    buffers: StepBuffers,
    /// The step without adapters, and the step with them (its own graph: 4 more launches a layer).
    steps: StepGraph,
    lora_steps: StepGraph,
    /// The adapter slots (made by the first [`DecodeEngine::load_adapter`]).
    adapters: Option<AdapterPool>,
    /// The slot the sequence decodes with, if any.
    adapter: Option<usize>,
    /// Position of the next token (= tokens in the cache).
    pos: usize,
    /// The batched prefill's kernels and chunk buffers, made by the first prefill.
    prefill: Option<prefill::PrefillState>,
}

fn check_matrix(m: &DeviceMatrix, rows: usize, cols: usize, what: &str) -> Result<()> {
    if m.rows != rows || m.cols != cols {
        return Err(Error::InvalidRequest(format!(
            "CUDA decode engine: {what} is [{}, {}], expected [{rows}, {cols}]",
            m.rows, m.cols
        )));
    }
    Ok(())
}

impl DecodeEngine {
    /// Builds the engine for `cfg` from `source` on `device` (CUDA): uploads the weights and
    /// allocates every buffer. Errors say why the model is not supported.
    pub fn new(cfg: &DecoderConfig, source: &dyn WeightSource, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(Error::InvalidRequest(format!(
                "the CUDA decode engine needs a CUDA device, got {device:?}"
            )));
        };
        let shape = EngineShape::new(cfg).map_err(|reason| {
            Error::InvalidRequest(format!("CUDA decode engine: unsupported model: {reason}"))
        })?;
        let kernels = DecodeKernels::load(dev).map_err(ERR.launch("(loading kernels)"))?;
        let stream = kernels.stream().clone();
        let weights = EngineWeights::load(cfg, &shape, source, &stream)?;
        let (h, qd) = (shape.hidden, shape.heads * shape.head_dim);
        for (i, l) in weights.layers.iter().enumerate() {
            let what = |m: &str| format!("layer {i} {m}");
            let rows: usize = l.qkv.iter().map(|m| m.rows).sum();
            for m in &l.qkv {
                check_matrix(m, m.rows, h, &what("q/k/v"))?;
            }
            if rows != shape.qkv_rows() {
                return Err(Error::InvalidRequest(format!(
                    "CUDA decode engine: layer {i} q/k/v have {rows} rows, expected {}",
                    shape.qkv_rows()
                )));
            }
            check_matrix(&l.o, h, qd, &what("o_proj"))?;
            check_matrix(&l.gate, shape.ffn, h, &what("gate_proj"))?;
            check_matrix(&l.up, shape.ffn, h, &what("up_proj"))?;
            check_matrix(&l.down, h, shape.ffn, &what("down_proj"))?;
        }
        check_matrix(&weights.embed, shape.vocab, h, "embed_tokens")?;
        check_matrix(weights.head(), shape.vocab, h, "lm_head")?;
        if attention_shared_bytes(shape.attention()) > 48 * 1024 {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine: {} heads of dim {} per kv head exceed the attention kernel's shared memory",
                shape.heads / shape.kv_heads,
                shape.head_dim
            )));
        }
        let buffers = StepBuffers::new(&shape, 1, &stream)?;
        tracing::info!(
            "CUDA decode engine: {} layers, {:.1} MB of weights per step, {} cache positions",
            shape.layers,
            weights.bytes_per_step() as f64 / 1e6,
            shape.max_seq
        );
        Ok(Self {
            device: device.clone(),
            kernels,
            shape,
            weights,
            buffers,
            steps: StepGraph::new("CUDA decode engine"),
            lora_steps: StepGraph::new("CUDA decode engine (adapters)"),
            adapters: None,
            adapter: None,
            pos: 0,
            prefill: None,
        })
    }

    /// The engine's shapes.
    pub fn shape(&self) -> &EngineShape {
        &self.shape
    }

    /// How steps run now (the adapter step's graph when an adapter is selected).
    pub fn mode(&self) -> &StepMode {
        self.step_graph().mode()
    }

    fn step_graph(&self) -> &StepGraph {
        if self.adapter.is_some() {
            &self.lora_steps
        } else {
            &self.steps
        }
    }

    /// Launches per step (with the selected adapter, if any).
    pub fn launches_per_step(&self) -> usize {
        super::step::launches_per_step(self.shape.layers)
    }

    /// Launches every later step eagerly (for comparisons; the graphs, if any, are kept).
    pub fn force_eager(&mut self, reason: &str) {
        self.steps.force_eager(reason);
        self.lora_steps.force_eager(reason);
    }

    /// Replays the graphs again from the next step, when captured.
    pub fn use_graph(&mut self) {
        self.steps.use_graph();
        self.lora_steps.use_graph();
    }

    /// Whether the step's mat-vecs quantize their input to int8 per 32 values where the weights'
    /// format allows (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K: the default, as llama.cpp and Candle's quantized
    /// matmul do; `WICK_DECODE_INT8=0` turns it off) or keep it in f32 (exact maths: logits within
    /// ~1e-6 of a dense f32 model, for comparisons). A change captures the steps again.
    pub fn use_int8_activations(&mut self, on: bool) {
        if self.kernels.int8_activations() != on {
            self.kernels.set_int8_activations(on);
            self.recapture_steps();
        }
    }

    /// Which launches take int8 activations (`Int8Policy::All`: every one that can, for checks).
    /// Captures the steps again.
    pub fn use_int8_policy(&mut self, policy: crate::gpu::decode::launch::Int8Policy) {
        self.kernels.set_int8_policy(policy);
        self.recapture_steps();
    }

    /// Both captured steps dropped: the next step captures again.
    fn recapture_steps(&mut self) {
        self.steps.recapture();
        self.lora_steps.recapture();
    }

    /// Writes `adapter` into adapter slot `slot` (`key`: its identity for
    /// [`DecodeEngine::adapter_slot`]). The first load makes a pool of [`DEFAULT_SLOTS`] slots of
    /// rank max(16, the adapter's); an adapter of a larger rank than the pool's makes a new pool
    /// (the slots loaded before are dropped, the adapter step is captured again). Loading into a
    /// pool never invalidates the captured step: only the slot's contents change.
    pub fn load_adapter(
        &mut self,
        slot: usize,
        adapter: &DecodeAdapter,
        key: Option<Vec<candle_core::TensorId>>,
    ) -> Result<()> {
        let stream = self.kernels.stream().clone();
        let rank = adapter.rank();
        if self.adapters.as_ref().is_none_or(|p| p.rank() < rank) {
            if self.adapters.is_some() {
                tracing::info!(
                    "CUDA decode engine: a rank-{rank} adapter: adapter slots rebuilt, loaded adapters dropped"
                );
            }
            self.adapters = None;
            self.adapter = None;
            self.lora_steps.recapture();
            self.adapters = Some(AdapterPool::new(
                &self.shape,
                DEFAULT_SLOTS,
                rank.max(16),
                1,
                &stream,
            )?);
        }
        let pool = self.adapters.as_mut().expect("made above");
        pool.load(slot, adapter, key, &stream)
    }

    /// The slot holding the adapter of `key`; when absent, loads it (from `make`) into a free slot,
    /// or over slot 0 when every slot is taken.
    pub fn adapter_slot(
        &mut self,
        key: Vec<candle_core::TensorId>,
        make: impl FnOnce() -> Result<DecodeAdapter>,
    ) -> Result<usize> {
        if let Some(slot) = self.adapters.as_ref().and_then(|p| p.find(&key)) {
            return Ok(slot);
        }
        let adapter = make()?;
        let slot = match &self.adapters {
            Some(p) if p.rank() >= adapter.rank() => p.free_slot().unwrap_or(0),
            _ => 0,
        };
        self.load_adapter(slot, &adapter, Some(key))?;
        Ok(slot)
    }

    /// Frees adapter slot `slot` (a sequence decoding with it goes back to no adapter).
    pub fn unload_adapter(&mut self, slot: usize) {
        if let Some(p) = self.adapters.as_mut() {
            p.unload(slot);
        }
        if self.adapter == Some(slot) {
            self.adapter = None;
        }
    }

    /// Decodes the next steps with the adapter in `slot`, or with none.
    pub fn set_adapter(&mut self, slot: Option<usize>) -> Result<()> {
        if let Some(slot) = slot {
            let stream = self.kernels.stream().clone();
            let pool = self.adapters.as_mut().ok_or_else(|| {
                Error::InvalidRequest("CUDA decode engine: no adapter is loaded".into())
            })?;
            pool.set_sequence_slots(&[Some(slot)], &stream)?;
        }
        self.adapter = slot;
        Ok(())
    }

    /// The adapter slot the sequence decodes with.
    pub fn adapter(&self) -> Option<usize> {
        self.adapter
    }

    /// Bytes of weights read per step.
    pub fn weight_bytes_per_step(&self) -> usize {
        self.weights.bytes_per_step()
    }

    /// Tokens in the cache (the position of the next token).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets the sequence: the next token takes position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Takes over the positions `0..cache.len()` of a Candle KV cache (`models::kv_cache`, filled by
    /// the batched `Llama::forward`, keys after RoPE in the same half-split convention): copies each
    /// layer's keys and values, `[1, kv_heads, len, head_dim]`, into the engine's
    /// `[max_seq, kv_heads, head_dim]` f32 layout on the device, and sets the position to `len`, so
    /// the next [`DecodeEngine::step`] decodes the token after the prompt.
    pub fn load_prefix(&mut self, cache: &KvCache) -> Result<()> {
        let s = self.shape;
        let len = cache.len();
        if len > s.max_seq {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine: {len} cached positions exceed its cache of {}",
                s.max_seq
            )));
        }
        let row = s.kv_heads * s.head_dim;
        let stream = self.kernels.stream().clone();
        for layer in 0..s.layers {
            let (k, v) = cache.layer_views(layer)?.ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "CUDA decode engine: the prefill cache has no layer {layer}"
                ))
            })?;
            for (src, slot, what) in [(k, K_CACHE, "keys"), (v, K_CACHE + 1, "values")] {
                let ctx = |e: candle_core::Error| Error::Candle {
                    context: format!("CUDA decode engine: prefill {what} of layer {layer}"),
                    source: e,
                };
                // [1, kv, len, d] -> [len, kv, d], f32, contiguous.
                let t = src
                    .to_dtype(candle_core::DType::F32)
                    .and_then(|t| t.squeeze(0))
                    .and_then(|t| t.transpose(0, 1))
                    .and_then(|t| t.contiguous())
                    .map_err(ctx)?;
                let dims = t.dims().to_vec();
                if dims != [len, s.kv_heads, s.head_dim] {
                    return Err(Error::InvalidRequest(format!(
                        "CUDA decode engine: prefill {what} of layer {layer} are {dims:?}, expected [{len}, {}, {}]",
                        s.kv_heads, s.head_dim
                    )));
                }
                let (storage, layout) = t.storage_and_layout();
                let candle_core::Storage::Cuda(cs) = &*storage else {
                    return Err(Error::InvalidRequest(
                        "CUDA decode engine: the prefill cache is not on a CUDA device".into(),
                    ));
                };
                let src_slice = cs.as_cuda_slice::<f32>().map_err(ctx)?;
                let start = layout.start_offset();
                let n = len * row;
                let src_view = src_slice.slice(start..start + n);
                let base = layer * s.max_seq * row;
                let mut dst = self.buffers.owned[slot].slice_mut(base..base + n);
                stream
                    .memcpy_dtod(&src_view, &mut dst)
                    .map_err(|e| ERR.driver("copying the prefill cache", e))?;
            }
        }
        self.pos = len;
        Ok(())
    }

    /// The fixed launch sequence of one step (what the graph records).
    fn launch_step(&self) -> Result<()> {
        self.launch_step_marked(&mut |_| Ok(()))
    }

    /// Launches the step for the token and position of the last [`DecodeEngine::step`] again,
    /// eagerly (it rewrites the same cache row and logits), calling `mark(kind)` after each launch:
    /// `wick bench overhead` records a CUDA event there to time each kernel kind
    /// (`cuda_decode::profile`). Also the body of every eager step and of the graph capture.
    pub fn launch_step_marked(
        &self,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        Step {
            kernels: &self.kernels,
            shape: &self.shape,
            weights: &self.weights,
            buffers: &self.buffers,
            lora: self.adapters.as_ref().filter(|_| self.adapter.is_some()),
        }
        .launch(mark)
    }

    /// Replays the captured step graph for the token and position of the last
    /// [`DecodeEngine::step`] again, without uploading them (for `cuda_decode::profile`); false
    /// when no graph was captured.
    pub fn replay_last_step(&self) -> Result<bool> {
        match self.step_graph().graph() {
            Some(g) => g.replay().map(|()| true),
            None => Ok(false),
        }
    }

    /// Runs the step for `token` at the current position (asynchronously: read the result with
    /// [`DecodeEngine::greedy`] or [`DecodeEngine::logits`]) and advances the position.
    pub fn step(&mut self, token: u32) -> Result<()> {
        if self.pos >= self.shape.max_seq {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine: the cache holds {} positions",
                self.shape.max_seq
            )));
        }
        if token as usize >= self.shape.vocab {
            return Err(Error::InvalidRequest(format!(
                "token id {token} is outside the vocabulary of {} tokens",
                self.shape.vocab
            )));
        }
        let stream = self.kernels.stream().clone();
        let state = [token as i32, self.pos as i32];
        stream
            .memcpy_htod(&state, &mut self.buffers.state)
            .map_err(|e| ERR.driver("writing token and position", e))?;
        // The step graph lives beside the buffers it launches on; take it out while it runs them.
        let graphs = if self.adapter.is_some() {
            &mut self.lora_steps
        } else {
            &mut self.steps
        };
        let mut steps = std::mem::replace(graphs, StepGraph::stand_in("CUDA decode engine"));
        let ran = steps.run(&self.device, || self.launch_step());
        if self.adapter.is_some() {
            self.lora_steps = steps;
        } else {
            self.steps = steps;
        }
        ran?;
        self.pos += 1;
        Ok(())
    }

    /// The greedy token of the last step and its log-probability (waits for the step).
    pub fn greedy(&self) -> Result<(u32, f32)> {
        let mut out = [0u32; 2];
        self.kernels
            .stream()
            .memcpy_dtoh(&self.buffers.result, &mut out)
            .map_err(|e| ERR.driver("reading the greedy token", e))?;
        self.kernels
            .stream()
            .synchronize()
            .map_err(|e| ERR.driver("step", e))?;
        Ok((out[0], f32::from_bits(out[1])))
    }

    /// The logits [vocab] of the last step (waits for the step).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let stream = self.kernels.stream();
        let out = stream
            .clone_dtoh(&self.buffers.logits)
            .map_err(|e| ERR.driver("reading logits", e))?;
        stream.synchronize().map_err(|e| ERR.driver("step", e))?;
        Ok(out)
    }

    /// Waits for every launched step.
    pub fn synchronize(&self) -> Result<()> {
        self.kernels
            .stream()
            .synchronize()
            .map_err(|e| ERR.driver("synchronize", e))
    }
}
