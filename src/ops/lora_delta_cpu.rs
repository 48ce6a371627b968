//! The LoRA update added to rows of a base product on the CPU: `y[t, :] += s * (x[t, :] A^T) B^T`,
//! with x: [t, in] f32, A: [r, in], B: [out, r], y: [t, out] f32 (the base product, already computed
//! by whatever kernel suits the base weight: `quant_matmul_cpu` for Q4_1/Q8_0, gemm for dense).
//!
//! Why a kernel of its own: the update is ~4% of a decode step's multiply-adds for a rank-16
//! all-linear adapter on SmolLM2-135M, but through Candle (a gemm call for `x A^T`, an f32 copy of y,
//! a broadcast add) each of the 210 adapted projections of a token paid microseconds of fixed cost,
//! and the adapter ran at a fifth of the base model's speed. Here the update is two short loops per
//! row with no allocation.
//!
//! Storage: A as [r, in] and B [out, r] in f16 (the exchange copy, [`LowRankCpu::a_f32`] /
//! [`LowRankCpu::b_f32_scaled`] for engines that keep their own), and for the update itself an int8
//! copy made on its first use ([`QuantizedPair`]): A's rows as GGML Q8_0 blocks (32 values along
//! `in`, an f16 scale each; rows zero-padded to a multiple of 32), B transposed in blocks of 32
//! output columns (for each block its r rows of up to 32 values, so the expand of one block reads
//! one contiguous run), each run with an f32 scale. Every run: d = max |v| / 127,
//! q = round_half_even(v / d). Decode is bound by memory traffic: a rank-16 all-linear adapter is
//! 23% of the bytes of the Q4_1 SmolLM2-135M in f32, 12% in f16 (measured 0.88-0.90x of decode
//! without it), 6.4% in int8. The rounding (1/254 of a run's largest value) is of the order of
//! the Q8 rounding the base product applies to x.
//!
//! Arithmetic:
//! - the shrink `low = x A^T` is `quant_matmul_cpu`'s Q8_0 product (x quantized to Q8 blocks once
//!   per row, integer block sums, llama.cpp's maths; its scalar and AVX2 code agree bit for bit);
//! - the expand, in the same order in the scalar reference and the AVX2 code (same bits):
//!   `y[o] = fma(c[r-1], qBt[r-1, o], ... fma(c[0], qBt[0, o], y[o]))` with
//!   `c[k] = (low[k] s) dB[o / 32, k]`, each product rounded to f32.
//!
//! On a Q4_1 / Q8_0 base, [`quant_product_with_updates`] runs the base product and the shrinks in
//! one dispatch on the thread pool, the base's work items prefetching A and B (at decode the
//! expand was about half of the adapter's cost per token, reading B cold).
//!
//! Each row is computed on its own, the same way whatever the number of rows: a sequence's output
//! does not depend on the batch it runs in.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

use super::quant_matmul_cpu::{self, WeightFormat};
use crate::{Context, Error, Result};

/// Values per quantized run (a Q8_0 block of A; a column block of B^T: four 8-lane registers).
const LANES: usize = 32;
/// Rows from which the update is spread over the thread pool (prefill); below it, one thread.
const PARALLEL_ROWS: usize = 4;

/// One adapted projection's low-rank pair, laid out for the CPU update.
#[derive(Debug, Clone)]
pub struct LowRankCpu {
    /// A: [rank, in] f16.
    a: Vec<f16>,
    /// B: [out, rank] f16.
    b: Vec<f16>,
    rank: usize,
    in_features: usize,
    out_features: usize,
    /// The int8 layout of the update, made on the first [`LowRankCpu::add_to`] (engines that only
    /// take the f32 copies never pay for it).
    quantized: OnceLock<QuantizedPair>,
}

/// A as Q8_0 rows and B^T in int8 runs (module header).
#[derive(Debug, Clone)]
struct QuantizedPair {
    /// A [rank, in_padded] as GGML Q8_0 blocks, row after row.
    a_q8_0: Vec<u8>,
    /// `in` rounded up to a whole number of blocks (x is padded with zeros to it).
    in_padded: usize,
    /// B^T blocked: column o of rank row k at [`b_index`].
    b_q: Vec<i8>,
    /// Scale of B^T's run (column block o / 32, row k): [out.div_ceil(32), rank].
    b_d: Vec<f32>,
}

/// q = round_half_even(v / d) with d = max |v| / 127 (0 for a run of zeros).
fn quantize_run(v: &[f32], q: &mut [i8]) -> f32 {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, x) in q.iter_mut().zip(v) {
        *q = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    d
}

impl QuantizedPair {
    fn new(a: &[f16], b: &[f16], rank: usize, inf: usize, out: usize) -> Self {
        let in_padded = inf.div_ceil(LANES) * LANES;
        let mut a_q8_0 = Vec::with_capacity(rank * in_padded / LANES * 34);
        for row in a.chunks(inf) {
            let mut row: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
            row.resize(in_padded, 0.0);
            for run in row.chunks(LANES) {
                let mut q = [0i8; LANES];
                let d = quantize_run(run, &mut q);
                a_q8_0.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                a_q8_0.extend(q.iter().map(|&v| v as u8));
            }
        }
        let mut b_q = vec![0i8; out * rank];
        let mut b_d = Vec::with_capacity(out.div_ceil(LANES) * rank);
        for c0 in (0..out).step_by(LANES) {
            let width = LANES.min(out - c0);
            for k in 0..rank {
                let run: Vec<f32> = (c0..c0 + width).map(|o| b[o * rank + k].to_f32()).collect();
                let at = b_index(c0, k, out, rank);
                b_d.push(quantize_run(&run, &mut b_q[at..at + width]));
            }
        }
        Self {
            a_q8_0,
            in_padded,
            b_q,
            b_d,
        }
    }
}

impl LowRankCpu {
    /// From a: [r, in] and b: [out, r] in any float dtype on any device.
    pub fn new(a: &Tensor, b: &Tensor) -> Result<Self> {
        let (rank, in_features) = a.dims2().context("lora A")?;
        let (out_features, b_rank) = b.dims2().context("lora B")?;
        if b_rank != rank || rank == 0 {
            return Err(Error::InvalidRequest(format!(
                "lora pair: A {:?} and B {:?} do not share a positive rank",
                a.dims(),
                b.dims()
            )));
        }
        let host = |t: &Tensor| -> Result<Vec<f16>> {
            t.to_dtype(DType::F16)
                .and_then(|t| t.to_device(&candle_core::Device::Cpu))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f16>())
                .context("lora pair to f16")
        };
        Ok(Self {
            a: host(a)?,
            b: host(b)?,
            rank,
            in_features,
            out_features,
            quantized: OnceLock::new(),
        })
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// A [rank, in] widened to f32 (for an engine that keeps its own copy, e.g. a GPU slot).
    pub fn a_f32(&self) -> Vec<f32> {
        self.a.iter().map(|v| v.to_f32()).collect()
    }

    /// B [out, rank] times `scale`, widened to f32.
    pub fn b_f32_scaled(&self, scale: f32) -> Vec<f32> {
        self.b.iter().map(|v| v.to_f32() * scale).collect()
    }

    fn quantized(&self) -> &QuantizedPair {
        self.quantized.get_or_init(|| {
            QuantizedPair::new(
                &self.a,
                &self.b,
                self.rank,
                self.in_features,
                self.out_features,
            )
        })
    }

    /// y: [rows, out] += scale * (x A^T) B^T, x: [rows, in].
    pub fn add_to(&self, y: &mut [f32], x: &[f32], scale: f32) -> Result<()> {
        let (inf, out) = (self.in_features, self.out_features);
        let rows = x.len() / inf;
        if x.len() != rows * inf || y.len() != rows * out {
            return Err(Error::InvalidRequest(format!(
                "lora update: x has {} values and y {}, not rows of {inf} and {out}",
                x.len(),
                y.len()
            )));
        }
        self.update(y, x, scale, Kernel::best())
    }

    /// [`LowRankCpu::add_to`] on a given expand kernel (the tests run both).
    fn update(&self, y: &mut [f32], x: &[f32], scale: f32, kernel: Kernel) -> Result<()> {
        let (inf, rank) = (self.in_features, self.rank);
        let rows = x.len() / inf;
        let q = self.quantized();
        let padded;
        let x = if q.in_padded == inf {
            x
        } else {
            padded = x
                .chunks(inf)
                .flat_map(|r| {
                    r.iter()
                        .copied()
                        .chain(std::iter::repeat_n(0.0, q.in_padded - inf))
                })
                .collect::<Vec<f32>>();
            &padded
        };
        let mut low = vec![0f32; rows * rank];
        quant_matmul_cpu::matmul(
            WeightFormat::Q8_0,
            x,
            rows,
            q.in_padded,
            &q.a_q8_0,
            rank,
            &mut low,
        )?;
        self.expand_with(y, &low, scale, kernel);
        Ok(())
    }

    /// y: [rows, out] += (scale low) B^T for `low` [rows, rank], on the calling thread.
    fn expand_with(&self, y: &mut [f32], low: &[f32], scale: f32, kernel: Kernel) {
        let (q, out, rank) = (self.quantized(), self.out_features, self.rank);
        let run = |(y, low): (&mut [f32], &[f32])| kernel.axpy_rows(y, low, scale, &q.b_q, &q.b_d);
        if y.len() / out.max(1) >= PARALLEL_ROWS {
            y.par_chunks_mut(out)
                .zip(low.par_chunks(rank))
                .for_each(run);
        } else {
            y.chunks_mut(out).zip(low.chunks(rank)).for_each(run);
        }
    }
}

/// Rows `tokens` of a batch and the pair (with its scale) that updates them.
#[derive(Debug, Clone)]
pub struct RowsUpdate<'a> {
    /// The rows of x and y this pair updates.
    pub tokens: std::ops::Range<usize>,
    /// The low-rank pair.
    pub pair: &'a LowRankCpu,
    /// s (alpha / r, or alpha / sqrt(r)).
    pub scale: f32,
}

/// y [rows, out] = x W^T (+ bias), then on each group's rows `+= s (x A^T) B^T`, for x [rows, in]
/// f32 and a base W [out, in] of Q4_1 / Q8_0 blocks. The base product and every group's shrink
/// are one `quant_matmul_cpu::matmul_parts_prefetch` call (x quantized once, one pool dispatch,
/// A read beside the base rows), whose base items prefetch each pair's A and B, so the shrinks and
/// the expands after the call read them from cache; then the bias and each group's expand on
/// the calling thread. The bits are those of the base product, the bias, then
/// [`LowRankCpu::add_to`] per group. `None` when `in` is not a whole number of 32-value blocks
/// (the base kernel does not run then either).
#[allow(clippy::too_many_arguments)]
pub fn quant_product_with_updates(
    format: WeightFormat,
    weight: &[u8],
    out: usize,
    x: &[f32],
    rows: usize,
    inf: usize,
    bias: Option<&[f32]>,
    groups: &[RowsUpdate<'_>],
) -> Result<Option<Vec<f32>>> {
    if inf % LANES != 0 {
        return Ok(None);
    }
    for g in groups {
        let p = g.pair;
        if p.in_features != inf || p.out_features != out || g.tokens.end > rows {
            return Err(Error::InvalidRequest(format!(
                "lora update: rows {:?} of {rows}, pair {}x{} on a {out}x{inf} product",
                g.tokens, p.out_features, p.in_features
            )));
        }
    }
    let pairs: Vec<&QuantizedPair> = groups.iter().map(|g| g.pair.quantized()).collect();
    let mut lows: Vec<Vec<f32>> = groups
        .iter()
        .map(|g| vec![0f32; g.pair.rank * g.tokens.len()])
        .collect();
    let mut ys = vec![0f32; rows * out];
    let mut parts = vec![quant_matmul_cpu::Part {
        format,
        weight,
        n: out,
        tokens: 0..rows,
        out: &mut ys,
    }];
    let mut ahead: Vec<&[u8]> = Vec::with_capacity(2 * groups.len());
    for ((g, q), low) in groups.iter().zip(&pairs).zip(lows.iter_mut()) {
        parts.push(quant_matmul_cpu::Part {
            format: WeightFormat::Q8_0,
            weight: &q.a_q8_0,
            n: g.pair.rank,
            tokens: g.tokens.clone(),
            out: low,
        });
        ahead.push(&q.a_q8_0);
        // The int8 values as bytes (same size and alignment), for the prefetch only.
        ahead.push(bytemuck_i8(&q.b_q));
    }
    quant_matmul_cpu::matmul_parts_prefetch(x, rows, inf, &mut parts, &ahead)?;
    if let Some(bias) = bias {
        for row in ys.chunks_mut(out) {
            row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
    }
    let kernel = Kernel::best();
    for (g, low) in groups.iter().zip(&lows) {
        let y = &mut ys[g.tokens.start * out..g.tokens.end * out];
        g.pair.expand_with(y, low, g.scale, kernel);
    }
    Ok(Some(ys))
}

/// i8 values viewed as bytes.
fn bytemuck_i8(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size, alignment and validity (every bit pattern).
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

/// Which implementation runs: the reference or the AVX2/FMA one (same bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// y[o] = fma((low[k] s) dB[o / 32, k], qBt[k, o], ..) over k in order (blocked,
    /// [`b_index`]; y may be the columns of a block run onwards, with B's runs from there).
    fn axpy_rows(self, y: &mut [f32], low: &[f32], scale: f32, b_q: &[i8], b_d: &[f32]) {
        match self {
            Kernel::Scalar => axpy_rows_scalar(y, low, scale, b_q, b_d, 0),
            // SAFETY: as above; b_q holds low.len() x y.len() values, blocked, b_d their scales.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::axpy_rows(y, low, scale, b_q, b_d) },
        }
    }
}

/// Where column `o` of rank row `k` of B^T ([rank, out]) lies in the blocked layout: block
/// `o / LANES` starts at `(o / LANES) LANES rank`, holding `rank` rows of its width.
fn b_index(o: usize, k: usize, out: usize, rank: usize) -> usize {
    let c0 = o / LANES * LANES;
    let width = LANES.min(out - c0);
    c0 * rank + k * width + (o - c0)
}

/// Columns `from..` of the update, scalar (also the AVX2 code's tail).
fn axpy_rows_scalar(y: &mut [f32], low: &[f32], scale: f32, b_q: &[i8], b_d: &[f32], from: usize) {
    let (out, rank) = (y.len(), low.len());
    for (o, yv) in y.iter_mut().enumerate().skip(from) {
        let mut acc = *yv;
        for (k, l) in low.iter().enumerate() {
            let c = l * scale * b_d[o / LANES * rank + k];
            acc = c.mul_add(b_q[b_index(o, k, out, rank)] as f32, acc);
        }
        *yv = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2/FMA versions of the scalar functions above; the same operations in the same order.

    use std::arch::x86_64::*;

    use super::{axpy_rows_scalar, LANES};

    /// 8 int8 values at p widened to f32 (exact).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_rows(
        y: &mut [f32],
        low: &[f32],
        scale: f32,
        b_q: &[i8],
        b_d: &[f32],
    ) {
        let out = y.len();
        let full = out / LANES * LANES;
        let mut o = 0;
        // Two column blocks at a time: eight independent accumulation chains (four left the
        // loop waiting on fused multiply-add latency) and two streams of B in flight.
        while o + 2 * LANES <= full {
            blocks::<2>(y, low, scale, b_q, b_d, o);
            o += 2 * LANES;
        }
        if o < full {
            blocks::<1>(y, low, scale, b_q, b_d, o);
        }
        axpy_rows_scalar(y, low, scale, b_q, b_d, full);
    }

    /// Columns o .. o + N LANES (N full blocks) of the update.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocks<const N: usize>(
        y: &mut [f32],
        low: &[f32],
        scale: f32,
        b_q: &[i8],
        b_d: &[f32],
        o: usize,
    ) {
        let rank = low.len();
        let (py, pb) = (y.as_mut_ptr().add(o), b_q.as_ptr().add(o * rank));
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        for (n, acc) in acc.iter_mut().enumerate() {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(py.add(n * LANES + 8 * r));
            }
        }
        for (k, l) in low.iter().enumerate() {
            for (n, acc) in acc.iter_mut().enumerate() {
                let c = _mm256_set1_ps(l * scale * b_d[(o / LANES + n) * rank + k]);
                // Block o / LANES + n (full width): rank rows of LANES values.
                let row = pb.add(n * LANES * rank + k * LANES);
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(c, load8(row.add(8 * r)), *acc);
                }
            }
        }
        for (n, acc) in acc.iter().enumerate() {
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(py.add(n * LANES + 8 * r), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{random_tensor, to_f64_vec};
    use crate::ops::lora_linear::lora_linear_reference;
    use candle_core::Device;

    /// The f32 copies an engine takes are the stored f16 values, B back in [out, rank] order.
    #[test]
    fn f32_copies_are_the_stored_pair() {
        let dev = Device::Cpu;
        let a = random_tensor(&[3, 40], DType::F32, &dev, 5, 0.5).unwrap();
        let b = random_tensor(&[24, 3], DType::F32, &dev, 6, 0.5).unwrap();
        let pair = LowRankCpu::new(&a, &b).unwrap();
        let f16_round = |t: &Tensor| {
            t.to_dtype(DType::F16)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .unwrap()
        };
        assert_eq!(pair.a_f32(), f16_round(&a));
        let want: Vec<f32> = f16_round(&b).iter().map(|v| v * 2.5).collect();
        assert_eq!(pair.b_f32_scaled(2.5), want);
    }

    /// A run's largest value maps to +-127, ties go to even, a run of zeros has scale 0.
    #[test]
    fn runs_quantize_to_their_largest_value() {
        let mut q = [0i8; 4];
        let d = quantize_run(&[0.5, -1.27, 0.005, 0.015], &mut q);
        assert_eq!(d, 1.27f32 / 127.0);
        assert_eq!(q, [50, -127, 0, 2]);
        assert_eq!(quantize_run(&[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
    }

    /// Against the f64 reference of the stored f16 pair on unquantized x, for ranks, widths
    /// (multiples of 32 and not) and row counts with and without tails: the int8 pair and the Q8
    /// x stay within 1% of the delta's largest value; the AVX2 expand gives the scalar one's bits.
    #[test]
    fn update_is_close_to_the_f16_pair_and_kernels_agree() {
        let dev = Device::Cpu;
        for (seed, &(rows, inf, out, r)) in [
            (1, 64, 96, 16),
            (3, 70, 33, 4),
            (7, 576, 192, 8),
            (5, 32, 1536, 3),
        ]
        .iter()
        .enumerate()
        {
            let seed = 11 * seed as u64;
            let x = random_tensor(&[rows, inf], DType::F32, &dev, seed, 1.0).unwrap();
            let y0 = random_tensor(&[rows, out], DType::F32, &dev, seed + 1, 1.0).unwrap();
            let a = random_tensor(&[r, inf], DType::F32, &dev, seed + 2, 0.3).unwrap();
            let b = random_tensor(&[out, r], DType::F32, &dev, seed + 3, 0.3).unwrap();
            let pair = LowRankCpu::new(&a, &b).unwrap();
            let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut y = y0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            pair.add_to(&mut y, &xv, 1.75).unwrap();

            let f16_round = |t: &Tensor| to_f64_vec(&t.to_dtype(DType::F16).unwrap()).unwrap();
            let x64 = to_f64_vec(&x).unwrap();
            let delta =
                lora_linear_reference(&x64, &[], &[], &f16_round(&a), &f16_round(&b), 1.75, inf, r);
            let largest = delta.iter().fold(0f64, |m, d| m.max(d.abs()));
            let base = to_f64_vec(&y0).unwrap();
            for (i, (got, (d, b0))) in y.iter().zip(delta.iter().zip(&base)).enumerate() {
                let want = d + b0;
                assert!(
                    (*got as f64 - want).abs() <= 1e-2 * largest + 1e-6 * want.abs(),
                    "case {seed} value {i}: {got} vs {want} (largest delta {largest})"
                );
            }
            let mut y_scalar = y0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            pair.update(&mut y_scalar, &xv, 1.75, Kernel::Scalar)
                .unwrap();
            assert_eq!(y, y_scalar, "case {seed}: scalar and best kernel differ");
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let dev = Device::Cpu;
        let (rows, inf, out, r) = (9, 96, 64, 16);
        let x = random_tensor(&[rows, inf], DType::F32, &dev, 5, 1.0).unwrap();
        let a = random_tensor(&[r, inf], DType::F32, &dev, 6, 0.3).unwrap();
        let b = random_tensor(&[out, r], DType::F32, &dev, 7, 0.3).unwrap();
        let pair = LowRankCpu::new(&a, &b).unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut all = vec![0.25f32; rows * out];
        pair.add_to(&mut all, &xv, 0.5).unwrap();
        for row in 0..rows {
            let mut one = vec![0.25f32; out];
            pair.add_to(&mut one, &xv[row * inf..(row + 1) * inf], 0.5)
                .unwrap();
            assert_eq!(one, all[row * out..(row + 1) * out]);
        }
        let mut bad = vec![0f32; 3];
        assert!(pair.add_to(&mut bad, &xv, 1.0).is_err());
    }

    /// The product with updates (base, shrinks with prefetch, bias, expands) gives, bit for bit,
    /// the base product, the bias, then `add_to` per group: on one row (the calling thread alone)
    /// and on 8 rows in groups of one and three rows and a row without adapter (past the inline cutoff,
    /// so the pool runs); a pair of the wrong shape or rows past x are refused, and `in` that is
    /// not whole blocks is left to the general path.
    #[test]
    fn product_with_updates_is_base_bias_then_each_update() {
        use crate::ops::quant_matmul_cpu::matmul;
        let dev = Device::Cpu;
        let (inf, out, r) = (576, 200, 16);
        // Q8_0 base blocks of a random matrix: the A of a pair of rank `out`.
        let w = random_tensor(&[out, inf], DType::F32, &dev, 21, 0.2).unwrap();
        let unit = random_tensor(&[1, out], DType::F32, &dev, 22, 1.0).unwrap();
        let base = LowRankCpu::new(&w, &unit)
            .unwrap()
            .quantized()
            .a_q8_0
            .clone();
        let bias: Vec<f32> = (0..out).map(|o| 0.01 * o as f32 - 1.0).collect();
        let pairs: Vec<LowRankCpu> = (0..3u64)
            .map(|i| {
                let a = random_tensor(&[r, inf], DType::F32, &dev, 30 + i, 0.3).unwrap();
                let b = random_tensor(&[out, r], DType::F32, &dev, 40 + i, 0.3).unwrap();
                LowRankCpu::new(&a, &b).unwrap()
            })
            .collect();
        // (rows, [(rows of a group, its pair)]).
        let one: &[(std::ops::Range<usize>, usize)] = &[(0..1, 0)];
        let eight: &[(std::ops::Range<usize>, usize)] = &[(0..3, 1), (4..5, 0), (5..8, 2)];
        let cases = [(1, one), (8, eight)];
        for (seed, (rows, spec)) in cases.iter().enumerate() {
            let x = random_tensor(&[*rows, inf], DType::F32, &dev, 50 + seed as u64, 1.0).unwrap();
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let groups: Vec<RowsUpdate> = spec
                .iter()
                .map(|(tokens, p)| RowsUpdate {
                    tokens: tokens.clone(),
                    pair: &pairs[*p],
                    scale: 0.75 + *p as f32,
                })
                .collect();
            let got = quant_product_with_updates(
                WeightFormat::Q8_0,
                &base,
                out,
                &x,
                *rows,
                inf,
                Some(&bias),
                &groups,
            )
            .unwrap()
            .unwrap();
            let mut want = vec![0f32; rows * out];
            matmul(WeightFormat::Q8_0, &x, *rows, inf, &base, out, &mut want).unwrap();
            for row in want.chunks_mut(out) {
                row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
            }
            for g in &groups {
                let (a, b) = (g.tokens.start, g.tokens.end);
                g.pair
                    .add_to(&mut want[a * out..b * out], &x[a * inf..b * inf], g.scale)
                    .unwrap();
            }
            assert_eq!(got, want, "{rows} rows");
        }
        let x = vec![0.5f32; 2 * inf];
        let call = |groups: &[RowsUpdate], inf: usize| {
            quant_product_with_updates(WeightFormat::Q8_0, &base, out, &x, 2, inf, None, groups)
        };
        let past = RowsUpdate {
            tokens: 1..3,
            pair: &pairs[0],
            scale: 1.0,
        };
        assert!(call(&[past], inf).is_err(), "rows past x");
        let small = LowRankCpu::new(
            &random_tensor(&[r, 64], DType::F32, &dev, 60, 0.3).unwrap(),
            &random_tensor(&[out, r], DType::F32, &dev, 61, 0.3).unwrap(),
        )
        .unwrap();
        let wrong = RowsUpdate {
            tokens: 0..1,
            pair: &small,
            scale: 1.0,
        };
        assert!(call(&[wrong], inf).is_err(), "pair of another shape");
        assert!(call(&[], 100).unwrap().is_none(), "in not whole blocks");
    }
}
