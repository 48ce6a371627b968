//! DoRA (weight-decomposed low-rank adaptation, Liu et al. 2024) as PEFT computes it
//! (`peft/tuners/lora/dora.py`, `DoraLinearLayer` and `DoraLinearVariant`).
//!
//! The adapted weight is `W' = m ⊙ (W + s B A) / n`, per output row, with W: [out, in] frozen,
//! A: [r, in], B: [out, r], s the LoRA scale, m: [out] the trained magnitude and
//! `n = ||W + s B A||` the L2 norm of each row of the direction (over `in`). As PEFT does (section 4.3
//! of the paper), n is a constant for the gradient: it is computed from detached A and B, so the
//! gradients flow through m and through the `s B A` term of the numerator only.
//!
//! With f = m / n (broadcast over the last dimension) the layer output is
//!
//! ```text
//! y = x W^T + bias + (f - 1) ⊙ (x_d W^T) + f ⊙ s (x_d A^T) B^T
//! ```
//!
//! where x_d is x, or dropout(x) while training with LoRA dropout. Without dropout `x_d W^T` is the
//! base output less its bias, reused as PEFT reuses `base_result`; with dropout it is recomputed
//! from the dropped input (PEFT passes `base_result=None` then), so the frozen `x W^T` of the first
//! term keeps the undropped input. Without dropout this is exactly `f ⊙ (x W^T + s x A^T B^T) + bias`,
//! the merged layer `x W'^T + bias`.
//!
//! The magnitude starts as n itself (PEFT's `update_layer`), so a fresh DoRA adapter is the identity
//! exactly as a fresh LoRA adapter is.

use candle_core::Tensor;

use super::linear::frozen_forward as base_forward;
use super::linear::{BaseWeight, DoraWeights, Linear, LoraWeights};
use crate::ops::lora_linear::lora_linear;
use crate::{Context, Result};

/// `||W + s B A||` of each output row, [out] in A's dtype (f32 for adapters), with no gradient.
/// weight: [out, in], a: [r, in], b: [out, r].
pub fn weight_norm(weight: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = a.dtype();
    let ba = b
        .detach()
        .to_dtype(dtype)
        .and_then(|b| b.matmul(&a.detach()))
        .context("DoRA: B A")?;
    let direction =
        (weight.detach().to_dtype(dtype)? + (ba * scale)?).context("DoRA: W + s B A")?;
    direction
        .sqr()
        .and_then(|d| d.sum(1))
        .and_then(|d| d.sqrt())
        .context("DoRA: row norms")
}

/// The norm of `layer`'s direction under `lora` (the layer's base weight dense, dequantized if needed).
pub fn layer_weight_norm(layer: &Linear, lora: &LoraWeights) -> Result<Tensor> {
    weight_norm(&layer.dense_weight()?, &lora.a, &lora.b, lora.scale)
}

/// The DoRA layer: x: [..., in] -> [..., out], with the formula of the module comment.
pub fn forward(
    layer: &Linear,
    lora: &LoraWeights,
    dora: &DoraWeights,
    x: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let norm = match &dora.weight_norm {
        Some(norm) => norm.clone(),
        None => layer_weight_norm(layer, lora)?,
    };
    // f = m / n: [out] in the adapter's dtype; gradients reach m only.
    let dtype = lora.a.dtype();
    let factor = dora
        .magnitude
        .to_dtype(dtype)
        .and_then(|m| m / norm)
        .context("DoRA: m / n")?;
    let y = base_forward(layer, x)?;
    let dropout = train && lora.dropout > 0.0;
    let (x_d, base_term) = if dropout {
        let x_d = super::linear::lora_input(lora, x, train)?;
        let base_term = frozen_product(layer, &x_d)?;
        (x_d, base_term)
    } else {
        let base_term = match layer.bias() {
            Some(bias) => y
                .broadcast_sub(&bias.to_dtype(y.dtype())?)
                .context("DoRA: base less bias")?,
            None => y.clone(),
        };
        (x.clone(), base_term)
    };
    let x_d = x_d.to_dtype(dtype).context("lora input dtype")?;
    let low = lora_linear(&x_d, None, None, &lora.a, &lora.b, lora.scale)?;
    let base_term = base_term
        .to_dtype(dtype)
        .context("DoRA: base to the adapter dtype")?;
    let extra = ((base_term.broadcast_mul(&(&factor - 1.0)?))? + low.broadcast_mul(&factor)?)
        .context("DoRA: (f - 1) x W^T + f s x A^T B^T")?;
    let extra = extra.to_dtype(y.dtype())?;
    (y + extra).context("DoRA: adding the update")
}

/// `x W^T` without the bias, through the frozen path when x is part of a training graph.
fn frozen_product(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    match layer.weight() {
        BaseWeight::Dense(w) if x.track_op() && w.dtype() == x.dtype() => {
            crate::ops::frozen::frozen_linear(x, w, None)
        }
        _ => {
            let y = layer.base_forward(x)?;
            match layer.bias() {
                Some(bias) => y
                    .broadcast_sub(&bias.to_dtype(y.dtype())?)
                    .context("DoRA: base less bias"),
                None => Ok(y),
            }
        }
    }
}

/// f64 reference of the inference output (no dropout): x [t, in], w [out, in], bias [out] (or
/// empty), a [r, in], b [out, r], m [out] -> y [t, out] = (m / ||W + s B A||) ⊙ (x (W + s B A)^T) + bias.
#[allow(clippy::too_many_arguments)]
pub fn dora_linear_reference(
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    a: &[f64],
    b: &[f64],
    m: &[f64],
    scale: f64,
    in_features: usize,
    rank: usize,
) -> Vec<f64> {
    let out_features = m.len();
    let mut direction = vec![0.0; out_features * in_features];
    for o in 0..out_features {
        for i in 0..in_features {
            let ba: f64 = (0..rank)
                .map(|k| b[o * rank + k] * a[k * in_features + i])
                .sum();
            direction[o * in_features + i] = w[o * in_features + i] + scale * ba;
        }
    }
    let factors: Vec<f64> = direction
        .chunks(in_features)
        .zip(m)
        .map(|(row, m)| m / row.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let mut y = Vec::with_capacity(x.len() / in_features * out_features);
    for xr in x.chunks(in_features) {
        for o in 0..out_features {
            let row = &direction[o * in_features..(o + 1) * in_features];
            let dot: f64 = row.iter().zip(xr).map(|(p, q)| p * q).sum();
            y.push(factors[o] * dot + bias.get(o).copied().unwrap_or(0.0));
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Weight;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut rand::rngs::StdRng, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect()
    }

    fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    /// The layer against the f64 reference, with and without a bias, computing the norm per call
    /// and from a precomputed one.
    #[test]
    fn forward_matches_the_f64_reference() {
        let (t, i, o, r, scale) = (5, 12, 9, 3, 1.7);
        for (seed, with_bias) in [(1u64, false), (2, true)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let x = random(&mut rng, t * i, 1.0);
            let w = random(&mut rng, o * i, 0.5);
            let bias = if with_bias {
                random(&mut rng, o, 0.3)
            } else {
                Vec::new()
            };
            let a = random(&mut rng, r * i, 0.4);
            let b = random(&mut rng, o * r, 0.4);
            let m: Vec<f64> = (0..o).map(|_| rng.random_range(0.5..2.0)).collect();
            let expected = dora_linear_reference(&x, &w, &bias, &a, &b, &m, scale, i, r);
            let bias_t = with_bias.then(|| tensor(&bias, &[o]));
            let mut layer = Linear::new(Weight::Dense(tensor(&w, &[o, i])), bias_t).unwrap();
            let lora = LoraWeights {
                a: tensor(&a, &[r, i]),
                b: tensor(&b, &[o, r]),
                scale,
                dropout: 0.0,
                dropout_masks: None,
                dora: None,
            };
            let norm = layer_weight_norm(&layer, &lora).unwrap();
            for precomputed in [None, Some(norm)] {
                let dora = DoraWeights {
                    magnitude: tensor(&m, &[o]),
                    weight_norm: precomputed,
                };
                layer.lora = Some(LoraWeights {
                    dora: Some(dora),
                    ..lora.clone()
                });
                let got: Vec<f32> = layer
                    .forward(&tensor(&x, &[t, i]))
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for (g, e) in got.iter().zip(&expected) {
                    assert!((f64::from(*g) - e).abs() < 1e-5, "{g} vs {e}");
                }
            }
        }
    }

    /// A fresh adapter (m = n) with B = 0 leaves the layer unchanged.
    #[test]
    fn fresh_adapter_is_the_identity() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (i, o, r) = (8, 6, 2);
        let w = tensor(&random(&mut rng, o * i, 0.5), &[o, i]);
        let x = tensor(&random(&mut rng, 4 * i, 1.0), &[4, i]);
        let mut layer = Linear::new(Weight::Dense(w), None).unwrap();
        let plain: Vec<f32> = layer
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let lora = LoraWeights {
            a: tensor(&random(&mut rng, r * i, 0.4), &[r, i]),
            b: Tensor::zeros((o, r), DType::F32, &Device::Cpu).unwrap(),
            scale: 2.0,
            dropout: 0.0,
            dropout_masks: None,
            dora: None,
        };
        let magnitude = Var::from_tensor(&layer_weight_norm(&layer, &lora).unwrap()).unwrap();
        layer.lora = Some(LoraWeights {
            dora: Some(DoraWeights {
                magnitude: magnitude.as_tensor().clone(),
                weight_norm: None,
            }),
            ..lora
        });
        let adapted: Vec<f32> = layer
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (p, q) in plain.iter().zip(&adapted) {
            assert!((p - q).abs() < 1e-6);
        }
    }
}
