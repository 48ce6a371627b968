//! Data-parallel training with the in-process collective and 2-4 simulated ranks on the CPU: the
//! loss curve equals the single-rank run with the same global batch (f32, 1e-5), a checkpoint
//! resumes on a different number of ranks and continues the same curve, only rank 0 writes files,
//! and a rank that fails, panics or hangs stops every rank with an error naming it (never a hang),
//! leaving the last checkpoint loadable.

mod lora_support;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use wick::generate::TextModel;
use wick::lora::{LoraConfig, TargetModules};
use wick::train::checkpoint::{list_checkpoints, load_checkpoint};
use wick::train::data::{load_jsonl, DataOptions, Dataset};
use wick::train::parallel::{train_ranks, Collective, LocalCollective, ParallelOptions, ReduceOp};
use wick::train::trainer::{train, TrainConfig, TrainRun, TrainSummary};
use wick::Result;

/// 24 chat examples of different lengths (so micro-batches carry padding and uneven token counts).
fn dataset(model: &TextModel, dir: &Path) -> Dataset {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            let question = format!("q{i} {}", ["hi", "hello there", "ok?"][i % 3]);
            let answer = ["Ahoy!", "Ahoy, friend!", "Yo."][i % 3];
            serde_json::json!({"messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let options = DataOptions {
        max_seq_len: 48,
        pack: false,
    };
    let context = model.model.config().max_position_embeddings;
    load_jsonl(
        &path,
        &model.tokenizer,
        model.chat_template.as_ref(),
        &options,
        context,
    )
    .unwrap()
}

fn config() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: TargetModules::parse("all-linear").unwrap(),
            ..Default::default()
        },
        lr: 1e-2,
        warmup_steps: 1,
        total_steps: 8,
        batch_size: 4,
        grad_accum: 2,
        seed: 5,
        save_every: Some(2),
        keep_last: 0,
        eval_every: Some(4),
        ..Default::default()
    }
}

fn run<'a>(data: &'a Dataset, out: &Path) -> TrainRun<'a> {
    TrainRun {
        eval_data: Some(data),
        config: config(),
        ..TrainRun::new(data, out)
    }
}

fn model() -> TextModel {
    lora_support::tiny_model(DType::F32)
}

fn group(world: usize, timeout: Duration) -> Vec<Box<dyn Collective>> {
    LocalCollective::group(world, timeout)
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Collective>)
        .collect()
}

/// Trains on `world` ranks (rank 0 on `model`) with the given collectives.
fn parallel(
    model: &mut TextModel,
    collectives: Vec<Box<dyn Collective>>,
    run: TrainRun<'_>,
    timeout: Duration,
) -> Result<TrainSummary> {
    let replicas = (1..collectives.len())
        .map(|_| self::model().model)
        .collect();
    let options = ParallelOptions { timeout };
    train_ranks(
        &mut model.model,
        replicas,
        collectives,
        run,
        &options,
        &mut |_| {},
    )
    .map(|r| r.1)
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f64, f64::max);
    eprintln!(
        "{what}: largest loss difference {worst:.2e} over {} values",
        got.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5,
            "{what}, step {}: {g} vs {w} (all: {got:?} vs {want:?})",
            i + 1
        );
    }
}

fn adapter_values(dir: &Path) -> Vec<f32> {
    let tensors =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    names
        .into_iter()
        .flat_map(|n| tensors[n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn two_to_four_ranks_follow_the_single_rank_curve() {
    let dir = tempfile::tempdir().unwrap();
    let mut single_model = model();
    let data = dataset(&single_model, dir.path());
    let single_out = dir.path().join("single");
    let (_, single) = train(
        &mut single_model.model,
        run(&data, &single_out),
        &mut |_| {},
    )
    .unwrap();
    let single_adapter = adapter_values(&single_out);
    for world in [2, 3, 4] {
        let out = dir.path().join(format!("ranks-{world}"));
        let mut rank0 = model();
        let timeout = Duration::from_secs(120);
        let summary =
            parallel(&mut rank0, group(world, timeout), run(&data, &out), timeout).unwrap();
        let what = format!("{world} ranks");
        assert_close(&summary.losses, &single.losses, &what);
        assert_close(
            &[summary.final_eval_loss.unwrap()],
            &[single.final_eval_loss.unwrap()],
            &what,
        );
        let adapter = adapter_values(&out);
        let worst = adapter
            .iter()
            .zip(&single_adapter)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{what}: adapter differs by {worst}");
        // Rank 0 alone wrote: one record per step and eval, every checkpoint once.
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 8 + 2, "{what}: {metrics}");
        let steps: Vec<usize> = list_checkpoints(&out)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, [2, 4, 6, 8], "{what}");
    }
}

#[test]
fn resume_on_a_different_rank_count_continues_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let mut single_model = model();
    let data = dataset(&single_model, dir.path());
    let (_, straight) = train(
        &mut single_model.model,
        run(&data, &dir.path().join("straight")),
        &mut |_| {},
    )
    .unwrap();
    let timeout = Duration::from_secs(120);
    // Steps 1-4 on two ranks, 5-6 on three, 7-8 on one.
    let out = dir.path().join("resumed");
    let first = TrainRun {
        stop_after_steps: Some(4),
        ..run(&data, &out)
    };
    let first = parallel(&mut model(), group(2, timeout), first, timeout).unwrap();
    let second = TrainRun {
        stop_after_steps: Some(2),
        resume: Some(out.clone()),
        ..run(&data, &out)
    };
    let second = parallel(&mut model(), group(3, timeout), second, timeout).unwrap();
    let third = TrainRun {
        resume: Some(out.clone()),
        ..run(&data, &out)
    };
    let (_, third) = train(&mut model().model, third, &mut |_| {}).unwrap();
    let resumed: Vec<f64> = [first.losses, second.losses, third.losses].concat();
    assert_close(&resumed, &straight.losses, "2 -> 3 -> 1 ranks");
}

/// A rank's collective that fails (`Fail::Error`), panics or blocks (until the test drops the
/// sender) at its `at`-th all-reduce.
struct Faulty {
    inner: LocalCollective,
    at: usize,
    calls: Mutex<usize>,
    fail: Fail,
}

enum Fail {
    Error,
    Panic,
    Hang(Mutex<mpsc::Receiver<()>>),
}

impl Collective for Faulty {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce(&self, flat: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if call == self.at {
            match &self.fail {
                Fail::Error => {
                    return Err(wick::Error::InvalidRequest(
                        "injected: out of memory".into(),
                    ))
                }
                Fail::Panic => panic!("injected panic"),
                Fail::Hang(release) => {
                    let _ = release.lock().unwrap().recv();
                }
            }
        }
        self.inner.all_reduce(flat, op)
    }
    fn broadcast(&self, flat: &Tensor, root: usize) -> Result<Tensor> {
        self.inner.broadcast(flat, root)
    }
    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
}

/// Three ranks, rank `bad` faulty at its 6th all-reduce: step 5's (steps 1-4 and the eval at step 4
/// come first), with a checkpoint after every step.
fn faulty_run(bad: usize, fail: Fail, timeout: Duration, out: &Path, data: &Dataset) -> String {
    let mut fail = Some(fail);
    let collectives: Vec<Box<dyn Collective>> = LocalCollective::group(3, timeout)
        .into_iter()
        .map(|inner| match inner.rank() == bad {
            true => Box::new(Faulty {
                inner,
                at: 6,
                calls: Mutex::new(0),
                fail: fail.take().unwrap(),
            }) as Box<dyn Collective>,
            false => Box::new(inner) as Box<dyn Collective>,
        })
        .collect();
    let run = TrainRun {
        config: TrainConfig {
            save_every: Some(1),
            ..config()
        },
        ..run(data, out)
    };
    // The run must return; a hang here fails the test by never finishing (no timing is asserted).
    parallel(&mut model(), collectives, run, timeout)
        .unwrap_err()
        .to_string()
}

fn last_checkpoint_loads(out: &Path) -> usize {
    load_checkpoint(out, &Device::Cpu).unwrap().state.step
}

#[test]
fn a_failing_rank_stops_every_rank_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&model(), dir.path());
    let timeout = Duration::from_secs(120);
    for (bad, fail, words) in [
        (2, Fail::Error, "injected: out of memory"),
        (1, Fail::Panic, "panicked: injected panic"),
        (0, Fail::Error, "injected: out of memory"),
    ] {
        let out: PathBuf = dir.path().join(format!("fail-{bad}"));
        let msg = faulty_run(bad, fail, timeout, &out, &data);
        let rank = format!("rank {bad} of 3");
        assert!(msg.contains(&rank) && msg.contains(words), "{msg}");
        // Steps 1-4 finished (the 5th all-reduce is step 5's, after the eval at step 4).
        assert_eq!(last_checkpoint_loads(&out), 4, "{msg}");
    }
}

#[test]
fn a_hung_rank_is_named_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&model(), dir.path());
    let out = dir.path().join("hang");
    let (release, hold) = mpsc::channel();
    let msg = faulty_run(
        1,
        Fail::Hang(Mutex::new(hold)),
        Duration::from_millis(500),
        &out,
        &data,
    );
    assert!(
        msg.contains("rank 1 of 3") && msg.contains("did not reach the collective operation"),
        "{msg}"
    );
    assert_eq!(last_checkpoint_loads(&out), 4, "{msg}");
    drop(release); // lets the hung thread go
}
