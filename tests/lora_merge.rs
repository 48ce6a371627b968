//! Merge: `W + scale * B A` folded into the base gives the logits of base + adapter (1e-4, f32), and
//! the merged model written as an HF directory loads back with the same logits.

mod lora_support;

use candle_core::{DType, Device};
use lora_support::*;
use wick::lora::merge::{merge_into_layers, write_hf_model};
use wick::lora::peft_io::load_adapter;

#[test]
fn merged_model_matches_base_plus_adapter() {
    let dir = fixtures().join("adapter-peft");
    let adapter = load_adapter(&dir, &Device::Cpu).unwrap();
    let ids = input_ids();

    let mut with_adapter = tiny_model(DType::F32);
    adapter
        .apply(with_adapter.model.linear_layers_mut(), &dir)
        .unwrap();
    let expected = logits(&with_adapter, &ids);

    let mut merged = tiny_model(DType::F32);
    merge_into_layers(&adapter, merged.model.linear_layers_mut(), &dir).unwrap();
    assert!(merged
        .model
        .linear_layers()
        .iter()
        .all(|(_, l)| l.lora.is_none()));
    let got = logits(&merged, &ids);
    let diff = max_abs_diff(&got, &expected);
    assert!(
        diff < 1e-4,
        "merged vs base+adapter logits differ by {diff}"
    );
    // And PEFT agrees (the adapter came from PEFT).
    let peft = &lora_support::expected()["peft_logits"];
    assert!(max_abs_diff(&got, peft) < 1e-4);

    // Written as an HF directory (plus the base's tokenizer), it loads back as a plain model.
    let out = tempfile::tempdir().unwrap();
    write_hf_model(
        out.path(),
        merged.model.config(),
        merged.model.named_weights().unwrap(),
    )
    .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), out.path().join(f)).unwrap();
    }
    let reloaded = wick::generate::TextModel::open(
        out.path(),
        &wick::formats::LoadOptions {
            device: Device::Cpu,
            dtype: Some(DType::F32),
        },
    )
    .unwrap();
    let diff = max_abs_diff(&logits(&reloaded, &ids), &expected);
    assert!(diff < 1e-4, "reloaded merged model differs by {diff}");
}
