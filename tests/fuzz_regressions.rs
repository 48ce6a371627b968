//! Inputs the fuzz targets of issue 17 found (fuzz/fuzz_targets/{hf_dir,config,tokenizer,adapter,
//! dataset}.rs; runs in bench/results/fuzz-*.md), each now an error naming the file instead of a
//! panic, abort, hang or runaway allocation.

use std::path::Path;

use candle_core::{DType, Device};
use wick::formats::TextTokenizer;
use wick::models::bert::BertModel;

const TINY: &str = "tests/fixtures/peft/tiny-llama";

/// tokenizer target, 2026-12-02: a control character inside a string of the `decoder` field made the
/// tokenizers crate panic (`expect("Helper")` in its decoder deserializer) instead of returning an
/// error; the same bytes reach `Embedder::load` through a sentence-transformers directory.
#[test]
fn tokenizer_json_with_a_control_character_in_the_decoder_is_an_error() {
    let json = std::fs::read_to_string(Path::new(TINY).join("tokenizer.json")).unwrap();
    let broken = json.replacen("\"type\": \"Fuse\"", "\"type\": \"Fu\u{1}se\"", 1);
    assert_ne!(broken, json, "the fixture's decoder is Fuse");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, broken).unwrap();
    let err = TextTokenizer::from_files(&path, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json")
            && err.contains("invalid JSON")
            && err.contains("control character"),
        "{err}"
    );
}

/// config target (found by reading the BERT loader while the target built, 2026-12-02): an encoder
/// `config.json` with a huge `num_hidden_layers` reached `Vec::with_capacity` (capacity overflow
/// panic or allocation abort) and a per-layer name loop before any tensor was compared.
#[test]
fn bert_config_with_a_huge_layer_count_is_an_error() {
    let fixture = Path::new("tests/fixtures/embed/tiny/e5-mean");
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["num_hidden_layers"] = serde_json::json!(1u64 << 60);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let err = BertModel::load(dir.path(), &Device::Cpu, DType::F32)
        .err()
        .expect("a 2^60-layer config must be refused")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("num_hidden_layers"),
        "{err}"
    );
}
