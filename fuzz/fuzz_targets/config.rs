//! Fuzzes `config.json` on arbitrary bytes: as a decoder's config beside the tiny LLaMA's real weights
//! and tokenizer (`DecoderConfig::from_hf_config`, then `open_model`, the tensor check and
//! `Llama::load` when the shapes agree, and a one-token forward pass), and as a BERT encoder's config
//! beside the tiny e5 fixture's weights (`BertModel::load`). A config that passes must never make a
//! later step panic or allocate without bound.
#![no_main]

#[path = "common.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;
use wick::formats::validate::check_tensors;
use wick::formats::{open_model, DecoderConfig, LoadOptions};
use wick::models::bert::BertModel;
use wick::models::llama::{expected_tensors, Llama};

const E5_WEIGHTS: &[u8] =
    include_bytes!("../../tests/fixtures/embed/tiny/e5-mean/model.safetensors");

fn decoder(data: &[u8]) {
    let dir = common::write_dir(
        "decoder",
        &[
            ("config.json", data),
            ("tokenizer.json", common::TINY_TOKENIZER),
            ("tokenizer_config.json", common::TINY_TOKENIZER_CONFIG),
            ("model.safetensors", common::TINY_WEIGHTS),
        ],
    );
    let _ = DecoderConfig::from_hf_config(&dir.join("config.json"));
    let options = LoadOptions::default();
    let Ok(files) = open_model(&dir, &options) else {
        return;
    };
    if check_tensors(files.weights.as_ref(), &expected_tensors(&files.config)).is_err() {
        return;
    }
    let Ok(model) = Llama::load(&files.config, files.weights.as_ref(), &options) else {
        return;
    };
    if let Ok(ids) = Tensor::new(&[[5u32, 6, 7]], &Device::Cpu) {
        let mut cache = model.new_cache(1);
        let _ = model.forward(&ids, &mut cache);
    }
}

fn encoder(data: &[u8]) {
    let dir = common::write_dir(
        "encoder",
        &[("config.json", data), ("model.safetensors", E5_WEIGHTS)],
    );
    let Ok(model) = BertModel::load(&dir, &Device::Cpu, DType::F32) else {
        return;
    };
    if let (Ok(ids), Ok(mask)) = (
        Tensor::new(&[[2u32, 10, 3]], &Device::Cpu),
        Tensor::new(&[[1u32, 1, 1]], &Device::Cpu),
    ) {
        let _ = model.forward(&ids, &mask);
    }
}

fuzz_target!(|data: &[u8]| {
    decoder(data);
    encoder(data);
});
