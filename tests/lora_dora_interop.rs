//! DoRA (PEFT `use_dora`) interchange with PEFT on the tiny random LLaMA, both ways, within 1e-4
//! (fixtures: scripts/make_dora_fixtures.py, PEFT 0.21.2, f32 on the CPU).
//!
//! PEFT -> wick: PEFT's DoRA adapter loads in wick and gives PEFT's logits (frozen norms for
//! inference and per-forward norms as in training); wick's gradients of the causal-LM loss for A, B
//! and the magnitude equal PEFT's (PEFT detaches the row norm ||W + s B A||: a wick that did not would
//! fail here); `merge_into_layers` gives PEFT's merged logits.
//! wick -> PEFT: tests/fixtures/peft/adapter-wick-dora was trained by wick's trainer with `use_dora`
//! (`write_wick_dora_fixture`, run with --ignored) and loaded by the script with
//! `PeftModel.from_pretrained`, which took every magnitude from the file; here wick retrains the same
//! adapter (checked against the committed tensors) and its logits with the committed files must equal
//! PEFT's. The CLI trains (`--dora`), generates with and merges a DoRA adapter.

mod lora_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lora_support::*;
use wick::generate::TextModel;
use wick::lora::merge::merge_into_layers;
use wick::lora::peft_io::load_adapter;
use wick::lora::{Adapter, LoraConfig, TargetModules};
use wick::models::dora::weight_norm;
use wick::train::data::{load_jsonl, DataOptions};
use wick::train::loss::causal_lm_loss;
use wick::train::optimizer::collect_grads;
use wick::train::trainer::{train, TrainConfig, TrainRun};

const TOLERANCE: f32 = 1e-4;

fn dora_expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("dora_expected.safetensors"), &Device::Cpu)
        .expect("dora_expected.safetensors")
}

fn peft_dora_dir() -> PathBuf {
    fixtures().join("adapter-peft-dora")
}

#[test]
fn peft_dora_adapter_gives_peft_logits() {
    let expected = dora_expected();
    let dir = peft_dora_dir();
    let adapter = load_adapter(&dir, &Device::Cpu).unwrap();
    assert!(adapter.config.use_dora);
    assert!(adapter.layers.iter().all(|l| l.magnitude.is_some()));
    let ids = input_ids();
    let mut model = tiny_model(DType::F32);
    let base = logits(&model, &ids);
    // Frozen norms (generation) and norms recomputed at every forward (training) agree with PEFT.
    adapter
        .apply_for_inference(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let frozen = logits(&model, &ids);
    adapter
        .apply(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let per_forward = logits(&model, &ids);
    let effect = max_abs_diff(&frozen, &base);
    assert!(
        effect > 1e-2,
        "the adapter barely moves the logits ({effect})"
    );
    for (what, got) in [
        ("frozen norms", &frozen),
        ("per-forward norms", &per_forward),
    ] {
        let diff = max_abs_diff(got, &expected["peft_dora_logits"]);
        assert!(
            diff < TOLERANCE,
            "{what}: wick vs PEFT logits differ by {diff}"
        );
    }
    // The same adapter read as plain LoRA (magnitudes dropped) is far from PEFT's DoRA logits, so
    // the comparison above does test the magnitude.
    let mut plain = adapter.clone();
    for l in &mut plain.layers {
        l.magnitude = None;
    }
    plain.apply(model.model.linear_layers_mut(), &dir).unwrap();
    let lora_only = logits(&model, &ids);
    assert!(max_abs_diff(&lora_only, &expected["peft_dora_logits"]) > 1e-2);
}

#[test]
fn dora_gradients_match_peft() {
    let expected = dora_expected();
    let dir = peft_dora_dir();
    let adapter = load_adapter(&dir, &Device::Cpu).unwrap();
    let mut model = tiny_model(DType::F32);
    adapter
        .apply(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let ids = input_ids();
    let labels = ids.to_dtype(DType::I64).unwrap();
    let logits = model.model.forward_train(&ids).unwrap();
    let loss = causal_lm_loss(&logits, &labels).unwrap();
    let loss_value = loss.to_vec0::<f32>().unwrap();
    let peft_loss = expected["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (loss_value - peft_loss).abs() < 1e-5,
        "{loss_value} vs {peft_loss}"
    );
    let grads = collect_grads(&adapter.vars(), &loss.backward().unwrap());
    assert_eq!(grads.len(), 7 * 2 * 3);
    let mut worst = 0f32;
    for (name, grad) in &grads {
        let want = &expected[&format!("grad.{name}")];
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let relative = max_abs_diff(grad, want) / scale.max(1e-12);
        worst = worst.max(relative);
        assert!(
            relative < 1e-4,
            "{name}: relative difference {relative} (max |g| {scale})"
        );
    }
    eprintln!("42 gradients, worst max-abs difference relative to max |g|: {worst:.2e}");
}

#[test]
fn dora_merge_gives_peft_merged_logits() {
    let expected = dora_expected();
    let dir = peft_dora_dir();
    let adapter = load_adapter(&dir, &Device::Cpu).unwrap();
    let mut model = tiny_model(DType::F32);
    merge_into_layers(&adapter, model.model.linear_layers_mut(), &dir).unwrap();
    assert!(model
        .model
        .linear_layers()
        .iter()
        .all(|(_, l)| l.lora.is_none()));
    let diff = max_abs_diff(
        &logits(&model, &input_ids()),
        &expected["peft_dora_merged_logits"],
    );
    assert!(
        diff < TOLERANCE,
        "merged wick vs merged PEFT logits differ by {diff}"
    );
}

fn write_data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({"prompt": format!("q{i} {}", ["hi", "yo", "ok"][i % 3]),
                               "completion": " Ahoy!"})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// The adapter of the wick -> PEFT direction: DoRA, r 4, alpha 8, every linear layer, trained by
/// wick's trainer for 6 steps (lr 2e-2, seed 5) on 12 prompt/completion pairs, on the CPU in f32.
fn train_wick_dora(out: &Path) -> (TextModel, Adapter) {
    let mut model = tiny_model(DType::F32);
    let data_dir = tempfile::tempdir().unwrap();
    let data = load_jsonl(
        &write_data(data_dir.path()),
        &model.tokenizer,
        model.chat_template.as_ref(),
        &DataOptions {
            max_seq_len: 32,
            pack: false,
        },
        64,
    )
    .unwrap();
    let config = TrainConfig {
        lora: LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: TargetModules::parse("all-linear").unwrap(),
            use_dora: true,
            base_model_name_or_path: Some("tiny-llama".into()),
            ..Default::default()
        },
        lr: 2e-2,
        total_steps: 6,
        batch_size: 4,
        seed: 5,
        ..Default::default()
    };
    let run = TrainRun {
        config,
        ..TrainRun::new(&data, out)
    };
    let (adapter, _) = train(&mut model.model, run, &mut |_| {}).unwrap();
    (model, adapter)
}

#[test]
#[ignore = "writes tests/fixtures/peft/adapter-wick-dora; run by hand, then scripts/make_dora_fixtures.py --wick-side"]
fn write_wick_dora_fixture() {
    let dir = fixtures().join("adapter-wick-dora");
    let _ = std::fs::remove_dir_all(&dir);
    train_wick_dora(&dir);
    for extra in ["metrics.jsonl", "loss.png"] {
        let _ = std::fs::remove_file(dir.join(extra));
    }
    let adapter = load_adapter(&dir, &Device::Cpu).unwrap();
    let mut model = tiny_model(DType::F32);
    adapter
        .apply_for_inference(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let out = logits(&model, &input_ids());
    let bytes = wick::lora::peft_io::serialize_safetensors(&[("logits".into(), out)]).unwrap();
    std::fs::write(dir.join("wick_logits.safetensors"), bytes).unwrap();
}

#[test]
fn wick_dora_adapter_loads_in_peft_with_the_same_logits() {
    let dir = fixtures().join("adapter-wick-dora");
    let committed = load_adapter(&dir, &Device::Cpu).unwrap();
    assert!(committed.config.use_dora);
    // wick still trains and writes this adapter: same keys, same config, same values (up to the
    // last bits a different CPU's summation order may change).
    let fresh_dir = tempfile::tempdir().unwrap();
    let (_, fresh) = train_wick_dora(fresh_dir.path());
    let fresh_files = load_adapter(fresh_dir.path(), &Device::Cpu).unwrap();
    assert_eq!(fresh_files.config, committed.config);
    let tensors = |a: &Adapter| wick::lora::peft_io::adapter_tensors(a);
    let (want, got) = (tensors(&committed), tensors(&fresh));
    assert_eq!(want.len(), got.len());
    for ((kw, tw), (kg, tg)) in want.iter().zip(&got) {
        assert_eq!(kw, kg);
        let diff = max_abs_diff(tw, tg);
        assert!(diff < 1e-5, "{kw}: retrained value differs by {diff}");
    }
    // The magnitudes moved off the row norms in training (so PEFT's reading of them is tested).
    let base = tiny_model(DType::F32);
    let linears = base.model.linear_layers();
    let moved = committed
        .layers
        .iter()
        .filter(|l| {
            let (_, linear) = linears.iter().find(|(p, _)| *p == l.path).unwrap();
            let (a, b) = (l.a.as_tensor(), l.b.as_tensor());
            let norm = weight_norm(
                &linear.dense_weight().unwrap(),
                a,
                b,
                committed.config.scale(),
            )
            .unwrap();
            max_abs_diff(l.magnitude.as_ref().unwrap().as_tensor(), &norm) > 1e-4
        })
        .count();
    assert!(moved > 0, "training left every magnitude at its row norm");
    let verdict: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("wick_dora_to_peft.json")).unwrap())
            .unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["magnitudes_loaded_from_file"], 14, "{verdict}");
    let peft = candle_core::safetensors::load(
        fixtures().join("wick_dora_adapter_peft_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut model = tiny_model(DType::F32);
    committed
        .apply_for_inference(model.model.linear_layers_mut(), &dir)
        .unwrap();
    let diff = max_abs_diff(&logits(&model, &input_ids()), &peft["logits"]);
    assert!(
        diff < TOLERANCE,
        "wick vs PEFT logits of the wick DoRA adapter differ by {diff}"
    );
}

fn wick(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .output()
        .expect("running wick");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn cli_trains_generates_with_and_merges_a_dora_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let model = fixtures().join("tiny-llama");
    let model = model.to_str().unwrap();
    let out = dir.path().join("run");
    let out_str = out.to_str().unwrap();
    let (ok, _, stderr) = wick(&[
        "train",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_str,
        "--dora",
        "--rank",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--max-seq-len",
        "32",
    ]);
    assert!(ok, "{stderr}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["use_dora"], true);
    let tensors =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let magnitudes = tensors
        .keys()
        .filter(|k| k.ends_with(".lora_magnitude_vector"))
        .count();
    assert_eq!(magnitudes, 14);
    let (ok, _, stderr) = wick(&[
        "generate",
        "--model",
        model,
        "--adapter",
        out_str,
        "--prompt",
        "q1 hi",
        "--raw",
        "--temperature",
        "0",
        "--max-tokens",
        "4",
    ]);
    assert!(ok, "{stderr}");
    let merged = dir.path().join("merged");
    let (ok, _, stderr) = wick(&[
        "merge",
        "--model",
        model,
        "--adapter",
        out_str,
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // The merged model computes what the base with the adapter computes.
    let mut with_adapter = tiny_model(DType::F32);
    load_adapter(&out, &Device::Cpu)
        .unwrap()
        .apply_for_inference(with_adapter.model.linear_layers_mut(), &out)
        .unwrap();
    let merged_model = TextModel::open(&merged, &Default::default()).unwrap();
    let ids = input_ids();
    let diff = max_abs_diff(&logits(&with_adapter, &ids), &logits(&merged_model, &ids));
    assert!(
        diff < TOLERANCE,
        "merged vs adapter logits differ by {diff}"
    );
}
