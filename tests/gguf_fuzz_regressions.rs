//! The GGUF fuzz target's seeds and regressions (fuzz/fuzz_targets/gguf.rs, bench/results/fuzz-gguf.md).
//!
//! The seeds (fuzz/seeds, written by scripts/make_fuzz_gguf_seeds.py with llama.cpp's `gguf` writer)
//! must be whole models, so mutations reach the config, tokenizer, validation and loading. Every input
//! the fuzzer found that crashed, aborted or ran out of memory is rebuilt here from a seed and must
//! now give an error naming the file and the problem.

mod formats_support;

use std::path::{Path, PathBuf};

use formats_support::*;
use wick::formats::gguf::GgufFile;
use wick::formats::validate::check_tensors;
use wick::formats::{open_model, LoadOptions};
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
    let _ = gguf_bytes(&[], &[]);
}
