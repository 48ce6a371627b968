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

/// The row-wise adapter of the ragged forward (A and B kept in f16, `ops::lora_delta_cpu`) against
/// the merged model: last-position logits within the f16 rounding of the pair, same greedy token.
#[test]
fn ragged_adapter_matches_merged_model() {
    let dir = fixtures().join("adapter-peft");
    let adapter = load_adapter(&dir, &Device::Cpu).unwrap();
    let ids = input_ids();
    let base = tiny_model(DType::F32);
    let resident =
        wick::lora::ResidentAdapter::new("peft", &adapter, &base.model.linear_shapes(), &dir)
            .unwrap();
    assert!(resident.modules() > 0);
    let mut merged = tiny_model(DType::F32);
    merge_into_layers(&adapter, merged.model.linear_layers_mut(), &dir).unwrap();
    let want = logits(&merged, &ids);
    let (rows, t) = ids.dims2().unwrap();
    for row in 0..rows {
        let tokens: Vec<u32> = ids.get(row).unwrap().to_vec1().unwrap();
        let mut cache = base.model.new_cache(1);
        let mut seqs = [wick::models::llama::RaggedSeq {
            tokens: &tokens,
            cache: &mut cache,
            lora: Some(wick::models::llama::SeqLora {
                layers: resident.layers(),
                scale: resident.scale(),
            }),
            logits: true,
        }];
        let got = base
            .model
            .forward_ragged(&mut seqs)
            .unwrap()
            .remove(0)
            .unwrap();
        let expected: Vec<f32> = want
            .get(row)
            .unwrap()
            .get(t - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&expected)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 2e-3 * scale.max(1.0),
            "row {row}: ragged adapter vs merged differ by {diff}"
        );
        let argmax = |v: &[f32]| wick::generate::sampler::argmax(v);
        assert_eq!(argmax(&got), argmax(&expected), "row {row}: greedy token");
    }
}
