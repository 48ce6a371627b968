//! The GGUF fuzz target's seeds and regressions (fuzz/fuzz_targets/gguf.rs, bench/results/fuzz-gguf.md).
//!
//! The seeds (fuzz/seeds, written by scripts/make_fuzz_gguf_seeds.py with llama.cpp's `gguf` writer)
//! must be whole models, so mutations reach the config, tokenizer, validation and loading. Every input
//! the fuzzer found that crashed, aborted or ran out of memory is rebuilt here from a seed and must
//! now give an error naming the file and the problem.

mod formats_support;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use formats_support::*;
use wick::formats::gguf::{GgufFile, GgufSource};
use wick::formats::validate::check_tensors;
use wick::formats::{open_model, LoadOptions, WeightSource};
use wick::generate::{GenerateOptions, Prompt, TextModel};
use wick::models::llama::expected_tensors;
use wick::Error;

fn seeds() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "seeds in {}", dir.display());
    paths
}

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(name),
    )
    .unwrap()
}

/// Writes `bytes` as `name` in a temp dir and runs what `TextModel::open` runs; returns the error,
/// whose text must name the file.
fn open_err(name: &str, bytes: &[u8]) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = TextModel::open(&path, &LoadOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "error does not name the file: {text}"
    );
    err
}

#[test]
fn seeds_are_whole_models() {
    for path in seeds() {
        let model = TextModel::open(&path, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let options = GenerateOptions {
            max_tokens: 3,
            ..Default::default()
        };
        let out = model
            .generate(&Prompt::Raw("Hello world"), &options, |_| {})
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!out.token_ids.is_empty(), "{}", path.display());
        assert!(
            model.chat_template.is_some(),
            "{}: chat template",
            path.display()
        );
    }
}

/// GGUF-side twins of the HF bad-input cases: a metadata key the config needs, and a tensor whose
/// shape disagrees with the metadata.
#[test]
fn gguf_missing_metadata_and_wrong_shape() {
    let mut bytes = seed("llama_spm_f16.gguf");
    let key = b"llama.embedding_length";
    let at = find(&bytes, key);
    bytes[at..at + 5].copy_from_slice(b"xxxxx");
    let err = open_err("no-hidden.gguf", &bytes);
    assert!(err.to_string().contains("llama.embedding_length"), "{err}");

    // 8 -> 16 ffn rows declared in the metadata: every ffn tensor now has the wrong shape.
    let mut bytes = seed("llama_spm_f16.gguf");
    let key = b"llama.feed_forward_length";
    let at = find(&bytes, key) + key.len() + 4;
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 8);
    bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ffn.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let files = open_model(&path, &LoadOptions::default()).unwrap();
    let err = check_tensors(files.weights.as_ref(), &expected_tensors(&files.config)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ffn.gguf")
            && text.contains("model.layers.0.mlp.up_proj.weight")
            && text.contains("expected shape [16, 8], found [8, 8]"),
        "{text}"
    );
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// The reader on bytes in memory agrees with the one on a file.
#[test]
fn from_bytes_matches_open() {
    for path in seeds() {
        let a = GgufFile::open(&path).unwrap();
        let b = GgufFile::from_bytes(&path, std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(a.header().tensors.len(), b.header().tensors.len());
        assert_eq!(a.header().data_offset, b.header().data_offset);
    }
}

/// The seed `name` re-written by Candle's GGUF writer with metadata `key` set to `value`.
fn with_meta(name: &str, key: &str, value: Value) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(name);
    let mut reader = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut metadata = content.metadata.clone();
    metadata.insert(key.to_string(), value);
    let tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|n| {
            let t = content.tensor(&mut reader, n, &Device::Cpu).unwrap();
            (n.clone(), t)
        })
        .collect();
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta, &tensors).unwrap();
    out.into_inner()
}

/// Found by the fuzzer (first run): a llama file whose `attn_q` has 0 rows divided by zero in the
/// Q/K un-permutation.
#[test]
fn zero_row_q_projection_is_an_error() {
    let raw = vec![RawTensor {
        name: "blk.0.attn_q.weight".into(),
        type_id: 0,
        dims: vec![0, 8],
        bytes: Vec::new(),
    }];
    let meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.attention.head_count", Meta::U32(2)),
    ];
    let file =
        std::sync::Arc::new(GgufFile::from_bytes("zero.gguf", gguf_bytes(&meta, &raw)).unwrap());
    let source = GgufSource::from_file(file, LoadOptions::default()).unwrap();
    let err = source
        .get("model.layers.0.self_attn.q_proj.weight")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("zero.gguf") && err.contains("blk.0.attn_q.weight") && err.contains("0 rows"),
        "{err}"
    );
}

/// Sizes in the metadata that would have sized allocations or loops before anything checked them
/// (found while fuzzing: a `context_length` of 2^40 aborted in the RoPE tables, a `block_count` of
/// 2^40 ran `expected_tensors` out of memory, a huge `key_length` overflowed `heads * head_dim`).
#[test]
fn huge_sizes_in_metadata_are_refused_before_allocating() {
    let cases = [
        (
            "llama.context_length",
            1u64 << 40,
            "max_position_embeddings 1099511627776 is larger",
        ),
        (
            "llama.block_count",
            1 << 40,
            "block_count` is 1099511627776 but the file holds only",
        ),
        (
            "llama.attention.key_length",
            u64::MAX / 2,
            "head_dim 9223372036854775807 is larger",
        ),
        (
            "llama.embedding_length",
            1 << 30,
            "hidden_size 1073741824 is larger",
        ),
    ];
    for (key, value, want) in cases {
        let bytes = with_meta("llama_spm_f16.gguf", key, Value::U64(value));
        let err = open_err("huge.gguf", &bytes).to_string();
        assert!(err.contains(want), "{key} = {value}: {err}");
    }
    // 2^24 positions are allowed, but not at head_dim 16 (2 GiB of RoPE tables).
    let bytes = with_meta(
        "llama_gpt2_q4_0.gguf",
        "llama.context_length",
        Value::U32(1 << 24),
    );
    let err = open_err("long.gguf", &bytes).to_string();
    assert!(err.contains("needs 2048 MiB of RoPE tables"), "{err}");
    // A 1M-token context is accepted (Qwen2.5-1M's, at head_dim 128, takes 0.96 GiB of tables).
    let bytes = with_meta(
        "llama_spm_f16.gguf",
        "llama.context_length",
        Value::U32(1 << 20),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.gguf");
    std::fs::write(&path, bytes).unwrap();
    let config = open_model(&path, &LoadOptions::default()).unwrap().config;
    assert_eq!(config.max_position_embeddings, 1 << 20);
}
