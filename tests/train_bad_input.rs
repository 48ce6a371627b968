//! Bad input gives clear errors: malformed dataset lines (file, line number, reason), an empty
//! dataset, rank 0, an unknown target module, a sequence limit over the model's context; a diverging
//! run stops with `Error::Diverged` and leaves its last good checkpoint intact; a run killed while
//! saving a checkpoint leaves the previous one loadable (the test re-runs itself as a child process
//! that aborts between two files of a checkpoint).

mod lora_support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use wick::generate::TextModel;
use wick::lora::{LoraConfig, TargetModules};
use wick::train::checkpoint::{list_checkpoints, load_checkpoint, SaveFault};
use wick::train::data::{load_jsonl, DataOptions, Dataset};
use wick::train::trainer::{train_with_save_fault, TrainConfig, TrainRun};
use wick::Error;

fn load(model: &TextModel, path: &Path, max_seq_len: usize) -> wick::Result<Dataset> {
    load_jsonl(
        path,
        &model.tokenizer,
        model.chat_template.as_ref(),
        &DataOptions {
            max_seq_len,
            pack: false,
        },
        model.model.config().max_position_embeddings,
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn malformed_lines_report_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = lora_support::tiny_model(DType::F32);
    let good = r#"{"prompt": "a", "completion": "b"}"#;
    let cases = [
        ("{not json", "invalid JSON"),
        (r#"[1, 2]"#, "expected a JSON object"),
        (r#"{"prompt": "a"}"#, "missing `completion`"),
        (r#"{"text": 5}"#, "`text` must be a string"),
        (r#"{"question": "x"}"#, "expected `text`"),
        (r#"{"messages": []}"#, "`messages` is empty"),
        (
            r#"{"messages": [{"role": "pirate", "content": "x"}]}"#,
            "unknown role `pirate`",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            "no assistant turn",
        ),
        (r#"{"messages": [{"role": "user"}]}"#, "missing `content`"),
        (r#"{"text": ""}"#, "`text` is empty"),
    ];
    for (bad, reason) in cases {
        // The bad record on line 3, after a good line and a blank one.
        let path = write(dir.path(), "d.jsonl", &format!("{good}\n\n{bad}\n{good}\n"));
        let err = load(&model, &path, 32).unwrap_err();
        assert!(
            matches!(err, Error::BadLine { line: 3, .. }),
            "{bad}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("d.jsonl:3:") && msg.contains(reason),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn empty_dataset_and_too_long_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let model = lora_support::tiny_model(DType::F32);
    let empty = write(dir.path(), "empty.jsonl", "\n  \n");
    let msg = load(&model, &empty, 32).unwrap_err().to_string();
    assert!(
        msg.contains("empty.jsonl") && msg.contains("empty"),
        "{msg}"
    );
    // The tiny model's context is 64 tokens.
    let data = write(dir.path(), "d.jsonl", r#"{"text": "hello"}"#);
    let msg = load(&model, &data, 65).unwrap_err().to_string();
    assert!(
        msg.contains("--max-seq-len") && msg.contains("context of 64"),
        "{msg}"
    );
    // A sequence over --max-seq-len is truncated, and counted.
    let long = write(
        dir.path(),
        "long.jsonl",
        &format!(r#"{{"text": "{}"}}"#, "x".repeat(100)),
    );
    let ds = load(&model, &long, 16).unwrap();
    assert_eq!(ds.stats.truncated, 1);
    assert_eq!(ds.rows[0].input_ids.len(), 16);
    // A prompt that fills the whole window leaves nothing to train on: dropped; all dropped is an error.
    let prompt_only = write(
        dir.path(),
        "p.jsonl",
        &format!(r#"{{"prompt": "{}", "completion": "y"}}"#, "x".repeat(40)),
    );
    let msg = load(&model, &prompt_only, 16).unwrap_err().to_string();
    assert!(
        msg.contains("nothing to train on") && msg.contains("line 1: no trained-on token left"),
        "{msg}"
    );
}

/// Issue 17: every line that gives no example is accounted for by number and reason: dropped
/// examples (nothing trained on after truncation) and blank lines; bad UTF-8 is an error naming the
/// line.
#[test]
fn dropped_and_blank_lines_are_listed_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let model = lora_support::tiny_model(DType::F32);
    let long_prompt = format!(r#"{{"prompt": "{}", "completion": "y"}}"#, "x".repeat(40));
    let good = r#"{"prompt": "q", "completion": "an answer"}"#;
    let content = format!("{good}\n{long_prompt}\n\n{good}\n  \n{long_prompt}\n{good}\n");
    let path = write(dir.path(), "d.jsonl", &content);
    let ds = load(&model, &path, 16).unwrap();
    assert_eq!(ds.stats.examples, 5);
    assert_eq!(ds.rows.len(), 3);
    let dropped: Vec<usize> = ds.stats.dropped.iter().map(|d| d.line).collect();
    assert_eq!(dropped, vec![2, 6]);
    for d in &ds.stats.dropped {
        // 40 prompt characters (one token each) + BOS/specials: the completion starts past token 16.
        assert!(
            d.reason
                .contains("no trained-on token left after truncation to 16 tokens"),
            "{}",
            d.reason
        );
    }
    assert_eq!(ds.stats.blank_lines, vec![3, 5]);

    let bad = dir.path().join("bad.jsonl");
    let mut bytes = format!("{good}\n").into_bytes();
    bytes.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n");
    std::fs::write(&bad, bytes).unwrap();
    let err = load(&model, &bad, 16).unwrap_err();
    assert!(matches!(err, Error::BadLine { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

fn tiny_run(
    out: &Path,
    lora: LoraConfig,
    lr: f64,
    save_every: usize,
    fault: SaveFault,
) -> wick::Result<()> {
    let mut model = lora_support::tiny_model(DType::F32);
    let data_dir = tempfile::tempdir().unwrap();
    let path = write(
        data_dir.path(),
        "d.jsonl",
        &(0..8)
            .map(|i| format!(r#"{{"prompt": "q{i}", "completion": "answer {i}"}}"#))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let data = load(&model, &path, 32).unwrap();
    let config = TrainConfig {
        lora,
        lr,
        total_steps: 6,
        batch_size: 2,
        max_grad_norm: None,
        save_every: Some(save_every),
        keep_last: 0,
        ..Default::default()
    };
    let run = TrainRun {
        config,
        ..TrainRun::new(&data, out)
    };
    train_with_save_fault(&mut model.model, run, fault, &mut |_| {}).map(|_| ())
}

#[test]
fn rank_zero_and_unknown_target_module() {
    let out = tempfile::tempdir().unwrap();
    let zero = LoraConfig {
        r: 0,
        ..Default::default()
    };
    let msg = tiny_run(out.path(), zero, 1e-3, 2, SaveFault::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("rank"), "{msg}");
    let unknown = LoraConfig {
        target_modules: TargetModules::parse("q_proj,qkv_proj").unwrap(),
        ..Default::default()
    };
    let msg = tiny_run(out.path(), unknown, 1e-3, 2, SaveFault::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`qkv_proj`") && msg.contains("q_proj") && msg.contains("down_proj"),
        "{msg}"
    );
}

#[test]
fn diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let lora = LoraConfig {
        init_lora_weights: wick::lora::config::InitLoraWeights::Bool(false),
        ..Default::default()
    };
    // An absurd learning rate: AdamW moves every parameter by ~lr per step, the logits overflow.
    let err = tiny_run(out.path(), lora, 1e30, 1, SaveFault::default()).unwrap_err();
    let Error::Diverged {
        step, checkpoint, ..
    } = &err
    else {
        panic!("expected Diverged, got {err}");
    };
    let checkpoint = checkpoint
        .clone()
        .expect("a checkpoint before the divergence");
    assert!(err.to_string().contains("diverged"), "{err}");
    let loaded = load_checkpoint(&checkpoint, &Device::Cpu).unwrap();
    assert_eq!(loaded.state.step, step - 1);
    let finite = loaded.adapter.layers.iter().all(|l| {
        l.a.as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite())
    });
    assert!(finite);
}

const CHILD_ENV: &str = "WICK_TEST_CRASH_DURING_SAVE_OUT";

#[test]
fn killed_during_save_leaves_a_loadable_checkpoint() {
    if let Ok(out) = std::env::var(CHILD_ENV) {
        // Child: checkpoints every 2 steps; the write of checkpoint-4 aborts after its first two files.
        let fault = SaveFault {
            abort_after_files: Some(2),
            abort_at_step: Some(4),
        };
        let _ = tiny_run(Path::new(&out), LoraConfig::default(), 1e-3, 2, fault);
        unreachable!("the child should have aborted while saving checkpoint-4");
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_during_save_leaves_a_loadable_checkpoint",
            "--nocapture",
        ])
        .env(CHILD_ENV, out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was expected to abort");
    // A partial temporary directory is left behind, but only complete checkpoints are listed.
    let leftovers: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".checkpoint-4"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "expected the partial checkpoint-4 temp dir"
    );
    let complete = list_checkpoints(out.path()).unwrap();
    assert_eq!(complete.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2]);
    let loaded = load_checkpoint(out.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.state.step, 2);
}
