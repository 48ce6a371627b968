//! [`DecodeEngine`]: the buffers of one batch-1 decode (activations, KV cache, token/position, logits)
//! allocated once, the step as a fixed sequence of launches on Candle's stream, captured as a CUDA
//! graph on first use and replayed per token (eager launches, with the reason logged, when capture
//! fails).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::Device;

use super::step_graph::StepGraph;
use super::weights::{DeviceMatrix, EngineWeights};
use super::EngineShape;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::WeightSource;
use crate::gpu::decode::launch::{
    attention_scratch_floats, attention_shared_bytes, device_ptr, DecodeKernels,
};
use crate::models::kv_cache::KvCache;
use crate::{Error, Result};

/// The batched prefill ([`DecodeEngine::prefill`]), in its own file.
#[path = "prefill.rs"]
pub mod prefill;

pub use super::step_graph::StepMode;

/// Device buffers of the activations and the cache, with their raw addresses.
struct Buffers {
    _owned: Vec<CudaSlice<f32>>,
    _state: CudaSlice<i32>,
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
    /// Attention partials (per head and chunk) and the per-kv-head completion counters.
    part: u64,
    counters: u64,
}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Candle {
        context: format!("CUDA decode engine: {what}"),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

fn launch_err(what: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |source| Error::Candle {
        context: format!("CUDA decode engine: launching {what}"),
        source,
    }
}

impl Buffers {
    fn new(shape: &EngineShape, stream: &Arc<CudaStream>) -> Result<Self> {
        let alloc = |n: usize, what: &str| -> Result<CudaSlice<f32>> {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| driver_err(what, e))
        };
        let cache = shape.layers * shape.max_seq * shape.kv_heads * shape.head_dim;
        let owned = vec![
            alloc(shape.hidden, "x")?,
            alloc(shape.qkv_rows(), "qkv")?,
            alloc(shape.heads * shape.head_dim, "attention output")?,
            alloc(shape.ffn, "mlp activation")?,
            alloc(cache, "k cache")?,
            alloc(cache, "v cache")?,
            alloc(
                attention_scratch_floats(shape.attention()),
                "attention partials",
            )?,
        ];
        let logits = alloc(shape.vocab, "logits")?;
        let state = stream
            .alloc_zeros::<i32>(2)
            .map_err(|e| driver_err("state", e))?;
        let result = stream
            .alloc_zeros::<u32>(2)
            .map_err(|e| driver_err("result", e))?;
        let counters = stream
            .alloc_zeros::<u32>(shape.kv_heads)
            .map_err(|e| driver_err("attention counters", e))?;
        let p: Vec<u64> = owned.iter().map(|s| device_ptr(s, stream)).collect();
        Ok(Self {
            state_ptr: device_ptr(&state, stream),
            result_ptr: device_ptr(&result, stream),
            logits_ptr: device_ptr(&logits, stream),
            x: p[0],
            qkv: p[1],
            attn: p[2],
            act: p[3],
            k_cache: p[4],
            v_cache: p[5],
            part: p[6],
            counters: device_ptr(&counters, stream),
            _owned: owned,
            _state: state,
            _counters: counters,
            result,
            logits,
        })
    }
}

/// Batch-1 decode of one model on one CUDA device. See the module documentation of
/// `generate::cuda_decode` for the step.
pub struct DecodeEngine {
    device: Device,
    kernels: DecodeKernels,
    shape: EngineShape,
    weights: EngineWeights,
    buffers: Buffers,
    steps: StepGraph,
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
        let kernels = DecodeKernels::load(dev).map_err(launch_err("(loading kernels)"))?;
        let stream = kernels.stream().clone();
        let weights = EngineWeights::load(cfg, &shape, source, &stream)?;
        let (h, qd) = (shape.hidden, shape.heads * shape.head_dim);
        for (i, l) in weights.layers.iter().enumerate() {
            let what = |m: &str| format!("layer {i} {m}");
            check_matrix(&l.qkv, shape.qkv_rows(), h, &what("q/k/v"))?;
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
        let buffers = Buffers::new(&shape, &stream)?;
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
            pos: 0,
            prefill: None,
        })
    }

    /// The engine's shapes.
    pub fn shape(&self) -> &EngineShape {
        &self.shape
    }

    /// How steps run now.
    pub fn mode(&self) -> &StepMode {
        self.steps.mode()
    }

    /// Launches per step.
    pub fn launches_per_step(&self) -> usize {
        3 + 5 * self.shape.layers
    }

    /// Launches every later step eagerly (for comparisons; the graph, if any, is kept).
    pub fn force_eager(&mut self, reason: &str) {
        self.steps.force_eager(reason);
    }

    /// Replays the graph again from the next step, when one was captured.
    pub fn use_graph(&mut self) {
        self.steps.use_graph();
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
            for (src, slot, what) in [(k, 4usize, "keys"), (v, 5, "values")] {
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
                let mut dst = self.buffers._owned[slot].slice_mut(base..base + n);
                stream
                    .memcpy_dtod(&src_view, &mut dst)
                    .map_err(|e| driver_err("copying the prefill cache", e))?;
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
        let (k, s, b, w) = (&self.kernels, &self.shape, &self.buffers, &self.weights);
        let (h, eps) = (s.hidden, s.eps);
        let norm = |i: usize| w.norms_ptr + (i * h * 4) as u64;
        let cache_layer = (s.max_seq * s.kv_heads * s.head_dim * 4) as u64;
        let attention = s.attention();
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        k.embed(w.embed.quant, w.embed.ptr, b.state_ptr, b.x, h)
            .map_err(launch_err("embed"))?;
        mark("embed")?;
        for (i, l) in w.layers.iter().enumerate() {
            let qkv = &l.qkv;
            k.qmv(
                qkv.quant,
                qkv.ptr,
                b.x,
                norm(2 * i),
                b.qkv,
                qkv.rows,
                h,
                eps,
                false,
            )
            .map_err(launch_err("qkv"))?;
            mark("qmv q/k/v")?;
            k.rope_attention(
                b.qkv,
                b.k_cache + i as u64 * cache_layer,
                b.v_cache + i as u64 * cache_layer,
                b.state_ptr,
                w.inv_freq_ptr,
                b.attn,
                b.part,
                b.counters,
                attention,
                scale,
            )
            .map_err(launch_err("rope_attention"))?;
            mark("rope_attention")?;
            let o = &l.o;
            k.qmv(o.quant, o.ptr, b.attn, 0, b.x, h, o.cols, eps, true)
                .map_err(launch_err("o_proj"))?;
            mark("qmv o_proj")?;
            k.qmv_swiglu(
                l.gate.quant,
                l.gate.ptr,
                l.up.ptr,
                b.x,
                norm(2 * i + 1),
                b.act,
                s.ffn,
                h,
                eps,
            )
            .map_err(launch_err("gate/up + swiglu"))?;
            mark("qmv_swiglu gate/up")?;
            let d = &l.down;
            k.qmv(d.quant, d.ptr, b.act, 0, b.x, h, s.ffn, eps, true)
                .map_err(launch_err("down_proj"))?;
            mark("qmv down_proj")?;
        }
        let head = w.head();
        k.qmv(
            head.quant,
            head.ptr,
            b.x,
            norm(2 * s.layers),
            b.logits_ptr,
            s.vocab,
            h,
            eps,
            false,
        )
        .map_err(launch_err("lm_head"))?;
        mark("qmv lm_head")?;
        k.argmax(b.logits_ptr, s.vocab, b.result_ptr, 0)
            .map_err(launch_err("argmax"))?;
        mark("argmax")
    }

    /// Replays the captured step graph for the token and position of the last
    /// [`DecodeEngine::step`] again, without uploading them (for `cuda_decode::profile`); false
    /// when no graph was captured.
    pub fn replay_last_step(&self) -> Result<bool> {
        match self.steps.graph() {
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
            .memcpy_htod(&state, &mut self.buffers._state)
            .map_err(|e| driver_err("writing token and position", e))?;
        // The step graph lives beside the buffers it launches on; take it out while it runs them.
        let mut steps =
            std::mem::replace(&mut self.steps, StepGraph::stand_in("CUDA decode engine"));
        let ran = steps.run(&self.device, || self.launch_step());
        self.steps = steps;
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
            .map_err(|e| driver_err("reading the greedy token", e))?;
        self.kernels
            .stream()
            .synchronize()
            .map_err(|e| driver_err("step", e))?;
        Ok((out[0], f32::from_bits(out[1])))
    }

    /// The logits [vocab] of the last step (waits for the step).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let stream = self.kernels.stream();
        let out = stream
            .clone_dtoh(&self.buffers.logits)
            .map_err(|e| driver_err("reading logits", e))?;
        stream.synchronize().map_err(|e| driver_err("step", e))?;
        Ok(out)
    }

    /// Waits for every launched step.
    pub fn synchronize(&self) -> Result<()> {
        self.kernels
            .stream()
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))
    }
}
