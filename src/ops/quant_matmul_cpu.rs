//! Quantized matrix product on the CPU: `y = x W^T` with W kept in GGML Q4_1 or Q8_0 blocks.
//!
//! x: [m, k] f32, W: [n, k] quantized in blocks of 32 along k, y: [m, n] f32.
//!
//! The maths is llama.cpp's (ggml-cpu), so that wick and llama.cpp round alike:
//! - each row of x is quantized **once per call** to Q8 blocks: for 32 values with a = max |x_i|,
//!   d = a / 127, q_i = round_half_even(x_i * (127 / a)) in [-127, 127], kept as d16 = f16(d) and
//!   s16 = f16(d * sum_i q_i) (Q8_1; Q8_0 is the same without s);
//! - a Q4_1 weight block holds w_i = dw * u_i + mw with u_i in 0..=15 (byte j carries element j in its
//!   low nibble and element j + 16 in its high nibble), dw and mw f16:
//!   `sum_i w_i x_i ~= dw * d16 * sum_i u_i q_i + mw * s16`;
//! - a Q8_0 weight block holds w_i = dw * v_i, v_i i8: `sum_i w_i x_i ~= dw * d16 * sum_i v_i q_i`.
//!
//! The integer block sums are exact; only the f32 sums over blocks can differ between
//! implementations. The scalar code below is the reference; the AVX2/FMA code (chosen at run time
//! with `is_x86_feature_detected!`) computes the same block sums with `maddubs`/`madd` and keeps one
//! 8-lane f32 accumulator per (weight row, token), as ggml's `ggml_vec_dot_q4_1_q8_1` does.
//!
//! Work layout: output rows are taken four at a time, tokens in tiles of `TOKEN_TILE`, so each
//! weight block loaded into a register is used for every token of the tile (prefill) and each
//! activation block for four rows. Work items (row quad, token tile) run on Candle's persistent
//! barrier pool (`candle_core::utils::barrier_pool`), the threads Candle's own quantized matmul uses,
//! so no threads are spawned per call and no second pool competes for the cores.

use std::cell::RefCell;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Storage, Tensor};
use half::f16;

use crate::{Context, Error, Result};

/// Values per quantization block (Q4_1, Q8_0, Q8_1 all use 32).
const BLOCK: usize = 32;
/// Output rows computed together by one work item.
const ROW_TILE: usize = 4;
/// Tokens computed together by one work item. 4 rows x 3 tokens keeps the 12 accumulators, the
/// weight block and an activation block in the 16 AVX2 registers.
const TOKEN_TILE: usize = 3;

/// Products (m * n * k) up to which a call runs on the calling thread alone: a one-token 192 x 576
/// projection (110k) is faster there than split over two threads, a 576 x 576 one (332k) is not.
const INLINE_MACS: usize = 160_000;

/// The weight formats this kernel multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 20-byte blocks: f16 d, f16 m, 16 bytes of nibbles.
    Q4_1,
    /// 34-byte blocks: f16 d, 32 i8.
    Q8_0,
}

impl WeightFormat {
    /// The format of a GGML dtype, if this kernel handles it.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// One quantized block of 32 activations: the f16-rounded scale and sum, widened to f32 once here
/// instead of once per weight row.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct ActBlock {
    /// f16(a / 127) as f32.
    d: f32,
    /// f16(d * sum q) as f32 (used by Q4_1's offset term).
    s: f32,
    qs: [i8; BLOCK],
}

const EMPTY_BLOCK: ActBlock = ActBlock {
    d: 0.0,
    s: 0.0,
    qs: [0; BLOCK],
};

/// Whether `forward` can run this weight: a CPU tensor in Q4_1 or Q8_0, two-dimensional.
pub fn supports(weight: &QTensor) -> bool {
    matches!(weight.device(), Device::Cpu)
        && WeightFormat::of(weight.dtype()).is_some()
        && weight.shape().rank() == 2
}

/// x: [..., k] f32 on the CPU, weight: [n, k] Q4_1 or Q8_0 -> [..., n] f32.
pub fn forward(x: &Tensor, weight: &QTensor) -> Result<Tensor> {
    let format = WeightFormat::of(weight.dtype()).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "quant_matmul_cpu: weight type {:?} is not Q4_1 or Q8_0",
            weight.dtype()
        ))
    })?;
    let (n, k) = weight
        .shape()
        .dims2()
        .context("quant_matmul_cpu: weight shape")?;
    let x_dims = x.dims().to_vec();
    if x_dims.last() != Some(&k) {
        return Err(Error::InvalidRequest(format!(
            "quant_matmul_cpu: input shape {x_dims:?} does not end in the weight's in-features {k}"
        )));
    }
    let m = x.elem_count() / k.max(1);
    let x = x
        .to_dtype(candle_core::DType::F32)
        .and_then(|x| x.contiguous())
        .context("quant_matmul_cpu: making the input contiguous f32")?;
    let weight_bytes = weight.data().context("quant_matmul_cpu: weight data")?;
    let mut out = vec![0f32; m * n];
    with_cpu_f32(&x, |xs| {
        matmul(format, xs, m, k, &weight_bytes, n, &mut out)
    })?;
    let mut out_dims = x_dims;
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, out_dims, &Device::Cpu).context("quant_matmul_cpu: output tensor")
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, borrowed from its storage.
pub(crate) fn with_cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::InvalidRequest(
            "quant_matmul_cpu: input is not on the CPU".into(),
        ));
    };
    let all = cpu
        .as_slice::<f32>()
        .context("quant_matmul_cpu: input as f32")?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::InvalidRequest("quant_matmul_cpu: input is not contiguous".into()))?;
    f(&all[start..end])
}

thread_local! {
    /// The quantized activations of the last call on this thread, reused to avoid an allocation
    /// per matmul.
    static ACT_SCRATCH: RefCell<Vec<ActBlock>> = const { RefCell::new(Vec::new()) };
}

/// y[m, n] = x[m, k] W[n, k]^T with W given as raw GGML blocks (row after row).
pub fn matmul(
    format: WeightFormat,
    x: &[f32],
    m: usize,
    k: usize,
    weight: &[u8],
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    matmul_with(format, x, m, k, weight, n, out, Kernel::best())
}

/// The kernel `forward` uses on this CPU: "avx2" or "scalar" (for benchmark reports).
pub fn kernel_name() -> &'static str {
    match Kernel::best() {
        Kernel::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => "avx2",
    }
}

/// Which implementation runs: the portable reference or the AVX2/FMA one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    format: WeightFormat,
    x: &[f32],
    m: usize,
    k: usize,
    weight: &[u8],
    n: usize,
    out: &mut [f32],
    kernel: Kernel,
) -> Result<()> {
    let mut parts = [Part {
        format,
        weight,
        n,
        tokens: 0..m,
        out,
    }];
    matmul_parts_with(x, m, k, &mut parts, kernel)
}

/// One weight of a [`matmul_parts`] call: `out` [tokens.len(), n] = x[tokens] W^T.
pub struct Part<'a> {
    /// Block format of `weight`.
    pub format: WeightFormat,
    /// W [n, k] as raw GGML blocks, row after row.
    pub weight: &'a [u8],
    /// Rows of W.
    pub n: usize,
    /// The rows of x this weight multiplies.
    pub tokens: std::ops::Range<usize>,
    /// The product, row-major.
    pub out: &'a mut [f32],
}

/// Several products of one x in one call: x [m, k] is quantized once and the work items of every
/// part (a LoRA shrink beside its base projection, say) share one dispatch on the thread pool, so
/// a small weight costs neither its own quantization of x nor its own wake-up of the pool.
pub fn matmul_parts(x: &[f32], m: usize, k: usize, parts: &mut [Part<'_>]) -> Result<()> {
    matmul_parts_with(x, m, k, parts, Kernel::best())
}

/// Checks one part's sizes against x [m, k]; its bytes per row.
fn check_part(p: &Part<'_>, m: usize, k: usize) -> Result<usize> {
    let row_bytes = k / BLOCK * p.format.block_bytes();
    let t = p.tokens.len();
    if p.tokens.end > m || p.weight.len() != p.n * row_bytes || p.out.len() != t * p.n {
        return Err(Error::InvalidRequest(format!(
            "quant_matmul_cpu: sizes do not agree: tokens {:?} of {m}, weight {} bytes (expected \
             {} rows of {row_bytes}), out {} (expected {t}x{})",
            p.tokens,
            p.weight.len(),
            p.n,
            p.out.len(),
            p.n
        )));
    }
    Ok(row_bytes)
}

pub(crate) fn matmul_parts_with(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &mut [Part<'_>],
    kernel: Kernel,
) -> Result<()> {
    matmul_parts_prefetch_with(x, m, k, parts, &[], kernel)
}

/// [`matmul_parts`] whose part-0 items also prefetch `ahead`, a share each: the bytes the caller
/// reads right after (a LoRA pair's B for its expand) or later in the call (its A, read by the
/// shrink parts), so they come from cache rather than memory. A share is ~2 lines per 23 lines of
/// Q4_1 weight at decode (SmolLM2-135M, rank 16).
pub fn matmul_parts_prefetch(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &mut [Part<'_>],
    ahead: &[&[u8]],
) -> Result<()> {
    matmul_parts_prefetch_with(x, m, k, parts, ahead, Kernel::best())
}

pub(crate) fn matmul_parts_prefetch_with(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &mut [Part<'_>],
    ahead: &[&[u8]],
    kernel: Kernel,
) -> Result<()> {
    if k % BLOCK != 0 {
        return Err(Error::InvalidRequest(format!(
            "quant_matmul_cpu: in-features {k} is not a multiple of the block size {BLOCK}"
        )));
    }
    if x.len() != m * k {
        return Err(Error::InvalidRequest(format!(
            "quant_matmul_cpu: x has {} values, not {m}x{k}",
            x.len()
        )));
    }
    let row_bytes: Vec<usize> = parts
        .iter()
        .map(|p| check_part(p, m, k))
        .collect::<Result<_>>()?;
    // Work items of part p: first[p] .. first[p + 1], row-quad major over its token tiles.
    let mut first = vec![0usize];
    let mut macs = 0usize;
    for p in parts.iter() {
        let items = p.n.div_ceil(ROW_TILE) * p.tokens.len().div_ceil(TOKEN_TILE);
        first.push(first.last().copied().unwrap_or(0) + items);
        macs += p.tokens.len() * p.n * k;
    }
    let total = first.last().copied().unwrap_or(0);
    if total == 0 {
        return Ok(());
    }
    // Raw outputs: items write disjoint cells of them (`Plan::run_item`).
    let outs: Vec<usize> = parts
        .iter_mut()
        .map(|p| p.out.as_mut_ptr() as usize)
        .collect();
    let pool = candle_core::utils::barrier_pool();
    let plan = Plan {
        parts,
        row_bytes: &row_bytes,
        first: &first,
        outs: &outs,
        blocks: k / BLOCK,
        kernel,
        ahead,
        ahead_lines: ahead.iter().map(|a| a.len().div_ceil(LINE)).sum(),
    };
    ACT_SCRATCH.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.clear();
        acts.resize(m * plan.blocks, EMPTY_BLOCK);
        quantize_rows(x, k, &mut acts, kernel);
        let acts: &[ActBlock] = &acts;
        let run_items = |items: std::ops::Range<usize>| {
            for item in items {
                plan.run_item(item, acts);
            }
        };
        if macs <= INLINE_MACS {
            // Too little work to pay for waking and joining the pool's worker (k/v projections
            // at decode: 7.5 us on two threads, 5.5 us on one).
            run_items(0..total);
        } else {
            pool.execute_chunked(total, run_items);
        }
    });
    Ok(())
}

/// Bytes per cache line (the prefetch step).
const LINE: usize = 64;

/// What every work item of one [`matmul_parts_prefetch_with`] call reads.
struct Plan<'p, 'a> {
    parts: &'p [Part<'a>],
    row_bytes: &'p [usize],
    /// Part p's items are first[p] .. first[p + 1].
    first: &'p [usize],
    /// Each part's output address.
    outs: &'p [usize],
    /// Activation blocks per row of x.
    blocks: usize,
    kernel: Kernel,
    /// Bytes part 0's items prefetch, and their cache lines in all.
    ahead: &'p [&'p [u8]],
    ahead_lines: usize,
}

impl Plan<'_, '_> {
    /// One (row quad, token tile) of one part. Items are row-quad major: a worker walking a chunk
    /// keeps one quad of weight rows in L1 and streams the (L2-resident) activations past it, so
    /// each weight byte leaves memory once.
    fn run_item(&self, item: usize, acts: &[ActBlock]) {
        let pi = self.first.partition_point(|&f| f <= item) - 1;
        let (p, rb, blocks) = (&self.parts[pi], self.row_bytes[pi], self.blocks);
        let (t0, m_p) = (p.tokens.start, p.tokens.len());
        let token_tiles = m_p.div_ceil(TOKEN_TILE);
        let local = item - self.first[pi];
        if pi == 0 && self.ahead_lines > 0 {
            self.prefetch_share(local);
        }
        let row = (local / token_tiles) * ROW_TILE;
        let token = (local % token_tiles) * TOKEN_TILE;
        let rows = ROW_TILE.min(p.n - row);
        let tokens = TOKEN_TILE.min(m_p - token);
        let mut tile = [[0f32; TOKEN_TILE]; ROW_TILE];
        let w = &p.weight[row * rb..(row + rows) * rb];
        let a = &acts[(t0 + token) * blocks..(t0 + token + tokens) * blocks];
        dot_tile(
            p.format,
            self.kernel,
            w,
            rb,
            rows,
            a,
            blocks,
            tokens,
            &mut tile,
        );
        for (r, tile_row) in tile.iter().enumerate().take(rows) {
            for (t, value) in tile_row.iter().enumerate().take(tokens) {
                // SAFETY: (token + t, row + r) is in bounds of part pi's output (sizes checked
                // by `check_part`) and written by this item only: a part's items partition its
                // (row, token) grid, and parts own distinct outputs (&mut borrows).
                unsafe { *(self.outs[pi] as *mut f32).add((token + t) * p.n + row + r) = *value };
            }
        }
    }

    /// Part 0's item `local`'s share of the `ahead` lines: lines `local L / items ..
    /// (local + 1) L / items` of them all, in order.
    fn prefetch_share(&self, local: usize) {
        let items = self.first[1];
        let from = local * self.ahead_lines / items;
        let mut left = (local + 1) * self.ahead_lines / items - from;
        let mut skip = from;
        for bytes in self.ahead {
            let lines = bytes.len().div_ceil(LINE);
            while skip < lines && left > 0 {
                prefetch(bytes, skip * LINE);
                skip += 1;
                left -= 1;
            }
            if left == 0 {
                return;
            }
            skip = skip.saturating_sub(lines);
        }
    }
}

/// Asks for the cache line of `bytes[at]` (a hint: never faults, no effect off x86_64).
#[inline]
fn prefetch(bytes: &[u8], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = bytes.get(at) {
        // SAFETY: `p` is a valid address; a prefetch has no other requirement.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p as *const u8 as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, at);
}

/// Quantizes each row of x [m, k] into k / 32 activation blocks.
fn quantize_rows(x: &[f32], k: usize, acts: &mut [ActBlock], kernel: Kernel) {
    for (row, blocks) in x.chunks_exact(k).zip(acts.chunks_exact_mut(k / BLOCK)) {
        match kernel {
            Kernel::Scalar => quantize_row_scalar(row, blocks),
            // SAFETY: Kernel::Avx2 is only chosen after detecting avx2, fma and f16c.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::quantize_row(row, blocks) },
        }
    }
}

/// Reference activation quantization (ggml's `quantize_row_q8_1` as compiled for AVX2: the
/// reciprocal scale is 127 / a and ties round to even).
pub(crate) fn quantize_row_scalar(x: &[f32], out: &mut [ActBlock]) {
    for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = values.iter().fold(0f32, |acc, v| acc.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(values) {
            let r = (v * id).round_ties_even() as i32;
            sum += r;
            *q = r as i8;
        }
        block.d = f16::from_f32(d).to_f32();
        block.s = f16::from_f32(d * sum as f32).to_f32();
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// out[r][t] = dot(weight row r, token t) for r < rows, t < tokens.
#[allow(clippy::too_many_arguments)]
fn dot_tile(
    format: WeightFormat,
    kernel: Kernel,
    weight: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: &[ActBlock],
    blocks: usize,
    tokens: usize,
    out: &mut [[f32; TOKEN_TILE]; ROW_TILE],
) {
    match kernel {
        Kernel::Scalar => {
            for (r, out_row) in out.iter_mut().enumerate().take(rows) {
                let w = &weight[r * row_bytes..(r + 1) * row_bytes];
                for (t, value) in out_row.iter_mut().enumerate().take(tokens) {
                    let a = &acts[t * blocks..(t + 1) * blocks];
                    *value = match format {
                        WeightFormat::Q4_1 => dot_q4_1_scalar(w, a),
                        WeightFormat::Q8_0 => dot_q8_0_scalar(w, a),
                    };
                }
            }
        }
        // SAFETY: Kernel::Avx2 is only chosen after detecting avx2, fma and f16c; the slices hold
        // `rows` weight rows and `tokens` activation rows of `blocks` blocks each.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe {
            avx2::dot_tile(format, weight, row_bytes, rows, acts, blocks, tokens, out)
        },
    }
}

/// Reference Q4_1 x Q8_1 dot product of one weight row and one token.
pub(crate) fn dot_q4_1_scalar(w: &[u8], acts: &[ActBlock]) -> f32 {
    let mut sum = 0f32;
    let mut offsets = 0f32;
    for (block, a) in w.chunks_exact(20).zip(acts) {
        let (dw, mw) = (f16_at(block, 0), f16_at(block, 2));
        let mut sumi = 0i32;
        for j in 0..BLOCK / 2 {
            let byte = block[4 + j];
            sumi += (byte & 0x0F) as i32 * a.qs[j] as i32;
            sumi += (byte >> 4) as i32 * a.qs[j + BLOCK / 2] as i32;
        }
        sum += dw * a.d * sumi as f32;
        offsets += mw * a.s;
    }
    sum + offsets
}

/// Reference Q8_0 x Q8_0 dot product of one weight row and one token.
pub(crate) fn dot_q8_0_scalar(w: &[u8], acts: &[ActBlock]) -> f32 {
    let mut sum = 0f32;
    for (block, a) in w.chunks_exact(34).zip(acts) {
        let dw = f16_at(block, 0);
        let sumi: i32 = block[2..]
            .iter()
            .zip(&a.qs)
            .map(|(&v, &q)| v as i8 as i32 * q as i32)
            .sum();
        sum += dw * a.d * sumi as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests;
