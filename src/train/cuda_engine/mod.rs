//! The CUDA LoRA training engine: one optimizer step of LoRA on a frozen LLaMA-family decoder as a
//! fixed sequence of raw-pointer launches (`gpu::train` kernels and `gpu::gemm` products) on
//! Candle's stream, every buffer allocated once, the micro-batch (forward + backward) captured as a
//! CUDA graph per sequence bucket and the optimizer step (grad norm + clipped AdamW) as one more.
//!
//! Numerics: activations in one dtype T (f32 or bf16; f32 exists so the engine can be checked
//! against Candle's autograd, `check`), every product accumulating in f32; LoRA master parameters,
//! gradients and AdamW moments in f32, with a T copy of the parameters for the products when T is
//! bf16. Base weights are the model's own tensors, used in place; a base kept as GGML blocks
//! (QLoRA) is dequantized into a one-layer scratch before each layer's forward and backward
//! (`weights`).
//!
//! Memory: the saved activations of every layer ([`buffers::plan`]) plus one layer's attention
//! scores at a time (recomputed in the backward), for one chunk of (row, kv head) pairs at a time
//! (`engine_layout::ATTENTION_SCRATCH_BYTES`), and one chunk of `loss_chunk` tokens of logits.
//! SmolLM2-135M, batch 8, r 16 on all seven projections, bf16, loss_chunk 1024 (from
//! [`TrainEngine::planned_memory`]): at 512 positions 2061 MiB in all, of which 1656 MiB saved
//! activations, 144 MiB attention scratch (scores f32, P, dS: all 24 pairs in one chunk), 96 MiB
//! logits chunk, 81 MiB other scratch and 84 MiB LoRA parameters, gradients, moments and the bf16
//! copy; at 2048 positions 7322 MiB, of which 6625 MiB saved activations, 192 MiB attention scratch
//! (2 pairs a chunk; 2304 MiB unchunked) and 325 MiB other scratch. The base weights are the
//! model's (not counted).
//!
//! `WICK_TRAIN_GRAPH=0` runs every launch eagerly (no graphs).

/// Runs a kernel launch unless the launcher is only preparing GEMM plans; errors name the launch.
macro_rules! launch {
    ($l:expr, $what:expr, $call:expr) => {
        if !$l.dry {
            $call.map_err(ERR.launch($what))?;
        }
    };
}

mod backward;
pub mod buffers;
pub mod check;
mod forward;
mod launcher;
mod optimizer;
pub mod weights;

/// The pure host-side layout (shapes, buckets, parameter offsets, input padding), CPU-compiled.
pub use crate::train::engine_layout as layout;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device};

use self::buffers::{BufferSize, Buffers, SCALAR_LOSS};
use self::launcher::{Launcher, Ptrs};
use self::layout::{Dims, ParamLayout, PROJECTIONS};
use self::weights::ModelWeights;
use crate::gpu::engine_error::EngineErrors;
use crate::gpu::gemm::Gemm;
use crate::gpu::ggml::DequantKernels;
use crate::gpu::graph::{self, Graph};
use crate::gpu::train::flash_attention::FlashAttention;
use crate::gpu::train::launch::TrainKernels;
use crate::lora::Adapter;
use crate::models::llama::Llama;
use crate::train::optimizer::AdamWConfig;
use crate::{Error, Result};

pub(super) const ERR: EngineErrors = EngineErrors("CUDA training engine");

/// The engine's shape and numerics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineOptions {
    /// Rows per micro-batch (shorter micro-batches are padded).
    pub batch: usize,
    /// Longest sequence (positions); the largest bucket.
    pub seq: usize,
    /// Activation dtype T: F32 or BF16 (the model's dtype).
    pub dtype: DType,
    /// Tokens per LM-head chunk: the logits buffer holds `loss_chunk x vocab` values of T.
    pub loss_chunk: usize,
    /// Most bytes of the f32 attention-scores scratch; attention runs in chunks of (row, kv head)
    /// pairs that fit (at least one pair). Default [`layout::ATTENTION_SCRATCH_BYTES`].
    pub attention_scratch_bytes: usize,
    /// Fused causal attention (kernels/flash_attention.cu) where it applies: bf16 activations and
    /// a head dim of 64 or 128. Elsewhere, or when false, attention materializes its scores in
    /// chunks of (row, kv head) pairs (`attention_scratch_bytes`).
    pub flash_attention: bool,
    /// Activation checkpointing of the first N decoder layers (0: none; the layer count or more:
    /// every layer): each saves only its input x and recomputes its other activations in the
    /// backward (one extra layer forward each); together they take one layer's memory instead of
    /// N layers'.
    pub checkpointed_layers: usize,
    /// Selective recompute of the N layers after the checkpointed ones: they keep every saved
    /// activation but the MLP's gate and up outputs, which their backward recomputes (two GEMMs
    /// a layer instead of a layer forward); together those take one layer's gate / up memory.
    pub mlp_recomputed_layers: usize,
    /// Seed of the LoRA dropout masks (with the optimizer step and the micro-batch's index in it:
    /// `reference::lora_dropout::micro_batch_seed`); unused without dropout.
    pub dropout_seed: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batch: 8,
            seq: 512,
            dtype: DType::BF16,
            // 1024 x 49152 bf16 logits = 96 MiB at SmolLM2's vocabulary: a small share of the
            // ~2.2 GB of saved activations at batch 8 x 512, and chunks large enough that the LM
            // head's products stay efficient.
            loss_chunk: 1024,
            attention_scratch_bytes: layout::ATTENTION_SCRATCH_BYTES,
            flash_attention: true,
            checkpointed_layers: 0,
            mlp_recomputed_layers: 0,
            dropout_seed: 0,
        }
    }
}

/// How micro-batches and optimizer steps run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMode {
    /// Nothing run yet: the first micro-batch of each bucket captures its graph.
    Pending,
    /// Replaying captured graphs.
    Graph,
    /// Launching eagerly, for the reason given (capture failed or `WICK_TRAIN_GRAPH=0`).
    Eager(String),
}

/// LoRA training of one model + adapter on one CUDA device. See the module documentation.
pub struct TrainEngine {
    device: Device,
    kernels: TrainKernels,
    /// The fused attention kernels, when `dims.flash_attention`.
    flash: Option<FlashAttention>,
    /// The dequant kernel of a quantized base (`dims.quantized_base`).
    dequant: Option<DequantKernels>,
    gemm: Arc<Gemm>,
    dims: Dims,
    layout: ParamLayout,
    weights: ModelWeights,
    buffers: Buffers,
    ptrs: Ptrs,
    xa_index: Vec<[Option<usize>; 7]>,
    adamw: AdamWConfig,
    opts: EngineOptions,
    /// Names of the adapter's variables in `Adapter::vars` order, with their slot's (offset, dims).
    vars: Vec<(String, usize, [usize; 2])>,
    /// One graph per sequence bucket.
    graphs: HashMap<usize, Graph>,
    optimizer_graph: Option<Graph>,
    mode: StepMode,
    /// AdamW updates applied (the bias-correction step t of the next update is `step + 1`).
    step: usize,
    /// Micro-batches run since `begin_step` (LoRA dropout's mask seed).
    micro: u64,
}

impl TrainEngine {
    /// Why the engine cannot train this model + adapter (None: it can).
    pub fn unsupported(model: &Llama, adapter: &Adapter) -> Option<String> {
        let cfg = model.config();
        let Device::Cuda(_) = model.device() else {
            return Some(format!(
                "the model is on {:?}, not a CUDA device",
                model.device()
            ));
        };
        if !matches!(model.dtype(), DType::F32 | DType::BF16) {
            return Some(format!(
                "the model runs {:?}; the engine runs f32 or bf16 (f16 activations would need loss \
                 scaling against gradient underflow, which it does not do)",
                model.dtype()
            ));
        }
        if cfg.head_dim % 2 != 0 || cfg.head_dim == 0 {
            return Some(format!("head_dim {} is odd", cfg.head_dim));
        }
        if cfg.num_key_value_heads == 0 || cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
            return Some("heads are not a multiple of kv heads".into());
        }
        if !(0.0..1.0).contains(&adapter.config.lora_dropout) {
            return Some(format!(
                "LoRA dropout {} is outside [0, 1)",
                adapter.config.lora_dropout
            ));
        }
        if adapter.layers.is_empty() {
            return Some("the adapter adapts no module".into());
        }
        if adapter.config.use_dora || adapter.layers.iter().any(|l| l.magnitude.is_some()) {
            return Some(
                "DoRA (use_dora): the engine's kernels have no magnitude vector or row norms"
                    .into(),
            );
        }
        for l in &adapter.layers {
            if !PROJECTIONS.iter().any(|p| l.path.ends_with(p)) {
                return Some(format!(
                    "adapted module {} is not one of the seven projections",
                    l.path
                ));
            }
            if l.a.dtype() != DType::F32 || l.b.dtype() != DType::F32 {
                return Some(format!("{}: LoRA parameters are not f32", l.path));
            }
        }
        if let Err(e) = ParamLayout::new(model, adapter) {
            return Some(e.to_string());
        }
        None
    }

    /// Builds the engine: takes the model's weights in place, allocates every buffer, uploads the
    /// RoPE tables and prepares every GEMM plan of every bucket. The LoRA parameters are not loaded:
    /// call [`TrainEngine::load_params`].
    pub fn new(
        model: &Llama,
        adapter: &Adapter,
        adamw: AdamWConfig,
        opts: EngineOptions,
    ) -> Result<Self> {
        if let Some(reason) = Self::unsupported(model, adapter) {
            return Err(Error::InvalidRequest(format!(
                "CUDA training engine: {reason}"
            )));
        }
        let Device::Cuda(dev) = model.device() else {
            return Err(Error::InvalidRequest(
                "CUDA training engine: not CUDA".into(),
            ));
        };
        let cfg = model.config();
        Self::check_options(model, &opts)?;
        let layout = ParamLayout::new(model, adapter)?;
        let dims = Self::dims(model, &layout, &opts);
        let (kernels, flash, dequant) = Self::load_kernels(dev, &dims, opts.dtype)?;
        let gemm = Gemm::for_device(dev).map_err(ERR.launch("cuBLASLt context"))?;
        let stream = dev.cuda_stream();
        let mut buffers = Buffers::new(
            &stream,
            buffers::plan(&dims, &layout, opts.dtype, opts.loss_chunk),
        )?;
        let ptrs = Ptrs::new(&buffers, &dims, opts.dtype);
        let weights = ModelWeights::new(
            model,
            &dims,
            opts.dtype,
            buffers.ptr(buffers::LAYER_WEIGHTS),
        )?;
        // RoPE tables, once.
        let inv = crate::models::llama::rope_inverse_frequencies(cfg);
        let (cos, sin) = layout::rope_tables(&inv, dims.seq);
        let mut tables = cos;
        tables.extend(sin);
        stream
            .memcpy_htod(&tables, &mut buffers.rope)
            .map_err(|e| ERR.driver("uploading the rope tables", e))?;
        let xa_index = layout.xa_index(dims.checkpointed_layers);
        let vars = Self::var_names(&layout);
        let mode = if std::env::var("WICK_TRAIN_GRAPH").is_ok_and(|v| v == "0") {
            StepMode::Eager("WICK_TRAIN_GRAPH=0".into())
        } else {
            StepMode::Pending
        };
        let engine = Self {
            device: model.device().clone(),
            kernels,
            flash,
            dequant,
            gemm,
            dims,
            layout,
            weights,
            buffers,
            ptrs,
            xa_index,
            adamw,
            opts,
            vars,
            graphs: HashMap::new(),
            optimizer_graph: None,
            mode,
            step: 0,
            micro: 0,
        };
        // Every plan of every bucket now, so that no capture waits on cuBLASLt's heuristic.
        let started = std::time::Instant::now();
        let dry = engine.launcher(true);
        for s in engine.dims.buckets() {
            dry.micro_batch(s)?;
        }
        dry.optimizer()?;
        tracing::info!(
            "CUDA training engine: {} layers{}, batch {} x {} positions, {:?}, {} attention{}, {:.1} MiB of buffers, {} GEMM plans in {:.2} s",
            engine.dims.layers,
            if engine.dims.quantized_base { " (base kept as GGML blocks, dequantized per layer)" } else { "" },
            engine.dims.batch,
            engine.dims.seq,
            engine.opts.dtype,
            if engine.dims.flash_attention { "fused" } else { "materialized" },
            match (engine.dims.checkpointed_layers.min(engine.dims.layers), engine.dims.mlp_recomputed_layers) {
                (0, 0) => String::new(),
                (n, 0) => format!(", activations of {n} layer(s) checkpointed"),
                (n, m) => format!(", activations of {n} layer(s) checkpointed, the MLP of {m} more recomputed"),
            },
            engine.buffers.total_bytes() as f64 / (1 << 20) as f64,
            engine.gemm.cached_plans(),
            started.elapsed().as_secs_f64()
        );
        Ok(engine)
    }

    /// The kernels this engine launches: the training kernels in T, the fused attention (when
    /// `dims.flash_attention`) and the dequant kernel (when `dims.quantized_base`).
    fn load_kernels(
        dev: &candle_core::CudaDevice,
        dims: &Dims,
        dtype: DType,
    ) -> Result<(TrainKernels, Option<FlashAttention>, Option<DequantKernels>)> {
        let kernels = TrainKernels::load(dev, dtype).map_err(ERR.launch("loading the kernels"))?;
        let flash = if dims.flash_attention {
            Some(
                FlashAttention::load(dev, dims.head_dim)
                    .map_err(ERR.launch("loading the flash-attention kernels"))?,
            )
        } else {
            None
        };
        let dequant = if dims.quantized_base {
            Some(DequantKernels::load(dev).map_err(ERR.launch("loading the dequant kernels"))?)
        } else {
            None
        };
        Ok((kernels, flash, dequant))
    }

    /// The options must match the model: its dtype, a batch and a loss chunk of at least one, two
    /// positions or more and no more than its context.
    fn check_options(model: &Llama, opts: &EngineOptions) -> Result<()> {
        let cfg = model.config();
        if opts.dtype != model.dtype() {
            return Err(Error::InvalidOption {
                option: "dtype".into(),
                reason: format!(
                    "the engine's dtype {:?} differs from the model's {:?}",
                    opts.dtype,
                    model.dtype()
                ),
            });
        }
        if opts.batch == 0 || opts.seq < 2 || opts.loss_chunk == 0 {
            return Err(Error::InvalidOption {
                option: "engine options".into(),
                reason: format!(
                    "batch {} (>= 1), seq {} (>= 2), loss_chunk {} (>= 1)",
                    opts.batch, opts.seq, opts.loss_chunk
                ),
            });
        }
        if opts.seq > cfg.max_position_embeddings {
            return Err(Error::InvalidRequest(format!(
                "CUDA training engine: {} positions exceed the model's context of {}",
                opts.seq, cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// (PEFT name, offset in the parameter vector, shape) of every LoRA A and B, in the adapter's
    /// order.
    fn var_names(layout: &ParamLayout) -> Vec<(String, usize, [usize; 2])> {
        let mut vars = Vec::new();
        for slot in layout.by_adapter_order() {
            let r = layout.rank;
            vars.push((
                format!("{}.lora_A", slot.path),
                slot.a_offset,
                [r, slot.in_features],
            ));
            vars.push((
                format!("{}.lora_B", slot.path),
                slot.b_offset,
                [slot.out_features, r],
            ));
        }
        vars
    }

    fn dims(model: &Llama, layout: &ParamLayout, opts: &EngineOptions) -> Dims {
        let cfg = model.config();
        Dims {
            layers: cfg.num_hidden_layers,
            hidden: cfg.hidden_size,
            ffn: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            vocab: cfg.vocab_size,
            rank: layout.rank,
            batch: opts.batch,
            seq: opts.seq,
            eps: cfg.rms_norm_eps as f32,
            attention_scratch_bytes: opts.attention_scratch_bytes,
            flash_attention: opts.flash_attention
                && FlashAttention::supports(opts.dtype, cfg.head_dim),
            checkpointed_layers: opts.checkpointed_layers.min(cfg.num_hidden_layers),
            mlp_recomputed_layers: opts
                .mlp_recomputed_layers
                .min(cfg.num_hidden_layers - opts.checkpointed_layers.min(cfg.num_hidden_layers)),
            quantized_base: weights::has_blocks(model),
        }
    }

    /// The buffers [`TrainEngine::new`] allocates for this model, adapter and options, computed
    /// without allocating (for reports and memory estimates).
    pub fn planned_memory(
        model: &Llama,
        adapter: &Adapter,
        opts: &EngineOptions,
    ) -> Result<Vec<BufferSize>> {
        let layout = ParamLayout::new(model, adapter)?;
        let dims = Self::dims(model, &layout, opts);
        Ok(buffers::plan(&dims, &layout, opts.dtype, opts.loss_chunk))
    }

    fn launcher(&self, dry: bool) -> Launcher<'_> {
        Launcher {
            k: &self.kernels,
            flash: self.flash.as_ref(),
            dequant: self.dequant.as_ref(),
            gemm: &self.gemm,
            dims: &self.dims,
            layout: &self.layout,
            weights: &self.weights,
            ptrs: &self.ptrs,
            xa_index: &self.xa_index,
            t: self.opts.dtype,
            loss_chunk: self.opts.loss_chunk,
            dry,
        }
    }

    /// How steps run now.
    pub fn mode(&self) -> &StepMode {
        &self.mode
    }

    /// Launches every later micro-batch and optimizer step eagerly (for comparisons; captured
    /// graphs are kept).
    pub fn force_eager(&mut self, reason: &str) {
        self.mode = StepMode::Eager(reason.into());
    }

    /// Replays (and captures) graphs again from the next micro-batch, unless `WICK_TRAIN_GRAPH=0`.
    pub fn use_graphs(&mut self) {
        if !std::env::var("WICK_TRAIN_GRAPH").is_ok_and(|v| v == "0") {
            self.mode = if self.graphs.is_empty() {
                StepMode::Pending
            } else {
                StepMode::Graph
            };
        }
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Every device allocation of the engine with its size (the base weights are the model's and
    /// not counted).
    pub fn memory(&self) -> &[BufferSize] {
        &self.buffers.sizes
    }

    /// Bytes of every device allocation of the engine together.
    pub fn device_bytes(&self) -> usize {
        self.buffers.total_bytes()
    }

    /// Zeroes the gradient and loss accumulators (start of an optimizer step).
    pub fn begin_step(&mut self) -> Result<()> {
        self.micro = 0;
        let stream = self.kernels.stream().clone();
        stream
            .memset_zeros(&mut self.buffers.grads)
            .map_err(|e| ERR.driver("zeroing the gradients", e))?;
        let mut loss = self.buffers.scalars.slice_mut(SCALAR_LOSS..SCALAR_LOSS + 1);
        stream
            .memcpy_htod(&[0f32], &mut loss)
            .map_err(|e| ERR.driver("zeroing the loss", e))?;
        Ok(())
    }

    /// Forward + backward of one micro-batch of `ids.len() <= batch` rows of at most `seq` tokens
    /// (shorter rows and lengths padded with id 0 and ignored labels; labels unshifted, -100 for
    /// ignored), gradients and loss accumulated with `weight` (the micro-batch's share of the step's
    /// counted tokens). A micro-batch with no counted label does nothing.
    pub fn micro_batch(
        &mut self,
        ids: &[Vec<u32>],
        labels: &[Vec<i64>],
        weight: f32,
    ) -> Result<()> {
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        if len > self.dims.seq {
            return Err(Error::InvalidRequest(format!(
                "CUDA training engine: a row of {len} tokens exceeds the engine's {} positions",
                self.dims.seq
            )));
        }
        let s = self.dims.bucket_for(len.max(2));
        let inputs = layout::host_inputs(&self.dims, s, ids, labels)?;
        if inputs.counted == 0 {
            return Ok(());
        }
        let stream = self.kernels.stream().clone();
        let n = inputs.ids.len();
        let b = &mut self.buffers;
        stream
            .memcpy_htod(&inputs.ids, &mut b.ids.slice_mut(0..n))
            .map_err(|e| ERR.driver("uploading ids", e))?;
        stream
            .memcpy_htod(&inputs.labels, &mut b.labels.slice_mut(0..n))
            .map_err(|e| ERR.driver("uploading labels", e))?;
        let at = buffers::SCALAR_SCALE;
        stream
            .memcpy_htod(&[weight], &mut b.scalars.slice_mut(at..at + 1))
            .map_err(|e| ERR.driver("uploading the loss weight", e))?;
        if let Some(seed_buf) = &mut b.dropout_seed {
            let seed = crate::reference::lora_dropout::micro_batch_seed(
                self.opts.dropout_seed,
                self.step as u64 + 1,
                self.micro,
            );
            let halves = [seed as u32 as i32, (seed >> 32) as u32 as i32];
            stream
                .memcpy_htod(&halves, seed_buf)
                .map_err(|e| ERR.driver("uploading the dropout seed", e))?;
        }
        self.micro += 1;
        if self.mode != StepMode::Graph && self.mode != StepMode::Pending {
            return self.launcher(false).micro_batch(s);
        }
        if !self.graphs.contains_key(&s) {
            let captured = graph::capture(&self.device, || self.launcher(false).micro_batch(s));
            match captured.and_then(|(g, ())| g.upload().map(|()| g)) {
                Ok(g) => {
                    self.graphs.insert(s, g);
                    self.mode = StepMode::Graph;
                }
                Err(e) => {
                    tracing::warn!("CUDA training engine: capture of the {s}-position micro-batch failed, running eagerly: {e}");
                    self.mode = StepMode::Eager(format!("graph capture failed: {e}"));
                    return self.launcher(false).micro_batch(s);
                }
            }
        }
        match self.graphs.get(&s) {
            Some(g) => g.replay(),
            None => self.launcher(false).micro_batch(s),
        }
    }

    /// Clipped AdamW on the device; returns (step loss, gradient norm before clipping), the one
    /// host synchronisation of a step. When either is not finite the parameters are left unchanged
    /// and the step is not counted.
    pub fn optimizer_step(&mut self, lr: f64, max_grad_norm: Option<f64>) -> Result<(f64, f64)> {
        self.step += 1;
        let c = self.adamw;
        let constants = crate::gpu::train::reference::AdamConstants {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        };
        let hyper =
            crate::gpu::train::reference::adamw_hyper(&constants, lr, self.step, max_grad_norm);
        let stream = self.kernels.stream().clone();
        stream
            .memcpy_htod(&hyper, &mut self.buffers.hyper)
            .map_err(|e| ERR.driver("uploading the AdamW hyper-parameters", e))?;
        self.run_optimizer()?;
        let mut scalars = [0f32; 4];
        stream
            .memcpy_dtoh(&self.buffers.scalars, &mut scalars)
            .map_err(|e| ERR.driver("reading the loss and grad norm", e))?;
        stream
            .synchronize()
            .map_err(|e| ERR.driver("optimizer step", e))?;
        let loss = scalars[SCALAR_LOSS] as f64;
        let norm = (scalars[buffers::SCALAR_GNORM_SQ] as f64).sqrt();
        if !loss.is_finite() || !norm.is_finite() {
            self.step -= 1;
        }
        Ok((loss, norm))
    }

    fn run_optimizer(&mut self) -> Result<()> {
        if matches!(self.mode, StepMode::Eager(_)) {
            return self.launcher(false).optimizer();
        }
        if self.optimizer_graph.is_none() {
            let captured = graph::capture(&self.device, || self.launcher(false).optimizer());
            match captured.and_then(|(g, ())| g.upload().map(|()| g)) {
                Ok(g) => self.optimizer_graph = Some(g),
                Err(e) => {
                    tracing::warn!("CUDA training engine: capture of the optimizer step failed, running eagerly: {e}");
                    self.mode = StepMode::Eager(format!("graph capture failed: {e}"));
                    return self.launcher(false).optimizer();
                }
            }
        }
        match &self.optimizer_graph {
            Some(g) => g.replay(),
            None => self.launcher(false).optimizer(),
        }
    }

    /// AdamW updates applied so far.
    pub fn step_count(&self) -> usize {
        self.step
    }
}
