//! `Gemm` against the f64 reference (`gpu::gemm::reference`) on the GPU, for `wick bench gpu-check`
//! (records `gemm`): odd shapes and the model's, every (trans_a, trans_b), A/B in f32, bf16 and f16
//! with D in the same type or f32, f32 on the TF32 tensor cores (judged at f16's tolerance: the same
//! 10-bit mantissa), and three variants per combination:
//! - `plain`: contiguous, one product, beta 0, D poisoned with NaN (beta 0 must not read it);
//! - `strided`: padded leading dims, 3 products with gaps between them, B shared (stride 0),
//!   alpha 0.75, beta 1 (D = C holds random values), A offset by one element (unaligned pointer);
//! - `run_c`: padded, 2 products, alpha -0.5, beta 1 with a distinct C, D poisoned.
//!
//! Row padding and gaps of D must come back bit-identical (an element written outside the matrices
//! makes the error infinite). One more case checks that an invalid shape is refused with an error
//! naming it.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::{CudaDevice, DType};
use std::sync::Arc;

use super::{is_matrix_element, matrix_elements, reference, Gemm, GemmShape};
use crate::check::{max_rel_err, random_values, tolerance};
use crate::gpu::ptr::device_ptr;
use crate::Result;

/// One checked product.
pub struct GemmCase {
    /// The A/B type.
    pub ab_type: DType,
    /// Text: m n k, transposes, types, leading dims, batch, alpha/beta, variant.
    pub shape: String,
    /// max |got - want| / max |want| over D's matrices; infinite if anything outside them changed.
    pub max_rel_err: f64,
    /// The tolerance for D's type.
    pub tolerance: f64,
}

fn err(what: &str, e: impl std::fmt::Debug) -> crate::Error {
    crate::Error::Candle {
        context: format!("gemm check: {what}"),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

/// A device buffer in one of the three float types, f32 or 16-bit (as bits).
enum Buffer {
    F32(CudaSlice<f32>),
    Half(CudaSlice<u16>, DType),
}

/// `values` rounded to `dtype` (what the GPU sees), as f64.
fn rounded(values: &[f64], dtype: DType) -> Vec<f64> {
    values
        .iter()
        .map(|&v| match dtype {
            DType::BF16 => half::bf16::from_f64(v).to_f64(),
            DType::F16 => half::f16::from_f64(v).to_f64(),
            _ => v as f32 as f64,
        })
        .collect()
}

impl Buffer {
    fn upload(stream: &Arc<CudaStream>, values: &[f64], dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => {
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                Buffer::F32(stream.clone_htod(&v).map_err(|e| err("upload", e))?)
            }
            DType::BF16 | DType::F16 => {
                let v: Vec<u16> = values
                    .iter()
                    .map(|&x| match dtype {
                        DType::BF16 => half::bf16::from_f64(x).to_bits(),
                        _ => half::f16::from_f64(x).to_bits(),
                    })
                    .collect();
                Buffer::Half(stream.clone_htod(&v).map_err(|e| err("upload", e))?, dtype)
            }
            other => return Err(err("dtype", other)),
        })
    }

    /// Address of element `offset`.
    fn ptr(&self, stream: &CudaStream, offset: usize) -> u64 {
        match self {
            Buffer::F32(s) => device_ptr(s, stream) + 4 * offset as u64,
            Buffer::Half(s, _) => device_ptr(s, stream) + 2 * offset as u64,
        }
    }

    /// The content as raw bits widened to u32 (for the untouched-padding check) and as f64.
    fn download(&self, stream: &Arc<CudaStream>) -> Result<(Vec<u32>, Vec<f64>)> {
        stream.synchronize().map_err(|e| err("synchronize", e))?;
        Ok(match self {
            Buffer::F32(s) => {
                let v = stream.clone_dtoh(s).map_err(|e| err("read-back", e))?;
                (
                    v.iter().map(|x| x.to_bits()).collect(),
                    v.iter().map(|&x| x as f64).collect(),
                )
            }
            Buffer::Half(s, dtype) => {
                let v = stream.clone_dtoh(s).map_err(|e| err("read-back", e))?;
                let values = v
                    .iter()
                    .map(|&b| match dtype {
                        DType::BF16 => half::bf16::from_bits(b).to_f64(),
                        _ => half::f16::from_bits(b).to_f64(),
                    })
                    .collect();
                (v.iter().map(|&b| b as u32).collect(), values)
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Plain,
    Strided,
    RunC,
}

/// Runs every case on `dev`; `seed` varies the inputs.
pub fn check_cases(dev: &CudaDevice, seed: u64) -> Result<Vec<GemmCase>> {
    let gemm = Gemm::for_device(dev).map_err(|e| err("context", e))?;
    let stream = gemm.stream().clone();
    let mut cases = Vec::new();
    let mut seed = seed;
    // Odd shapes, a square tile, the default model's LoRA shapes (576 hidden, r 16) and an
    // attention-like score product.
    let shapes = [
        (1, 1, 1),
        (7, 5, 3),
        (33, 17, 65),
        (64, 64, 64),
        (130, 97, 257),
        (24, 16, 576),
        (72, 24, 64),
    ];
    // (A/B, D, TF32)
    let types = [
        (DType::F32, DType::F32, false),
        (DType::F32, DType::F32, true),
        (DType::BF16, DType::BF16, false),
        (DType::BF16, DType::F32, false),
        (DType::F16, DType::F16, false),
        (DType::F16, DType::F32, false),
    ];
    for (m, n, k) in shapes {
        for (ab_type, d_type, tf32) in types {
            for trans in [(false, false), (false, true), (true, false), (true, true)] {
                for variant in [Variant::Plain, Variant::Strided, Variant::RunC] {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    cases.push(one_case(
                        &gemm,
                        &stream,
                        GemmShape {
                            tf32,
                            ..GemmShape::contiguous((m, n, k), trans, ab_type, d_type)
                        },
                        variant,
                        seed >> 8,
                    )?);
                }
            }
        }
    }
    // An invalid shape must be refused with an error that names it, before anything launches.
    let bad = GemmShape {
        lda: 2,
        ..GemmShape::contiguous((5, 6, 7), (false, true), DType::BF16, DType::F32)
    };
    let refused = match gemm.prepare(&bad) {
        Err(e) => e.to_string().contains("lda 2"),
        Ok(_) => false,
    };
    cases.push(GemmCase {
        ab_type: DType::BF16,
        shape: format!("invalid shape (lda 2 < k 7) refused with its name: {refused}"),
        max_rel_err: if refused { 0.0 } else { f64::INFINITY },
        tolerance: 0.0,
    });
    Ok(cases)
}

fn one_case(
    gemm: &Gemm,
    stream: &Arc<CudaStream>,
    base: GemmShape,
    variant: Variant,
    seed: u64,
) -> Result<GemmCase> {
    let (shape, alpha, beta, a_offset) = match variant {
        Variant::Plain => (base, 1.0f32, 0.0f32, 0),
        Variant::Strided | Variant::RunC => {
            let padded = GemmShape {
                lda: base.lda + 3,
                ldb: base.ldb + 1,
                ldd: base.ldd + 5,
                ..base
            };
            let (a_one, d_one) = (padded.a_len(), padded.d_len());
            if variant == Variant::Strided {
                (padded.batched(3, a_one + 2, 0, d_one + 3), 0.75, 1.0, 1)
            } else {
                let b_one = padded.b_len();
                (padded.batched(2, a_one, b_one + 1, d_one), -0.5, 1.0, 0)
            }
        }
    };
    let (ab, dt) = (shape.ab_type, shape.d_type);
    // Inputs rounded to their types first, so the reference sees what the GPU sees.
    let a = rounded(&random_values(shape.a_len() + a_offset, seed, 1.0), ab);
    let b = rounded(&random_values(shape.b_len(), seed ^ 0x5eed, 1.0), ab);
    let c = rounded(&random_values(shape.d_len(), seed ^ 0xc0ffee, 1.0), dt);
    let poison = vec![f64::NAN; shape.d_len()];
    let d_init = match variant {
        Variant::Strided => &c,
        Variant::Plain | Variant::RunC => &poison,
    };
    let a_dev = Buffer::upload(stream, &a, ab)?;
    let b_dev = Buffer::upload(stream, &b, ab)?;
    let d_dev = Buffer::upload(stream, d_init, dt)?;
    let (before_bits, _) = d_dev.download(stream)?;
    let (a_ptr, b_ptr, d_ptr) = (
        a_dev.ptr(stream, a_offset),
        b_dev.ptr(stream, 0),
        d_dev.ptr(stream, 0),
    );
    let launched = if variant == Variant::RunC {
        let c_dev = Buffer::upload(stream, &c, dt)?;
        let c_ptr = c_dev.ptr(stream, 0);
        let r = gemm.run_c(&shape, a_ptr, b_ptr, c_ptr, d_ptr, alpha, beta);
        stream.synchronize().map_err(|e| err("synchronize", e))?;
        r
    } else {
        gemm.run(&shape, a_ptr, b_ptr, d_ptr, alpha, beta)
    };
    let mut text = String::new();
    let max_err = match launched {
        // A product that cannot run is a failed case (infinite error), not the end of the suite.
        Err(e) => {
            text = format!(" error: {e}");
            f64::INFINITY
        }
        Ok(()) => {
            let (after_bits, got) = d_dev.download(stream)?;
            let want = reference(&shape, &a[a_offset..], &b, &c, alpha as f64, beta as f64);
            let outside_changed = (0..shape.d_len())
                .any(|i| !is_matrix_element(&shape, i) && before_bits[i] != after_bits[i]);
            if outside_changed {
                text = " wrote outside D's matrices".into();
                f64::INFINITY
            } else {
                max_rel_err(
                    &matrix_elements(&shape, &got),
                    &matrix_elements(&shape, &want),
                )
            }
        }
    };
    Ok(GemmCase {
        ab_type: ab,
        shape: case_text(&shape, alpha, beta, variant, &text),
        max_rel_err: max_err,
        // TF32 keeps f16's 10-bit mantissa.
        tolerance: if shape.tf32 {
            tolerance(DType::F16)
        } else {
            tolerance(dt)
        },
    })
}

/// The record's shape text: m n k, transposes, types, leading dims, batch, alpha/beta, variant.
fn case_text(shape: &GemmShape, alpha: f32, beta: f32, variant: Variant, text: &str) -> String {
    format!(
        "m{} n{} k{} t{}{} {}{}->{} ld {}/{}/{} batch {} alpha {alpha} beta {beta} {variant:?}{text}",
        shape.m,
        shape.n,
        shape.k,
        shape.trans_a as u8,
        shape.trans_b as u8,
        shape.ab_type.as_str(),
        if shape.tf32 { " (tf32)" } else { "" },
        shape.d_type.as_str(),
        shape.lda,
        shape.ldb,
        shape.ldd,
        shape.batch,
    )
}
