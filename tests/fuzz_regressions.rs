//! Inputs the fuzz targets of issue 17 found (fuzz/fuzz_targets/{hf_dir,config,tokenizer,adapter,
//! dataset}.rs; runs in bench/results/fuzz-*.md), each now an error naming the file instead of a
//! panic, abort, hang or runaway allocation.

use std::path::Path;

use wick::formats::TextTokenizer;

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
