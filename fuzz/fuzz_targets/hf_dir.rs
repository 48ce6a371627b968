//! Fuzzes the safetensors / Hugging Face directory reader on arbitrary `model.safetensors` bytes, the
//! way `wick generate --model DIR` and `wick embed --model DIR` take them: the tiny LLaMA's real
//! config.json and tokenizer files beside the fuzzed weights, then `open_model` (mmap, header and
//! tensor table), every tensor read through the weight source in f32 and bf16, the tensor check
//! against the config and `Llama::load` when it passes. The same bytes are also opened as a BERT
//! encoder's weights (`BertModel::load` with the tiny e5 fixture's config). Errors are the expected
//! outcome; a panic, abort, runaway allocation or hang is a bug.
#![no_main]

#[path = "common.rs"]
mod common;

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use wick::formats::hf::SafetensorsSource;
use wick::formats::validate::check_tensors;
use wick::formats::{open_model, LoadOptions, WeightSource};
use wick::models::bert::BertModel;
use wick::models::llama::{expected_tensors, Llama};

const E5_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/embed/tiny/e5-mean/config.json");

fn read_every_tensor(source: &SafetensorsSource) {
    for name in source.names() {
        let _ = source.shape(&name);
        let _ = source.get(&name);
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = common::write_dir(
        "hf",
        &[
            ("config.json", common::TINY_CONFIG),
            ("tokenizer.json", common::TINY_TOKENIZER),
            ("tokenizer_config.json", common::TINY_TOKENIZER_CONFIG),
            ("model.safetensors", data),
        ],
    );
    for dtype in [None, Some(DType::BF16)] {
        let options = LoadOptions {
            dtype,
            ..Default::default()
        };
        if let Ok(source) = SafetensorsSource::open(&dir, options) {
            read_every_tensor(&source);
        }
    }
    let options = LoadOptions::default();
    if let Ok(files) = open_model(&dir, &options) {
        if check_tensors(files.weights.as_ref(), &expected_tensors(&files.config)).is_ok() {
            let _ = Llama::load(&files.config, files.weights.as_ref(), &options);
        }
    }
    let bert = common::write_dir(
        "bert",
        &[("config.json", E5_CONFIG), ("model.safetensors", data)],
    );
    let _ = BertModel::load(&bert, &Device::Cpu, DType::F32);
});
