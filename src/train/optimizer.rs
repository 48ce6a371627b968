//! AdamW with decoupled weight decay, step for step as `torch.optim.AdamW`:
//!
//! ```text
//! p   <- p * (1 - lr * weight_decay)
//! m   <- beta1 * m + (1 - beta1) * g
//! v   <- beta2 * v + (1 - beta2) * g^2
//! p   <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//!
//! Moments are f32 on the parameters' device (LoRA parameters are f32 on every device). The learning
//! rate is passed per step, so schedules live outside the optimizer.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Context, Error, Result};

/// AdamW hyper-parameters (torch's names and defaults, except weight decay, which defaults to 0 as in
/// the HF Trainer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over a fixed, named set of variables.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: usize,
}

impl AdamW {
    /// One slot per variable, moments at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())
                    .context(format!("AdamW moments of {name}"))?;
                Ok(Slot {
                    name,
                    var,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    /// Number of updates applied so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Applies one update with learning rate `lr` from `grads` (already accumulated and clipped),
    /// one gradient per variable; a variable without a gradient is skipped, as torch does.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.name) else {
                continue;
            };
            // Detached so that the moments never hold a graph (see `collect_grads`).
            let g = g.to_dtype(DType::F32)?.detach();
            let what = format!("AdamW update of {}", slot.name);
            let p = slot.var.as_tensor();
            let p = if c.weight_decay != 0.0 {
                (p * (1.0 - lr * c.weight_decay)).context(what.clone())?
            } else {
                p.clone()
            };
            slot.exp_avg =
                ((&slot.exp_avg * c.beta1)? + (&g * (1.0 - c.beta1))?).context(what.clone())?;
            slot.exp_avg_sq = ((&slot.exp_avg_sq * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)
                .context(what.clone())?;
            let denom = ((slot.exp_avg_sq.sqrt()? / bias_correction2_sqrt)? + c.eps)?;
            let update = ((&slot.exp_avg / denom)? * step_size)?;
            let new_p = (p.detach() - update).context(what.clone())?;
            slot.var.set(&new_p).context(what)?;
        }
        Ok(())
    }

    /// The moments by name (`{var}.exp_avg`, `{var}.exp_avg_sq`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("{}.exp_avg", s.name), s.exp_avg.clone()),
                    (format!("{}.exp_avg_sq", s.name), s.exp_avg_sq.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments and the step count saved by `state_tensors`.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for slot in &mut self.slots {
            for (suffix, target) in [
                ("exp_avg", &mut slot.exp_avg),
                ("exp_avg_sq", &mut slot.exp_avg_sq),
            ] {
                let key = format!("{}.{suffix}", slot.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::InvalidRequest(format!("optimizer state: `{key}` is missing"))
                })?;
                if t.dims() != slot.var.dims() {
                    return Err(Error::InvalidRequest(format!(
                        "optimizer state: `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        slot.var.dims()
                    )));
                }
                *target = t.to_device(slot.var.device())?.to_dtype(DType::F32)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Gradients of `vars` from a backward pass, by name (variables the loss does not reach are absent).
///
/// Detached: Candle leaves a variable's gradient attached to the ops that made it (a custom op's
/// backward may build it from forward activations), and a gradient that kept its graph would keep
/// the whole step's activations alive through the AdamW moments made from it, step after step.
pub fn collect_grads(vars: &[(String, Var)], store: &GradStore) -> HashMap<String, Tensor> {
    vars.iter()
        .filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.detach())))
        .collect()
}

/// Global L2 norm of all gradients (f64), and scales them by `max_norm / (norm + 1e-6)` when the norm
/// exceeds `max_norm`, as `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: Option<f64>) -> Result<f64> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut total = 0f64;
    for n in names {
        let sq = grads[n]
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        total += sq as f64;
    }
    let norm = total.sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three AdamW steps on a 2-element parameter, against the update rule computed by hand in f64.
    #[test]
    fn matches_torch_adamw_rule() {
        let init = [0.5f64, -1.25];
        let var = Var::from_tensor(&Tensor::new(&[0.5f32, -1.25], &Device::Cpu).unwrap()).unwrap();
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("p".into(), var.clone())], config).unwrap();
        let grads_seq = [[0.3f64, -0.7], [0.1, 0.2], [-0.4, 0.05]];
        let lrs = [0.01, 0.02, 0.005];
        let (mut p, mut m, mut v) = (init, [0.0; 2], [0.0; 2]);
        for (t, (g, lr)) in grads_seq.iter().zip(lrs).enumerate() {
            let gt = Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu).unwrap();
            opt.step(&[("p".to_string(), gt)].into(), lr).unwrap();
            let t = (t + 1) as i32;
            for i in 0..2 {
                p[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                p[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut grads: HashMap<String, Tensor> = [
            (
                "a".to_string(),
                Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap(),
            ),
            ("b".to_string(), Tensor::new(&[4f32], &Device::Cpu).unwrap()),
        ]
        .into();
        let norm = clip_grad_norm(&mut grads, Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let a: Vec<f32> = grads["a"].to_vec1().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5);
    }
}
