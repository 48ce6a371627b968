//! Running a data-parallel job: one thread per rank, each with its own model replica (on its own
//! device; on CUDA each device has its own context and stream), all in one process. Rank 0 runs on
//! the caller's thread with the caller's model and progress callback; ranks 1.. run on spawned
//! threads with their own copies of the data. A rank that returns an error or panics aborts the
//! group, so every other rank stops at its next collective operation; a rank that hangs is named
//! by the others' timeout and left behind rather than joined, so the caller always gets an answer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::Device;

use super::collective::{rank_failed, Collective};
use super::local::LocalCollective;
use crate::lora::Adapter;
use crate::models::llama::Llama;
use crate::train::checkpoint::SaveFault;
use crate::train::session::train_rank;
use crate::train::trainer::{Progress, TrainRun, TrainSummary};
use crate::{Error, Result};

/// How a data-parallel run waits for its ranks.
#[derive(Debug, Clone)]
pub struct ParallelOptions {
    /// Longest a rank waits in a collective operation for the others (and the runner for a rank
    /// to stop after the run failed) before naming the missing ranks and stopping. Covers the
    /// slowest rank's step plus rank 0's checkpoint writes.
    pub timeout: Duration,
}

impl Default for ParallelOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
        }
    }
}

/// Trains one adapter data-parallel over `model` (rank 0, which keeps the trained adapter attached)
/// and `replicas` (ranks 1.., the same base model, each on its device). The global batch is the
/// run's `batch_size x grad_accum` rows, split across the ranks, so the loss curve is the
/// single-rank curve's (to rounding) for any rank count, and a checkpoint resumes on any number
/// of ranks. CPU ranks meet in-process; CUDA ranks use NCCL with the `nccl` feature, else the
/// in-process collective through host memory.
pub fn train_data_parallel(
    model: &mut Llama,
    replicas: Vec<Llama>,
    run: TrainRun<'_>,
    options: &ParallelOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Adapter, TrainSummary)> {
    let devices: Vec<Device> = std::iter::once(model.device())
        .chain(replicas.iter().map(Llama::device))
        .cloned()
        .collect();
    let collectives = collectives_for(&devices, options.timeout)?;
    train_ranks(model, replicas, collectives, run, options, progress)
}

/// The group for `devices`: NCCL when they are distinct CUDA devices and the crate has the `nccl`
/// feature, else the in-process collective.
fn collectives_for(devices: &[Device], timeout: Duration) -> Result<Vec<Box<dyn Collective>>> {
    let all_cuda = devices.iter().all(Device::is_cuda);
    if !all_cuda && !devices.iter().all(Device::is_cpu) {
        return Err(Error::InvalidOption {
            option: "--devices".into(),
            reason: "all ranks must be CPUs or all CUDA devices".into(),
        });
    }
    if all_cuda {
        #[cfg(feature = "nccl")]
        {
            return super::nccl::NcclCollective::group(devices, timeout);
        }
        #[cfg(not(feature = "nccl"))]
        tracing::warn!(
            "built without the `nccl` feature: gradients are reduced through host memory"
        );
    }
    Ok(LocalCollective::group(devices.len(), timeout)
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Collective>)
        .collect())
}

/// [`train_data_parallel`] with the ranks' collectives given, one per rank in rank order (tests
/// wrap the in-process ones to make a rank fail).
pub fn train_ranks(
    model: &mut Llama,
    replicas: Vec<Llama>,
    collectives: Vec<Box<dyn Collective>>,
    run: TrainRun<'_>,
    options: &ParallelOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Adapter, TrainSummary)> {
    let world = collectives.len();
    let ranks_ok = collectives
        .iter()
        .enumerate()
        .all(|(i, c)| c.rank() == i && c.world_size() == world);
    if world != replicas.len() + 1 || !ranks_ok {
        return Err(Error::InvalidRequest(format!(
            "data-parallel run: {} models but {world} collectives (ranks must be 0..{world} in order)",
            replicas.len() + 1
        )));
    }
    let mut collectives = collectives.into_iter();
    let root = collectives.next().expect("world >= 1: checked above");
    let (sender, results) = mpsc::channel();
    for (replica, collective) in replicas.into_iter().zip(collectives) {
        spawn_rank(replica, collective, &run, sender.clone())?;
    }
    drop(sender);
    let root_result = run_guarded(&*root, |c| {
        train_rank(model, run, SaveFault::default(), Some(c), progress)
    });
    let others = collect(results, world, options.timeout);
    outcome(root_result, others, world, options.timeout)
}

/// Starts rank `collective.rank()` on its own thread with its own copy of the run's data; it sends
/// its result (no adapter: rank 0's is the run's) when it stops.
fn spawn_rank(
    mut replica: Llama,
    collective: Box<dyn Collective>,
    run: &TrainRun<'_>,
    results: mpsc::Sender<(usize, Result<()>)>,
) -> Result<()> {
    let rank = collective.rank();
    let train_data = run.train_data.clone();
    let eval_data = run.eval_data.cloned();
    let (config, out_dir, resume) = (run.config.clone(), run.out_dir.clone(), run.resume.clone());
    let (stop_after_steps, engine) = (run.stop_after_steps, run.engine);
    std::thread::Builder::new()
        .name(format!("wick-rank-{rank}"))
        .spawn(move || {
            let run = TrainRun {
                train_data: &train_data,
                eval_data: eval_data.as_ref(),
                config,
                out_dir,
                resume,
                stop_after_steps,
                engine,
            };
            let result = run_guarded(&*collective, |c| {
                train_rank(
                    &mut replica,
                    run,
                    SaveFault::default(),
                    Some(c),
                    &mut |_| {},
                )
            });
            // The runner may have stopped listening (it gave up on this rank): nothing to do then.
            let _ = results.send((rank, result.map(|_| ())));
        })
        .map_err(|e| Error::InvalidRequest(format!("starting the thread of rank {rank}: {e}")))?;
    Ok(())
}

/// Runs one rank's part; an error or a panic aborts the group with its message first, so that the
/// other ranks stop at their next collective operation instead of waiting for this one.
fn run_guarded<T>(
    collective: &dyn Collective,
    part: impl FnOnce(&dyn Collective) -> Result<T>,
) -> Result<T> {
    let rank = collective.rank();
    let result = catch_unwind(AssertUnwindSafe(|| part(collective))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(rank_failed(
            rank,
            collective.world_size(),
            format!("panicked: {message}"),
        ))
    });
    if let Err(e) = &result {
        // The reason alone when the error already names this rank (a panic), so that the other
        // ranks' `RankFailed` does not repeat its prefix.
        match e {
            Error::RankFailed {
                rank: r, reason, ..
            } if *r == rank => collective.abort(reason),
            other => collective.abort(&other.to_string()),
        }
    }
    result
}

/// The results of ranks 1.. as they stop, waiting at most `timeout` after rank 0 stopped; `None`
/// for a rank that did not stop in time.
fn collect(
    results: mpsc::Receiver<(usize, Result<()>)>,
    world: usize,
    timeout: Duration,
) -> Vec<Option<Result<()>>> {
    let mut got: Vec<Option<Result<()>>> = (0..world).map(|_| None).collect();
    let deadline = Instant::now() + timeout;
    for _ in 1..world {
        let left = deadline.saturating_duration_since(Instant::now());
        match results.recv_timeout(left) {
            Ok((rank, result)) => got[rank] = Some(result),
            Err(_) => break,
        }
    }
    got
}

/// The run's result: rank 0's when every rank succeeded; otherwise the first failure's cause,
/// naming its rank (a rank's own error, not the `RankFailed` echo the others saw).
fn outcome(
    root: Result<(Adapter, TrainSummary)>,
    others: Vec<Option<Result<()>>>,
    world: usize,
    timeout: Duration,
) -> Result<(Adapter, TrainSummary)> {
    let mut errors: Vec<(usize, Error)> = Vec::new();
    let root = match root {
        Ok(done) => Some(done),
        Err(e) => {
            errors.push((0, e));
            None
        }
    };
    for (rank, result) in others.into_iter().enumerate().skip(1) {
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => errors.push((rank, e)),
            None => errors.push((
                rank,
                rank_failed(
                    rank,
                    world,
                    format!("did not stop within {timeout:.0?} (hung?)"),
                ),
            )),
        }
    }
    let Some((rank, error)) = root_cause(errors) else {
        return root.ok_or_else(|| rank_failed(0, world, "stopped without a result"));
    };
    Err(match error {
        // A divergence is every rank's (they reduce the same loss): not one rank's failure.
        Error::RankFailed { .. } | Error::Diverged { .. } => error,
        other => rank_failed(rank, world, other.to_string()),
    })
}

/// The error that started the failure: the lowest rank's own error if any rank had one, else
/// the lowest rank's `RankFailed` (a timeout or panic, which names the rank it blames).
fn root_cause(errors: Vec<(usize, Error)>) -> Option<(usize, Error)> {
    let own = errors
        .iter()
        .position(|(_, e)| !matches!(e, Error::RankFailed { .. }));
    let mut errors = errors;
    match own {
        Some(i) => Some(errors.swap_remove(i)),
        None => errors.into_iter().next(),
    }
}
