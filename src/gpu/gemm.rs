//! General matrix products on raw device pointers through cuBLASLt, for engines that own their
//! buffers (the CUDA training engine, the decode engine's batched prefill).
//!
//! Row-major view, as Candle and the engines store matrices. For one batch entry:
//!   D[m, n] = alpha * op(A) op(B) + beta * C,     C laid out as D (C = D unless `run_c`),
//! with op(A) [m, k] = A stored [m, k] (`trans_a` false) or the transpose of A stored [k, m];
//! op(B) [k, n] = B stored [k, n] (`trans_b` false) or the transpose of B stored [n, k] (a Linear
//! weight [out, in]). `lda`, `ldb`, `ldd` are the row strides (elements) of A, B and C/D as stored;
//! batch entry i starts `i * stride_*` elements after the base pointer (strided batched; a stride of
//! 0 reuses one matrix for every entry).
//!
//! cuBLASLt is column-major, and a row-major [r, c] matrix with row stride ld is the column-major
//! [c, r] matrix with leading dimension ld. So the row-major D = op(A) op(B) is the column-major
//! D^T [n, m] = op(B)^T op(A)^T: Lt's "A" is our B (column-major [n, k] as stored when `trans_b` is
//! false, so no transpose; [k, n] when true, transposed), Lt's "B" is our A (column-major [k, m] when
//! `trans_a` is false; [m, k], transposed, when true), and D is column-major [n, m] with ld `ldd`.
//!
//! Accumulation is f32 (CUBLAS_COMPUTE_32F), alpha and beta f32 on the host. Inputs f32, bf16 or
//! f16; the output either the input type or f32 (bf16 products with f32 results: LoRA gradients,
//! attention scores). f32 products multiply in full f32 unless the shape asks for TF32
//! ([`GemmShape::tf32`]: CUBLAS_COMPUTE_32F_FAST_TF32, inputs rounded to a 10-bit mantissa on the
//! tensor cores, f32 accumulation; ~7x the f32 rate on an H100/H200, f16's precision with f32's
//! range).
//!
//! One [`Gemm`] per device shares `cublaslt::LtContext`'s handle and 32 MiB workspace (products of
//! both run on Candle's one stream, so the workspace is never used by two products at once). A call
//! launches one cuBLASLt product: no allocation, no synchronisation, no cudarc event, so a sequence of
//! calls can be captured into a CUDA graph. Plans (descriptor, layouts, algorithm) are cached by the
//! full shape and the alignment of the four pointers; building one does not touch the stream, so a
//! miss during capture is harmless, and [`Gemm::prepare`] builds one ahead.
//!
//! Alignment: cuBLASLt's heuristic assumes 256-byte aligned pointers unless told otherwise, and an
//! algorithm picked that way may fail (or read misaligned vectors) on a pointer at an odd offset. The
//! plan key therefore holds each pointer's alignment (the largest power of two up to 256 that divides
//! the address and, when batched, the stride in bytes) and the heuristic is told it, so it only
//! returns algorithms that accept it. Leading dimensions are in the layouts, which the heuristic
//! already honours. A shape for which no algorithm exists is an error that names the shape.
//!
//! [`reference`] is the f64 CPU specification (always compiled, unit-tested in CI); `check_cases`
//! runs it against the GPU in `wick bench gpu-check` (records `gemm`).

use candle_core::DType;

/// The shape and layout of one (strided batched) product; see the module comment for the maths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Rows of D and of op(A).
    pub m: usize,
    /// Columns of D and of op(B).
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// A is stored [k, m] (op(A) = A^T) instead of [m, k].
    pub trans_a: bool,
    /// B is stored [n, k] (op(B) = B^T, a Linear weight [out, in]) instead of [k, n].
    pub trans_b: bool,
    /// Row stride of A as stored, elements (>= k, or >= m when `trans_a`).
    pub lda: usize,
    /// Row stride of B as stored, elements (>= n, or >= k when `trans_b`).
    pub ldb: usize,
    /// Row stride of C and D, elements (>= n).
    pub ldd: usize,
    /// Products in the batch (>= 1).
    pub batch: usize,
    /// Elements between batch entries of A (ignored when `batch` is 1; 0 broadcasts A).
    pub stride_a: usize,
    /// Elements between batch entries of B (ignored when `batch` is 1; 0 broadcasts B).
    pub stride_b: usize,
    /// Elements between batch entries of C and D (ignored when `batch` is 1).
    pub stride_d: usize,
    /// Element type of A and B: F32, BF16 or F16.
    pub ab_type: DType,
    /// Element type of C and D: `ab_type` or F32.
    pub d_type: DType,
    /// F32 inputs multiply on the TF32 tensor cores (rounded to a 10-bit mantissa, f32
    /// accumulation) instead of in full f32. Only with `ab_type` F32.
    pub tf32: bool,
}

impl GemmShape {
    /// One product with every matrix stored contiguously (ld = the stored row length), D and C in
    /// `d_type`.
    pub fn contiguous(
        (m, n, k): (usize, usize, usize),
        (trans_a, trans_b): (bool, bool),
        ab_type: DType,
        d_type: DType,
    ) -> Self {
        Self {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldd: n,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_d: 0,
            ab_type,
            d_type,
            tf32: false,
        }
    }

    /// This shape with its f32 inputs multiplied on the TF32 tensor cores (see [`GemmShape::tf32`]).
    pub fn with_tf32(self) -> Self {
        Self { tf32: true, ..self }
    }

    /// This shape over `batch` products with the given element strides.
    pub fn batched(self, batch: usize, stride_a: usize, stride_b: usize, stride_d: usize) -> Self {
        Self {
            batch,
            stride_a,
            stride_b,
            stride_d,
            ..self
        }
    }

    /// (rows, columns) of A as stored.
    pub fn a_stored(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    /// (rows, columns) of B as stored.
    pub fn b_stored(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    /// Elements a buffer must hold for a matrix of `rows` x `cols` with row stride `ld`, batched.
    fn span(&self, (rows, cols): (usize, usize), ld: usize, stride: usize) -> usize {
        if rows == 0 || cols == 0 {
            return 0;
        }
        let one = (rows - 1) * ld + cols;
        if self.batch > 1 {
            (self.batch - 1) * stride + one
        } else {
            one
        }
    }

    /// Elements the A buffer must hold (from its base pointer).
    pub fn a_len(&self) -> usize {
        self.span(self.a_stored(), self.lda, self.stride_a)
    }

    /// Elements the B buffer must hold.
    pub fn b_len(&self) -> usize {
        self.span(self.b_stored(), self.ldb, self.stride_b)
    }

    /// Elements the C and D buffers must hold.
    pub fn d_len(&self) -> usize {
        self.span((self.m, self.n), self.ldd, self.stride_d)
    }

    /// Why this shape is not a valid product (None: it is).
    pub fn invalid(&self) -> Option<String> {
        let (_, a_cols) = self.a_stored();
        let (_, b_cols) = self.b_stored();
        if self.m == 0 || self.n == 0 || self.k == 0 || self.batch == 0 {
            return Some("m, n, k and batch must be at least 1".into());
        }
        if self.lda < a_cols {
            return Some(format!(
                "lda {} < {a_cols} columns of A as stored",
                self.lda
            ));
        }
        if self.ldb < b_cols {
            return Some(format!(
                "ldb {} < {b_cols} columns of B as stored",
                self.ldb
            ));
        }
        if self.ldd < self.n {
            return Some(format!("ldd {} < n = {}", self.ldd, self.n));
        }
        if self.batch > 1 && self.stride_d < (self.m - 1) * self.ldd + self.n {
            return Some(format!(
                "stride_d {} overlaps the batch entries of D ([{}, {}], ldd {})",
                self.stride_d, self.m, self.n, self.ldd
            ));
        }
        if !matches!(self.ab_type, DType::F32 | DType::BF16 | DType::F16) {
            return Some(format!(
                "A/B type {:?}: F32, BF16 or F16 only",
                self.ab_type
            ));
        }
        if self.tf32 && self.ab_type != DType::F32 {
            return Some(format!(
                "TF32 with A/B {:?}: TF32 rounds F32 inputs only",
                self.ab_type
            ));
        }
        if self.d_type != self.ab_type && self.d_type != DType::F32 {
            return Some(format!(
                "D type {:?} with A/B {:?}: D is the A/B type or F32",
                self.d_type, self.ab_type
            ));
        }
        let limit = i32::MAX as usize;
        if [self.m, self.n, self.k, self.batch]
            .iter()
            .any(|&v| v > limit)
        {
            return Some("dimensions above i32::MAX".into());
        }
        None
    }
}

/// The f64 CPU specification of a product: returns D's buffer (`d_len` elements) computed from A, B
/// and C's buffers laid out as `shape` says (`c`: C's buffer, `c_len = d_len` elements; for `run`,
/// pass D's initial content). Elements of the buffer outside the matrices (row padding beyond `n`,
/// gaps between batch entries) keep C's values, as the GPU leaves D's untouched only when C = D;
/// compare matrix elements with [`matrix_elements`]. With `beta` 0 C is not read (NaN stays out).
pub fn reference(
    shape: &GemmShape,
    a: &[f64],
    b: &[f64],
    c: &[f64],
    alpha: f64,
    beta: f64,
) -> Vec<f64> {
    let mut d = c.to_vec();
    for batch in 0..shape.batch {
        let (a0, b0, d0) = (
            batch * shape.stride_a,
            batch * shape.stride_b,
            batch * shape.stride_d,
        );
        for i in 0..shape.m {
            for j in 0..shape.n {
                let mut sum = 0f64;
                for p in 0..shape.k {
                    let a_ip = if shape.trans_a {
                        a[a0 + p * shape.lda + i]
                    } else {
                        a[a0 + i * shape.lda + p]
                    };
                    let b_pj = if shape.trans_b {
                        b[b0 + j * shape.ldb + p]
                    } else {
                        b[b0 + p * shape.ldb + j]
                    };
                    sum += a_ip * b_pj;
                }
                let at = d0 + i * shape.ldd + j;
                let prior = if beta == 0.0 { 0.0 } else { beta * c[at] };
                d[at] = alpha * sum + prior;
            }
        }
    }
    d
}

/// The elements of D's buffer that belong to the matrices, batch by batch, row by row.
pub fn matrix_elements<T: Copy>(shape: &GemmShape, d: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(shape.batch * shape.m * shape.n);
    for batch in 0..shape.batch {
        for i in 0..shape.m {
            let row = batch * shape.stride_d + i * shape.ldd;
            out.extend_from_slice(&d[row..row + shape.n]);
        }
    }
    out
}

/// Whether element `at` of D's buffer belongs to one of the matrices.
pub fn is_matrix_element(shape: &GemmShape, at: usize) -> bool {
    let (batch, within) = if shape.batch > 1 && shape.stride_d > 0 {
        (at / shape.stride_d, at % shape.stride_d)
    } else {
        (0, at)
    };
    batch < shape.batch && within / shape.ldd < shape.m && within % shape.ldd < shape.n
}

/// Largest alignment the heuristic is told about (its default assumption).
const MAX_ALIGN: u64 = 256;

/// The alignment in bytes of every batch entry of a matrix at device address `ptr`: the largest
/// power of two up to 256 dividing the address and, when batched, the stride in bytes. `ptr` 0
/// stands for an aligned allocation (what `Gemm::prepare` assumes).
pub fn pointer_alignment(ptr: u64, stride: usize, elem_bytes: usize, batch: usize) -> u32 {
    let mut bits = ptr | MAX_ALIGN;
    if batch > 1 && stride > 0 {
        bits |= (stride * elem_bytes) as u64;
    }
    (bits & bits.wrapping_neg()) as u32
}

#[cfg(feature = "cuda")]
mod check;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub use check::{check_cases, GemmCase};
#[cfg(feature = "cuda")]
pub use device::Gemm;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;

    /// The same product by explicit matrices: op(A), op(B) materialised, then the textbook sum.
    fn naive(
        shape: &GemmShape,
        a: &[f64],
        b: &[f64],
        c: &[f64],
        alpha: f64,
        beta: f64,
    ) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        for batch in 0..shape.batch {
            let op_a = |i: usize, p: usize| {
                let base = batch * shape.stride_a;
                let (r, col) = if shape.trans_a { (p, i) } else { (i, p) };
                a[base + r * shape.lda + col]
            };
            let op_b = |p: usize, j: usize| {
                let base = batch * shape.stride_b;
                let (r, col) = if shape.trans_b { (j, p) } else { (p, j) };
                b[base + r * shape.ldb + col]
            };
            for i in 0..shape.m {
                let mut row = Vec::new();
                for j in 0..shape.n {
                    let s: f64 = (0..shape.k).map(|p| op_a(i, p) * op_b(p, j)).sum();
                    let cij = c[batch * shape.stride_d + i * shape.ldd + j];
                    row.push(alpha * s + beta * cij);
                }
                out.push(row);
            }
        }
        out
    }

    #[test]
    fn reference_matches_a_hand_computed_product() {
        // A [2, 3], B stored [2, 3] as a weight (trans_b): D = A B^T.
        let shape = GemmShape::contiguous((2, 2, 3), (false, true), DType::F32, DType::F32);
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5];
        let c = [10.0, 20.0, 30.0, 40.0];
        let d = reference(&shape, &a, &b, &c, 2.0, 0.5);
        // rows: [1-3, 2+2+1.5] = [-2, 5.5]; [4-6, 8+5+3] = [-2, 16].
        assert_eq!(d, vec![-4.0 + 5.0, 11.0 + 10.0, -4.0 + 15.0, 32.0 + 20.0]);
    }

    #[test]
    fn reference_follows_transposes_leading_dims_and_batch_strides() {
        let mut seed = 3;
        for (m, n, k) in [(3, 5, 7), (1, 4, 2), (6, 1, 5)] {
            for trans_a in [false, true] {
                for trans_b in [false, true] {
                    let base = GemmShape::contiguous(
                        (m, n, k),
                        (trans_a, trans_b),
                        DType::F32,
                        DType::F32,
                    );
                    let padded = GemmShape {
                        lda: base.lda + 3,
                        ldb: base.ldb + 1,
                        ldd: base.ldd + 2,
                        ..base
                    };
                    let a_one = padded.a_len();
                    let b_one = padded.b_len();
                    let d_one = padded.d_len();
                    let shape = padded.batched(3, a_one + 5, 0, d_one + 4);
                    seed += 1;
                    let a = random_values(shape.a_len(), seed, 1.0);
                    let b = random_values(shape.b_len().max(b_one), seed + 100, 1.0);
                    let c = random_values(shape.d_len(), seed + 200, 1.0);
                    for (alpha, beta) in [(1.0, 0.0), (0.7, 1.0), (-1.5, 0.25)] {
                        let d = reference(&shape, &a, &b, &c, alpha, beta);
                        let want: Vec<f64> = naive(&shape, &a, &b, &c, alpha, beta)
                            .into_iter()
                            .flatten()
                            .collect();
                        let got = matrix_elements(&shape, &d);
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g - w).abs() < 1e-12, "{shape:?}: {g} vs {w}");
                        }
                        // Padding and gaps keep C's values.
                        for (at, (dv, cv)) in d.iter().zip(&c).enumerate() {
                            if !is_matrix_element(&shape, at) {
                                assert_eq!(dv, cv, "{shape:?}: element {at} outside D changed");
                            }
                        }
                        let inside = (0..d.len()).filter(|&i| is_matrix_element(&shape, i));
                        assert_eq!(inside.count(), shape.batch * m * n);
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_c() {
        let shape = GemmShape::contiguous((2, 3, 4), (true, false), DType::BF16, DType::F32);
        let a = random_values(shape.a_len(), 9, 1.0);
        let b = random_values(shape.b_len(), 10, 1.0);
        let c = vec![f64::NAN; shape.d_len()];
        assert!(reference(&shape, &a, &b, &c, 1.0, 0.0)
            .iter()
            .all(|v| v.is_finite()));
    }

    #[test]
    fn alignment_is_the_lowest_power_of_two_of_address_and_stride() {
        assert_eq!(pointer_alignment(0, 0, 2, 1), 256);
        assert_eq!(pointer_alignment(0x1000, 0, 2, 1), 256);
        assert_eq!(pointer_alignment(0x1002, 0, 2, 1), 2);
        assert_eq!(pointer_alignment(0x1010, 0, 4, 1), 16);
        // Batched: entry i is at ptr + i * stride * bytes.
        assert_eq!(pointer_alignment(0x1000, 7, 2, 3), 2);
        assert_eq!(pointer_alignment(0x1000, 7, 2, 1), 256);
        assert_eq!(pointer_alignment(0x1000, 64, 4, 2), 256);
        assert_eq!(pointer_alignment(0x1000, 0, 4, 2), 256);
    }

    #[test]
    fn invalid_shapes_say_why() {
        let ok = GemmShape::contiguous((4, 5, 6), (false, true), DType::BF16, DType::F32);
        assert_eq!(ok.invalid(), None);
        assert!(GemmShape { lda: 5, ..ok }
            .invalid()
            .unwrap()
            .contains("lda"));
        assert!(GemmShape { ldb: 5, ..ok }
            .invalid()
            .unwrap()
            .contains("ldb"));
        assert!(GemmShape { ldd: 4, ..ok }
            .invalid()
            .unwrap()
            .contains("ldd"));
        assert!(ok
            .batched(2, 0, 0, 10)
            .invalid()
            .unwrap()
            .contains("stride_d"));
        assert!(GemmShape {
            d_type: DType::F16,
            ..ok
        }
        .invalid()
        .unwrap()
        .contains("D type"));
        assert!(GemmShape { k: 0, ..ok }.invalid().is_some());
        assert!(ok.with_tf32().invalid().unwrap().contains("TF32"));
        let f32_shape = GemmShape::contiguous((4, 5, 6), (false, true), DType::F32, DType::F32);
        assert_eq!(f32_shape.with_tf32().invalid(), None);
        assert_eq!(ok.batched(2, 24, 0, 20).invalid(), None);
    }
}
