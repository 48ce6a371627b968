//! Launchers of the fused causal attention (kernels/flash_attention.cu): forward with the saved
//! log-sum-exp, backward in three launches (row dots D, dk/dv, dq), bf16 on tensor cores, head
//! dims 64 and 128. No [S, S] matrix is ever stored; K/V of grouped-query attention are read per
//! kv head, never expanded. The maths is in the kernel file's header and in
//! `super::attention_reference` (the f64 specification `check` compares against).
//!
//! Like `super::launch`, a launch records no event, allocates nothing and never synchronizes, so
//! the engine can capture it into its step graph. Pointers are raw device addresses; names say
//! which hold bf16 and which f32.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, DType};

use crate::gpu::kernels::{function, Module};
use crate::gpu::train::reference::HeadShape;

type Result<T> = candle_core::Result<T>;

/// Threads of a block (4 warps; FA_THREADS in the kernel file).
const THREADS: u32 = 128;
/// Rows of a query or key tile (FA_TILE): the backward's blocks take one tile each.
const TILE: usize = 64;
/// Query rows of a forward block (FA_FWD_ROWS: 32 a warp).
const FWD_ROWS: usize = 128;
/// Warps per block of `fa_row_dot` (one (token, head) each).
const ROW_DOT_WARPS: usize = 8;

/// Shared-memory tiles of each kernel (FA_FORWARD_TILES, FA_DKDV_TILES, FA_DQ_TILES in the kernel
/// file: the tiles a block walks are double buffered) and the dk/dv kernel's f32 values
/// (FA_DKDV_FLOATS: lse and D of two query tiles).
const FORWARD_TILES: usize = 6;
const DKDV_TILES: usize = 6;
const DKDV_FLOATS: usize = 4 * TILE;
const DQ_TILES: usize = 6;

/// Shared memory of a kernel holding `tiles` tiles of [64, hd + 8] bf16 and `floats` f32.
fn shared_bytes(head_dim: usize, tiles: usize, floats: usize) -> usize {
    tiles * TILE * (head_dim + 8) * 2 + floats * 4
}

/// The flash-attention kernels for one head dim, with the stream they launch on.
pub struct FlashAttention {
    stream: Arc<CudaStream>,
    head_dim: usize,
    forward: CudaFunction,
    backward_dkdv: CudaFunction,
    backward_dq: CudaFunction,
    row_dot: CudaFunction,
}

impl FlashAttention {
    /// Whether the kernels exist for activations of `dtype` with heads of `head_dim`.
    pub fn supports(dtype: DType, head_dim: usize) -> bool {
        dtype == DType::BF16 && matches!(head_dim, 64 | 128)
    }

    /// Resolves the kernels for `head_dim` (64 or 128) on `dev` and raises their shared-memory
    /// limit where a block needs more than the default 48 KiB (head dim 128).
    pub fn load(dev: &CudaDevice, head_dim: usize) -> Result<Self> {
        let (forward, dkdv, dq) = match head_dim {
            64 => (
                "fa_forward_hd64",
                "fa_backward_dkdv_hd64",
                "fa_backward_dq_hd64",
            ),
            128 => (
                "fa_forward_hd128",
                "fa_backward_dkdv_hd128",
                "fa_backward_dq_hd128",
            ),
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "flash attention: head dim {other} (kernels for 64 and 128)"
                )))
            }
        };
        let load = |name: &'static str, bytes: usize| -> Result<CudaFunction> {
            let f = function(dev, Module::FlashAttention, name, "")?;
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .w()?;
            Ok(f)
        };
        Ok(Self {
            stream: dev.cuda_stream(),
            head_dim,
            forward: load(forward, shared_bytes(head_dim, FORWARD_TILES, 0))?,
            backward_dkdv: load(dkdv, shared_bytes(head_dim, DKDV_TILES, DKDV_FLOATS))?,
            backward_dq: load(dq, shared_bytes(head_dim, DQ_TILES, 0))?,
            row_dot: function(dev, Module::FlashAttention, "fa_row_dot", "")?,
        })
    }

    /// The head dim the kernels were loaded for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Blocks of `rows` query or key rows along the sequence for every head: heads on x, so that
    /// blocks (started x fastest) take every head's longest tiles first.
    fn config(
        &self,
        heads: usize,
        tiles: usize,
        floats: usize,
        seq: usize,
        rows: usize,
    ) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (heads as u32, seq.div_ceil(rows) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared_bytes(self.head_dim, tiles, floats) as u32,
        }
    }

    fn check(&self, sh: HeadShape) -> Result<(i32, i32, f32)> {
        let HeadShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        } = sh;
        if head_dim != self.head_dim
            || kv_heads == 0
            || heads % kv_heads != 0
            || batch == 0
            || seq == 0
        {
            return Err(candle_core::Error::Msg(format!(
                "flash attention: batch {batch}, {heads} heads, {kv_heads} kv heads, {seq} positions, \
                 head dim {head_dim} (kernels for {}; heads a positive multiple of kv heads)",
                self.head_dim
            )));
        }
        if i32::try_from(seq).is_err()
            || seq.div_ceil(TILE) > 65_535
            || u32::try_from(sh.batch_heads()).is_err()
            || sh.q_len() > isize::MAX as usize / 2
        {
            return Err(candle_core::Error::Msg(format!(
                "flash attention: {batch} x {heads} heads x {seq} positions exceed the launch limits"
            )));
        }
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        Ok((seq as i32, (heads / kv_heads) as i32, scale))
    }

    /// o = softmax(scale q k^T, causal) v and lse2 = log2 of each row's sum of exponentials.
    /// q, o: bf16 [B*H, S, hd]; k, v: bf16 [B*Hkv, S, hd]; lse2: f32 [B*H, S].
    pub fn forward(&self, q: u64, k: u64, v: u64, o: u64, lse2: u64, sh: HeadShape) -> Result<()> {
        let (s, g, scale) = self.check(sh)?;
        let mut b = self.stream.launch_builder(&self.forward);
        b.arg(&q).arg(&k).arg(&v).arg(&o).arg(&lse2);
        b.arg(&s).arg(&g).arg(&scale);
        unsafe { b.launch(self.config(sh.batch_heads(), FORWARD_TILES, 0, sh.seq, FWD_ROWS)) }
            .w()?;
        Ok(())
    }

    /// The backward from dO: D = rowsum(dO o) from the token-major `dout_tokens` and `o_tokens`
    /// (bf16 [B*S, H*hd]) into `delta` (f32 [B*H, S]), then dk, dv (bf16 [B*Hkv, S, hd], summed
    /// over each kv head's query heads) and dq (bf16 [B*H, S, hd]) from q, k, v, the head-major
    /// `dout` (bf16 [B*H, S, hd]) and the forward's lse2.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        (q, k, v): (u64, u64, u64),
        (dout, dout_tokens, o_tokens): (u64, u64, u64),
        lse2: u64,
        delta: u64,
        (dq, dk, dv): (u64, u64, u64),
        sh: HeadShape,
    ) -> Result<()> {
        let (s, g, scale) = self.check(sh)?;
        let rows = sh.tokens() * sh.heads;
        let (b_i, h_i, hd_i) = (sh.batch as i32, sh.heads as i32, self.head_dim as i32);
        let mut b = self.stream.launch_builder(&self.row_dot);
        b.arg(&dout_tokens).arg(&o_tokens).arg(&delta);
        b.arg(&b_i).arg(&s).arg(&h_i).arg(&hd_i);
        let row_dot = LaunchConfig {
            grid_dim: (rows.div_ceil(ROW_DOT_WARPS) as u32, 1, 1),
            block_dim: (ROW_DOT_WARPS as u32 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(row_dot) }.w()?;
        let mut b = self.stream.launch_builder(&self.backward_dkdv);
        b.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse2).arg(&delta);
        b.arg(&dk).arg(&dv).arg(&s).arg(&g).arg(&scale);
        unsafe {
            b.launch(self.config(
                sh.batch * sh.kv_heads,
                DKDV_TILES,
                DKDV_FLOATS,
                sh.seq,
                TILE,
            ))
        }
        .w()?;
        let mut b = self.stream.launch_builder(&self.backward_dq);
        b.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse2).arg(&delta);
        b.arg(&dq).arg(&s).arg(&g).arg(&scale);
        unsafe { b.launch(self.config(sh.batch_heads(), DQ_TILES, 0, sh.seq, TILE)) }.w()?;
        Ok(())
    }
}
