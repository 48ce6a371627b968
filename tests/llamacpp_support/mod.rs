//! Shared by the tests against llama.cpp (tests/*_llamacpp.rs): their fixtures under
//! tests/fixtures/llamacpp/ (made by scripts/llamacpp/*.py) and the default GGUF they were made from
//! (SmolLM2-135M-Instruct Q4_1), checked by sha256 so a fixture is never compared with another file.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Device;
use serde::de::DeserializeOwned;
use wick::formats::fetch::{ensure_default_chat_model, sha256_file};
use wick::formats::LoadOptions;
use wick::generate::TextModel;

/// Parses tests/fixtures/llamacpp/`name`.
pub fn read_fixture<T: DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llamacpp")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The default chat model's path (fetched if needed), after checking that it is the file a fixture
/// was made from (`model_sha256`, the fixture's field).
pub fn default_model_path(model_sha256: &str) -> PathBuf {
    let path = ensure_default_chat_model().expect("fetching the default chat model");
    let sha = sha256_file(&path).expect("hashing the default chat model");
    assert_eq!(
        sha,
        model_sha256,
        "the fixture was made from another GGUF file than {}",
        path.display()
    );
    path
}

/// The default chat model with its quantized weights on the CPU, as llama.cpp runs them: both
/// quantize the activations to Q8 in every product, so the arithmetic is the same up to summation
/// order.
pub fn open_default_model(model_sha256: &str) -> TextModel {
    TextModel::open(
        &default_model_path(model_sha256),
        &LoadOptions::inference(Device::Cpu),
    )
    .expect("loading the default chat model")
}

/// The indices of a logit row's two largest entries (the first index wins a tie, as an argmax
/// does, and as llama.cpp's greedy sampler does).
pub fn top2(row: &[f32]) -> (u32, u32) {
    let (mut first, mut second) = (0usize, usize::MAX);
    for j in 1..row.len() {
        if row[j] > row[first] {
            second = first;
            first = j;
        } else if second == usize::MAX || row[j] > row[second] {
            second = j;
        }
    }
    (first as u32, second as u32)
}
