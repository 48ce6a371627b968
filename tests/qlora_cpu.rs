//! QLoRA on the CPU: the default model (SmolLM2-135M-Instruct Q4_1 GGUF) trains with its base kept in
//! its GGML blocks (no dense copy of any projection), the loss falls, and the adapter is saved in
//! PEFT's format and loads back onto a fresh base. The gradients through the quantized base against
//! the same weights dequantized to a dense f32 base are in `ops::quant_linear`'s unit tests (per op)
//! and below (one LoRA layer, every gradient).

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use wick::check::{random_tensor, to_f64_vec};
use wick::formats::fetch::ensure_default_chat_model;
use wick::formats::weights::Weight;
use wick::formats::LoadOptions;
use wick::generate::TextModel;
use wick::lora::{LoraConfig, TargetModules};
use wick::models::linear::{BaseWeight, Linear, LoraWeights};
use wick::train::data::{load_jsonl, DataOptions};
use wick::train::schedule::ScheduleKind;
use wick::train::trainer::{train, TrainConfig, TrainRun};

fn write_data(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Question {i}: what do pirates say?")},
                {"role": "assistant", "content": "Arr, matey! Ahoy!"},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Trains an all-linear r-8 adapter on the JSONL at `data` into `out`: (max_seq_len, lr, steps,
/// batch, seed), constant schedule.
fn train_lora(
    model: &mut TextModel,
    data: &Path,
    out: &Path,
    (max_seq_len, lr, steps, batch_size, seed): (usize, f64, usize, usize, u64),
) -> wick::train::trainer::TrainSummary {
    let data = load_jsonl(
        data,
        &model.tokenizer,
        model.chat_template.as_ref(),
        &DataOptions {
            max_seq_len,
            pack: false,
        },
        model.model.config().max_position_embeddings,
    )
    .unwrap();
    let config = TrainConfig {
        lora: LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            target_modules: TargetModules::parse("all-linear").unwrap(),
            ..Default::default()
        },
        lr,
        scheduler: ScheduleKind::Constant,
        total_steps: steps,
        batch_size,
        seed,
        ..Default::default()
    };
    let run = TrainRun {
        config,
        ..TrainRun::new(&data, out.to_path_buf())
    };
    train(&mut model.model, run, &mut |_| {}).unwrap().1
}

#[test]
fn default_model_trains_with_a_quantized_base() {
    let path = ensure_default_chat_model().unwrap();
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: None,
    };
    let mut model = TextModel::open(&path, &options).unwrap();
    for (name, linear) in model.model.linear_layers() {
        assert!(
            matches!(linear.weight(), BaseWeight::Quantized(QMatMul::QTensor(_))),
            "{name} is not kept quantized"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let summary = train_lora(
        &mut model,
        &write_data(dir.path()),
        &out,
        (96, 5e-3, 6, 2, 5),
    );
    let (first, last) = (summary.losses[0], *summary.losses.last().unwrap());
    assert!(
        summary.losses.iter().all(|l| l.is_finite()),
        "{:?}",
        summary.losses
    );
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    // PEFT's files, with PEFT's tensor names, loadable onto a fresh quantized base.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    let saved = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(
        saved.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
        "{:?}",
        saved.keys().take(3).collect::<Vec<_>>()
    );
    assert_eq!(saved.len(), 30 * 7 * 2);
    let mut fresh = TextModel::open(&path, &options).unwrap();
    wick::lora::peft_io::load_adapter(&out, &Device::Cpu)
        .unwrap()
        .apply(fresh.model.linear_layers_mut(), &out)
        .unwrap();
}

/// One LoRA layer on a Q4_1 base against the same layer on its dequantized weight (dense f32): dx,
/// dA and dB through autograd agree to f32 rounding (the forward differs by the Q8 rounding of the
/// activations, which the backward passes straight through; dA and dB do not depend on it).
#[test]
fn lora_gradients_through_a_quantized_base_match_the_dense_base() {
    let dev = Device::Cpu;
    let (n, k, r, t) = (96, 64, 4, 5);
    let w = random_tensor(&[n, k], DType::F32, &dev, 11, 0.5).unwrap();
    let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
    let dense = q.dequantize(&dev).unwrap();
    let a =
        candle_core::Var::from_tensor(&random_tensor(&[r, k], DType::F32, &dev, 12, 0.3).unwrap())
            .unwrap();
    let b =
        candle_core::Var::from_tensor(&random_tensor(&[n, r], DType::F32, &dev, 13, 0.3).unwrap())
            .unwrap();
    let x0 = random_tensor(&[t, k], DType::F32, &dev, 14, 1.0).unwrap();
    let probe = random_tensor(&[t, n], DType::F32, &dev, 15, 1.0).unwrap();
    let grads = |weight: Weight| -> Vec<Vec<f64>> {
        let mut layer = Linear::new(weight, None).unwrap();
        layer.lora = Some(LoraWeights {
            dora: None,
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 2.0,
            dropout: 0.0,
            dropout_masks: None,
        });
        let x = candle_core::Var::from_tensor(&x0).unwrap();
        let y = layer.forward_t(x.as_tensor(), true).unwrap();
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        [x.as_tensor(), a.as_tensor(), b.as_tensor()]
            .iter()
            .map(|v| to_f64_vec(g.get(v).unwrap()).unwrap())
            .collect()
    };
    let quantized = grads(Weight::Quantized(q.clone()));
    let reference = grads(Weight::Dense(dense));
    for (name, (got, want)) in ["dx", "dA", "dB"]
        .iter()
        .zip(quantized.iter().zip(&reference))
    {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((g - w).abs()))
            / scale;
        assert!(err < 1e-5, "{name}: rel err {err:e}");
    }
    // The quantized layer kept its blocks.
    let layer = Linear::new(Weight::Quantized(q), None).unwrap();
    assert!(matches!(layer.weight(), BaseWeight::Quantized(_)));
    let _: Tensor = layer.forward(&x0).unwrap();
}

/// QLoRA from a dense checkpoint (`Llama::quantize_projections`, `wick train --quantize-base`): the
/// tiny Llama HF directory loaded dense in f32, its projections quantized to Q8_0 at load, keeps its
/// logits within Q8's rounding of the dense model's, trains through the blocks (the loss falls), and
/// a format whose blocks do not fit the rows (Q4_K: 256 weights, rows of 32) is refused by name.
#[test]
fn hf_checkpoint_quantized_at_load_trains_through_its_blocks() {
    use wick::models::llama::quantize_base::base_format;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft/tiny-llama");
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::F32),
    };
    let dense = TextModel::open(&dir, &options).unwrap();
    let mut model = TextModel::open(&dir, &options).unwrap();
    let err = model
        .model
        .clone()
        .quantize_projections(base_format("q4_k").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_proj") && err.contains("Q4K"), "{err}");
    assert!(base_format("nf3").is_err());
    model
        .model
        .quantize_projections(base_format("Q8_0").unwrap())
        .unwrap();
    for (name, linear) in model.model.linear_layers() {
        assert!(
            matches!(linear.weight(), BaseWeight::Quantized(QMatMul::QTensor(q)) if q.dtype() == GgmlDType::Q8_0),
            "{name} is not in Q8_0 blocks"
        );
    }
    let ids = Tensor::new(&[[5u32, 9, 17, 4, 11, 30]], &Device::Cpu).unwrap();
    let logits = |m: &TextModel| -> Vec<f64> {
        let mut cache = m.model.new_cache(1);
        to_f64_vec(&m.model.forward(&ids, &mut cache).unwrap()).unwrap()
    };
    let (want, got) = (logits(&dense), logits(&model));
    let spread = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = want
        .iter()
        .zip(&got)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    // Q8_0 keeps ~2.5 significant digits per weight and the activations go through Q8 blocks too:
    // a few percent of the largest logit; a wrong layout gives errors as large as the logits.
    assert!(
        worst < 0.05 * spread,
        "logits moved by {worst} (largest {spread})"
    );

    let data_dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"text": format!("the cat sat on the mat {i} the end")}).to_string()
        })
        .collect();
    let data_path = data_dir.path().join("data.jsonl");
    std::fs::write(&data_path, lines.join("\n")).unwrap();
    let out = data_dir.path().join("adapter");
    let summary = train_lora(&mut model, &data_path, &out, (32, 2e-2, 8, 4, 3));
    let (first, last) = (summary.losses[0], *summary.losses.last().unwrap());
    assert!(
        last < 0.8 * first,
        "loss {first} -> {last}: {:?}",
        summary.losses
    );
    assert!(out.join("adapter_model.safetensors").exists());
}
