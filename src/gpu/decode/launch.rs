//! Launchers of the decode kernels on raw device pointers (`u64`, 0 for "none"). The functions are
//! resolved once ([`DecodeKernels::load`]); a launch costs one `cuLaunchKernel` and records no cudarc
//! events, so a sequence of them can be captured into a CUDA graph. Every pointer must stay valid
//! until the stream has run the launch (the engine owns the buffers for its whole life).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, LaunchConfig};
use candle_core::cuda_backend::WrapErr;
use candle_core::CudaDevice;

pub use super::attention_layout::{
    attention_scratch_floats, attention_shared_bytes, attention_threads, ATTENTION_CHUNK,
    ATTENTION_SPLITS,
};
use super::attention_layout::{ATTENTION_MAX_GROUP, ATTENTION_WIDE_BLOCKS_PER_SM};
pub use super::lora_epilogue::{
    xa_sequences, L2Window, LoraArgs, LoraEpilogue, PendingXa, XA_PENDING,
};
use super::matvec_grid;
use super::step_launch::{programmatic_launch_default, StepLaunch};
use super::QuantType;
use crate::gpu::kernels::{function, Module};
pub use crate::gpu::ptr::device_ptr;

type Result<T> = candle_core::Result<T>;

/// Rows per block of the batched mat-vec kernels (MV_WARPS in kernels/quant_matvec.cu).
const MV_WARPS: usize = 4;
/// Most warps (rows in flight) per block of the batch-1 mat-vecs (MV1_MAX_WARPS in
/// kernels/quant_matvec.cu, their launch bounds).
pub(super) const MV1_MAX_WARPS: usize = 16;
/// Warps per SM of a mat-vec grid (one wave at 64 registers a thread).
const MV_WARPS_PER_SM: usize = 32;
/// SMs of the H100 and H200.
pub(super) const SMS: usize = 132;

/// Warps per block of the batch-1 mat-vecs on `q` blocks, one warp a row, 32 warps an SM either
/// way. Every block reads all of x (and the norm weights) and normalizes or quantizes it, so fewer,
/// bigger blocks cut that repeated prologue (SmolLM2-1.7B's down projection: 16 MB of L2 reads a
/// launch in 4-warp blocks). Measured (bench/results/device-s14 call 2, decode tok/s at 4 / 8 / 16
/// warps): 1.7B Q4_1 920 / 965 / 962, Q4_K_M 677 / 736 / 752, Q8_0 771 / 787 / 770, the 135M
/// proxy 1577 / 1587 / 1544. So 16 for the K-quants, 8 otherwise; `WICK_DECODE_MV_WARPS=4|8|16`
/// sets one size for every launch (measurements).
pub fn batch1_block_warps(q: QuantType, forced: Option<usize>) -> usize {
    match (forced, q.block_weights()) {
        (Some(w), _) => w,
        (None, 256) => 16,
        (None, _) => 8,
    }
}

/// The block size `WICK_DECODE_MV_WARPS` forces on the batch-1 mat-vecs, if any.
fn batch1_block_warps_forced() -> Option<usize> {
    match std::env::var("WICK_DECODE_MV_WARPS").as_deref() {
        Ok("4") => Some(4),
        Ok("8") => Some(8),
        Ok("16") => Some(16),
        _ => None,
    }
}

/// Warps a row of the batched mat-vecs (each on its share of the sequences; QMVB_SPLIT in
/// kernels/quant_matvec.cu): blocks of `MV_WARPS * split` warps.
const QMVB_SPLIT: usize = 2;
/// Warps a row of the batched mat-vecs with LoRA at small k (`<name>_lora4_<q>`, QMVB_WIDE_SPLIT).
const QMVB_WIDE_SPLIT: usize = 4;
/// Largest k at which a batched launch with LoRA takes four warps a row: measured faster at
/// SmolLM2-135M shapes (k 576 and 1536: the batch-8 adapter step 4443 -> 5093 tok/s), slower at
/// SmolLM2-1.7B's (k 2048 and 8192: batch 4 with adapters 729 -> 693; bench/results/device-s13).
const QMVB_WIDE_MAX_K: usize = 1536;
/// Threads of the argmax block.
const ARGMAX_THREADS: u32 = 1024;
/// Largest `k` the mat-vec kernels hold in shared memory (48 KiB of f32 without an opt-in).
pub const MAX_MATVEC_K: usize = 12 * 1024;

/// Whether the batch-1 mat-vecs of `q` also come with int8 activations (`qmv_q8x_<q>` in
/// kernels/quant_matvec.cu: x quantized per 32 values, dp4a products).
pub fn has_int8_activations(q: QuantType) -> bool {
    matches!(
        q,
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 | QuantType::Q4K | QuantType::Q6K
    )
}

/// Dynamic shared memory of a batch-1 mat-vec over `k` inputs: x as f32, or with int8 activations
/// the int8 values and a (scale, scaled sum) pair per 32.
fn matvec_shared_bytes(k: usize, int8: bool) -> usize {
    if int8 {
        k + k / 32 * 8
    } else {
        k * 4
    }
}

/// Which batch-1 mat-vec launches take int8 activations (formats of [`has_int8_activations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Policy {
    /// None: f32 activations everywhere (exact maths).
    Off,
    /// Where it measured faster (bench/results/device-s11, SmolLM2-1.7B and 135M shapes): the
    /// launches that fuse the RMSNorm (q/k/v, gate/up, the LM head: the int8 prologue normalizes
    /// and quantizes in one pass, cheaper than the f32 kernels' normalization in shared memory) and
    /// every launch on K-quant weights (whose f32 dequantization costs most); the o and down
    /// projections of the 32-weight formats stay f32 (there the quantization costs more than the
    /// products save: 1.7B Q4_1 decode 899 tok/s this way, 877 with int8 everywhere).
    Auto,
    /// Every launch that can.
    All,
}

/// The decode engines' default: [`Int8Policy::Auto`]; `WICK_DECODE_INT8=0` keeps f32
/// activations everywhere, `=all` takes int8 wherever a kernel can.
pub fn int8_policy_default() -> Int8Policy {
    match std::env::var("WICK_DECODE_INT8").as_deref() {
        Ok("0") => Int8Policy::Off,
        Ok("all") => Int8Policy::All,
        _ => Int8Policy::Auto,
    }
}

/// Most sequences of one batched mat-vec launch (QMVB_MAX in kernels/quant_matvec.cu).
pub const MAX_DECODE_BATCH: usize = 8;
/// Dynamic shared memory the batched mat-vecs may use (`batch * k` f32; the H100 allows 227 KiB).
pub const MAX_BATCH_SHARED_BYTES: usize = 160 * 1024;

/// What a mat-vec adds to each output row before storing it: a bias [rows] (0: none) and the LoRA
/// delta ([`LoraEpilogue`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue {
    pub bias: u64,
    pub lora: LoraEpilogue,
}

impl Epilogue {
    /// Nothing added.
    pub const NONE: Epilogue = Epilogue {
        bias: 0,
        lora: LoraEpilogue::NONE,
    };
}

/// The decode kernels of one device, with the stream they launch on (Candle's).
pub struct DecodeKernels {
    stream: Arc<CudaStream>,
    /// Mat-vecs per quant type, each without and with the LoRA code ([`MatVecs::pick`]).
    qmv: MatVecs,
    qmv_swiglu: MatVecs,
    /// The same on int8 activations, for the formats of [`has_int8_activations`] (the f32 kernels
    /// in the other formats' places, never launched from there).
    qmv_q8x: MatVecs,
    qmv_q8x_swiglu: MatVecs,
    /// Which launches take int8 activations ([`DecodeKernels::set_int8_activations`]).
    int8: Int8Policy,
    embed: Vec<CudaFunction>,
    qmvb: BatchMatVecs,
    qmvb_swiglu: BatchMatVecs,
    embedb: Vec<CudaFunction>,
    rope_attention: CudaFunction,
    /// `rope_attention` capped at 48 registers (five blocks an SM), for grids of more than
    /// [`ATTENTION_WIDE_BLOCKS_PER_SM`] blocks an SM.
    rope_attention_wide: CudaFunction,
    argmax: CudaFunction,
    /// Launch with programmatic dependent launch (`step_launch`).
    programmatic: bool,
    /// The batch-1 mat-vecs' block size when the environment forces one ([`batch1_block_warps`]).
    batch1_warps_forced: Option<usize>,
}

fn index(q: QuantType) -> usize {
    q.code()
}

/// One mat-vec kernel per quant type, compiled twice from one body (kernels/quant_matvec.cu):
/// without the LoRA code (`<name>_<q>`) and with it (`<name>_lora_<q>`). A launch without adapters
/// takes the first: the LoRA branches skipped at run time still cost it registers and time.
struct MatVecs {
    plain: Vec<CudaFunction>,
    lora: Vec<CudaFunction>,
}

impl MatVecs {
    fn pick(&self, q: QuantType, lora: &LoraEpilogue) -> &CudaFunction {
        let set = if lora.args.b == 0 {
            &self.plain
        } else {
            &self.lora
        };
        &set[index(q)]
    }

    fn all(&self) -> impl Iterator<Item = &CudaFunction> {
        self.plain.iter().chain(&self.lora)
    }
}

/// The batched mat-vecs per quant type: [`MatVecs`] (two warps a row) and the LoRA kernels with
/// four warps a row (`<name>_lora4_<q>`), taken at small k ([`QMVB_WIDE_MAX_K`]).
struct BatchMatVecs {
    split: MatVecs,
    lora_wide: Vec<CudaFunction>,
}

impl BatchMatVecs {
    /// The kernel for a launch over `k` inputs, and its warps a row.
    fn pick(&self, q: QuantType, lora: &LoraEpilogue, k: usize) -> (&CudaFunction, usize) {
        if lora.args.b != 0 && k <= QMVB_WIDE_MAX_K {
            (&self.lora_wide[index(q)], QMVB_WIDE_SPLIT)
        } else {
            (self.split.pick(q, lora), QMVB_SPLIT)
        }
    }

    fn all(&self) -> impl Iterator<Item = &CudaFunction> {
        self.split.all().chain(&self.lora_wide)
    }
}

impl DecodeKernels {
    /// Loads the kernels (kernels/quant_matvec.cu, kernels/decode_step.cu) on `dev`.
    pub fn load(dev: &CudaDevice) -> Result<Self> {
        let per_type = |name: &'static str| -> Result<Vec<CudaFunction>> {
            super::QUANT_TYPES
                .iter()
                .map(|q| function(dev, Module::QuantMatvec, name, q.suffix()))
                .collect()
        };
        let mat_vecs = |plain: &'static str, lora: &'static str| -> Result<MatVecs> {
            Ok(MatVecs {
                plain: per_type(plain)?,
                lora: per_type(lora)?,
            })
        };
        // Kernels of the int8 formats, the f32 kernel `fallback` elsewhere.
        let int8_mat_vecs = |names: [&'static str; 2], fallback: &MatVecs| -> Result<MatVecs> {
            let pick = |name: &'static str, f32s: &[CudaFunction]| -> Result<Vec<CudaFunction>> {
                super::QUANT_TYPES
                    .iter()
                    .map(|&q| match has_int8_activations(q) {
                        true => function(dev, Module::QuantMatvec, name, q.suffix()),
                        false => Ok(f32s[index(q)].clone()),
                    })
                    .collect()
            };
            Ok(MatVecs {
                plain: pick(names[0], &fallback.plain)?,
                lora: pick(names[1], &fallback.lora)?,
            })
        };
        let qmv = mat_vecs("qmv", "qmv_lora")?;
        let qmv_swiglu = mat_vecs("qmv_swiglu", "qmv_swiglu_lora")?;
        let kernels = Self {
            stream: dev.cuda_stream(),
            qmv_q8x: int8_mat_vecs(["qmv_q8x", "qmv_q8x_lora"], &qmv)?,
            qmv_q8x_swiglu: int8_mat_vecs(["qmv_q8x_swiglu", "qmv_q8x_swiglu_lora"], &qmv_swiglu)?,
            qmv,
            qmv_swiglu,
            int8: int8_policy_default(),
            embed: per_type("embed")?,
            qmvb: BatchMatVecs {
                split: mat_vecs("qmvb", "qmvb_lora")?,
                lora_wide: per_type("qmvb_lora4")?,
            },
            qmvb_swiglu: BatchMatVecs {
                split: mat_vecs("qmvb_swiglu", "qmvb_swiglu_lora")?,
                lora_wide: per_type("qmvb_swiglu_lora4")?,
            },
            embedb: per_type("embedb")?,
            rope_attention: function(dev, Module::DecodeStep, "rope_attention", "")?,
            rope_attention_wide: function(dev, Module::DecodeStep, "rope_attention_wide", "")?,
            argmax: function(dev, Module::DecodeStep, "argmax_logprob", "")?,
            programmatic: programmatic_launch_default(
                dev.cuda_stream().context().compute_capability().w()?.0,
            ),
            batch1_warps_forced: batch1_block_warps_forced(),
        };
        // The batched mat-vecs keep every sequence's x in shared memory: opt in above 48 KiB.
        for f in kernels.qmvb.all().chain(kernels.qmvb_swiglu.all()) {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                MAX_BATCH_SHARED_BYTES as i32,
            )
            .w()?;
        }
        Ok(kernels)
    }

    /// The stream the kernels launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A launch of `f` on the stream, with PDL when the device has it.
    fn step_launch<'a>(&'a self, f: &'a CudaFunction) -> StepLaunch<'a> {
        StepLaunch::new(&self.stream, f, self.programmatic)
    }

    /// Whether the batch-1 mat-vecs of the formats of [`has_int8_activations`] quantize x to int8
    /// per 32 values (on: as the environment says, [`int8_policy_default`]; as llama.cpp and
    /// Candle's quantized matmul do; ~1e-2 relative on a product) or keep it in f32 (exact maths,
    /// for comparisons). A captured step keeps the kernels it was captured with: capture again
    /// after a change.
    pub fn set_int8_activations(&mut self, on: bool) {
        self.int8 = match (on, int8_policy_default()) {
            (false, _) => Int8Policy::Off,
            (true, Int8Policy::Off) => Int8Policy::Auto,
            (true, policy) => policy,
        };
    }

    pub fn int8_activations(&self) -> bool {
        self.int8 != Int8Policy::Off
    }

    pub fn set_int8_policy(&mut self, policy: Int8Policy) {
        self.int8 = policy;
    }

    /// The batch-1 kernel of `family` (f32 activations) or `int8_family` for `q` (`norm`: the
    /// launch fuses the RMSNorm), and whether it takes int8 activations.
    fn batch1<'a>(
        &'a self,
        family: &'a MatVecs,
        int8_family: &'a MatVecs,
        q: QuantType,
        norm: bool,
        lora: &LoraEpilogue,
    ) -> (&'a CudaFunction, bool) {
        let int8 = has_int8_activations(q)
            && match self.int8 {
                Int8Policy::Off => false,
                Int8Policy::Auto => norm || q.block_weights() == 256,
                Int8Policy::All => true,
            };
        let set = if int8 { int8_family } else { family };
        (set.pick(q, lora), int8)
    }

    /// Blocks of `warps` warps, one warp a row (rows beyond one wave of blocks loop, so that each
    /// block normalizes x once for many rows: the LM head's 49152), after the LoRA producers'
    /// blocks. The LoRA kernels `f` (`lora.b != 0`) take more registers (MV_LORA_BOUNDS in
    /// kernels/quant_matvec.cu): their wave is the kernel's occupancy, producers counted.
    fn matvec_config(
        f: &CudaFunction,
        rows: usize,
        k: usize,
        lora: &LoraArgs,
        int8: bool,
        warps: usize,
    ) -> Result<LaunchConfig> {
        let cap = SMS * MV_WARPS_PER_SM / warps;
        let shared = matvec_shared_bytes(k, int8);
        let (groups, producers) = (rows.div_ceil(warps), lora.producers as usize);
        matvec_grid::config(f, groups, warps, shared, producers, lora.b != 0, cap)
    }

    /// y[r] = (accumulate ? y[r] : 0) + W[r] . xn + epilogue; xn = rms_norm(x) * norm_w when
    /// `norm_w != 0`. w: rows x k in `q` blocks; x: [k]; norm_w: [k]; y: [rows] (f32).
    #[allow(clippy::too_many_arguments)]
    pub fn qmv(
        &self,
        q: QuantType,
        w: u64,
        x: u64,
        norm_w: u64,
        y: u64,
        rows: usize,
        k: usize,
        eps: f32,
        accumulate: bool,
        epilogue: &Epilogue,
    ) -> Result<()> {
        let (f, int8) = self.batch1(&self.qmv, &self.qmv_q8x, q, norm_w != 0, &epilogue.lora);
        let (rows_i, k_i, acc_i) = (rows as i32, k as i32, accumulate as i32);
        let warps = batch1_block_warps(q, self.batch1_warps_forced);
        let lora = epilogue.lora.for_block(warps, k, 1);
        let mut b = self.step_launch(f);
        b.l2_window(epilogue.lora.window());
        b.arg(&w).arg(&x).arg(&norm_w).arg(&y);
        b.arg(&rows_i).arg(&k_i).arg(&eps).arg(&acc_i);
        b.arg(&epilogue.bias).arg(&lora);
        let cfg = Self::matvec_config(f, rows, k, &lora, int8, warps)?;
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// y[r] = silu(Wg[r] . xn + dg) * (Wu[r] . xn + du), r < rows, with the LoRA deltas dg (B rows
    /// 0..rows, xa segment 0) and du (B rows rows..2 rows, segment 1) of `lora`.
    #[allow(clippy::too_many_arguments)]
    pub fn qmv_swiglu(
        &self,
        q: QuantType,
        gate: u64,
        up: u64,
        x: u64,
        norm_w: u64,
        y: u64,
        rows: usize,
        k: usize,
        eps: f32,
        lora: &LoraEpilogue,
    ) -> Result<()> {
        let (f, int8) = self.batch1(&self.qmv_swiglu, &self.qmv_q8x_swiglu, q, norm_w != 0, lora);
        let (rows_i, k_i) = (rows as i32, k as i32);
        let warps = batch1_block_warps(q, self.batch1_warps_forced);
        let args = lora.for_block(warps, k, 1);
        let mut b = self.step_launch(f);
        b.l2_window(lora.window());
        b.arg(&gate).arg(&up).arg(&x).arg(&norm_w).arg(&y);
        b.arg(&rows_i).arg(&k_i).arg(&eps).arg(&args);
        let cfg = Self::matvec_config(f, rows, k, &args, int8, warps)?;
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// x = dequantized row state[0] of `table` (rows of `hidden` weights in `q` blocks).
    pub fn embed(&self, q: QuantType, table: u64, state: u64, x: u64, hidden: usize) -> Result<()> {
        let f = &self.embed[index(q)];
        let hidden_i = hidden as i32;
        let mut b = self.step_launch(f);
        b.arg(&table).arg(&state).arg(&x).arg(&hidden_i);
        let cfg = LaunchConfig {
            grid_dim: (hidden.div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// The grid of a batched mat-vec `f` of `split` warps a row: a block per 4 rows up to 32 warps
    /// an SM's worth; for the four-warps-a-row LoRA kernels (small k) one wave of the blocks `f`
    /// keeps resident (`matvec_grid`). There a row is one round of weight loads, shorter than the
    /// prologue a second wave's block repeats: SmolLM2-135M batch 8 with 8 adapters 5470 -> 5787
    /// tok/s (0.839x -> 0.887x of the step without; bench/results/device-s16 call 2). At
    /// SmolLM2-1.7B's k (two warps a row, two blocks an SM with LoRA) one wave made each warp walk
    /// 11 rows one after another without the weight prefetches a starting block issues: batch 4
    /// with adapters 726 -> 510 tok/s, so the other kernels keep their waves.
    fn batch_matvec_config(
        f: &CudaFunction,
        rows: usize,
        k: usize,
        batch: usize,
        lora: &LoraArgs,
        split: usize,
    ) -> Result<LaunchConfig> {
        if batch == 0 || batch > MAX_DECODE_BATCH || batch * k * 4 > MAX_BATCH_SHARED_BYTES {
            return Err(candle_core::Error::Msg(format!(
                "batched mat-vec: {batch} sequences of {k} values exceed the kernel's limits \
                 ({MAX_DECODE_BATCH} sequences, {MAX_BATCH_SHARED_BYTES} bytes of shared memory)"
            )));
        }
        let (groups, cap) = (rows.div_ceil(MV_WARPS), SMS * MV_WARPS_PER_SM / MV_WARPS);
        let one_wave = split == QMVB_WIDE_SPLIT;
        let (warps, producers) = (MV_WARPS * split, lora.producers as usize);
        matvec_grid::config(f, groups, warps, batch * k * 4, producers, one_wave, cap)
    }

    /// [`DecodeKernels::qmv`] for `batch` sequences: x [batch, k], y [batch, rows]; every weight is
    /// read once for all of them.
    #[allow(clippy::too_many_arguments)]
    pub fn qmv_batch(
        &self,
        q: QuantType,
        w: u64,
        x: u64,
        norm_w: u64,
        y: u64,
        rows: usize,
        k: usize,
        eps: f32,
        accumulate: bool,
        batch: usize,
        epilogue: &Epilogue,
    ) -> Result<()> {
        self.qmv_batch_strided(
            q, w, x, norm_w, y, rows, k, eps, accumulate, batch, epilogue, rows,
        )
    }

    /// [`DecodeKernels::qmv_batch`] writing sequence b's rows at `y + b * ldy` floats (`ldy >=
    /// rows`: one matrix of a split q/k/v fills its part of each sequence's q/k/v row).
    #[allow(clippy::too_many_arguments)]
    pub fn qmv_batch_strided(
        &self,
        q: QuantType,
        w: u64,
        x: u64,
        norm_w: u64,
        y: u64,
        rows: usize,
        k: usize,
        eps: f32,
        accumulate: bool,
        batch: usize,
        epilogue: &Epilogue,
        ldy: usize,
    ) -> Result<()> {
        if ldy < rows {
            return Err(candle_core::Error::Msg(format!(
                "qmv_batch: output row stride {ldy} < {rows} rows"
            )));
        }
        let ldy_i = ldy as i32;
        let (f, split) = self.qmvb.pick(q, &epilogue.lora, k);
        let lora = epilogue.lora.for_block(MV_WARPS * split, k, batch);
        let cfg = Self::batch_matvec_config(f, rows, k, batch, &lora, split)?;
        let (rows_i, k_i, acc_i, nb) = (rows as i32, k as i32, accumulate as i32, batch as i32);
        let mut b = self.step_launch(f);
        b.l2_window(epilogue.lora.window());
        b.arg(&w).arg(&x).arg(&norm_w).arg(&y);
        b.arg(&rows_i).arg(&k_i).arg(&eps).arg(&acc_i).arg(&nb);
        b.arg(&epilogue.bias).arg(&lora).arg(&ldy_i);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// [`DecodeKernels::qmv_swiglu`] for `batch` sequences: x [batch, k], y [batch, rows].
    #[allow(clippy::too_many_arguments)]
    pub fn qmv_swiglu_batch(
        &self,
        q: QuantType,
        gate: u64,
        up: u64,
        x: u64,
        norm_w: u64,
        y: u64,
        rows: usize,
        k: usize,
        eps: f32,
        batch: usize,
        lora: &LoraEpilogue,
    ) -> Result<()> {
        let (f, split) = self.qmvb_swiglu.pick(q, lora, k);
        let args = lora.for_block(MV_WARPS * split, k, batch);
        let cfg = Self::batch_matvec_config(f, rows, k, batch, &args, split)?;
        let (rows_i, k_i, nb) = (rows as i32, k as i32, batch as i32);
        let mut b = self.step_launch(f);
        b.l2_window(lora.window());
        b.arg(&gate).arg(&up).arg(&x).arg(&norm_w).arg(&y);
        b.arg(&rows_i).arg(&k_i).arg(&eps).arg(&nb).arg(&args);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// x[b] = dequantized row state[2 b] of `table`, b < batch (x [batch, hidden]).
    pub fn embed_batch(
        &self,
        q: QuantType,
        table: u64,
        state: u64,
        x: u64,
        hidden: usize,
        batch: usize,
    ) -> Result<()> {
        let f = &self.embedb[index(q)];
        let hidden_i = hidden as i32;
        let mut b = self.step_launch(f);
        b.arg(&table).arg(&state).arg(&x).arg(&hidden_i);
        let cfg = LaunchConfig {
            grid_dim: (hidden.div_ceil(256).max(1) as u32, batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// RoPE on the new token's q and k (position state[1]), k and v into this layer's caches, and
    /// attention over positions 0..=state[1], split over [`ATTENTION_SPLITS`] blocks per kv head
    /// (flash decoding). `part`: [`attention_scratch_floats`] floats; `counters`: `kv_heads` u32,
    /// zero (the kernel leaves them zero).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_attention(
        &self,
        qkv: u64,
        k_cache: u64,
        v_cache: u64,
        state: u64,
        inv_freq: u64,
        out: u64,
        part: u64,
        counters: u64,
        shape: super::reference::AttentionShape,
        scale: f32,
    ) -> Result<()> {
        self.rope_attention_batch(
            qkv, k_cache, v_cache, state, inv_freq, out, part, counters, shape, scale, 1, 0,
        )
    }

    /// [`DecodeKernels::rope_attention`] for `batch` sequences in one launch: sequence z has its own
    /// q/k/v row (`qkv` [batch, heads*d + 2 kv_heads*d]), state pair, output row, scratch
    /// (`part` and `counters` `batch` times as large) and caches at `z * cache_seq_stride` floats.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_attention_batch(
        &self,
        qkv: u64,
        k_cache: u64,
        v_cache: u64,
        state: u64,
        inv_freq: u64,
        out: u64,
        part: u64,
        counters: u64,
        shape: super::reference::AttentionShape,
        scale: f32,
        batch: usize,
        cache_seq_stride: usize,
    ) -> Result<()> {
        let d = shape.head_dim;
        let threads = attention_threads(d).ok_or_else(|| {
            candle_core::Error::Msg(format!("rope_attention: no block size for head dim {d}"))
        })?;
        if shape.kv_heads == 0
            || shape.heads % shape.kv_heads != 0
            || shape.heads / shape.kv_heads > ATTENTION_MAX_GROUP
        {
            return Err(candle_core::Error::Msg(format!(
                "rope_attention: {} heads are not a multiple of {} kv heads (at most {ATTENTION_MAX_GROUP} per kv head)",
                shape.heads, shape.kv_heads
            )));
        }
        let (h, kv, d_i) = (shape.heads as i32, shape.kv_heads as i32, d as i32);
        let blocks = shape.kv_heads * ATTENTION_SPLITS * batch;
        let f = if blocks > ATTENTION_WIDE_BLOCKS_PER_SM * SMS {
            &self.rope_attention_wide
        } else {
            &self.rope_attention
        };
        let mut b = self.step_launch(f);
        b.arg(&qkv)
            .arg(&k_cache)
            .arg(&v_cache)
            .arg(&state)
            .arg(&inv_freq)
            .arg(&out)
            .arg(&part)
            .arg(&counters);
        let stride = cache_seq_stride as i64;
        b.arg(&h).arg(&kv).arg(&d_i).arg(&scale).arg(&stride);
        let cfg = LaunchConfig {
            grid_dim: (shape.kv_heads as u32, ATTENTION_SPLITS as u32, batch as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: attention_shared_bytes(shape) as u32,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// result (u32[2]) = (argmax, bits of its log-probability) of logits [n]; also writes the id to
    /// state[0] when `state != 0`.
    pub fn argmax(&self, logits: u64, n: usize, result: u64, state: u64) -> Result<()> {
        self.argmax_batch(logits, n, result, state, 1, PendingXa::NONE)
    }

    /// [`DecodeKernels::argmax`] of `batch` rows of logits [batch, n] into result [batch, 2] (and
    /// state [batch, 2] when not 0), one block per row; also marks `pending`'s xa values pending
    /// for the next step (the step's last launch: every mat-vec has read them).
    pub fn argmax_batch(
        &self,
        logits: u64,
        n: usize,
        result: u64,
        state: u64,
        batch: usize,
        pending: PendingXa,
    ) -> Result<()> {
        let n_i = n as i32;
        let words = i32::try_from(pending.floats)
            .map_err(|_| candle_core::Error::Msg(format!("{} xa values", pending.floats)))?;
        let mut b = self.step_launch(&self.argmax);
        b.arg(&logits).arg(&n_i).arg(&result).arg(&state);
        b.arg(&pending.ptr).arg(&words);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (ARGMAX_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}
