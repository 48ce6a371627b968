//! PEFT's adapter files: `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.{module path}.lora_A.weight` ([r, in]) and `...lora_B.weight` ([out, r]), and for
//! DoRA (`use_dora: true`) `...lora_magnitude_vector` ([out], no `.weight`: PEFT strips it on save).
//!
//! Every file is written atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a reader sees the old file or the new one, never half of one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

use super::attach::{Adapter, AdapterLayer};
use super::config::LoraConfig;
use crate::error::io_error;
use crate::{Context, Error, Result};

/// File name of the adapter config.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix on every key of a causal-LM adapter.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(bytes).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_dir(dir)
}

/// fsyncs a directory so that a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(io_error(dir))?;
    d.sync_all().map_err(io_error(dir))
}

struct RawTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw_tensor(name: &str, t: &Tensor) -> Result<RawTensor> {
    let flat = t
        .flatten_all()
        .and_then(|f| f.to_device(&Device::Cpu))
        .context(format!("reading {name}"))?;
    let (dtype, data): (safetensors::Dtype, Vec<u8>) = match t.dtype() {
        DType::F32 => (
            safetensors::Dtype::F32,
            flat.to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            safetensors::Dtype::BF16,
            flat.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            safetensors::Dtype::F16,
            flat.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        other => {
            return Err(Error::InvalidRequest(format!(
                "cannot save {name}: dtype {other:?} (f32, bf16 or f16 expected)"
            )))
        }
    };
    Ok(RawTensor {
        dtype,
        shape: t.dims().to_vec(),
        data,
    })
}

/// Serialises named tensors (f32 / bf16 / f16) as a safetensors file with `{"format": "pt"}`
/// metadata (which transformers requires).
pub fn serialize_safetensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let raws: Vec<(String, RawTensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), raw_tensor(n, t)?)))
        .collect::<Result<_>>()?;
    let metadata: Option<HashMap<String, String>> =
        Some([("format".to_string(), "pt".to_string())].into());
    safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), metadata)
        .map_err(|e| Error::InvalidRequest(format!("serialising safetensors: {e}")))
}

/// The PEFT key of one half of a module's adapter (`a_or_b`: "A" or "B").
pub fn peft_key(module_path: &str, a_or_b: &str) -> String {
    format!("{KEY_PREFIX}{module_path}.lora_{a_or_b}.weight")
}

/// The PEFT key of a module's DoRA magnitude.
pub fn magnitude_key(module_path: &str) -> String {
    format!("{KEY_PREFIX}{module_path}.{MAGNITUDE}")
}

const MAGNITUDE: &str = "lora_magnitude_vector";

/// The adapter's tensors under PEFT's key names (f32).
pub fn adapter_tensors(adapter: &Adapter) -> Vec<(String, Tensor)> {
    adapter
        .layers
        .iter()
        .flat_map(|l| {
            let mut tensors = vec![
                (peft_key(&l.path, "A"), l.a.as_tensor().clone()),
                (peft_key(&l.path, "B"), l.b.as_tensor().clone()),
            ];
            if let Some(m) = &l.magnitude {
                tensors.push((magnitude_key(&l.path), m.as_tensor().clone()));
            }
            tensors
        })
        .collect()
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if needed).
pub fn save_adapter(adapter: &Adapter, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let bytes = serialize_safetensors(&adapter_tensors(adapter))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), adapter.config.to_json()?.as_bytes())
}

/// Splits a PEFT key into (module path, "A" | "B" | "M"), M for DoRA's magnitude. Accepts the saved
/// form (`base_model.model.X.lora_A.weight`, `base_model.model.X.lora_magnitude_vector`) and the
/// in-memory one with an adapter name (`X.lora_A.default.weight`, `X.lora_magnitude_vector.default.weight`).
fn parse_key(key: &str) -> Option<(String, &'static str)> {
    let key = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let marker = format!(".{MAGNITUDE}");
    if let Some(pos) = key.find(&marker) {
        let rest = &key[pos + marker.len()..];
        let named = rest
            .strip_prefix('.')
            .and_then(|r| r.strip_suffix(".weight"))
            .is_some_and(|name| !name.is_empty() && !name.contains('.'));
        if rest.is_empty() || named {
            return Some((key[..pos].to_string(), "M"));
        }
        return None;
    }
    let key = key.strip_suffix(".weight")?;
    for (marker, which) in [(".lora_A", "A"), (".lora_B", "B")] {
        if let Some(pos) = key.find(marker) {
            let rest = &key[pos + marker.len()..];
            if rest.is_empty() || (rest.starts_with('.') && !rest[1..].contains('.')) {
                return Some((key[..pos].to_string(), which));
            }
        }
    }
    None
}

/// Reads a PEFT adapter directory (config + safetensors) onto `device`, A and B as f32 vars.
pub fn load_adapter(dir: &Path, device: &Device) -> Result<Adapter> {
    let config = LoraConfig::load(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.exists() {
        return Err(Error::Format {
            path: weights_path,
            reason: "missing (a PEFT adapter directory holds adapter_model.safetensors)".into(),
        });
    }
    let tensors = candle_core::safetensors::load(&weights_path, device)
        .context(format!("reading {}", weights_path.display()))?;
    adapter_from_tensors(config, tensors, &weights_path)
}

/// The tensors of one adapted module, as found in the file.
#[derive(Default)]
struct ModuleTensors {
    a: Option<Tensor>,
    b: Option<Tensor>,
    magnitude: Option<Tensor>,
}

/// Builds an adapter from PEFT-named tensors, checking pairs, ranks and (for DoRA, `use_dora` in the
/// config) the magnitude vectors: present with `use_dora`, absent without.
pub fn adapter_from_tensors(
    config: LoraConfig,
    tensors: HashMap<String, Tensor>,
    origin: &Path,
) -> Result<Adapter> {
    let mut modules: HashMap<String, ModuleTensors> = HashMap::new();
    let mut unexpected = Vec::new();
    for (key, t) in tensors {
        match parse_key(&key) {
            Some((path, which)) if which != "M" || config.use_dora => {
                let entry = modules.entry(path).or_default();
                let t = t.to_dtype(DType::F32).context(format!("{key} to f32"))?;
                match which {
                    "A" => entry.a = Some(t),
                    "B" => entry.b = Some(t),
                    _ => entry.magnitude = Some(t),
                }
            }
            Some(_) => unexpected.push(format!("{key} (a DoRA magnitude, but use_dora is false)")),
            None => unexpected.push(key),
        }
    }
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut layers = Vec::new();
    for (path, module) in modules {
        let (Some(a), Some(b)) = (module.a, module.b) else {
            missing.push(format!("{path}: lora_A and lora_B must both be present"));
            continue;
        };
        mismatched.extend(shape_problems(
            &path,
            &a,
            &b,
            module.magnitude.as_ref(),
            config.r,
        ));
        if config.use_dora && module.magnitude.is_none() {
            missing.push(magnitude_key(&path));
        }
        layers.push(AdapterLayer {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            magnitude: module
                .magnitude
                .as_ref()
                .map(Var::from_tensor)
                .transpose()?,
            path,
        });
    }
    if !unexpected.is_empty() || !missing.is_empty() || !mismatched.is_empty() {
        missing.sort();
        unexpected.sort();
        mismatched.sort();
        return Err(Error::TensorMismatch {
            path: origin.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        });
    }
    if layers.is_empty() {
        return Err(Error::Format {
            path: origin.to_path_buf(),
            reason: "the adapter holds no lora_A / lora_B tensors".into(),
        });
    }
    layers.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(Adapter { config, layers })
}

/// (key, expected, found) for each tensor of a module whose shape does not fit rank `r`: A [r, in],
/// B [out, r], magnitude [out].
fn shape_problems(
    path: &str,
    a: &Tensor,
    b: &Tensor,
    magnitude: Option<&Tensor>,
    r: usize,
) -> Vec<(String, Vec<usize>, Vec<usize>)> {
    let mut problems = Vec::new();
    let a_dims = a.dims().to_vec();
    let b_dims = b.dims().to_vec();
    if a_dims.len() != 2 || a_dims[0] != r {
        problems.push((
            peft_key(path, "A"),
            vec![r, *a_dims.last().unwrap_or(&0)],
            a_dims,
        ));
    }
    let out = *b_dims.first().unwrap_or(&0);
    if b_dims.len() != 2 || b_dims[1] != r {
        problems.push((peft_key(path, "B"), vec![out, r], b_dims));
    }
    if let Some(m) = magnitude {
        if m.dims() != [out] {
            problems.push((magnitude_key(path), vec![out], m.dims().to_vec()));
        }
    }
    problems
}

/// The adapter directory inside `path`: `path` itself if it holds `adapter_config.json`.
pub fn adapter_dir(path: &Path) -> Result<PathBuf> {
    if path.join(CONFIG_FILE).exists() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::Format {
            path: path.to_path_buf(),
            reason: format!("not an adapter directory (no {CONFIG_FILE})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_in_both_forms() {
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj".into(), "A"))
        );
        assert_eq!(
            parse_key("model.layers.1.mlp.up_proj.lora_B.default.weight"),
            Some(("model.layers.1.mlp.up_proj".into(), "B"))
        );
        assert_eq!(parse_key("model.embed_tokens.weight"), None);
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.up_proj.lora_magnitude_vector"),
            Some(("model.layers.0.mlp.up_proj".into(), "M"))
        );
        assert_eq!(
            parse_key("model.layers.0.mlp.up_proj.lora_magnitude_vector.default.weight"),
            Some(("model.layers.0.mlp.up_proj".into(), "M"))
        );
        assert_eq!(parse_key("x.lora_magnitude_vector.a.b.weight"), None);
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let config = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            init_lora_weights: super::super::config::InitLoraWeights::Bool(false),
            ..Default::default()
        };
        let layers = vec![
            ("model.layers.0.mlp.up_proj".to_string(), 6, 10),
            ("model.layers.0.self_attn.q_proj".to_string(), 6, 6),
        ];
        let adapter = Adapter::init(config, &layers, 3, &Device::Cpu).unwrap();
        save_adapter(&adapter, dir.path()).unwrap();
        let back = load_adapter(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config, adapter.config);
        for (x, y) in adapter.layers.iter().zip(&back.layers) {
            assert_eq!(x.path, y.path);
            let xa: Vec<f32> = x.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let ya: Vec<f32> = y.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(xa, ya);
            let xb: Vec<f32> = x.b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let yb: Vec<f32> = y.b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(xb, yb);
        }
    }
}
