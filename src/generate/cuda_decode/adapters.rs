//! LoRA adapters inside the decode engines, unmerged: a pool of adapter slots on the device and the
//! launches that apply them (Punica's BGMV / S-LoRA idea). Each sequence of a step has a slot index
//! (device memory, written with the tokens; negative: no adapter), so a batch whose sequences use
//! different adapters applies them inside the base mat-vecs: the group's shrink by producer warps in
//! the launch's first blocks, the expand in every row's epilogue (kernels/quant_matvec.cu):
//!
//! ```text
//! group (input)                  shrink (producer warps)           expand (mat-vec epilogue)
//! q/k/v (rms_norm(x), fused)     xa = xn [A_q | A_k | A_v]^T     qkv[r] += xa[seg(r)] . B_qkv[r]
//! o (attention output)           xa = attn A_o^T                  x[r]   += xa . B_o[r]
//! gate/up (rms_norm(x), fused)   xa = xn [A_gate | A_up]^T        g += xa[0] . B_g[r], u += xa[1] . B_u[r]
//! down (swiglu output)           xa = act A_down^T                x[r]   += xa . B_down[r]
//! ```
//! B is stored pre-multiplied by the adapter's scale (alpha / r). Every slot holds every group at
//! the pool's rank R (an adapter of smaller rank, or one that leaves a projection out, is zero
//! padded), so a slot's address is `base + slot * stride` and the captured graph's pointers never
//! change: loading or unloading an adapter rewrites a slot's contents only.
//!
//! Layout of the weights buffer: `[layer][group] { A [slot][a_rows, k], B [slot][out rows, R] }` f32,
//! A rows `segments * R` of the group's input width: a launch's adapter weights (every slot of its
//! group) are one extent, which the launch marks persisting in the L2 ([`L2Window`]).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUlimit};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};

use super::EngineShape;
pub use crate::generate::decode_adapter::{
    AdapterDims, DecodeAdapter, Group, ProjectionLora, GROUPS, PROJECTIONS,
};
use crate::gpu::decode::launch::{
    device_ptr, xa_sequences, L2Window, LoraArgs, LoraEpilogue, PendingXa, XA_PENDING,
};
use crate::gpu::engine_error::EngineErrors;
use crate::{Error, Result};

const ERR: EngineErrors = EngineErrors("CUDA decode engine adapters");

/// Slots of a pool unless the caller asks for more (one per sequence of a full batch).
pub const DEFAULT_SLOTS: usize = 8;

fn dims(s: &EngineShape) -> AdapterDims {
    AdapterDims {
        hidden: s.hidden,
        q_out: s.heads * s.head_dim,
        kv_out: s.kv_heads * s.head_dim,
        ffn: s.ffn,
    }
}

/// One projection group of one slot, as [`AdapterPool::slot_group`] locates it.
#[derive(Debug, Clone)]
pub struct SlotGroup {
    /// A [a_rows, k] f32: the segments' rank rows one after the other.
    pub a: u64,
    /// B [out rows, rank] f32, pre-multiplied by the adapter's scale.
    pub b: u64,
    pub a_rows: usize,
    /// Input width.
    pub k: usize,
    pub rank: usize,
    /// Per xa segment (q, k, v; gate, up; or the one projection): its first output row and rows.
    pub segments: Vec<(usize, usize)>,
}

/// The adapter slots of one engine on the device, and the per-sequence slot indices.
pub struct AdapterPool {
    shape: EngineShape,
    slots: usize,
    rank: usize,
    /// A and B of every slot ([module docs](self) for the layout).
    weights: CudaSlice<f32>,
    weights_ptr: u64,
    /// Floats of one layer in `weights`.
    layer_floats: usize,
    /// Bytes of a launch's L2 window at most (the device's access-policy window limit); 0: the
    /// launches carry no window ([`l2_window_bytes`]).
    window_max: usize,
    /// x A^T of each sequence for every launch of a step, [layers][group][xa_sequences(batch), 3
    /// rank] (3 rank: the widest group; a batch-1 launch stores XA_COPIES copies of its values),
    /// each value XA_PENDING (all bits set) until its launch's producer stores it: filled when the
    /// pool is made, refilled by each step's last launch ([`AdapterPool::pending`]).
    xa: CudaSlice<f32>,
    xa_ptr: u64,
    batch: usize,
    /// Each sequence's slot, [batch] i32 (negative: none), written before each step.
    seq_slots: CudaSlice<i32>,
    seq_slots_ptr: u64,
    /// What each slot holds (the caller's key), for [`AdapterPool::find`].
    occupants: Vec<Option<Vec<candle_core::TensorId>>>,
}

impl AdapterPool {
    /// A pool of `slots` adapters of rank up to `rank` for `batch` sequences per step.
    pub fn new(
        shape: &EngineShape,
        slots: usize,
        rank: usize,
        batch: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<Self> {
        if slots == 0 || rank == 0 || batch == 0 {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine adapters: {slots} slots of rank {rank} for {batch} sequences"
            )));
        }
        let per_slot = GROUPS.iter().fold(0, |n, &g| {
            let d = dims(shape).group(g, rank);
            n + d.a_rows * d.k + d.b_rows * rank
        });
        let layers = shape.layers;
        let alloc = |n: usize, what: &str| {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| ERR.driver(what, e))
        };
        let weights = alloc(layers * slots * per_slot, "A and B")?;
        let xa = stream
            .clone_htod(&vec![
                f32::from_bits(XA_PENDING);
                layers * GROUPS.len() * xa_sequences(batch) * 3 * rank
            ])
            .map_err(|e| ERR.driver("xa", e))?;
        let window_max = l2_window_bytes(stream, weights.len() * 4, layers * per_slot * 4)?;
        let seq_slots = stream
            .clone_htod(&vec![-1i32; batch])
            .map_err(|e| ERR.driver("slot indices", e))?;
        Ok(Self {
            shape: *shape,
            slots,
            rank,
            weights_ptr: device_ptr(&weights, stream),
            layer_floats: slots * per_slot,
            window_max,
            xa_ptr: device_ptr(&xa, stream),
            batch,
            seq_slots_ptr: device_ptr(&seq_slots, stream),
            weights,
            xa,
            seq_slots,
            occupants: vec![None; slots],
        })
    }

    /// Slots in the pool.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The largest rank a slot holds.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Bytes of the A and B buffers.
    pub fn bytes(&self) -> usize {
        self.weights.len() * 4
    }

    /// The slot holding the adapter of `key`, if loaded.
    pub fn find(&self, key: &[candle_core::TensorId]) -> Option<usize> {
        self.occupants
            .iter()
            .position(|o| o.as_deref() == Some(key))
    }

    /// A slot to load into: a free one, else `evict` (the caller's least recently used).
    pub fn free_slot(&self) -> Option<usize> {
        self.occupants.iter().position(|o| o.is_none())
    }

    /// Offsets (floats) of group `g` of `layer` for slot 0 in A and B, and the per-slot strides.
    fn offsets(&self, layer: usize, g: Group) -> (usize, usize, usize, usize) {
        let mut at = layer * self.layer_floats;
        for &h in &GROUPS {
            let d = dims(&self.shape).group(h, self.rank);
            let (sa, sb) = (d.a_rows * d.k, d.b_rows * self.rank);
            if h == g {
                return (at, at + sa * self.slots, sa, sb);
            }
            at += (sa + sb) * self.slots;
        }
        unreachable!("every group is in GROUPS")
    }

    /// Writes `adapter` into `slot` (zero-padded to the pool's rank; `key` names it for
    /// [`AdapterPool::find`]). Every launch already captured keeps working: only the slot's
    /// contents change.
    pub fn load(
        &mut self,
        slot: usize,
        adapter: &DecodeAdapter,
        key: Option<Vec<candle_core::TensorId>>,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let s = self.shape;
        if slot >= self.slots {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine adapters: slot {slot} of a pool of {}",
                self.slots
            )));
        }
        if adapter.layers.len() != s.layers || adapter.rank() > self.rank {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine adapters: an adapter of {} layers and rank {} does not fit a pool of {} layers and rank {}",
                adapter.layers.len(),
                adapter.rank(),
                s.layers,
                self.rank
            )));
        }
        for (layer, projections) in adapter.layers.iter().enumerate() {
            for &g in &GROUPS {
                let (a_host, b_host) = self.group_host(g, projections)?;
                let (a_off, b_off, sa, sb) = self.offsets(layer, g);
                let (a_at, b_at) = (a_off + slot * sa, b_off + slot * sb);
                let mut dst = self.weights.slice_mut(a_at..a_at + sa);
                stream
                    .memcpy_htod(a_host.as_slice(), &mut dst)
                    .map_err(|e| ERR.driver("writing A", e))?;
                let mut dst = self.weights.slice_mut(b_at..b_at + sb);
                stream
                    .memcpy_htod(b_host.as_slice(), &mut dst)
                    .map_err(|e| ERR.driver("writing B", e))?;
            }
        }
        self.occupants[slot] = Some(key.unwrap_or_default());
        Ok(())
    }

    /// Marks `slot` free (its contents stay until overwritten; no sequence may still use it).
    pub fn unload(&mut self, slot: usize) {
        if let Some(o) = self.occupants.get_mut(slot) {
            *o = None;
        }
    }

    /// Whether `slot` holds an adapter.
    pub fn occupied(&self, slot: usize) -> bool {
        self.occupants.get(slot).is_some_and(|o| o.is_some())
    }

    /// The host images of one group's A and B for one slot (`DecodeAdapter::pack`).
    fn group_host(
        &self,
        g: Group,
        projections: &[Option<ProjectionLora>; 7],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        dims(&self.shape).pack(g, self.rank, projections)
    }

    /// Writes each sequence's slot (negative or `None`: no adapter) for the next step.
    pub fn set_sequence_slots(
        &mut self,
        slots: &[Option<usize>],
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        if slots.len() != self.seq_slots.len() {
            return Err(Error::InvalidRequest(format!(
                "CUDA decode engine adapters: {} slot indices for {} sequences",
                slots.len(),
                self.seq_slots.len()
            )));
        }
        let mut ids = Vec::with_capacity(slots.len());
        for s in slots {
            match s {
                Some(s) if !self.occupied(*s) => {
                    return Err(Error::InvalidRequest(format!(
                        "CUDA decode engine adapters: slot {s} holds no adapter"
                    )))
                }
                Some(s) => ids.push(*s as i32),
                None => ids.push(-1),
            }
        }
        stream
            .memcpy_htod(ids.as_slice(), &mut self.seq_slots)
            .map_err(|e| ERR.driver("writing slot indices", e))
    }

    /// The xa values, for the step's last launch to mark pending again (all bits set) once every
    /// expand of the step has read them, so that the next step's expands wait for its shrinks.
    pub fn pending(&self) -> PendingXa {
        PendingXa {
            ptr: self.xa_ptr,
            floats: self.xa.len(),
        }
    }

    /// Where group `g` of `layer` of `slot` lives, for products over many tokens (the batched
    /// prefill): A [a_rows, k] and B [b_rows, rank] (pre-scaled) f32 addresses, and each xa
    /// segment's output rows.
    pub fn slot_group(&self, layer: usize, g: Group, slot: usize) -> SlotGroup {
        let d = dims(&self.shape).group(g, self.rank);
        let (a_off, b_off, sa, sb) = self.offsets(layer, g);
        let out = |p: usize| dims(&self.shape).projection(p).1;
        let mut segments = Vec::with_capacity(3);
        let mut row = 0;
        for &p in g.projections() {
            segments.push((row, out(p)));
            row += out(p);
        }
        SlotGroup {
            a: self.weights_ptr + ((a_off + slot * sa) * 4) as u64,
            b: self.weights_ptr + ((b_off + slot * sb) * 4) as u64,
            a_rows: d.a_rows,
            k: d.k,
            rank: self.rank,
            segments,
        }
    }

    /// The LoRA part of group `g`'s mat-vec at `layer`: the launch computes the group's shrink
    /// (A of every sequence's slot against the x it normalizes) into the launch's own xa region
    /// and adds each row's expand.
    pub fn epilogue(&self, layer: usize, g: Group) -> LoraEpilogue {
        let d = dims(&self.shape).group(g, self.rank);
        let (a_off, b_off, sa, sb) = self.offsets(layer, g);
        let launch = layer * GROUPS.len() + GROUPS.iter().position(|&h| h == g).unwrap_or(0);
        let xa_off = launch * xa_sequences(self.batch) * 3 * self.rank;
        let group_bytes = (b_off + self.slots * sb - a_off) * 4;
        LoraEpilogue {
            args: LoraArgs {
                b: self.weights_ptr + (b_off * 4) as u64,
                slot_stride: sb as i64,
                xa: self.xa_ptr + (xa_off * 4) as u64,
                slots: self.seq_slots_ptr,
                a: self.weights_ptr + (a_off * 4) as u64,
                a_slot_stride: sa as i64,
                rank: self.rank as i32,
                xa_stride: (3 * self.rank) as i32,
                e0: d.e0 as i32,
                e1: d.e1 as i32,
                a_rows: d.a_rows as i32,
                ..LoraArgs::default()
            },
            resident: match self.window_max {
                0 => L2Window::NONE,
                max => L2Window {
                    base: self.weights_ptr + (a_off * 4) as u64,
                    bytes: group_bytes.min(max),
                },
            },
        }
    }
}

/// Sets the L2's persisting set-aside for a pool of `pool_bytes` of adapter weights, `slot_bytes`
/// an adapter (at most the device's limit), and returns the device's largest access-policy window;
/// 0 where one adapter does not fit the set-aside, the device has none, or `WICK_ADAPTER_L2=0` (the
/// launches then carry no window). Lines of the set-aside that no persisting access holds stay
/// usable by every other access. Measured (H200, bench/results/device-s16 call 1): SmolLM2-135M
/// shapes (19.5 MB an adapter, 39.3 MB set-aside) batch 1 with an adapter 0.865x -> 0.878x of the
/// step without; SmolLM2-1.7B (72 MB an adapter) 0.840x -> 0.819x with the window, hence none
/// there; batch 8 with 8 adapters unchanged.
fn l2_window_bytes(
    stream: &Arc<CudaStream>,
    pool_bytes: usize,
    slot_bytes: usize,
) -> Result<usize> {
    if std::env::var("WICK_ADAPTER_L2").as_deref() == Ok("0") {
        return Ok(0);
    }
    let ctx = stream.context();
    let attribute = |a| {
        ctx.attribute(a)
            .map(|v| v.max(0) as usize)
            .map_err(|e| ERR.driver("reading the L2 limits", e))
    };
    let set_aside =
        attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE)?;
    let window = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE)?;
    if set_aside < slot_bytes || window == 0 {
        return Ok(0);
    }
    ctx.set_limit(
        CUlimit::CU_LIMIT_PERSISTING_L2_CACHE_SIZE,
        set_aside.min(pool_bytes),
    )
    .map_err(|e| ERR.driver("setting the L2 persisting set-aside", e))?;
    Ok(window)
}
