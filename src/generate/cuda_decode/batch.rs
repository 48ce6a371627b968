//! [`BatchDecodeEngine`]: the decode engine's step for up to [`MAX_DECODE_BATCH`] sequences at once
//! (llama-batched-bench's "parallel sequences"). Decode is bound by reading the weights; the batched
//! mat-vec kernels read each weight once for every sequence, so a step of 8 tokens costs little more
//! than a step of one. Same launches as the batch-1 step (153 for SmolLM2-135M), each covering the
//! batch: embed and attention take the sequence from the grid, argmax one block per sequence.
//!
//! Every sequence has its own KV cache and position (state [batch, 2] = token, position, in device
//! memory), so the captured graph replays for any positions. The sequences advance together (a row
//! may sit idle: [`BatchDecodeEngine::step_rows`]); a prompt is fed one token per step (the batched
//! prefill is the batch-1 engine's business).

use candle_core::Device;

use super::adapters::{AdapterPool, DecodeAdapter, DEFAULT_SLOTS};
use super::step::{Step, StepBuffers};
use super::step_graph::{StepGraph, StepMode};
use super::weights::EngineWeights;
use super::EngineShape;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::WeightSource;
use crate::gpu::decode::launch::{DecodeKernels, MAX_BATCH_SHARED_BYTES, MAX_DECODE_BATCH};
use crate::gpu::engine_error::EngineErrors;
use crate::{Error, Result};

const ERR: EngineErrors = EngineErrors("CUDA batch decode engine");

/// Decode of `batch` sequences of one model on one CUDA device.
pub struct BatchDecodeEngine {
    device: Device,
    kernels: DecodeKernels,
    shape: EngineShape,
    weights: EngineWeights,
    batch: usize,
    buffers: StepBuffers,
    /// The step without adapters, and with them (used when any sequence has an adapter).
    steps: StepGraph,
    lora_steps: StepGraph,
    adapters: Option<AdapterPool>,
    /// Each sequence's adapter slot.
    slots: Vec<Option<usize>>,
    /// Position of each sequence's next token.
    positions: Vec<usize>,
}

impl BatchDecodeEngine {
    /// Builds the engine for `batch` sequences of at most `positions` tokens each (prompt and
    /// generated; the caches are sized for it).
    pub fn new(
        cfg: &DecoderConfig,
        source: &dyn WeightSource,
        device: &Device,
        batch: usize,
        positions: usize,
    ) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(Error::InvalidRequest(format!(
                "the CUDA batch decode engine needs a CUDA device, got {device:?}"
            )));
        };
        if batch == 0 || batch > MAX_DECODE_BATCH {
            return Err(Error::InvalidRequest(format!(
                "CUDA batch decode engine: batch {batch} is outside 1..={MAX_DECODE_BATCH}"
            )));
        }
        let mut shape = EngineShape::new(cfg).map_err(|reason| {
            Error::InvalidRequest(format!("CUDA decode engine: unsupported model: {reason}"))
        })?;
        if positions == 0 || positions > shape.max_seq {
            return Err(Error::InvalidRequest(format!(
                "CUDA batch decode engine: {positions} positions per sequence, the model allows 1..={}",
                shape.max_seq
            )));
        }
        shape.max_seq = positions;
        let widest = shape
            .hidden
            .max(shape.ffn)
            .max(shape.heads * shape.head_dim);
        if batch * widest * 4 > MAX_BATCH_SHARED_BYTES {
            return Err(Error::InvalidRequest(format!(
                "CUDA batch decode engine: {batch} rows of {widest} values exceed the mat-vec kernels' shared memory"
            )));
        }
        let kernels = DecodeKernels::load(dev).map_err(ERR.launch("(loading kernels)"))?;
        let stream = kernels.stream().clone();
        let weights = EngineWeights::load(cfg, &shape, source, &stream)?;
        let buffers = StepBuffers::new(&shape, batch, &stream)?;
        Ok(Self {
            device: device.clone(),
            kernels,
            shape,
            weights,
            batch,
            buffers,
            steps: StepGraph::new("CUDA batch decode engine"),
            lora_steps: StepGraph::new("CUDA batch decode engine (adapters)"),
            adapters: None,
            slots: vec![None; batch],
            positions: vec![0; batch],
        })
    }

    /// Waits for everything queued on the engine's stream (the weights' upload included).
    pub fn synchronize(&self) -> Result<()> {
        self.kernels
            .stream()
            .synchronize()
            .map_err(|e| ERR.driver("synchronize", e))
    }

    /// Sequences per step.
    pub fn batch(&self) -> usize {
        self.batch
    }

    fn lora_active(&self) -> bool {
        self.slots.iter().any(|s| s.is_some())
    }

    /// How steps run now.
    pub fn mode(&self) -> &StepMode {
        if self.lora_active() {
            self.lora_steps.mode()
        } else {
            self.steps.mode()
        }
    }

    /// Launches per step (the batch-1 engine's count: every launch covers the batch).
    pub fn launches_per_step(&self) -> usize {
        super::step::launches_per_step(self.shape.layers)
    }

    /// Launches every later step eagerly (for comparisons).
    pub fn force_eager(&mut self, reason: &str) {
        self.steps.force_eager(reason);
        self.lora_steps.force_eager(reason);
    }

    /// Replays the graphs again, when captured.
    pub fn use_graph(&mut self) {
        self.steps.use_graph();
        self.lora_steps.use_graph();
    }

    /// [`super::DecodeEngine::use_int8_activations`]: at batch 1 the step takes the batch-1
    /// mat-vecs, which quantize their input to int8 by default; the batched ones keep f32.
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

    /// Writes `adapter` into slot `slot` of a pool of max([`DEFAULT_SLOTS`], batch) slots of rank
    /// `rank` (made by the first load; at least the adapter's rank). Loading never invalidates
    /// the captured step: only the slot's contents change.
    pub fn load_adapter(
        &mut self,
        slot: usize,
        adapter: &DecodeAdapter,
        rank: usize,
    ) -> Result<()> {
        let stream = self.kernels.stream().clone();
        if self
            .adapters
            .as_ref()
            .is_none_or(|p| p.rank() < adapter.rank())
        {
            self.slots.iter_mut().for_each(|s| *s = None);
            self.lora_steps.recapture();
            self.adapters = Some(AdapterPool::new(
                &self.shape,
                DEFAULT_SLOTS.max(self.batch),
                rank.max(adapter.rank()),
                self.batch,
                &stream,
            )?);
        }
        let pool = self.adapters.as_mut().expect("made above");
        pool.load(slot, adapter, None, &stream)
    }

    /// Adapter slots of the pool [`BatchDecodeEngine::load_adapter`] makes (at least one per row).
    pub fn adapter_slots(&self) -> usize {
        DEFAULT_SLOTS.max(self.batch)
    }

    /// Frees slot `slot`; sequences that used it decode without an adapter.
    pub fn unload_adapter(&mut self, slot: usize) -> Result<()> {
        if let Some(p) = self.adapters.as_mut() {
            p.unload(slot);
        }
        let slots: Vec<Option<usize>> = self
            .slots
            .iter()
            .map(|&s| s.filter(|&s| s != slot))
            .collect();
        self.set_adapters(&slots)
    }

    /// Sequence b decodes the next steps with the adapter in slot `slots[b]`, or with none.
    pub fn set_adapters(&mut self, slots: &[Option<usize>]) -> Result<()> {
        if slots.len() != self.batch {
            return Err(Error::InvalidRequest(format!(
                "CUDA batch decode engine: {} adapter slots for a batch of {}",
                slots.len(),
                self.batch
            )));
        }
        if let Some(pool) = self.adapters.as_mut() {
            let stream = self.kernels.stream().clone();
            pool.set_sequence_slots(slots, &stream)?;
        } else if slots.iter().any(|s| s.is_some()) {
            return Err(Error::InvalidRequest(
                "CUDA batch decode engine: no adapter is loaded".into(),
            ));
        }
        self.slots = slots.to_vec();
        Ok(())
    }

    /// Forgets every sequence: the next tokens take position 0.
    pub fn reset(&mut self) {
        self.positions.iter_mut().for_each(|p| *p = 0);
    }

    /// Position of each sequence's next token.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    fn launch_step(&self) -> Result<()> {
        self.launch_step_marked(&mut |_| Ok(()))
    }

    /// Launches the step of the last [`BatchDecodeEngine::step`] again, eagerly (same tokens and
    /// positions: the same cache rows and logits are rewritten), calling `mark(kind)` after each
    /// launch (`cuda_decode::profile::kind_profile`). Also the body of every step.
    pub fn launch_step_marked(
        &self,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        Step {
            kernels: &self.kernels,
            shape: &self.shape,
            weights: &self.weights,
            buffers: &self.buffers,
            lora: self.adapters.as_ref().filter(|_| self.lora_active()),
        }
        .launch(mark)
    }

    /// Forgets sequence `b` alone: its next token takes position 0 (a server's row handed to a
    /// new request).
    pub fn reset_row(&mut self, b: usize) {
        if let Some(p) = self.positions.get_mut(b) {
            *p = 0;
        }
    }

    /// Runs one step: sequence b takes `tokens[b]` at its position (asynchronously: read the result
    /// with [`BatchDecodeEngine::greedy`] or [`BatchDecodeEngine::logits`]).
    pub fn step(&mut self, tokens: &[u32]) -> Result<()> {
        let rows: Vec<Option<u32>> = tokens.iter().map(|&t| Some(t)).collect();
        self.step_rows(&rows)
    }

    /// [`BatchDecodeEngine::step`] where some rows are idle (`None`): an idle row runs token 0 at
    /// position 0 (the step's shape is fixed; its output is to be ignored) and keeps its position.
    pub fn step_rows(&mut self, tokens: &[Option<u32>]) -> Result<()> {
        if tokens.len() != self.batch {
            return Err(Error::InvalidRequest(format!(
                "CUDA batch decode engine: {} tokens for a batch of {}",
                tokens.len(),
                self.batch
            )));
        }
        let mut state = Vec::with_capacity(2 * self.batch);
        for (&t, &pos) in tokens.iter().zip(&self.positions) {
            let Some(t) = t else {
                state.extend([0, 0]);
                continue;
            };
            if pos >= self.shape.max_seq {
                return Err(Error::InvalidRequest(format!(
                    "CUDA batch decode engine: the caches hold {} positions per sequence",
                    self.shape.max_seq
                )));
            }
            if t as usize >= self.shape.vocab {
                return Err(Error::InvalidRequest(format!(
                    "token id {t} is outside the vocabulary of {} tokens",
                    self.shape.vocab
                )));
            }
            state.extend([t as i32, pos as i32]);
        }
        let stream = self.kernels.stream().clone();
        stream
            .memcpy_htod(&state, &mut self.buffers.state)
            .map_err(|e| ERR.driver("writing tokens and positions", e))?;
        let lora = self.lora_active();
        let graphs = if lora {
            &mut self.lora_steps
        } else {
            &mut self.steps
        };
        let mut steps = std::mem::replace(graphs, StepGraph::stand_in("CUDA batch decode engine"));
        let ran = steps.run(&self.device, || self.launch_step());
        if lora {
            self.lora_steps = steps;
        } else {
            self.steps = steps;
        }
        ran?;
        for (p, t) in self.positions.iter_mut().zip(tokens) {
            if t.is_some() {
                *p += 1;
            }
        }
        Ok(())
    }

    /// Each sequence's greedy token of the last step and its log-probability (waits for the step).
    pub fn greedy(&self) -> Result<Vec<(u32, f32)>> {
        let stream = self.kernels.stream();
        let out = stream
            .clone_dtoh(&self.buffers.result)
            .map_err(|e| ERR.driver("reading the greedy tokens", e))?;
        stream.synchronize().map_err(|e| ERR.driver("step", e))?;
        Ok(out
            .chunks(2)
            .map(|p| (p[0], f32::from_bits(p[1])))
            .collect())
    }

    /// The logits [batch, vocab] of the last step, row-major (waits for the step).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let stream = self.kernels.stream();
        let out = stream
            .clone_dtoh(&self.buffers.logits)
            .map_err(|e| ERR.driver("reading logits", e))?;
        stream.synchronize().map_err(|e| ERR.driver("step", e))?;
        Ok(out)
    }
}
