//! The decode step, written once for N sequences (1 ..= `MAX_DECODE_BATCH`): the buffers of one
//! step and its fixed launch sequence, shared by the batch-1 engine ([`super::DecodeEngine`], N = 1)
//! and the batch engine ([`super::batch::BatchDecodeEngine`]). At N = 1 every mat-vec takes the
//! batch-1 kernels (`qmv_*`, fewer registers than the batched `qmvb_*`), so batch 1 loses nothing.
//!
//! Each sequence has its own token/position pair (`state` [N, 2]), KV cache (at
//! `seq * layers * max_seq * kv_heads * head_dim` floats) and, with an adapter pool, adapter slot.
//! With adapters (`lora`), each projection group's mat-vec also computes the group's shrink and adds
//! the expand in its epilogue (`adapters`): the same launches as without; the step's last launch
//! (the argmax) marks the xa values pending again for the next step.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};

use super::adapters::{AdapterPool, Group};
use super::weights::EngineWeights;
use super::EngineShape;
use crate::gpu::decode::launch::{
    attention_scratch_floats, device_ptr, DecodeKernels, Epilogue, LoraArgs, LoraEpilogue,
    PendingXa,
};
use crate::gpu::engine_error::EngineErrors;
use crate::Result;

const ERR: EngineErrors = EngineErrors("CUDA decode step");

/// Index of the K cache in [`StepBuffers::owned`] (the V cache follows it).
pub(super) const K_CACHE: usize = 4;

/// Device buffers of one step of `batch` sequences, with their raw addresses.
pub(super) struct StepBuffers {
    pub batch: usize,
    /// x, qkv, attention output, mlp activation, K cache, V cache, attention partials.
    pub owned: Vec<CudaSlice<f32>>,
    pub state: CudaSlice<i32>,
    _counters: CudaSlice<u32>,
    pub result: CudaSlice<u32>,
    pub logits: CudaSlice<f32>,
    pub state_ptr: u64,
    pub result_ptr: u64,
    pub logits_ptr: u64,
    pub x: u64,
    pub qkv: u64,
    pub attn: u64,
    pub act: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub part: u64,
    pub counters: u64,
}

impl StepBuffers {
    pub fn new(s: &EngineShape, batch: usize, stream: &Arc<CudaStream>) -> Result<Self> {
        let alloc = |n: usize, what: &str| -> Result<CudaSlice<f32>> {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| ERR.driver(what, e))
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
            .map_err(|e| ERR.driver("state", e))?;
        let result = stream
            .alloc_zeros::<u32>(2 * batch)
            .map_err(|e| ERR.driver("result", e))?;
        let counters = stream
            .alloc_zeros::<u32>(batch * s.kv_heads)
            .map_err(|e| ERR.driver("attention counters", e))?;
        let p: Vec<u64> = owned.iter().map(|o| device_ptr(o, stream)).collect();
        Ok(Self {
            batch,
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
            owned,
            state,
            _counters: counters,
            result,
            logits,
        })
    }
}

/// What one step launches on: kernels, shapes, weights, buffers, and the adapter pool when the
/// step applies adapters.
pub(super) struct Step<'a> {
    pub kernels: &'a DecodeKernels,
    pub shape: &'a EngineShape,
    pub weights: &'a EngineWeights,
    pub buffers: &'a StepBuffers,
    pub lora: Option<&'a AdapterPool>,
}

/// Kernel launches per step for `layers` layers (adapters add none).
pub fn launches_per_step(layers: usize) -> usize {
    3 + 5 * layers
}

impl Step<'_> {
    /// The LoRA part of the group's mat-vec (none without adapters).
    fn lora(&self, layer: usize, g: Group) -> LoraEpilogue {
        self.lora
            .map(|pool| pool.epilogue(layer, g))
            .unwrap_or_default()
    }

    /// y = W xn (+ y) + epilogue for every sequence: the batch-1 kernel at N = 1.
    #[allow(clippy::too_many_arguments)]
    fn matvec(
        &self,
        m: &super::weights::DeviceMatrix,
        x: u64,
        norm_w: u64,
        y: u64,
        accumulate: bool,
        epilogue: &Epilogue,
    ) -> candle_core::Result<()> {
        let (k, n, eps) = (self.kernels, self.buffers.batch, self.shape.eps);
        if n == 1 {
            k.qmv(
                m.quant, m.ptr, x, norm_w, y, m.rows, m.cols, eps, accumulate, epilogue,
            )
        } else {
            k.qmv_batch(
                m.quant, m.ptr, x, norm_w, y, m.rows, m.cols, eps, accumulate, n, epilogue,
            )
        }
    }

    /// q/k/v of every sequence into `qkv` [n, qkv rows]: one launch of the fused matrix, or one per
    /// matrix when they are stored in different formats (each its rows of the output, its bias
    /// slice, its B rows and xa segment).
    fn qkv(
        &self,
        l: &super::weights::LayerWeights,
        x: u64,
        norm_w: u64,
        lora: LoraEpilogue,
    ) -> Result<()> {
        let b = self.buffers;
        if let [m] = l.qkv.as_slice() {
            let epilogue = Epilogue {
                bias: l.qkv_bias_ptr,
                lora,
            };
            return self
                .matvec(m, x, norm_w, b.qkv, false, &epilogue)
                .map_err(ERR.launch("qkv"));
        }
        let (mut row0, ldy) = (0usize, self.shape.qkv_rows());
        for (seg, m) in l.qkv.iter().enumerate() {
            let offset = |ptr: u64, floats: usize| {
                if ptr == 0 {
                    0
                } else {
                    ptr + (floats * 4) as u64
                }
            };
            let (args, rank) = (lora.args, lora.args.rank.max(0) as usize);
            let epilogue = Epilogue {
                bias: offset(l.qkv_bias_ptr, row0),
                lora: LoraEpilogue {
                    args: LoraArgs {
                        b: offset(args.b, row0 * rank),
                        xa: offset(args.xa, seg * rank),
                        // The first part's launch computes the whole group's shrink (every segment).
                        a: if seg == 0 { args.a } else { 0 },
                        e0: i32::MAX,
                        e1: i32::MAX,
                        ..args
                    },
                    ..lora
                },
            };
            let (k, n, eps, y) = (
                self.kernels,
                b.batch,
                self.shape.eps,
                b.qkv + (row0 * 4) as u64,
            );
            (if n == 1 {
                k.qmv(
                    m.quant, m.ptr, x, norm_w, y, m.rows, m.cols, eps, false, &epilogue,
                )
            } else {
                k.qmv_batch_strided(
                    m.quant, m.ptr, x, norm_w, y, m.rows, m.cols, eps, false, n, &epilogue, ldy,
                )
            })
            .map_err(ERR.launch("q/k/v (split)"))?;
            row0 += m.rows;
        }
        Ok(())
    }

    /// The address of norm weight `i` (two per layer, then the final norm).
    fn norm(&self, i: usize) -> u64 {
        self.weights.norms_ptr + (i * self.shape.hidden * 4) as u64
    }

    /// RoPE on q/k, the KV-cache append and attention of layer `i`, for every sequence.
    fn attention(&self, i: usize) -> Result<()> {
        let (s, b) = (self.shape, self.buffers);
        let cache_layer = (s.max_seq * s.kv_heads * s.head_dim * 4) as u64;
        let cache_seq_stride = s.layers * s.max_seq * s.kv_heads * s.head_dim;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        self.kernels
            .rope_attention_batch(
                b.qkv,
                b.k_cache + i as u64 * cache_layer,
                b.v_cache + i as u64 * cache_layer,
                b.state_ptr,
                self.weights.inv_freq_ptr,
                b.attn,
                b.part,
                b.counters,
                s.attention(),
                scale,
                b.batch,
                cache_seq_stride,
            )
            .map_err(ERR.launch("rope_attention"))
    }

    /// act = silu(gate xn) * (up xn) of layer `i` for every sequence (normed in the launch).
    fn gate_up(&self, i: usize, l: &super::weights::LayerWeights) -> Result<()> {
        let (k, s, b) = (self.kernels, self.shape, self.buffers);
        let lora = self.lora(i, Group::GateUp);
        let (g, u) = (&l.gate, &l.up);
        let (x, norm_w, act, ffn, h, eps) =
            (b.x, self.norm(2 * i + 1), b.act, s.ffn, s.hidden, s.eps);
        (if b.batch == 1 {
            k.qmv_swiglu(g.quant, g.ptr, u.ptr, x, norm_w, act, ffn, h, eps, &lora)
        } else {
            k.qmv_swiglu_batch(
                g.quant, g.ptr, u.ptr, x, norm_w, act, ffn, h, eps, b.batch, &lora,
            )
        })
        .map_err(ERR.launch("gate/up + swiglu"))
    }

    /// The fixed launch sequence of one step, calling `mark(kind)` after each launch (the
    /// profile's events; a no-op otherwise).
    pub fn launch(&self, mark: &mut dyn FnMut(&'static str) -> Result<()>) -> Result<()> {
        let (k, s, b, w, n) = (
            self.kernels,
            self.shape,
            self.buffers,
            self.weights,
            self.buffers.batch,
        );
        let e = &w.embed;
        (if n == 1 {
            k.embed(e.quant, e.ptr, b.state_ptr, b.x, s.hidden)
        } else {
            k.embed_batch(e.quant, e.ptr, b.state_ptr, b.x, s.hidden, n)
        })
        .map_err(ERR.launch("embed"))?;
        mark("embed")?;
        for (i, l) in w.layers.iter().enumerate() {
            self.qkv(l, b.x, self.norm(2 * i), self.lora(i, Group::Qkv))?;
            mark("qmv q/k/v")?;
            self.attention(i)?;
            mark("rope_attention")?;
            let epilogue = Epilogue {
                bias: l.o_bias_ptr,
                lora: self.lora(i, Group::O),
            };
            self.matvec(&l.o, b.attn, 0, b.x, true, &epilogue)
                .map_err(ERR.launch("o_proj"))?;
            mark("qmv o_proj")?;
            self.gate_up(i, l)?;
            mark("qmv_swiglu gate/up")?;
            let epilogue = Epilogue {
                bias: 0,
                lora: self.lora(i, Group::Down),
            };
            self.matvec(&l.down, b.act, 0, b.x, true, &epilogue)
                .map_err(ERR.launch("down_proj"))?;
            mark("qmv down_proj")?;
        }
        self.matvec(
            w.head(),
            b.x,
            self.norm(2 * s.layers),
            b.logits_ptr,
            false,
            &Epilogue::NONE,
        )
        .map_err(ERR.launch("lm_head"))?;
        mark("qmv lm_head")?;
        let pending = self.lora.map(|p| p.pending()).unwrap_or(PendingXa::NONE);
        k.argmax_batch(b.logits_ptr, s.vocab, b.result_ptr, 0, n, pending)
            .map_err(ERR.launch("argmax"))?;
        mark("argmax")
    }
}
