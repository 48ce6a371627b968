//! PEFT interchange on a tiny random LLaMA, both ways (fixtures: scripts/make_peft_fixtures.py).
//!
//! PEFT -> wick: adapters saved by PEFT 0.21 load in wick and give PEFT's logits (1e-4, f32).
//! wick -> PEFT: tests/fixtures/peft/adapter-wick was saved by wick (`write_wick_adapter_fixture`,
//! run with --ignored); the script loaded it with `PeftModel.from_pretrained` and stored PEFT's logits.
//! Here wick regenerates the same adapter (bit-identical to the committed files) and must give those logits.

mod lora_support;

use candle_core::{DType, Device};
use lora_support::*;
use wick::lora::config::InitLoraWeights;
use wick::lora::peft_io::{load_adapter, save_adapter};
use wick::lora::{Adapter, LoraConfig, TargetModules};

const TOLERANCE: f32 = 1e-4;

fn check_peft_adapter(dir: &str, key: &str) {
    let mut model = tiny_model(DType::F32);
    let ids = input_ids();
    let base = logits(&model, &ids);
    let expected = expected();
    let base_diff = max_abs_diff(&base, &expected["base_logits"]);
    assert!(base_diff < TOLERANCE, "base logits differ by {base_diff}");
    let adapter = load_adapter(&fixtures().join(dir), &Device::Cpu).unwrap();
    adapter
        .apply(model.model.linear_layers_mut(), &fixtures().join(dir))
        .unwrap();
    let with_adapter = logits(&model, &ids);
    let diff = max_abs_diff(&with_adapter, &expected[key]);
    let effect = max_abs_diff(&with_adapter, &base);
    assert!(
        effect > 1e-2,
        "the adapter barely moves the logits ({effect})"
    );
    assert!(
        diff < TOLERANCE,
        "{dir}: wick vs PEFT logits differ by {diff}"
    );
}

#[test]
fn peft_adapter_gives_peft_logits() {
    check_peft_adapter("adapter-peft", "peft_logits");
}

#[test]
fn peft_rslora_adapter_on_some_modules_gives_peft_logits() {
    check_peft_adapter("adapter-peft-rslora", "peft_rslora_logits");
}

/// The adapter wick saves for the wick -> PEFT direction: random A and B (init_lora_weights = false),
/// r 4, alpha 16, every linear layer, seed 11.
fn wick_adapter() -> Adapter {
    let model = tiny_model(DType::F32);
    let shapes: Vec<(String, usize, usize)> = model
        .model
        .linear_layers()
        .into_iter()
        .map(|(p, l)| (p, l.in_features(), l.out_features()))
        .collect();
    let config = LoraConfig {
        r: 4,
        lora_alpha: 16.0,
        target_modules: TargetModules::parse("all-linear").unwrap(),
        init_lora_weights: InitLoraWeights::Bool(false),
        base_model_name_or_path: Some("tiny-llama".into()),
        inference_mode: true,
        ..Default::default()
    };
    let mut adapter = Adapter::init(config, &shapes, 11, &Device::Cpu).unwrap();
    // Keep the update moderate so the logits stay in a well-conditioned range.
    for l in &mut adapter.layers {
        let b = (l.b.as_tensor() * 0.2).unwrap();
        l.b.set(&b).unwrap();
    }
    adapter
}

#[test]
#[ignore = "writes tests/fixtures/peft/adapter-wick; run by hand, then scripts/make_peft_fixtures.py --wick-side"]
fn write_wick_adapter_fixture() {
    let adapter = wick_adapter();
    let dir = fixtures().join("adapter-wick");
    save_adapter(&adapter, &dir).unwrap();
    let mut model = tiny_model(DType::F32);
    adapter
        .apply(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let out = logits(&model, &input_ids());
    let bytes = wick::lora::peft_io::serialize_safetensors(&[("logits".into(), out)]).unwrap();
    std::fs::write(dir.join("wick_logits.safetensors"), bytes).unwrap();
}

#[test]
fn wick_adapter_loads_in_peft_with_the_same_logits() {
    let dir = fixtures().join("adapter-wick");
    // The committed adapter is exactly what wick writes today.
    let fresh = tempfile::tempdir().unwrap();
    save_adapter(&wick_adapter(), fresh.path()).unwrap();
    let committed = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let written = std::fs::read(fresh.path().join("adapter_model.safetensors")).unwrap();
    assert!(
        committed == written,
        "wick no longer writes the committed adapter-wick bytes"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    // PEFT's verdict, recorded by the script.
    let verdict: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("wick_to_peft.json")).unwrap())
            .unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
    // wick's logits with its adapter against PEFT's logits with the same files.
    let peft = candle_core::safetensors::load(
        fixtures().join("wick_adapter_peft_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut model = tiny_model(DType::F32);
    load_adapter(&dir, &Device::Cpu)
        .unwrap()
        .apply(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let diff = max_abs_diff(&logits(&model, &input_ids()), &peft["logits"]);
    assert!(
        diff < TOLERANCE,
        "wick vs PEFT logits of the wick adapter differ by {diff}"
    );
}

#[test]
fn adapter_for_another_base_is_refused_with_the_shapes() {
    // An adapter whose q_proj expects 48 inputs, on a model whose q_proj has 32.
    let config = LoraConfig {
        r: 2,
        target_modules: TargetModules::parse("q_proj").unwrap(),
        ..Default::default()
    };
    let shapes = vec![("model.layers.0.self_attn.q_proj".to_string(), 48, 32)];
    let adapter = Adapter::init(config, &shapes, 1, &Device::Cpu).unwrap();
    let mut model = tiny_model(DType::F32);
    let err = adapter
        .apply(
            model.model.linear_layers_mut(),
            std::path::Path::new("other-base"),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other-base")
            && err.contains("q_proj.lora_A.weight")
            && err.contains("[2, 48]"),
        "{err}"
    );
}
