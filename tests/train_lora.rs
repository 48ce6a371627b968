//! Training on the tiny random LLaMA (char tokenizer, ChatML template): the loss falls and the greedy
//! answer changes to the taught one; resuming from a checkpoint reproduces a straight run bit for bit;
//! a run killed while saving leaves a loadable checkpoint; a diverging run stops with the last good
//! checkpoint intact.

mod lora_support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use wick::generate::{greedy_token_ids, Prompt, TextModel};
use wick::lora::{LoraConfig, TargetModules};
use wick::train::checkpoint::list_checkpoints;
use wick::train::data::{load_jsonl, DataOptions, Dataset};
use wick::train::schedule::ScheduleKind;
use wick::train::trainer::{train, TrainConfig, TrainRun, TrainSummary};

const ANSWER: &str = "Ahoy!";

/// 24 chat examples: varied questions, always the same answer.
fn write_data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("q{} {}", i, ["hi", "yo", "ok"][i % 3])},
                {"role": "assistant", "content": ANSWER},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn dataset(model: &TextModel, path: &Path) -> Dataset {
    load_jsonl(
        path,
        &model.tokenizer,
        model.chat_template.as_ref(),
        &DataOptions {
            max_seq_len: 48,
            pack: false,
        },
        model.model.config().max_position_embeddings,
    )
    .unwrap()
}

fn dropout_config(steps: usize, dropout: f32) -> TrainConfig {
    let mut c = config(steps);
    c.lora.lora_dropout = dropout;
    c
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            target_modules: TargetModules::parse("all-linear").unwrap(),
            ..Default::default()
        },
        lr: 1e-2,
        scheduler: ScheduleKind::Cosine,
        warmup_steps: 2,
        total_steps: steps,
        batch_size: 4,
        grad_accum: 2,
        seed: 3,
        save_every: Some(steps / 2),
        keep_last: 0,
        ..Default::default()
    }
}

fn run(
    model: &mut TextModel,
    data: &Dataset,
    config: TrainConfig,
    out: &Path,
    resume: Option<PathBuf>,
) -> TrainSummary {
    let run = TrainRun {
        eval_data: Some(data),
        config,
        resume,
        ..TrainRun::new(data, out)
    };
    train(&mut model.model, run, &mut |_| {}).unwrap().1
}

fn greedy(model: &TextModel, question: &str) -> String {
    let ids = model
        .prompt_ids(&Prompt::Chat {
            system: None,
            user: question,
        })
        .unwrap();
    let out = greedy_token_ids(&model.model, &ids, 8).unwrap();
    model.tokenizer.decode(&out).unwrap()
}

#[test]
fn training_lowers_the_loss_and_changes_greedy_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = lora_support::tiny_model(DType::F32);
    let data = dataset(&model, &write_data(dir.path()));
    let before = greedy(&model, "q99 hi");
    let summary = run(&mut model, &data, config(30), dir.path(), None);
    let after = greedy(&model, "q99 hi");
    let (first, last) = (summary.losses[0], *summary.losses.last().unwrap());
    assert!(last < 0.3 * first, "loss {first} -> {last}");
    assert_ne!(before, after);
    assert!(
        after.starts_with(ANSWER),
        "after training: {after:?} (before: {before:?})"
    );
    assert!(summary.final_eval_loss.unwrap() < 0.3 * first);
    // The adapter, metrics and loss curve are written beside each other.
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "loss.png",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    // The saved adapter reproduces the trained model's answer on a fresh base.
    let mut fresh = lora_support::tiny_model(DType::F32);
    wick::lora::peft_io::load_adapter(dir.path(), &Device::Cpu)
        .unwrap()
        .apply(fresh.model.linear_layers_mut(), dir.path())
        .unwrap();
    assert_eq!(greedy(&fresh, "q99 hi"), after);
}

#[test]
fn resume_is_bit_identical() {
    resume_repeats_the_straight_run(0.0);
}

/// With LoRA dropout too: the masks are seeded by (run seed, step, micro-batch), so the resumed
/// half draws the straight run's masks (Candle's unseeded dropout could not).
#[test]
fn resume_with_dropout_is_bit_identical() {
    resume_repeats_the_straight_run(0.1);
}

fn resume_repeats_the_straight_run(dropout: f32) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut model = lora_support::tiny_model(DType::F32);
    let data = dataset(&model, &write_data(data_dir.path()));
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = run(
        &mut model,
        &data,
        dropout_config(8, dropout),
        straight_dir.path(),
        None,
    );

    // The same run stopped after 4 steps (its checkpoint-4 written), then resumed in a fresh process state.
    let resumed_dir = tempfile::tempdir().unwrap();
    let mut first_model = lora_support::tiny_model(DType::F32);
    let first = train(
        &mut first_model.model,
        TrainRun {
            eval_data: Some(&data),
            config: dropout_config(8, dropout),
            stop_after_steps: Some(4),
            ..TrainRun::new(&data, resumed_dir.path())
        },
        &mut |_| {},
    )
    .unwrap()
    .1;
    assert_eq!(first.losses, straight.losses[..4].to_vec());
    assert_eq!(list_checkpoints(resumed_dir.path()).unwrap().len(), 1);
    let mut second_model = lora_support::tiny_model(DType::F32);
    // Options given to a resumed run are replaced by the checkpoint's.
    let mut other = dropout_config(8, dropout);
    other.lr = 1.0;
    let second = run(
        &mut second_model,
        &data,
        other,
        resumed_dir.path(),
        Some(resumed_dir.path().to_path_buf()),
    );
    assert_eq!(
        second.losses,
        straight.losses[4..].to_vec(),
        "losses after resume differ"
    );
    assert_eq!(second.final_eval_loss, straight.final_eval_loss);
    for f in [
        "adapter_model.safetensors",
        "checkpoint-8/optimizer.safetensors",
    ] {
        let a = std::fs::read(straight_dir.path().join(f)).unwrap();
        let b = std::fs::read(resumed_dir.path().join(f)).unwrap();
        assert!(a == b, "{f} differs after resume");
    }
}

/// A run with activation checkpointing follows the plain run's loss curve (f32; the gradients are the
/// same maths, only summation order may differ) and ends with the same adapter: every layer
/// checkpointed, and only the first one (`checkpoint_layers`: the others keep their activations for
/// autograd, their gradients reach the step through the GradStore, the first's through the sink).
#[test]
fn activation_checkpointing_follows_the_plain_run() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut plain_model = lora_support::tiny_model(DType::F32);
    let data = dataset(&plain_model, &write_data(data_dir.path()));
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = run(&mut plain_model, &data, config(6), plain_dir.path(), None);
    let load = |dir: &Path| {
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
    };
    let a = load(plain_dir.path());
    for checkpoint_layers in [None, Some(1)] {
        let mut ckpt_model = lora_support::tiny_model(DType::F32);
        assert!(ckpt_model.model.config().num_hidden_layers > 1);
        let ckpt_dir = tempfile::tempdir().unwrap();
        let ckpt_config = TrainConfig {
            activation_checkpointing: true,
            checkpoint_layers,
            ..config(6)
        };
        let ckpt = run(&mut ckpt_model, &data, ckpt_config, ckpt_dir.path(), None);
        for (p, c) in plain.losses.iter().zip(&ckpt.losses) {
            assert!(
                (p - c).abs() < 1e-5 * p.abs().max(1.0),
                "{checkpoint_layers:?}: loss {c} vs {p}"
            );
        }
        let b = load(ckpt_dir.path());
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            let diff = lora_support::max_abs_diff(t, &b[name]);
            assert!(
                diff < 1e-5,
                "{checkpoint_layers:?} {name}: max abs diff {diff}"
            );
        }
    }
}

/// LoRA dropout with activation checkpointing (Candle's path): the recomputed layers draw the same
/// seeded masks as their forward, so the run follows the plain run with the same dropout.
#[test]
fn activation_checkpointing_with_dropout_follows_the_plain_run() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut plain_model = lora_support::tiny_model(DType::F32);
    let data = dataset(&plain_model, &write_data(data_dir.path()));
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = run(
        &mut plain_model,
        &data,
        dropout_config(6, 0.1),
        plain_dir.path(),
        None,
    );
    let mut ckpt_model = lora_support::tiny_model(DType::F32);
    let ckpt_dir = tempfile::tempdir().unwrap();
    let ckpt_config = TrainConfig {
        activation_checkpointing: true,
        ..dropout_config(6, 0.1)
    };
    let ckpt = run(&mut ckpt_model, &data, ckpt_config, ckpt_dir.path(), None);
    for (p, c) in plain.losses.iter().zip(&ckpt.losses) {
        assert!((p - c).abs() < 1e-5 * p.abs().max(1.0), "loss {c} vs {p}");
    }
    let without = run(
        &mut lora_support::tiny_model(DType::F32),
        &data,
        config(6),
        tempfile::tempdir().unwrap().path(),
        None,
    );
    assert_ne!(plain.losses, without.losses, "dropout 0.1 changed nothing");
}
