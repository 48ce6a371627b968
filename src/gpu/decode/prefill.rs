//! Launchers of the batched-prefill kernels (kernels/prefill.cu) on raw device pointers (`u64`), as
//! in `launch`: the embedding of n tokens, one layer's GGML matrices dequantized to f32 in one
//! launch, RMSNorm over rows, RoPE with the KV-cache write for n positions, causal attention of n
//! queries against the cache, and SwiGLU over rows. The matrix products between them are f32 GEMMs
//! (`gpu::gemm`). CPU twins: `reference::prefill_*` and `attention_reference`.
//!
//! Attention has two paths. [`PrefillKernels::attention`] is one kernel (key tiles in shared memory,
//! online softmax, CUDA-core f32): no scratch, any context length. [`PrefillKernels::attention_gemm`]
//! is the GEMM formulation of the training engine: S = Q K^T per kv head (one batched cuBLASLt f32
//! product, the group's query heads stacked as rows), a causal softmax with the chunk's position
//! offset in place, O = P V (one batched product), then O from head-major to token-major rows: 4
//! launches, and a [heads, n, L] f32 scratch for the scores.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, DType};

pub use super::attention_reference::{gemm_attention_ld, gemm_attention_scores_len};
use super::attention_reference::{gemm_attention_shapes, AttentionShape};
use super::QuantType;
use crate::gpu::gemm::{Gemm, GemmShape};
use crate::gpu::kernels::{function, Module};
use crate::gpu::launch::grid_1d;

type Result<T> = candle_core::Result<T>;

/// Key positions per shared-memory tile of `prefill_attention` (PA_KEYS in kernels/prefill.cu).
pub const PREFILL_KEY_TILE: usize = 32;
/// Threads of one `prefill_attention` block (PA_THREADS).
const PREFILL_ATTENTION_THREADS: u32 = 256;
/// Prompt tokens per `prefill_attention` block (times the query heads of one kv head), at most.
pub const PREFILL_QUERY_TILE: usize = 4;
/// Shared memory a block may use without an opt-in.
const SHARED_LIMIT: usize = 48 * 1024;
/// Warps (rows) per block of `rms_rows`.
const RMS_WARPS: usize = 4;

use crate::gpu::ggml::DequantKernels;
pub use crate::gpu::ggml::{DequantSegment, DEQUANT_SEGMENTS};

/// The format code `dequant4` in kernels/prefill.cu switches on.
fn code(q: QuantType) -> i32 {
    q.code() as i32
}

/// Shared-memory bytes of one `prefill_attention` block holding `qt` tokens.
pub fn prefill_attention_shared_bytes(shape: AttentionShape, qt: usize) -> usize {
    let rows = qt * shape.heads / shape.kv_heads.max(1);
    let d = shape.head_dim;
    (2 * rows * d
        + PREFILL_KEY_TILE * (d + 1)
        + PREFILL_KEY_TILE * d
        + rows * PREFILL_KEY_TILE
        + 3 * rows)
        * 4
}

/// Tokens per `prefill_attention` block for `shape`: [`PREFILL_QUERY_TILE`], halved until the block's
/// shared memory fits 48 KiB; `None` when even one token does not fit.
pub fn prefill_query_tile(shape: AttentionShape) -> Option<usize> {
    let mut qt = PREFILL_QUERY_TILE;
    while qt >= 1 {
        if prefill_attention_shared_bytes(shape, qt) <= SHARED_LIMIT {
            return Some(qt);
        }
        qt /= 2;
    }
    None
}

/// Warps (rows) per block of `prefill_causal_softmax`.
const SOFTMAX_WARPS: usize = 8;

/// The prefill kernels of one device, on the stream of the decode kernels (Candle's).
pub struct PrefillKernels {
    stream: Arc<CudaStream>,
    embed_rows: CudaFunction,
    dequant: DequantKernels,
    rms_rows: CudaFunction,
    rope_kv_rows: CudaFunction,
    attention: CudaFunction,
    swiglu_rows: CudaFunction,
    add_bias_rows: CudaFunction,
    causal_softmax: CudaFunction,
    heads_to_tokens: CudaFunction,
}

impl PrefillKernels {
    /// Loads kernels/prefill.cu on `dev`.
    pub fn load(dev: &CudaDevice) -> Result<Self> {
        let f = |name: &'static str| function(dev, Module::Prefill, name, "");
        Ok(Self {
            stream: dev.cuda_stream(),
            embed_rows: f("embed_rows")?,
            dequant: DequantKernels::load(dev)?,
            rms_rows: f("rms_rows")?,
            rope_kv_rows: f("rope_kv_rows")?,
            attention: f("prefill_attention")?,
            swiglu_rows: f("swiglu_rows")?,
            add_bias_rows: f("add_bias_rows")?,
            causal_softmax: f("prefill_causal_softmax")?,
            heads_to_tokens: f("heads_to_tokens_rows")?,
        })
    }

    /// The stream the kernels launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// x[i] (f32 [n, hidden]) = dequantized row ids[i] (i32 [n], in range) of `table`.
    pub fn embed_rows(
        &self,
        q: QuantType,
        table: u64,
        ids: u64,
        x: u64,
        n: usize,
        hidden: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (q_i, n_i, h_i) = (code(q), n as i32, hidden as i32);
        let mut b = self.stream.launch_builder(&self.embed_rows);
        b.arg(&table)
            .arg(&q_i)
            .arg(&ids)
            .arg(&x)
            .arg(&n_i)
            .arg(&h_i);
        let cfg = LaunchConfig {
            grid_dim: ((hidden / 4).div_ceil(128).max(1) as u32, n as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// kernels/dequant.cu's `dequant_layer` on this stream (see `gpu::ggml::DequantKernels`).
    pub fn dequant_layer(&self, dst: u64, dtype: DType, segments: &[DequantSegment]) -> Result<()> {
        self.dequant.dequant_layer(dst, dtype, segments)
    }

    /// y[i] = rms_norm(x[i]) * w for the n rows of k floats of x (y may not alias x).
    pub fn rms_rows(&self, x: u64, w: u64, y: u64, n: usize, k: usize, eps: f32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (n_i, k_i) = (n as i32, k as i32);
        let mut b = self.stream.launch_builder(&self.rms_rows);
        b.arg(&x).arg(&w).arg(&y).arg(&n_i).arg(&k_i).arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(RMS_WARPS) as u32, 1, 1),
            block_dim: ((RMS_WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// RoPE at positions pos0 + i on the q heads of qkv row i and its k head, the rotated k and the
    /// v of row i into the caches at row pos0 + i, i < n. The rotated q replaces qkv's when `qh` is
    /// 0; otherwise it goes head-major to `qh` ([heads, n, d], what [`Self::attention_gemm`] reads)
    /// and qkv's q is left as it was.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_rows(
        &self,
        qkv: u64,
        k_cache: u64,
        v_cache: u64,
        inv_freq: u64,
        qh: u64,
        pos0: usize,
        n: usize,
        shape: AttentionShape,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (p_i, n_i) = (pos0 as i32, n as i32);
        let (h, kv, d) = (
            shape.heads as i32,
            shape.kv_heads as i32,
            shape.head_dim as i32,
        );
        let mut b = self.stream.launch_builder(&self.rope_kv_rows);
        b.arg(&qkv)
            .arg(&k_cache)
            .arg(&v_cache)
            .arg(&inv_freq)
            .arg(&qh);
        b.arg(&p_i).arg(&n_i).arg(&h).arg(&kv).arg(&d);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// Causal attention of the n (rotated) queries in qkv rows (positions pos0 + i) against cache
    /// rows 0 ..= pos0 + i; out: [n, heads * d].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: u64,
        k_cache: u64,
        v_cache: u64,
        out: u64,
        pos0: usize,
        n: usize,
        shape: AttentionShape,
        scale: f32,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if shape.kv_heads == 0 || shape.heads % shape.kv_heads != 0 {
            return Err(candle_core::Error::Msg(format!(
                "prefill_attention: {} heads are not a multiple of {} kv heads",
                shape.heads, shape.kv_heads
            )));
        }
        let qt = prefill_query_tile(shape).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "prefill_attention: {} query heads of dim {} per kv head exceed shared memory",
                shape.heads / shape.kv_heads,
                shape.head_dim
            ))
        })?;
        let (p_i, n_i, qt_i) = (pos0 as i32, n as i32, qt as i32);
        let (h, kv, d) = (
            shape.heads as i32,
            shape.kv_heads as i32,
            shape.head_dim as i32,
        );
        let mut b = self.stream.launch_builder(&self.attention);
        b.arg(&qkv).arg(&k_cache).arg(&v_cache).arg(&out);
        b.arg(&p_i)
            .arg(&n_i)
            .arg(&h)
            .arg(&kv)
            .arg(&d)
            .arg(&qt_i)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(qt) as u32, shape.kv_heads as u32, 1),
            block_dim: (PREFILL_ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: prefill_attention_shared_bytes(shape, qt) as u32,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// The GEMM formulation of [`Self::attention`]: causal attention of the n rotated queries in
    /// `qh` (head-major [heads, n, d], from [`Self::rope_kv_rows`]; positions pos0 + i) against
    /// cache rows 0 ..= pos0 + i, into `out` ([n, heads * d], as `attention` writes it). Four
    /// launches: S = Q K^T (cuBLASLt f32, on the TF32 tensor cores when `tf32`; batched over kv heads, the group's query heads
    /// stacked as the rows [g * n + i] of one product) into `scores`; the offset causal softmax in
    /// place; O = P V into `qh` (its queries are no longer needed); O to token-major rows.
    /// `scores`: at least [`gemm_attention_scores_len`]`(shape, n, pos0 + n)` floats. `mark(kind)`
    /// is called after each launch (a profile's events; `|_| Ok(())` otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_gemm(
        &self,
        gemm: &Gemm,
        (qh, k_cache, v_cache): (u64, u64, u64),
        (scores, out): (u64, u64),
        pos0: usize,
        n: usize,
        shape: AttentionShape,
        (scale, tf32): (f32, bool),
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
        } = shape;
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(candle_core::Error::Msg(format!(
                "prefill attention_gemm: {heads} heads are not a multiple of {kv_heads} kv heads"
            )));
        }
        // Per kv head: S [g n, L] = Q [g n, d] K^T and O [g n, d] = P V, K and V the cache rows
        // [L, d] with row stride kv_heads d (`reference::gemm_attention_shapes`).
        let (qk, pv, ld) = gemm_attention_shapes(shape, pos0, n);
        let (qk, pv) = (GemmShape { tf32, ..qk }, GemmShape { tf32, ..pv });
        gemm.run(&qk, qh, k_cache, scores, 1.0, 0.0)?;
        mark("attention q k^T (gemm)")?;
        let rows = heads * n;
        let (rows_i, n_i, ld_i, p_i) = (rows as i32, n as i32, ld as i32, pos0 as i32);
        let mut b = self.stream.launch_builder(&self.causal_softmax);
        b.arg(&scores)
            .arg(&rows_i)
            .arg(&n_i)
            .arg(&ld_i)
            .arg(&p_i)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(SOFTMAX_WARPS) as u32, 1, 1),
            block_dim: ((SOFTMAX_WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        mark("attention softmax")?;
        gemm.run(&pv, scores, v_cache, qh, 1.0, 0.0)?;
        mark("attention p v (gemm)")?;
        let (h_i, d_i) = (heads as i32, d as i32);
        let mut b = self.stream.launch_builder(&self.heads_to_tokens);
        b.arg(&qh).arg(&out).arg(&n_i).arg(&h_i).arg(&d_i);
        let cfg = grid_1d(n * heads * d, 256);
        unsafe { b.launch(cfg) }.w()?;
        mark("attention to tokens")
    }

    /// y[i][c] += bias[c] for n rows of `cols` (f32 [n, cols], bias [cols]).
    pub fn add_bias_rows(&self, y: u64, bias: u64, n: usize, cols: usize) -> Result<()> {
        if n == 0 || cols == 0 {
            return Ok(());
        }
        let (n_i, c_i) = (n as i32, cols as i32);
        let mut b = self.stream.launch_builder(&self.add_bias_rows);
        b.arg(&y).arg(&bias).arg(&n_i).arg(&c_i);
        let cfg = grid_1d(n * cols, 256);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// act[i][j] = silu(gu[i][j]) * gu[i][ffn + j] for n rows ([n, 2 ffn] -> [n, ffn]).
    pub fn swiglu_rows(&self, gu: u64, act: u64, n: usize, ffn: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (n_i, f_i) = (n as i32, ffn as i32);
        let mut b = self.stream.launch_builder(&self.swiglu_rows);
        b.arg(&gu).arg(&act).arg(&n_i).arg(&f_i);
        let cfg = grid_1d(n * ffn, 256);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}
