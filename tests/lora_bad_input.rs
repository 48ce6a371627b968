//! Bad adapter files give a clear error naming the file and the problem, never a panic: a missing or
//! invalid `adapter_config.json`, a missing, truncated or empty `adapter_model.safetensors`, a lone
//! lora_A without its lora_B, a rank that disagrees with the config, a key that is not a LoRA weight.
//! (An adapter for another base model is refused in tests/lora_peft_interop.rs.)
//!
//! Every case starts from the adapter PEFT 0.21 saved (tests/fixtures/peft/adapter-peft, which loads
//! cleanly) and breaks one thing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use wick::lora::peft_io::{load_adapter, CONFIG_FILE, WEIGHTS_FILE};
use wick::Error;

const MODULE: &str = "base_model.model.model.layers.0.self_attn.q_proj";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft/adapter-peft")
}

/// A copy of the PEFT fixture adapter in a temp dir.
fn adapter_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in [CONFIG_FILE, WEIGHTS_FILE] {
        std::fs::copy(fixture().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join(WEIGHTS_FILE), &Device::Cpu).unwrap()
}

fn save_tensors(dir: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, dir.join(WEIGHTS_FILE)).unwrap();
}

/// Loads the adapter in `dir`; the error's text must name `file` (a file inside `dir`).
fn load_err(dir: &Path, file: &str) -> Error {
    let err = load_adapter(dir, &Device::Cpu).unwrap_err();
    let text = err.to_string();
    let path = dir.join(file).display().to_string();
    assert!(text.contains(&path), "error does not name {path}: {text}");
    err
}

#[test]
fn the_fixture_adapter_loads() {
    let dir = adapter_copy();
    let adapter = load_adapter(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(adapter.layers.len(), 14);
}

#[test]
fn missing_files_are_named() {
    let dir = adapter_copy();
    std::fs::remove_file(dir.path().join(WEIGHTS_FILE)).unwrap();
    let err = load_err(dir.path(), WEIGHTS_FILE);
    assert!(err.to_string().contains("missing"), "{err}");

    let dir = adapter_copy();
    std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
    let err = load_err(dir.path(), CONFIG_FILE);
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn bad_config_json() {
    let dir = adapter_copy();
    std::fs::write(dir.path().join(CONFIG_FILE), "{\"r\": 4, \"lora_alpha\": ").unwrap();
    let err = load_err(dir.path(), CONFIG_FILE);
    assert!(matches!(err, Error::Config { .. }), "{err:?}");

    let text = std::fs::read_to_string(fixture().join(CONFIG_FILE)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["r"] = serde_json::json!(0);
    std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
    let err = load_err(dir.path(), CONFIG_FILE);
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("rank) must be at least 1"),
        "{err:?}"
    );
}

#[test]
fn truncated_and_empty_weights() {
    let dir = adapter_copy();
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 37]).unwrap();
    load_err(dir.path(), WEIGHTS_FILE);
    std::fs::write(&path, b"").unwrap();
    load_err(dir.path(), WEIGHTS_FILE);

    save_tensors(dir.path(), &HashMap::new());
    let err = load_err(dir.path(), WEIGHTS_FILE);
    assert!(err.to_string().contains("no lora_A"), "{err}");
}

#[test]
fn lone_lora_a_wrong_rank_and_stray_key_are_listed() {
    let dir = adapter_copy();
    let mut tensors = fixture_tensors();
    // q_proj keeps only its A; k_proj's A gets rank 3 instead of the config's 4; a stray key appears.
    tensors.remove(&format!("{MODULE}.lora_B.weight")).unwrap();
    let k_a = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    let k = tensors[k_a].narrow(0, 0, 3).unwrap();
    tensors.insert(k_a.to_string(), k);
    let stray = "base_model.model.model.layers.0.self_attn.q_proj.weight";
    tensors.insert(stray.to_string(), tensors[k_a].clone());
    save_tensors(dir.path(), &tensors);

    let err = load_err(dir.path(), WEIGHTS_FILE);
    let Error::TensorMismatch {
        missing,
        unexpected,
        mismatched,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(unexpected, &[stray]);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].contains("self_attn.q_proj") && missing[0].contains("lora_B"),
        "{missing:?}"
    );
    assert_eq!(mismatched.len(), 1, "{mismatched:?}");
    assert_eq!(mismatched[0].0, k_a);
    assert_eq!(
        (&mismatched[0].1, &mismatched[0].2),
        (&vec![4, 32], &vec![3, 32])
    );
}
