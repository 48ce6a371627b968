//! Fuzzes PEFT adapter directories: the input is `adapter_config.json` and
//! `adapter_model.safetensors` joined by `common::SPLIT`. `load_adapter`, then what `wick generate
//! --adapter` and `wick merge` do with it on the tiny LLaMA: `Adapter::apply` (shape checks), a
//! forward pass with the adapter attached, and `merge_into_layers`. A panic, abort, runaway
//! allocation or hang is a bug; an adapter for another base must be an error.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use libfuzzer_sys::fuzz_target;
use wick::formats::LoadOptions;
use wick::generate::TextModel;
use wick::lora::merge::merge_into_layers;
use wick::lora::peft_io::load_adapter;

/// The tiny model, loaded once; each input works on a clone.
fn base() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = common::write_dir(
            "base",
            &[
                ("config.json", common::TINY_CONFIG),
                ("tokenizer.json", common::TINY_TOKENIZER),
                ("tokenizer_config.json", common::TINY_TOKENIZER_CONFIG),
                ("model.safetensors", common::TINY_WEIGHTS),
            ],
        );
        TextModel::open(&dir, &LoadOptions::default()).expect("the tiny model loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, weights) = common::split(data);
    let dir = common::write_dir(
        "adapter",
        &[
            ("adapter_config.json", config),
            ("adapter_model.safetensors", weights),
        ],
    );
    let Ok(adapter) = load_adapter(&dir, &Device::Cpu) else {
        return;
    };
    let mut model = base().model.clone();
    if adapter.apply(model.linear_layers_mut(), &dir).is_err() {
        return;
    }
    if let Ok(ids) = Tensor::new(&[[5u32, 6, 7, 8]], &Device::Cpu) {
        let mut cache = model.new_cache(1);
        let _ = model.forward(&ids, &mut cache);
    }
    let mut merged = base().model.clone();
    let _ = merge_into_layers(&adapter, merged.linear_layers_mut(), &dir);
});
