//! Bad model files give a clear error naming the file and the problem, never a panic: corrupt GGUF
//! (bad magic, truncated tensor data, unknown tensor type, string length beyond the file), safetensors
//! with a wrong shape or a missing tensor, config.json missing a field, unknown architecture.

mod formats_support;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use formats_support::*;
use wick::formats::validate::check_tensors;
use wick::formats::{open_model, LoadOptions};
use wick::Error;

fn meta() -> Vec<(&'static str, Meta)> {
    vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.attention.head_count", Meta::U32(2)),
    ]
}

fn valid_gguf() -> Vec<u8> {
    let raw = vec![
        RawTensor::quantize(
            "blk.0.attn_q.weight",
            &seeded_tensor(1, &[8, 64]),
            GgmlDType::Q4_1,
        ),
        RawTensor::quantize(
            "output_norm.weight",
            &seeded_tensor(2, &[64]),
            GgmlDType::F32,
        ),
    ];
    gguf_bytes(&meta(), &raw)
}

/// Writes `bytes` to a temp file and opens it as a GGUF; returns the error text, which must name the file.
fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = wick::formats::gguf::GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("model.gguf"),
        "error does not name the file: {text}"
    );
    text
}

/// Offset of the first tensor entry's type field: found by searching for the tensor name.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn the_valid_file_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, valid_gguf()).unwrap();
    assert_eq!(
        wick::formats::gguf::GgufFile::open(&path)
            .unwrap()
            .header()
            .tensors
            .len(),
        2
    );
}

#[test]
fn gguf_bad_magic() {
    let mut bytes = valid_gguf();
    bytes[..4].copy_from_slice(b"GGML");
    let err = open_err(&bytes);
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn gguf_unsupported_version() {
    let mut bytes = valid_gguf();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(open_err(&bytes).contains("unsupported GGUF version 1"));
}

#[test]
fn gguf_truncated_tensor_data() {
    let bytes = valid_gguf();
    // Cut into the last tensor's data (output_norm: 256 bytes, the last in the file).
    let err = open_err(&bytes[..bytes.len() - 100]);
    assert!(
        err.contains("truncated") && err.contains("output_norm.weight"),
        "{err}"
    );
    // Cut inside the header.
    let err = open_err(&bytes[..40]);
    assert!(err.contains("truncated header"), "{err}");
}

#[test]
fn gguf_unknown_tensor_type() {
    let mut bytes = valid_gguf();
    // Entry layout after the name: n_dims u32, dims u64 x n, type u32, offset u64.
    let name = b"blk.0.attn_q.weight";
    let at = find(&bytes, name) + name.len() + 4 + 2 * 8;
    assert_eq!(
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
        3,
        "Q4_1 type id"
    );
    bytes[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    let err = open_err(&bytes);
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("GGML type 77"),
        "{err}"
    );
}

#[test]
fn gguf_string_length_beyond_file() {
    let mut bytes = valid_gguf();
    // The first metadata key's length prefix sits right after the 24-byte header.
    bytes[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = open_err(&bytes);
    assert!(
        err.contains("metadata key") && err.contains("1099511627776"),
        "{err}"
    );
    // A huge tensor count is rejected before anything is allocated.
    let mut bytes = valid_gguf();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_err(&bytes).contains("tensor count"));
}

#[test]
fn gguf_shape_larger_than_file() {
    let mut bytes = valid_gguf();
    let name = b"output_norm.weight";
    let at = find(&bytes, name) + name.len() + 4;
    bytes[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let err = open_err(&bytes);
    assert!(err.contains("output_norm.weight"), "{err}");
}

#[test]
fn gguf_not_a_model_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bert.gguf");
    let meta = vec![("general.architecture", Meta::Str("bert".into()))];
    std::fs::write(&path, gguf_bytes(&meta, &[])).unwrap();
    let err = open_model(&path, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("bert") && err.to_string().contains("bert.gguf"));
}

/// A tiny HF directory: config.json, tokenizer.json, model.safetensors with `tensors`.
fn hf_dir(tensors: &[(String, Vec<usize>)], config: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_json(&dir.path().join("config.json"), &config);
    let tokenizer = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "<s>": 1, "</s>": 2}, "unk_token": "a"}
    });
    write_json(&dir.path().join("tokenizer.json"), &tokenizer);
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .enumerate()
        .map(|(i, (n, d))| {
            (
                n.clone(),
                seeded_tensor(i as u64, d).to_dtype(DType::BF16).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn safetensors_wrong_shape_and_missing_tensor() {
    let mut tensors = TINY.hf_tensors(false);
    let expected = tensors.clone();
    tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    for (name, dims) in tensors.iter_mut() {
        if name == "model.layers.0.self_attn.k_proj.weight" {
            *dims = vec![48, 64];
        }
    }
    tensors.push(("model.layers.0.extra.weight".into(), vec![4]));
    let dir = hf_dir(&tensors, TINY.config_json("llama"));
    let files = open_model(dir.path(), &LoadOptions::default()).unwrap();
    let err = check_tensors(files.weights.as_ref(), &expected).unwrap_err();
    let Error::TensorMismatch {
        missing,
        unexpected,
        mismatched,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(missing, &["model.layers.1.mlp.up_proj.weight"]);
    assert_eq!(unexpected, &["model.layers.0.extra.weight"]);
    assert_eq!(
        mismatched,
        &[(
            "model.layers.0.self_attn.k_proj.weight".to_string(),
            vec![32, 64],
            vec![48, 64]
        )]
    );
    let text = err.to_string();
    assert!(
        text.contains(&dir.path().display().to_string())
            && text.contains("expected shape [32, 64], found [48, 64]"),
        "{text}"
    );
}

#[test]
fn safetensors_truncated() {
    let dir = hf_dir(&TINY.hf_tensors(false), TINY.config_json("llama"));
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 10]).unwrap();
    let err = open_model(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("invalid safetensors"),
        "{err}"
    );
}

#[test]
fn config_missing_field() {
    let mut config = TINY.config_json("llama");
    config.as_object_mut().unwrap().remove("hidden_size");
    let dir = hf_dir(&TINY.hf_tensors(false), config);
    let err = open_model(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("config.json") && text.contains("missing required field `hidden_size`"),
        "{text}"
    );
}

#[test]
fn config_unknown_architecture() {
    let dir = hf_dir(&TINY.hf_tensors(false), TINY.config_json("gpt_neox"));
    let err = open_model(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("gpt_neox")
            && text.contains("config.json")
            && text.contains("llama, mistral, qwen2"),
        "{text}"
    );
}

#[test]
fn missing_files_are_named() {
    let dir = hf_dir(&TINY.hf_tensors(false), TINY.config_json("llama"));
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = open_model(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    write_json(&dir.path().join("tokenizer.json"), &serde_json::json!({}));
    let err = open_model(&dir.path().join("nothing.gguf"), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing.gguf"), "{err}");
    let device = Device::Cpu;
    let err = wick::formats::hf::SafetensorsSource::open(
        dir.path(),
        LoadOptions {
            device,
            dtype: None,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn config_sizes_that_would_size_allocations_are_refused() {
    for (field, value, want) in [
        (
            "num_hidden_layers",
            1u64 << 40,
            "num_hidden_layers 1099511627776 is larger",
        ),
        (
            "max_position_embeddings",
            1 << 40,
            "max_position_embeddings 1099511627776 is larger",
        ),
        ("max_position_embeddings", 1 << 24, "MiB of RoPE tables"),
        (
            "head_dim",
            u64::MAX,
            "head_dim 18446744073709551615 is larger",
        ),
    ] {
        let mut config = TINY.config_json("llama");
        config[field] = serde_json::json!(value);
        let dir = hf_dir(&TINY.hf_tensors(false), config);
        let err = open_model(dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("config.json") && text.contains(want),
            "{field}: {text}"
        );
    }
}
