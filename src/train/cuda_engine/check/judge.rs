//! Comparing the engine with the reference: the tolerance per dtype (fixed in f32, against
//! Candle's own bf16 error in bf16) and the records it produces.

use std::collections::HashMap;

use candle_core::DType;

use super::{bf16_tolerance, EngineCase, BF16_FLOOR, BF16_RATIO};
use crate::check::max_rel_err;

pub(super) fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// How a record's tolerance is set: a fixed bound, or (bf16 engine) from Candle's bf16 values of the
/// same quantities ([`bf16_tolerance`] of their error against the same reference).
#[derive(Clone, Copy)]
pub(super) enum Judge<'a> {
    Fixed(f64),
    AgainstCandleBf16(&'a HashMap<String, Vec<f64>>),
}

impl<'a> Judge<'a> {
    /// f32: 1e-4; otherwise against `candle`, Candle's bf16 values of the same tensors.
    pub(super) fn for_dtype(dtype: DType, candle: &'a HashMap<String, Vec<f64>>) -> Self {
        match dtype {
            DType::F32 => Judge::Fixed(1e-4),
            _ => Judge::AgainstCandleBf16(candle),
        }
    }

    /// (tolerance, text for the record) for tensor `name` whose reference values are `want`.
    fn tolerance(&self, name: &str, want: &[f64]) -> (f64, String) {
        match self {
            Judge::Fixed(t) => (*t, String::new()),
            Judge::AgainstCandleBf16(candle) => {
                let c = match candle.get(name) {
                    Some(c) => max_rel_err(c, want),
                    None => f64::NAN,
                };
                let c = finite_or_zero(c);
                (bf16_tolerance(c), bf16_text(c))
            }
        }
    }
}

pub(super) fn bf16_text(candle_err: f64) -> String {
    format!(
        "; Candle bf16 vs f32 ref {candle_err:.3e}, tolerance max({BF16_RATIO} x that, {BF16_FLOOR:.0e})"
    )
}

/// Records, for each name, got vs want; `per_tensor` one record each, else the one whose error is
/// the largest share of its tolerance.
#[allow(clippy::too_many_arguments)]
pub(super) fn compare(
    out: &mut Vec<EngineCase>,
    kernel: &str,
    dtype: DType,
    pass: &str,
    model: &str,
    got: &HashMap<String, Vec<f64>>,
    want: &HashMap<String, Vec<f64>>,
    judge: Judge<'_>,
    per_tensor: bool,
) {
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    // (error / tolerance, error, tolerance, text) of the worst tensor.
    let mut worst = (f64::NEG_INFINITY, f64::INFINITY, 0f64, String::new());
    for name in names {
        let err = match got.get(name) {
            Some(g) => max_rel_err(g, &want[name]),
            None => f64::INFINITY,
        };
        let err = if err.is_nan() { f64::INFINITY } else { err };
        let (tolerance, note) = judge.tolerance(name, &want[name]);
        let what = format!("{model}: {name} [{}]{note}", want[name].len());
        if per_tensor {
            out.push(EngineCase {
                kernel: kernel.into(),
                dtype,
                pass: pass.into(),
                shape: what,
                max_rel_err: err,
                tolerance,
            });
        } else if err / tolerance > worst.0 {
            worst = (err / tolerance, err, tolerance, what);
        }
    }
    if !per_tensor {
        out.push(EngineCase {
            kernel: kernel.into(),
            dtype,
            pass: pass.into(),
            shape: format!("{} tensors, worst {}", want.len(), worst.3),
            max_rel_err: worst.1,
            tolerance: worst.2,
        });
    }
}

/// Candle's bf16 error as a tolerance's basis: no finite error (a missing tensor, a NaN) counts as
/// 0 and leaves only the floor, never an infinite tolerance.
pub(super) fn finite_or_zero(err: f64) -> f64 {
    if err.is_finite() {
        err
    } else {
        0.0
    }
}

pub(super) fn rel_err(got: f64, want: f64) -> f64 {
    let err = (got - want).abs() / want.abs().max(1e-30);
    if err.is_nan() {
        f64::INFINITY
    } else {
        err
    }
}

/// A scalar (loss, norm) against `want`; `candle_bf16`: Candle's bf16 value (bf16 engine: the
/// tolerance is [`bf16_tolerance`] of its error), else the fixed `tolerance`.
pub(super) fn scalar_case(
    kernel: &str,
    dtype: DType,
    pass: &str,
    shape: String,
    (got, want): (f64, f64),
    candle_bf16: Option<f64>,
    tolerance: f64,
) -> EngineCase {
    let (tolerance, note) = match candle_bf16 {
        Some(c) => {
            let c = finite_or_zero(rel_err(c, want));
            (bf16_tolerance(c), bf16_text(c))
        }
        None => (tolerance, String::new()),
    };
    EngineCase {
        kernel: kernel.into(),
        dtype,
        pass: pass.into(),
        shape: format!("{shape}{note}"),
        max_rel_err: rel_err(got, want),
        tolerance,
    }
}

/// The bf16 copy against the f32 masters, in bf16 ulps of each master value: a correctly rounded
/// copy is within half an ulp everywhere; a stale one (before the update) is off by ~lr = 1e-2, at
/// least 1.3 ulps of the largest parameters and far more of the others.
pub(super) fn lowp_case(
    dtype: DType,
    model: &str,
    got: &HashMap<String, Vec<f64>>,
    master: &HashMap<String, Vec<f64>>,
) -> EngineCase {
    let mut worst = (0f64, String::new());
    for (name, m) in master {
        let err = match got.get(name) {
            Some(g) if g.len() == m.len() => g
                .iter()
                .zip(m)
                .map(|(g, m)| {
                    let ulp = if *m == 0.0 {
                        f64::from(f32::MIN_POSITIVE)
                    } else {
                        2f64.powi(m.abs().log2().floor() as i32 - 7)
                    };
                    (g - m).abs() / ulp
                })
                .fold(
                    0f64,
                    |a, e| if e.is_nan() { f64::INFINITY } else { a.max(e) },
                ),
            _ => f64::INFINITY,
        };
        if err >= worst.0 {
            worst = (err, name.clone());
        }
    }
    EngineCase {
        kernel: "trn_engine_lowp_params".into(),
        dtype,
        pass: "step".into(),
        shape: format!(
            "{model}: bf16 copy vs master after the update, in bf16 ulps, {} tensors, worst {}",
            master.len(),
            worst.1
        ),
        max_rel_err: worst.0,
        tolerance: 0.5,
    }
}
