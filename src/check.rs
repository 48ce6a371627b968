//! Helpers that check the fused ops against their f64 references: seeded random inputs, the error
//! measure and the tolerance per dtype, and a finite-difference check of the backward passes.
//! Used by the unit tests (CPU, in CI) and by `wick bench gpu-check` (the same cases on CUDA).
//! A leaf module (Candle and the error type only): `ops` and `gpu` both import it, neither through
//! the other.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::{Context, Result};

/// The error measure used everywhere: `max_i |got_i - want_i| / max(max_i |want_i|, 1e-30)`, the
/// largest error relative to the largest reference value (element-wise relative error is meaningless
/// for outputs near zero, which every op here produces). NaN anywhere gives infinity.
pub fn max_rel_err(got: &[f64], want: &[f64]) -> f64 {
    max_rel_err_with_floor(got, want, 1e-30)
}

/// [`max_rel_err`] with the scale held at least `floor`: for values that come out of a subtraction
/// of O(floor) quantities (a loss of 1e-6 nats is log(1 + 1e-6), computed next to 1), whose
/// precision is absolute at that scale rather than relative to the small result.
pub fn max_rel_err_with_floor(got: &[f64], want: &[f64], floor: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(floor);
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        let err = (g - w).abs();
        if !err.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max(err);
    }
    worst / scale
}

/// Tolerance per dtype for a fused op against the f64 reference computed on the same (rounded)
/// inputs: about ten roundings of the output type, f32 near 1e-5 as the issue asks.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        _ => 1e-2,
    }
}

/// Tolerance for a pass: backward passes chain several rounded products (LoRA's dx = g W + s (g B) A),
/// so f16 gets bf16's 1e-2 there; f32 and bf16 keep one tolerance for both passes.
pub fn pass_tolerance(dtype: DType, pass: &str) -> f64 {
    match (dtype, pass) {
        (DType::F16, "bwd") => 1e-2,
        _ => tolerance(dtype),
    }
}

/// Panics with a readable message when `got` is not within `tolerance(dtype)` of `want`.
pub fn assert_close(got: &[f64], want: &[f64], dtype: DType, what: &str) {
    let err = max_rel_err(got, want);
    assert!(
        err <= tolerance(dtype),
        "{what} ({dtype:?}): max_rel_err {err:.3e} > tolerance {:.1e}",
        tolerance(dtype)
    );
}

/// Seeded uniform random values in [-scale, scale], never all zeros or ones.
pub fn random_values(len: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A seeded random tensor of the given shape and dtype on `device`.
pub fn random_tensor(
    shape: &[usize],
    dtype: DType,
    device: &Device,
    seed: u64,
    scale: f64,
) -> Result<Tensor> {
    let len = shape.iter().product();
    Tensor::from_vec(random_values(len, seed, scale), shape, device)
        .and_then(|t| t.to_dtype(dtype))
        .context("random test tensor")
}

/// All elements of a float tensor, as f64, in row-major order.
pub fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context("reading tensor back")
}

/// Checks the analytic gradients of `f` (through Candle's autograd, so through the custom ops'
/// backward) against central differences, in f64. The scalar checked is `sum(f(inputs) * w)` for a
/// seeded random `w`. Inputs must be f64; at most 64 elements per input are probed.
pub fn finite_difference_check(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    seed: u64,
) -> Result<()> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).context("fd var"))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let weights = random_tensor(out.dims(), DType::F64, out.device(), seed, 1.0)?;
    let loss = (out * &weights)?.sum_all()?;
    let grads = loss.backward().context("fd backward")?;
    let scalar = |ts: &[Tensor]| -> Result<f64> {
        let out = f(ts)?;
        Ok((out * &weights)?.sum_all()?.to_scalar::<f64>()?)
    };
    let eps = 1e-6;
    for (i, var) in vars.iter().enumerate() {
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => to_f64_vec(g)?,
            None => vec![0.0; var.elem_count()],
        };
        let base = to_f64_vec(var.as_tensor())?;
        let stride = (base.len() / 64).max(1);
        let mut worst = 0f64;
        let scale = analytic.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for j in (0..base.len()).step_by(stride) {
            let probe = |delta: f64| -> Result<f64> {
                let mut values = base.clone();
                values[j] += delta;
                let mut ts = tensors.clone();
                ts[i] = Tensor::from_vec(values, var.dims(), var.device())?;
                scalar(&ts)
            };
            let numeric = (probe(eps)? - probe(-eps)?) / (2.0 * eps);
            worst = worst.max((numeric - analytic[j]).abs() / scale);
        }
        if worst > 1e-6 {
            return Err(crate::Error::InvalidRequest(format!(
                "finite-difference check failed for input {i}: max relative error {worst:.3e}"
            )));
        }
    }
    Ok(())
}
