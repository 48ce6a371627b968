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
    let blocks = k / BLOCK;
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
    // Raw outputs: items write disjoint cells of them (below).
    let outs: Vec<usize> = parts
        .iter_mut()
        .map(|p| p.out.as_mut_ptr() as usize)
        .collect();
    let parts: &[Part<'_>] = parts;
    ACT_SCRATCH.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.clear();
        acts.resize(m * blocks, EMPTY_BLOCK);
        quantize_rows(x, k, &mut acts, kernel);
        let acts: &[ActBlock] = &acts;
        // Items are row-quad major: a worker walking a chunk keeps one quad of weight rows in L1
        // and streams the (L2-resident) activations past it, so each weight byte leaves memory once.
        let run_items = |items: std::ops::Range<usize>| {
            for item in items {
                let pi = first.partition_point(|&f| f <= item) - 1;
                let (p, rb) = (&parts[pi], row_bytes[pi]);
                let (t0, m_p) = (p.tokens.start, p.tokens.len());
                let token_tiles = m_p.div_ceil(TOKEN_TILE);
                let local = item - first[pi];
                let row = (local / token_tiles) * ROW_TILE;
                let token = (local % token_tiles) * TOKEN_TILE;
                let rows = ROW_TILE.min(p.n - row);
                let tokens = TOKEN_TILE.min(m_p - token);
                let mut tile = [[0f32; TOKEN_TILE]; ROW_TILE];
                let w = &p.weight[row * rb..(row + rows) * rb];
                let a = &acts[(t0 + token) * blocks..(t0 + token + tokens) * blocks];
                dot_tile(p.format, kernel, w, rb, rows, a, blocks, tokens, &mut tile);
                for (r, tile_row) in tile.iter().enumerate().take(rows) {
                    for (t, value) in tile_row.iter().enumerate().take(tokens) {
                        // SAFETY: (token + t, row + r) is in bounds of part pi's output (sizes
                        // checked above) and written by this item only: a part's items partition
                        // its (row, token) grid, and parts own distinct outputs (&mut borrows).
                        unsafe {
                            *(outs[pi] as *mut f32).add((token + t) * p.n + row + r) = *value
                        };
                    }
                }
            }
        };
        if macs <= INLINE_MACS {
            // Too little work to pay for waking and joining the pool's worker (k/v projections
            // at decode: 7.5 us on two threads, 5.5 us on one).
            run_items(0..total);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(total, run_items);
        }
    });
    Ok(())
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
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random GGML blocks of the given format for an [n, k] matrix: f16 scales spread over a few
    /// orders of magnitude, every quant value reachable.
    fn random_weight(format: WeightFormat, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut bytes = Vec::with_capacity(n * k / BLOCK * format.block_bytes());
        for _ in 0..n * k / BLOCK {
            let d = f16::from_f32(
                rng.random_range(1e-4f32..2e-2) * if rng.random_bool(0.5) { 1.0 } else { -1.0 },
            );
            bytes.extend_from_slice(&d.to_le_bytes());
            match format {
                WeightFormat::Q4_1 => {
                    let m = f16::from_f32(rng.random_range(-0.2f32..0.1));
                    bytes.extend_from_slice(&m.to_le_bytes());
                    for _ in 0..BLOCK / 2 {
                        bytes.push(rng.random::<u8>());
                    }
                }
                WeightFormat::Q8_0 => {
                    for _ in 0..BLOCK {
                        bytes.push(rng.random_range(-127i8..=127) as u8);
                    }
                }
            }
        }
        bytes
    }

    fn random_input(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..m * k)
            .map(|i| {
                // Mostly N(0,1)-ish values with a few outliers, as activations have.
                let v: f32 = rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0);
                if i % 97 == 5 {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// The weight dequantized to f64: Q4_1 w = d u + m, Q8_0 w = d v.
    fn dequantize(format: WeightFormat, bytes: &[u8]) -> Vec<f64> {
        let mut out = Vec::new();
        for block in bytes.chunks_exact(format.block_bytes()) {
            let d = f16_at(block, 0) as f64;
            match format {
                WeightFormat::Q4_1 => {
                    let m = f16_at(block, 2) as f64;
                    let low: Vec<f64> =
                        block[4..].iter().map(|b| d * (b & 15) as f64 + m).collect();
                    let high: Vec<f64> =
                        block[4..].iter().map(|b| d * (b >> 4) as f64 + m).collect();
                    out.extend(low);
                    out.extend(high);
                }
                WeightFormat::Q8_0 => out.extend(block[2..].iter().map(|&v| d * v as i8 as f64)),
            }
        }
        out
    }

    /// Exact maths of the quantized product in f64: sum over blocks of dw*d16*sum(u q) + mw*s16,
    /// from the dequantized weight and the quantized activations, for Q4_1 written as
    /// sum_i (dw u_i + mw) d16 q_i with the mw term replaced by mw * s16 as the format defines.
    fn reference(
        format: WeightFormat,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[u8],
        n: usize,
    ) -> Vec<f64> {
        let blocks = k / BLOCK;
        let mut acts = vec![EMPTY_BLOCK; m * blocks];
        for t in 0..m {
            quantize_row_scalar(
                &x[t * k..(t + 1) * k],
                &mut acts[t * blocks..(t + 1) * blocks],
            );
        }
        let wd = dequantize(format, w);
        let mut out = vec![0f64; m * n];
        for t in 0..m {
            for r in 0..n {
                let mut sum = 0f64;
                for b in 0..blocks {
                    let a = &acts[t * blocks + b];
                    let block = &w[(r * blocks + b) * format.block_bytes()..];
                    let mw = if format == WeightFormat::Q4_1 {
                        f16_at(block, 2) as f64
                    } else {
                        0.0
                    };
                    for i in 0..BLOCK {
                        // (w_i - mw) is dw * u_i exactly.
                        sum += (wd[r * k + b * BLOCK + i] - mw) * a.d as f64 * a.qs[i] as f64;
                    }
                    sum += mw * a.s as f64;
                }
                out[t * n + r] = sum;
            }
        }
        out
    }

    /// Scale of the terms summed for one output, to state tolerances relative to it.
    fn magnitude(format: WeightFormat, x: &[f32], k: usize, w: &[u8], t: usize, r: usize) -> f64 {
        let wd = dequantize(
            format,
            &w[r * (k / BLOCK) * format.block_bytes()
                ..(r + 1) * (k / BLOCK) * format.block_bytes()],
        );
        wd.iter()
            .zip(&x[t * k..(t + 1) * k])
            .map(|(a, b)| (a * *b as f64).abs())
            .sum()
    }

    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        if Kernel::best() != Kernel::Scalar {
            all.push(Kernel::best());
        }
        all
    }

    #[test]
    fn matches_exact_quantized_maths_on_odd_shapes() {
        // Shapes: decode (m = 1), prefill tiles with remainders in both directions, n not a
        // multiple of 4, k of one block.
        let shapes = [
            (1, 576, 192),
            (1, 32, 5),
            (7, 96, 13),
            (5, 1536, 576),
            (3, 64, 4),
            (11, 160, 9),
        ];
        for (case, &(m, k, n)) in shapes.iter().enumerate() {
            for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
                let seed = 100 + case as u64 * 7 + format.block_bytes() as u64;
                let w = random_weight(format, n, k, seed);
                let x = random_input(m, k, seed + 1);
                let want = reference(format, &x, m, k, &w, n);
                for kernel in kernels() {
                    let mut got = vec![f32::NAN; m * n];
                    matmul_with(format, &x, m, k, &w, n, &mut got, kernel).expect("matmul");
                    for t in 0..m {
                        for r in 0..n {
                            let i = t * n + r;
                            // f32 accumulation over k/32 block sums: relative 1e-5 of the
                            // magnitude of the terms.
                            let tol = 1e-5 * magnitude(format, &x, k, &w, t, r) + 1e-6;
                            assert!(
                                (got[i] as f64 - want[i]).abs() <= tol,
                                "{format:?} {kernel:?} m={m} k={k} n={n} at ({t},{r}): got {} want {} tol {tol}",
                                got[i],
                                want[i]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn close_to_the_unquantized_product() {
        // Against x (f32, not quantized) times the dequantized weight in f64: the only error left
        // is the Q8 activation rounding, at most d/2 per element, d = amax/127 per block.
        let (m, k, n) = (4, 256, 12);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let w = random_weight(format, n, k, 7);
            let x = random_input(m, k, 8);
            let wd = dequantize(format, &w);
            let mut got = vec![0f32; m * n];
            matmul(format, &x, m, k, &w, n, &mut got).expect("matmul");
            for t in 0..m {
                for r in 0..n {
                    let mut exact = 0f64;
                    let mut bound = 0f64;
                    for b in 0..k / BLOCK {
                        let xs = &x[t * k + b * BLOCK..t * k + (b + 1) * BLOCK];
                        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        for (i, v) in xs.iter().enumerate() {
                            let wi = wd[r * k + b * BLOCK + i];
                            exact += wi * *v as f64;
                            // half a quantization step, plus f16 rounding of d (2^-11 relative).
                            bound += wi.abs() * (amax / 127.0 * 0.5 + v.abs() as f64 * 1e-3);
                        }
                    }
                    let err = (got[t * n + r] as f64 - exact).abs();
                    assert!(
                        err <= bound + 1e-4,
                        "{format:?} ({t},{r}): got {} exact {exact} bound {bound}",
                        got[t * n + r]
                    );
                }
            }
        }
    }

    #[test]
    fn avx2_quantization_equals_the_reference_bit_for_bit() {
        if Kernel::best() == Kernel::Scalar {
            return;
        }
        let k = 1536;
        let mut x = random_input(1, k, 42);
        // Exact ties (x * 127 / amax = n + 0.5) and an all-zero block.
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = -2.5;
        for v in &mut x[64..96] {
            *v = 0.0;
        }
        let mut scalar = vec![EMPTY_BLOCK; k / BLOCK];
        let mut simd = vec![EMPTY_BLOCK; k / BLOCK];
        quantize_rows(&x, k, &mut scalar, Kernel::Scalar);
        quantize_rows(&x, k, &mut simd, Kernel::best());
        for (a, b) in scalar.iter().zip(&simd) {
            assert_eq!(a.qs, b.qs);
            assert_eq!(a.d.to_bits(), b.d.to_bits());
            assert_eq!(a.s.to_bits(), b.s.to_bits());
        }
        assert_eq!(scalar[0].qs[1], 0, "0.5 rounds to even");
        assert_eq!(scalar[0].qs[2], -2, "-2.5 rounds to even");
    }

    #[test]
    fn agrees_with_candle_qmatmul() {
        // Candle's own Q4_1 / Q8_0 path (independent code, rounding ties away from zero) on the same
        // blocks: agreement to activation-quantization noise.
        use candle_core::quantized::{QMatMul, QStorage};
        use candle_core::Module;
        let (m, k, n) = (3, 576, 40);
        for (format, dtype) in [
            (WeightFormat::Q4_1, GgmlDType::Q4_1),
            (WeightFormat::Q8_0, GgmlDType::Q8_0),
        ] {
            let w = random_weight(format, n, k, 11);
            let x = random_input(m, k, 12);
            let storage = QStorage::from_data(std::borrow::Cow::Borrowed(&w), &Device::Cpu, dtype)
                .expect("storage");
            let qt = std::sync::Arc::new(QTensor::new(storage, (n, k)).expect("qtensor"));
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("x");
            let want: Vec<f32> = QMatMul::from_arc(qt.clone())
                .expect("qmatmul")
                .forward(&xt)
                .expect("fwd")
                .flatten_all()
                .expect("flat")
                .to_vec1()
                .expect("vec");
            let got: Vec<f32> = forward(&xt, &qt)
                .expect("forward")
                .flatten_all()
                .expect("flat")
                .to_vec1()
                .expect("vec");
            for i in 0..m * n {
                let tol = 2e-3 * magnitude(format, &x, k, &w, i / n, i % n) + 1e-4;
                assert!(
                    (got[i] - want[i]).abs() as f64 <= tol,
                    "{format:?} {i}: {} vs {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}
