//! LoRA configuration with PEFT's field names, so that `adapter_config.json` reads and writes as PEFT's.
//!
//! LoRA and DoRA (`use_dora`) are supported: `peft_type` LORA, `bias` "none", no per-module rank or alpha
//! patterns, no `modules_to_save`. A config asking for any of those is refused with the field named,
//! rather than silently loaded as something else.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which modules get an adapter: PEFT's list of names (a module matches when its path equals the name
/// or ends with `.name`) or the string "all-linear" (every linear layer except the LM head).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names such as `q_proj`, or full paths such as `model.layers.0.self_attn.q_proj`.
    List(Vec<String>),
    /// A single string: "all-linear" (PEFT's other single-string form, a regex, is not supported).
    One(String),
}

impl TargetModules {
    /// PEFT's shortcut for every linear layer but the output head.
    pub const ALL_LINEAR: &'static str = "all-linear";

    /// Parses a CLI list: "all-linear" or comma-separated names ("q_proj,v_proj").
    pub fn parse(list: &str) -> Result<Self> {
        let trimmed = list.trim();
        if trimmed.eq_ignore_ascii_case(Self::ALL_LINEAR) {
            return Ok(Self::One(Self::ALL_LINEAR.to_string()));
        }
        let names: Vec<String> = trimmed
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            return Err(Error::InvalidOption {
                option: "--targets".into(),
                reason: "empty list of target modules".into(),
            });
        }
        Ok(Self::List(names))
    }

    /// Whether the module at `path` (PEFT module path) gets an adapter.
    pub fn matches(&self, path: &str) -> Result<bool> {
        match self {
            Self::One(s) if s == Self::ALL_LINEAR => Ok(!is_output_head(path)),
            Self::One(s) => Err(Error::InvalidOption {
                option: "target_modules".into(),
                reason: format!(
                    "`{s}`: a single string other than \"all-linear\" is a regex in PEFT, which wick does not support; use a list of module names"
                ),
            }),
            Self::List(names) => Ok(names.iter().any(|n| module_name_matches(path, n))),
        }
    }

    /// The names in a list (empty for "all-linear").
    pub fn names(&self) -> &[String] {
        match self {
            Self::List(names) => names,
            Self::One(_) => &[],
        }
    }
}

/// PEFT's rule: a target matches a module whose path equals it or ends with `.target`.
pub fn module_name_matches(path: &str, target: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|rest| rest.ends_with('.'))
}

fn is_output_head(path: &str) -> bool {
    path == "lm_head" || path.ends_with(".lm_head")
}

/// How to initialise A and B: PEFT's `init_lora_weights`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: A Kaiming-uniform (a = sqrt(5)), B zeros, so the adapter starts as the identity.
    /// `false`: A and B both as `nn.Linear`'s default init (a non-zero adapter; for tests).
    Bool(bool),
    /// "gaussian": A ~ N(0, (1/r)^2), B zeros.
    Named(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        Self::Bool(true)
    }
}

/// A LoRA adapter's configuration, serialised as PEFT's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Always "LORA".
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// Always "CAUSAL_LM" for adapters wick trains.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on (path or hub id), informational.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: the update is (lora_alpha / r) * B A, or lora_alpha / sqrt(r) with rsLoRA.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter branch's input while training.
    #[serde(default)]
    pub lora_dropout: f32,
    /// Which modules get an adapter.
    pub target_modules: TargetModules,
    /// Rank-stabilised LoRA: scale alpha / sqrt(r).
    #[serde(default)]
    pub use_rslora: bool,
    /// Initialisation of A and B.
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    /// Only "none" is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Must be false (LLaMA-family linears store [out, in]).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// DoRA: a trained magnitude per output row on top of the low-rank direction (`models::dora`).
    #[serde(default)]
    pub use_dora: bool,
    /// Must be empty or absent (per-module ranks are not supported).
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    /// Must be empty or absent.
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    /// Must be false (a bias on lora_B is not supported).
    #[serde(default)]
    pub lora_bias: bool,
    /// Must be null or empty (fully trained extra modules are not supported).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// PEFT writes it; true for adapters saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}

impl Default for LoraConfig {
    /// PEFT's defaults for a causal LM, with wick's default targets (every linear layer).
    fn default() -> Self {
        Self {
            peft_type: default_peft_type(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::One(TargetModules::ALL_LINEAR.into()),
            use_rslora: false,
            init_lora_weights: InitLoraWeights::Bool(true),
            bias: default_bias(),
            fan_in_fan_out: false,
            use_dora: false,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            lora_bias: false,
            modules_to_save: None,
            inference_mode: false,
        }
    }
}

impl LoraConfig {
    /// The factor on B A: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Checks that the config asks for something wick implements. `origin` names the file or option
    /// set the config came from, for the error message.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config {
            path: origin.to_path_buf(),
            reason,
        };
        if !self.peft_type.eq_ignore_ascii_case("LORA") {
            return Err(bad(format!(
                "peft_type `{}` is not supported (only LORA)",
                self.peft_type
            )));
        }
        if self.r == 0 {
            return Err(bad("r (rank) must be at least 1".into()));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(bad(format!(
                "lora_alpha must be positive, got {}",
                self.lora_alpha
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            )));
        }
        if self.bias != "none" {
            return Err(bad(format!(
                "bias `{}` is not supported (only \"none\")",
                self.bias
            )));
        }
        if self.lora_bias {
            return Err(bad("lora_bias = true is not supported".into()));
        }
        if self.fan_in_fan_out {
            return Err(bad("fan_in_fan_out = true is not supported".into()));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err(bad(
                "rank_pattern / alpha_pattern (per-module rank or alpha) are not supported".into(),
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad("modules_to_save is not supported".into()));
        }
        match &self.init_lora_weights {
            InitLoraWeights::Bool(_) => {}
            InitLoraWeights::Named(n) if n == "gaussian" => {}
            InitLoraWeights::Named(n) => {
                return Err(bad(format!(
                    "init_lora_weights `{n}` is not supported (true, false or \"gaussian\")"
                )))
            }
        }
        if let TargetModules::List(names) = &self.target_modules {
            if names.is_empty() {
                return Err(bad("target_modules is empty".into()));
            }
        }
        // A single string other than all-linear is a regex in PEFT.
        self.target_modules
            .matches("")
            .map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// Reads and validates an `adapter_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The JSON PEFT writes (the fields above, pretty-printed).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Config {
            path: "adapter_config.json".into(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matching_follows_peft() {
        assert!(module_name_matches(
            "model.layers.0.self_attn.q_proj",
            "q_proj"
        ));
        assert!(module_name_matches(
            "model.layers.0.self_attn.q_proj",
            "self_attn.q_proj"
        ));
        assert!(!module_name_matches(
            "model.layers.0.self_attn.xq_proj",
            "q_proj"
        ));
        let all = TargetModules::parse("all-linear").unwrap();
        assert!(all.matches("model.layers.3.mlp.down_proj").unwrap());
        assert!(!all.matches("lm_head").unwrap());
    }

    #[test]
    fn rslora_scale() {
        let mut c = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            ..Default::default()
        };
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 8.0);
    }

    #[test]
    fn reads_a_peft_config_accepts_dora_and_refuses_rank_zero() {
        let json = r#"{"alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "x",
            "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
            "layers_pattern": null, "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 16,
            "lora_dropout": 0.05, "megatron_config": null, "megatron_core": "megatron.core",
            "modules_to_save": null, "peft_type": "LORA", "r": 4, "rank_pattern": {}, "revision": null,
            "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM", "use_dora": false,
            "use_rslora": false}"#;
        let c: LoraConfig = serde_json::from_str(json).unwrap();
        c.validate(Path::new("a.json")).unwrap();
        assert_eq!(c.r, 4);
        assert_eq!(c.scale(), 4.0);
        let dora = LoraConfig {
            use_dora: true,
            ..c.clone()
        };
        dora.validate(Path::new("a.json")).unwrap();
        let zero = LoraConfig { r: 0, ..c };
        let err = zero.validate(Path::new("a.json")).unwrap_err().to_string();
        assert!(err.contains("rank"), "{err}");
    }
}
