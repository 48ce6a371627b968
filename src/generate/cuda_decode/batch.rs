//! [`BatchDecodeEngine`]: the decode engine's step for up to [`MAX_DECODE_BATCH`] sequences at once
//! (llama-batched-bench's "parallel sequences"). Decode is bound by reading the weights; the batched
//! mat-vec kernels read each weight once for every sequence, so a step of 8 tokens costs little more
//! than a step of one. Same launches as the batch-1 step (153 for SmolLM2-135M), each covering the
//! batch: embed and attention take the sequence from the grid, argmax one block per sequence.
//!
//! Every sequence has its own KV cache and position (state [batch, 2] = token, position, in device
//! memory), so the captured graph replays for any positions. All sequences advance together; a
//! prompt is fed one token per step (the batched prefill is the batch-1 engine's business).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::Device;

use super::step_graph::{StepGraph, StepMode};
use super::weights::EngineWeights;
use super::EngineShape;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::WeightSource;
use crate::gpu::decode::launch::{
    attention_scratch_floats, device_ptr, DecodeKernels, MAX_BATCH_SHARED_BYTES, MAX_DECODE_BATCH,
};
use crate::{Error, Result};

fn driver_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Candle {
        context: format!("CUDA batch decode engine: {what}"),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

fn launch_err(what: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |source| Error::Candle {
        context: format!("CUDA batch decode engine: launching {what}"),
        source,
    }
}

/// Device buffers of `batch` sequences, with their raw addresses.
struct Buffers {
    _owned: Vec<CudaSlice<f32>>,
    state: CudaSlice<i32>,
    _counters: CudaSlice<u32>,
    result: CudaSlice<u32>,
    logits: CudaSlice<f32>,
    state_ptr: u64,
    result_ptr: u64,
    logits_ptr: u64,
    x: u64,
    qkv: u64,
    attn: u64,
    act: u64,
    k_cache: u64,
    v_cache: u64,
    part: u64,
    counters: u64,
}

impl Buffers {
    fn new(s: &EngineShape, batch: usize, stream: &Arc<CudaStream>) -> Result<Self> {
        let alloc = |n: usize, what: &str| -> Result<CudaSlice<f32>> {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| driver_err(what, e))
        };
        let cache = batch * s.layers * s.max_seq * s.kv_heads * s.head_dim;
        let owned = vec![
            alloc(batch * s.hidden, "x")?,
            alloc(batch * s.qkv_rows(), "qkv")?,
            alloc(batch * s.heads * s.head_dim, "attention output")?,
            alloc(batch * s.ffn, "mlp activation")?,
            alloc(cache, "k cache")?,
            alloc(cache, "v cache")?,
            alloc(
                batch * attention_scratch_floats(s.attention()),
                "attention partials",
            )?,
        ];
        let logits = alloc(batch * s.vocab, "logits")?;
        let state = stream
            .alloc_zeros::<i32>(2 * batch)
            .map_err(|e| driver_err("state", e))?;
        let result = stream
            .alloc_zeros::<u32>(2 * batch)
            .map_err(|e| driver_err("result", e))?;
        let counters = stream
            .alloc_zeros::<u32>(batch * s.kv_heads)
            .map_err(|e| driver_err("attention counters", e))?;
        let p: Vec<u64> = owned.iter().map(|o| device_ptr(o, stream)).collect();
        Ok(Self {
            state_ptr: device_ptr(&state, stream),
            result_ptr: device_ptr(&result, stream),
            logits_ptr: device_ptr(&logits, stream),
            counters: device_ptr(&counters, stream),
            x: p[0],
            qkv: p[1],
            attn: p[2],
            act: p[3],
            k_cache: p[4],
            v_cache: p[5],
            part: p[6],
            _owned: owned,
            state,
            _counters: counters,
            result,
            logits,
        })
    }
}

/// Decode of `batch` sequences of one model on one CUDA device.
pub struct BatchDecodeEngine {
    device: Device,
    kernels: DecodeKernels,
    shape: EngineShape,
    weights: EngineWeights,
    batch: usize,
    buffers: Buffers,
    steps: StepGraph,
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
        let kernels = DecodeKernels::load(dev).map_err(launch_err("(loading kernels)"))?;
        let stream = kernels.stream().clone();
        let weights = EngineWeights::load(cfg, &shape, source, &stream)?;
        let buffers = Buffers::new(&shape, batch, &stream)?;
        Ok(Self {
            device: device.clone(),
            kernels,
            shape,
            weights,
            batch,
            buffers,
            steps: StepGraph::new("CUDA batch decode engine"),
            positions: vec![0; batch],
        })
    }

    /// Sequences per step.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// How steps run now.
    pub fn mode(&self) -> &StepMode {
        self.steps.mode()
    }

    /// Launches per step (the batch-1 engine's count: every launch covers the batch).
    pub fn launches_per_step(&self) -> usize {
        3 + 5 * self.shape.layers
    }

    /// Launches every later step eagerly (for comparisons).
    pub fn force_eager(&mut self, reason: &str) {
        self.steps.force_eager(reason);
    }

    /// Replays the graph again, when one was captured.
    pub fn use_graph(&mut self) {
        self.steps.use_graph();
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
        let (k, s, b, w, n) = (
            &self.kernels,
            &self.shape,
            &self.buffers,
            &self.weights,
            self.batch,
        );
        let (h, eps) = (s.hidden, s.eps);
        let norm = |i: usize| w.norms_ptr + (i * h * 4) as u64;
        let cache_layer = (s.max_seq * s.kv_heads * s.head_dim * 4) as u64;
        let cache_seq_stride = s.layers * s.max_seq * s.kv_heads * s.head_dim;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        k.embed_batch(w.embed.quant, w.embed.ptr, b.state_ptr, b.x, h, n)
            .map_err(launch_err("embed"))?;
        for (i, l) in w.layers.iter().enumerate() {
            let qkv = &l.qkv;
            k.qmv_batch(
                qkv.quant,
                qkv.ptr,
                b.x,
                norm(2 * i),
                b.qkv,
                qkv.rows,
                h,
                eps,
                false,
                n,
            )
            .map_err(launch_err("qkv"))?;
            k.rope_attention_batch(
                b.qkv,
                b.k_cache + i as u64 * cache_layer,
                b.v_cache + i as u64 * cache_layer,
                b.state_ptr,
                w.inv_freq_ptr,
                b.attn,
                b.part,
                b.counters,
                s.attention(),
                scale,
                n,
                cache_seq_stride,
            )
            .map_err(launch_err("rope_attention"))?;
            let o = &l.o;
            k.qmv_batch(o.quant, o.ptr, b.attn, 0, b.x, h, o.cols, eps, true, n)
                .map_err(launch_err("o_proj"))?;
            k.qmv_swiglu_batch(
                l.gate.quant,
                l.gate.ptr,
                l.up.ptr,
                b.x,
                norm(2 * i + 1),
                b.act,
                s.ffn,
                h,
                eps,
                n,
            )
            .map_err(launch_err("gate/up + swiglu"))?;
            let d = &l.down;
            k.qmv_batch(d.quant, d.ptr, b.act, 0, b.x, h, s.ffn, eps, true, n)
                .map_err(launch_err("down_proj"))?;
        }
        let head = w.head();
        k.qmv_batch(
            head.quant,
            head.ptr,
            b.x,
            norm(2 * s.layers),
            b.logits_ptr,
            s.vocab,
            h,
            eps,
            false,
            n,
        )
        .map_err(launch_err("lm_head"))?;
        k.argmax_batch(b.logits_ptr, s.vocab, b.result_ptr, 0, n)
            .map_err(launch_err("argmax"))?;
        Ok(())
    }

    /// Runs one step: sequence b takes `tokens[b]` at its position (asynchronously: read the result
    /// with [`BatchDecodeEngine::greedy`] or [`BatchDecodeEngine::logits`]).
    pub fn step(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.len() != self.batch {
            return Err(Error::InvalidRequest(format!(
                "CUDA batch decode engine: {} tokens for a batch of {}",
                tokens.len(),
                self.batch
            )));
        }
        let mut state = Vec::with_capacity(2 * self.batch);
        for (&t, &pos) in tokens.iter().zip(&self.positions) {
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
            .map_err(|e| driver_err("writing tokens and positions", e))?;
        let mut steps = std::mem::replace(
            &mut self.steps,
            StepGraph::stand_in("CUDA batch decode engine"),
        );
        let ran = steps.run(&self.device, || self.launch_step());
        self.steps = steps;
        ran?;
        self.positions.iter_mut().for_each(|p| *p += 1);
        Ok(())
    }

    /// Each sequence's greedy token of the last step and its log-probability (waits for the step).
    pub fn greedy(&self) -> Result<Vec<(u32, f32)>> {
        let stream = self.kernels.stream();
        let out = stream
            .clone_dtoh(&self.buffers.result)
            .map_err(|e| driver_err("reading the greedy tokens", e))?;
        stream.synchronize().map_err(|e| driver_err("step", e))?;
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
            .map_err(|e| driver_err("reading logits", e))?;
        stream.synchronize().map_err(|e| driver_err("step", e))?;
        Ok(out)
    }
}
