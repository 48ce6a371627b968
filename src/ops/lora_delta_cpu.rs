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
//! Storage: A as [r, in] and B transposed in column blocks, both f16: for each block of 32 output
//! columns (the last one narrower), its r rows of (up to) 32 values, so the expand of one block
//! reads one contiguous run (B^T as [r, out] made it 16 strided streams, and a decode step's
//! adapter comes from DRAM: the model's weights pass through the caches between two uses). Decode is bound by memory traffic,
//! and a rank-16 all-linear adapter in f32 is 23% of the bytes of the Q4_1 model; in f16 it is 12%.
//! f16 keeps 11 significant bits, far below the Q8 rounding the base product applies to x.
//!
//! Arithmetic order (the same in the scalar reference and the AVX2 code, so both give the same bits):
//! - `low[k] = sum_i A[k, i] x[i]` in 32 lanes (lane j takes i = j mod 32, fused multiply-adds), the
//!   lanes reduced as `v[j] = (l[j] + l[8 + j]) + (l[16 + j] + l[24 + j])`, then
//!   `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))`, then the `in mod 32` tail added in order;
//! - `y[o] = fma(s low[r-1], Bt[r-1, o], ... fma(s low[0], Bt[0, o], y[o]))`.
//!
//! Each row is computed on its own, the same way whatever the number of rows: a sequence's output
//! does not depend on the batch it runs in.

use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::{Context, Error, Result};

/// Lanes of the `x A^T` accumulation (four 8-lane registers).
const LANES: usize = 32;
/// Rows from which the update is spread over the thread pool (prefill); below it, one thread.
const PARALLEL_ROWS: usize = 4;

/// One adapted projection's low-rank pair, laid out for the CPU update.
#[derive(Debug, Clone)]
pub struct LowRankCpu {
    /// A: [rank, in] f16.
    a: Vec<f16>,
    /// B transposed in blocks of [`LANES`] columns: column o of rank row k at [`b_index`].
    b_t: Vec<f16>,
    rank: usize,
    in_features: usize,
    out_features: usize,
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
            b_t: blocked_b_t(&host(b)?, out_features, rank),
            rank,
            in_features,
            out_features,
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
        let (r, out) = (self.rank, self.out_features);
        let mut b = vec![0f32; out * r];
        for o in 0..out {
            for k in 0..r {
                b[o * r + k] = self.b_t[b_index(o, k, out, r)].to_f32() * scale;
            }
        }
        b
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
        let kernel = Kernel::best();
        let run = |(y, x): (&mut [f32], &[f32])| self.row(y, x, scale, kernel);
        if rows >= PARALLEL_ROWS {
            y.par_chunks_mut(out).zip(x.par_chunks(inf)).for_each(run);
        } else {
            y.chunks_mut(out).zip(x.chunks(inf)).for_each(run);
        }
        Ok(())
    }

    fn row(&self, y: &mut [f32], x: &[f32], scale: f32, kernel: Kernel) {
        let mut low = [0f32; 64];
        let mut heap;
        let low: &mut [f32] = if self.rank <= low.len() {
            &mut low[..self.rank]
        } else {
            heap = vec![0f32; self.rank];
            &mut heap
        };
        for (k, l) in low.iter_mut().enumerate() {
            let a = &self.a[k * self.in_features..(k + 1) * self.in_features];
            *l = scale * kernel.dot(a, x);
        }
        kernel.axpy_rows(y, low, &self.b_t);
    }
}

/// Which implementation runs: the reference or the AVX2/FMA/F16C one (same bits).
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
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    fn dot(self, a: &[f16], x: &[f32]) -> f32 {
        match self {
            Kernel::Scalar => dot_scalar(a, x),
            // SAFETY: chosen only after detecting avx2, fma and f16c; a and x have one length.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot(a, x) },
        }
    }

    /// y[o] = fma(low[k], B^T[k, o], ..) over k in order (b_t blocked, [`b_index`]).
    fn axpy_rows(self, y: &mut [f32], low: &[f32], b_t: &[f16]) {
        match self {
            Kernel::Scalar => axpy_rows_scalar(y, low, b_t, 0),
            // SAFETY: as above; b_t holds low.len() x y.len() values, blocked.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::axpy_rows(y, low, b_t) },
        }
    }
}

/// The 32 lane sums reduced in the documented order.
fn reduce_lanes(l: &[f32; LANES]) -> f32 {
    let v: [f32; 8] = std::array::from_fn(|j| (l[j] + l[8 + j]) + (l[16 + j] + l[24 + j]));
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

fn dot_scalar(a: &[f16], x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for (ac, xc) in a[..full]
        .chunks_exact(LANES)
        .zip(x[..full].chunks_exact(LANES))
    {
        for ((lane, a), x) in lanes.iter_mut().zip(ac).zip(xc) {
            *lane = a.to_f32().mul_add(*x, *lane);
        }
    }
    let mut sum = reduce_lanes(&lanes);
    for (av, xv) in a[full..].iter().zip(&x[full..]) {
        sum = av.to_f32().mul_add(*xv, sum);
    }
    sum
}

/// Columns `from..` of the update, scalar (also the AVX2 code's tail).
/// Where column `o` of rank row `k` of B^T ([rank, out]) lies in the blocked layout: block
/// `o / LANES` starts at `(o / LANES) LANES rank`, holding `rank` rows of its width.
fn b_index(o: usize, k: usize, out: usize, rank: usize) -> usize {
    let c0 = o / LANES * LANES;
    let width = LANES.min(out - c0);
    c0 * rank + k * width + (o - c0)
}

/// B [out, rank] (row-major) in the blocked B^T layout of [`b_index`].
fn blocked_b_t(b: &[f16], out: usize, rank: usize) -> Vec<f16> {
    let mut t = vec![f16::ZERO; out * rank];
    for o in 0..out {
        for k in 0..rank {
            t[b_index(o, k, out, rank)] = b[o * rank + k];
        }
    }
    t
}

fn axpy_rows_scalar(y: &mut [f32], low: &[f32], b_t: &[f16], from: usize) {
    let (out, rank) = (y.len(), low.len());
    for (o, yv) in y.iter_mut().enumerate().skip(from) {
        let mut acc = *yv;
        for (k, l) in low.iter().enumerate() {
            acc = l.mul_add(b_t[b_index(o, k, out, rank)].to_f32(), acc);
        }
        *yv = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2/FMA/F16C versions of the scalar functions above; the same operations in the same order.

    use std::arch::x86_64::*;

    use half::f16;

    use super::{axpy_rows_scalar, reduce_lanes, LANES};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(a: &[f16], x: &[f32]) -> f32 {
        let full = a.len() / LANES * LANES;
        let mut acc = [_mm256_setzero_ps(); 4];
        let (pa, px) = (a.as_ptr(), x.as_ptr());
        let mut i = 0;
        while i < full {
            for (r, acc) in acc.iter_mut().enumerate() {
                let off = i + 8 * r;
                *acc = _mm256_fmadd_ps(load8(pa.add(off)), _mm256_loadu_ps(px.add(off)), *acc);
            }
            i += LANES;
        }
        let mut lanes = [0f32; LANES];
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * r), *acc);
        }
        let mut sum = reduce_lanes(&lanes);
        for (av, xv) in a[full..].iter().zip(&x[full..]) {
            sum = av.to_f32().mul_add(*xv, sum);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_rows(y: &mut [f32], low: &[f32], b_t: &[f16]) {
        let out = y.len();
        let full = out / LANES * LANES;
        let (py, pb) = (y.as_mut_ptr(), b_t.as_ptr());
        let mut o = 0;
        while o < full {
            let mut acc = [
                _mm256_loadu_ps(py.add(o)),
                _mm256_loadu_ps(py.add(o + 8)),
                _mm256_loadu_ps(py.add(o + 16)),
                _mm256_loadu_ps(py.add(o + 24)),
            ];
            for (k, l) in low.iter().enumerate() {
                let lk = _mm256_set1_ps(*l);
                // Block o / LANES (full width): rank rows of LANES values.
                let row = pb.add(o * low.len() + k * LANES);
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(lk, load8(row.add(8 * r)), *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(py.add(o + 8 * r), *acc);
            }
            o += LANES;
        }
        axpy_rows_scalar(y, low, b_t, full);
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

    /// Against the f64 reference (with A and B rounded to f16 first, as stored), for ranks, widths
    /// and row counts with and without tails; the AVX2 kernel gives the scalar one's bits.
    #[test]
    fn update_matches_f64_reference_and_kernels_agree() {
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
            let delta = lora_linear_reference(
                &to_f64_vec(&x).unwrap(),
                &[],
                &[],
                &f16_round(&a),
                &f16_round(&b),
                1.75,
                inf,
                r,
            );
            let base = to_f64_vec(&y0).unwrap();
            for (i, (got, (d, b0))) in y.iter().zip(delta.iter().zip(&base)).enumerate() {
                let want = d + b0;
                assert!(
                    (*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "case {seed} value {i}: {got} vs {want}"
                );
            }
            // The scalar reference, row by row, gives the same bits.
            let mut y_scalar = y0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (yr, xr) in y_scalar.chunks_mut(out).zip(xv.chunks(inf)) {
                pair.row(yr, xr, 1.75, Kernel::Scalar);
            }
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
}
