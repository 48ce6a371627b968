//! An adapter in memory and attaching it to a model's `Linear` layers by PEFT module path.
//!
//! Models hand out their projections as `(path, &mut Linear)` (`Llama::linear_layers_mut`); this module
//! never needs to know the model. A and B are Candle `Var`s in f32 whatever the base dtype, so the same
//! adapter trains (the optimizer updates the vars in place and every layer sees the new values) and
//! serves inference. A DoRA adapter (`use_dora`) also holds one magnitude vector per module, started
//! as PEFT starts it (the row norms of `W + s B A`, see `models::dora`).

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor, Var};

use super::config::{LoraConfig, TargetModules};
use super::init::init_lora_pair;
use crate::models::dora::layer_weight_norm;
use crate::models::linear::{DoraWeights, Linear, LoraWeights};
use crate::{Context, Error, Result};

/// One adapted module: a: [r, in], b: [out, r] (f32).
#[derive(Debug, Clone)]
pub struct AdapterLayer {
    /// PEFT module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    /// lora_A: [r, in]
    pub a: Var,
    /// lora_B: [out, r]
    pub b: Var,
    /// DoRA's lora_magnitude_vector: [out] (DoRA adapters only).
    pub magnitude: Option<Var>,
}

/// A LoRA adapter: its config and one (A, B) pair per adapted module, sorted by path.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The config it was made or loaded with.
    pub config: LoraConfig,
    /// The adapted modules, sorted by path.
    pub layers: Vec<AdapterLayer>,
}

/// Picks the layers a config targets, checking that every named target matches something.
/// `layers`: (path, in_features, out_features) of every linear layer of the model.
pub fn select_targets(
    target_modules: &TargetModules,
    layers: &[(String, usize, usize)],
) -> Result<Vec<(String, usize, usize)>> {
    let mut chosen = Vec::new();
    for (path, i, o) in layers {
        if target_modules.matches(path)? {
            chosen.push((path.clone(), *i, *o));
        }
    }
    let unmatched: Vec<&String> = target_modules
        .names()
        .iter()
        .filter(|n| {
            !layers
                .iter()
                .any(|(p, _, _)| super::config::module_name_matches(p, n))
        })
        .collect();
    if !unmatched.is_empty() || chosen.is_empty() {
        let available: BTreeSet<&str> = layers
            .iter()
            .map(|(p, _, _)| p.rsplit('.').next().unwrap_or(p))
            .collect();
        let what = if unmatched.is_empty() {
            "no module matches the target modules".to_string()
        } else {
            format!(
                "unknown target module(s) {}",
                unmatched
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(Error::InvalidOption {
            option: "target_modules".into(),
            reason: format!(
                "{what}; this model's linear layers are: {}, or \"all-linear\"",
                available.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    Ok(chosen)
}

impl Adapter {
    /// A freshly initialised adapter (PEFT's init, seeded) for the targeted layers among `layers`
    /// (path, in_features, out_features).
    pub fn init(
        config: LoraConfig,
        layers: &[(String, usize, usize)],
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate(std::path::Path::new("LoRA options"))?;
        let mut config = config;
        let targets = select_targets(&config.target_modules, layers)?;
        if matches!(config.target_modules, TargetModules::One(_)) {
            // As PEFT does after injecting: "all-linear" is saved as the module names it resolved to.
            let names: BTreeSet<String> = targets
                .iter()
                .map(|(p, _, _)| p.rsplit('.').next().unwrap_or(p).to_string())
                .collect();
            config.target_modules = TargetModules::List(names.into_iter().collect());
        }
        let mut out = Vec::new();
        for (path, in_features, out_features) in targets {
            let (a, b) = init_lora_pair(&config, &path, in_features, out_features, seed, device)?;
            out.push(AdapterLayer {
                a: Var::from_tensor(&a).context(format!("lora_A var of {path}"))?,
                b: Var::from_tensor(&b).context(format!("lora_B var of {path}"))?,
                magnitude: None,
                path,
            });
        }
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok(Self {
            config,
            layers: out,
        })
    }

    /// Starts DoRA's magnitudes as PEFT does: `m = ||W + s B A||` per output row of each adapted
    /// module, W the base weight in `model_layers` (dense or dequantized).
    pub fn init_magnitudes(&mut self, model_layers: &[(String, &Linear)]) -> Result<()> {
        let scale = self.config.scale();
        for layer in &mut self.layers {
            let Some((_, linear)) = model_layers.iter().find(|(p, _)| *p == layer.path) else {
                return Err(Error::InvalidRequest(format!(
                    "DoRA: {} is not a layer of the model",
                    layer.path
                )));
            };
            let lora = LoraWeights {
                a: layer.a.as_tensor().clone(),
                b: layer.b.as_tensor().clone(),
                scale,
                dropout: 0.0,
                dropout_masks: None,
                dora: None,
            };
            let norm = layer_weight_norm(linear, &lora)?
                .to_device(layer.a.device())
                .context("DoRA magnitude")?;
            layer.magnitude = Some(Var::from_tensor(&norm)?);
        }
        Ok(())
    }

    /// Every trainable tensor, in path order (A, B, then DoRA's magnitude per layer).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .flat_map(|l| {
                let mut vars = vec![
                    (format!("{}.lora_A", l.path), l.a.clone()),
                    (format!("{}.lora_B", l.path), l.b.clone()),
                ];
                if let Some(m) = &l.magnitude {
                    vars.push((format!("{}.lora_magnitude_vector", l.path), m.clone()));
                }
                vars
            })
            .collect()
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.a.elem_count()
                    + l.b.elem_count()
                    + l.magnitude.as_ref().map_or(0, |m| m.elem_count())
            })
            .sum()
    }

    /// Moves the adapter to `device` as f32 (fresh vars).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let a = l.a.as_tensor().to_device(device)?.to_dtype(DType::F32)?;
            let b = l.b.as_tensor().to_device(device)?.to_dtype(DType::F32)?;
            let magnitude = match &l.magnitude {
                Some(m) => Some(Var::from_tensor(
                    &m.as_tensor().to_device(device)?.to_dtype(DType::F32)?,
                )?),
                None => None,
            };
            layers.push(AdapterLayer {
                path: l.path.clone(),
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
                magnitude,
            });
        }
        Ok(Self {
            config: self.config.clone(),
            layers,
        })
    }

    /// `apply` for inference: the adapter's values will not change while attached, so DoRA's row
    /// norms are computed once here instead of at every forward pass.
    pub fn apply_for_inference(
        &self,
        model_layers: Vec<(String, &mut Linear)>,
        origin: &std::path::Path,
    ) -> Result<()> {
        let mut model_layers = model_layers;
        self.apply(
            model_layers
                .iter_mut()
                .map(|(p, l)| (p.clone(), &mut **l))
                .collect(),
            origin,
        )?;
        for (_, linear) in model_layers {
            let norm = match &linear.lora {
                Some(lora) if lora.dora.is_some() => layer_weight_norm(linear, lora)?,
                _ => continue,
            };
            if let Some(dora) = linear.lora.as_mut().and_then(|l| l.dora.as_mut()) {
                dora.weight_norm = Some(norm);
            }
        }
        Ok(())
    }

    /// Sets every model layer's adapter slot: this adapter's pair where it has one, nothing elsewhere.
    /// Checks that every adapted module exists in the model with matching shapes (an adapter made for
    /// another base fails here, with the mismatches listed). `origin` names the adapter for errors.
    /// DoRA's norms are recomputed at every forward pass (right while training).
    pub fn apply(
        &self,
        model_layers: Vec<(String, &mut Linear)>,
        origin: &std::path::Path,
    ) -> Result<()> {
        let shapes: Vec<(String, usize, usize)> = model_layers
            .iter()
            .map(|(p, l)| (p.clone(), l.in_features(), l.out_features()))
            .collect();
        let matched = self.match_layers(&shapes, origin)?;
        let scale = self.config.scale();
        for ((_, linear), idx) in model_layers.into_iter().zip(matched) {
            linear.lora = idx.map(|i| {
                let l = &self.layers[i];
                LoraWeights {
                    a: l.a.as_tensor().clone(),
                    b: l.b.as_tensor().clone(),
                    scale,
                    dropout: self.config.lora_dropout,
                    dropout_masks: None,
                    dora: l.magnitude.as_ref().map(|m| DoraWeights {
                        magnitude: m.as_tensor().clone(),
                        weight_norm: None,
                    }),
                }
            });
        }
        Ok(())
    }

    /// For each model layer (path, in_features, out_features), the index of this adapter's pair for
    /// it, if any. Errors list every adapted module absent from the model and every shape mismatch.
    pub fn match_layers(
        &self,
        model_layers: &[(String, usize, usize)],
        origin: &std::path::Path,
    ) -> Result<Vec<Option<usize>>> {
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        let mut found = vec![false; self.layers.len()];
        let mut matched = Vec::with_capacity(model_layers.len());
        for (path, in_features, out_features) in model_layers {
            let (in_features, out_features) = (*in_features, *out_features);
            let idx = self
                .layers
                .binary_search_by(|l| l.path.as_str().cmp(path.as_str()))
                .ok();
            if let Some(i) = idx {
                found[i] = true;
                let l = &self.layers[i];
                let (r, a_in) = l.a.as_tensor().dims2()?;
                let (b_out, b_r) = l.b.as_tensor().dims2()?;
                if a_in != in_features || b_r != r {
                    mismatched.push((
                        format!("{path}.lora_A.weight"),
                        vec![r, in_features],
                        vec![r, a_in],
                    ));
                }
                if b_out != out_features || b_r != r {
                    mismatched.push((
                        format!("{path}.lora_B.weight"),
                        vec![out_features, r],
                        vec![b_out, b_r],
                    ));
                }
                if let Some(m) = &l.magnitude {
                    if m.dims() != [out_features] {
                        mismatched.push((
                            format!("{path}.lora_magnitude_vector"),
                            vec![out_features],
                            m.dims().to_vec(),
                        ));
                    }
                }
            }
            matched.push(idx);
        }
        for (i, f) in found.iter().enumerate() {
            if !f {
                missing.push(format!(
                    "{} (adapted in the adapter, absent from the model)",
                    self.layers[i].path
                ));
            }
        }
        if !missing.is_empty() || !mismatched.is_empty() {
            return Err(Error::TensorMismatch {
                path: origin.to_path_buf(),
                missing,
                unexpected: Vec::new(),
                mismatched,
            });
        }
        Ok(matched)
    }

    /// The adapter's low-rank update of one module, `scale * B A`: [out, in] f32.
    pub fn delta_weight(&self, layer: &AdapterLayer) -> Result<Tensor> {
        let ba = layer
            .b
            .as_tensor()
            .matmul(layer.a.as_tensor())
            .context(format!("B A of {}", layer.path))?;
        (ba * self.config.scale()).context("scaling B A")
    }
}

/// Initialises an adapter for `config` over the model's layers and attaches it (training entry point).
pub fn attach(
    config: LoraConfig,
    model_layers: Vec<(String, &mut Linear)>,
    seed: u64,
    device: &Device,
) -> Result<Adapter> {
    let shapes: Vec<(String, usize, usize)> = model_layers
        .iter()
        .map(|(p, l)| (p.clone(), l.in_features(), l.out_features()))
        .collect();
    let mut adapter = Adapter::init(config, &shapes, seed, device)?;
    if adapter.config.use_dora {
        let layers: Vec<(String, &Linear)> = model_layers
            .iter()
            .map(|(p, l)| (p.clone(), &**l))
            .collect();
        adapter.init_magnitudes(&layers)?;
    }
    adapter.apply(model_layers, std::path::Path::new("new adapter"))?;
    Ok(adapter)
}

/// Removes any adapter from every layer.
pub fn detach(model_layers: Vec<(String, &mut Linear)>) {
    for (_, linear) in model_layers {
        linear.lora = None;
    }
}
