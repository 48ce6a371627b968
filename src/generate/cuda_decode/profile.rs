//! Where the time of one decode step goes (`wick bench overhead`, issue 8): the host time to issue a
//! step eagerly (one launch per kernel) and as one graph replay, the GPU time of the step both ways,
//! the GPU time per kernel kind (eager, CUDA events between the launches), and what a token costs
//! when the host waits for it (`step` + `greedy`, as generation does).
//!
//! GPU times are measured with the work queued behind a spin kernel (`gpu::small_matmul::spin`), so
//! the launches run back to back and the events time the GPU alone, not the host's issue rate. The
//! profiled launches repeat the engine's last step (same token and position, so the same cache row
//! and logits are rewritten): the engine's state is unchanged by profiling.

use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent, CudaStream};
use candle_core::Device;
use serde::Serialize;

use super::DecodeEngine;
use crate::gpu::engine_error::EngineErrors;
use crate::{Error, Result};

const ERR: EngineErrors = EngineErrors("decode step profile");

/// GPU time of one kernel kind within a step.
#[derive(Debug, Clone, Serialize)]
pub struct KindTime {
    /// "qmv q/k/v", "rope_attention", "qmv_swiglu gate/up", ... (the marks of
    /// `DecodeEngine::launch_step_marked`).
    pub kind: String,
    /// Launches of this kind per step.
    pub launches: usize,
    /// GPU microseconds per step spent in this kind (mean over the profiled steps).
    pub gpu_us: f64,
}

/// The breakdown of one step; all times in microseconds per step.
#[derive(Debug, Clone, Serialize)]
pub struct StepProfile {
    /// Cache position of the profiled step.
    pub position: usize,
    /// Kernel launches per eager step.
    pub launches: usize,
    /// Host time to issue one eager step (every launch, no wait), median.
    pub eager_issue_us: f64,
    /// Host time to issue one graph replay, median; `None` without a graph.
    pub graph_issue_us: Option<f64>,
    /// GPU time of one eager step (launches back to back behind a spin kernel), best of the runs.
    pub eager_gpu_us: f64,
    /// GPU time of one graph replay, best of the runs.
    pub graph_gpu_us: Option<f64>,
    /// Sum of the per-kind times (eager, with an event between every two launches).
    pub eager_kinds_gpu_us: f64,
    /// Per kernel kind, in launch order of first appearance.
    pub kinds: Vec<KindTime>,
    /// `step` + `greedy` per token, eager: upload of token and position, launches, wait, 8-byte read.
    pub eager_token_us: f64,
    /// The same through the graph (what `wick generate` pays per token).
    pub graph_token_us: Option<f64>,
    /// Waiting on an idle stream and reading the 8-byte result (`greedy` alone): the fixed cost of
    /// synchronising once per token.
    pub sync_read_us: f64,
}

/// GPU cycles of the spin kernel: ~3 ms at 1.98 GHz, longer than the host takes to issue one
/// eager step with an event after each launch (~160 launches and events at a few us each).
const SPIN_CYCLES: i64 = 6_000_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Timer<'a> {
    device: &'a candle_core::CudaDevice,
    stream: std::sync::Arc<CudaStream>,
}

impl<'a> Timer<'a> {
    /// A timer on `device`'s stream (CUDA only).
    fn on(device: &'a Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::InvalidRequest(format!(
                "decode step profile needs a CUDA device, got {device:?}"
            )));
        };
        Ok(Self {
            device: cuda,
            stream: cuda.cuda_stream(),
        })
    }

    fn event(&self) -> Result<CudaEvent> {
        self.stream
            .context()
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| ERR.driver("event", e))
    }

    fn record(&self, e: &CudaEvent) -> Result<()> {
        e.record(&self.stream).map_err(|e| ERR.driver("record", e))
    }

    fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| ERR.driver("synchronize", e))
    }

    fn spin(&self) -> Result<()> {
        crate::gpu::small_matmul::spin(self.device, SPIN_CYCLES)
    }

    /// GPU microseconds of `work` queued behind the spin kernel, best of `reps`.
    fn gpu_us(&self, reps: usize, work: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let (start, end) = (self.event()?, self.event()?);
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            self.sync()?;
            self.spin()?;
            self.record(&start)?;
            work()?;
            self.record(&end)?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| ERR.driver("elapsed", e))?;
            best = best.min(ms as f64 * 1e3);
        }
        Ok(best)
    }

    /// Host microseconds to issue `work` on an idle stream (no wait inside), median of `reps`.
    fn issue_us(&self, reps: usize, work: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            self.sync()?;
            let t = Instant::now();
            work()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        self.sync()?;
        Ok(median(times))
    }
}

/// One eager step's launches, calling `mark(kind)` after each (an engine's `launch_step_marked`).
pub type MarkedStep<'a> = dyn FnMut(&mut dyn FnMut(&'static str) -> Result<()>) -> Result<()> + 'a;

/// GPU time per launch kind of one eager step: an event before the first launch and after each
/// one, all behind one spin, averaged over `reps` steps; with the launches per step.
fn kind_times(
    timer: &Timer,
    launch: &mut MarkedStep,
    reps: usize,
) -> Result<(usize, Vec<KindTime>)> {
    let mut kinds: Vec<KindTime> = Vec::new();
    let launches = {
        let mut count = 0usize;
        launch(&mut |_| {
            count += 1;
            Ok(())
        })?;
        count
    };
    let events: Vec<CudaEvent> = (0..=launches)
        .map(|_| timer.event())
        .collect::<Result<_>>()?;
    let mut totals: Vec<(&'static str, usize, f64)> = Vec::new();
    for _ in 0..reps {
        timer.sync()?;
        timer.spin()?;
        timer.record(&events[0])?;
        let mut order: Vec<&'static str> = Vec::with_capacity(launches);
        let mut i = 0usize;
        launch(&mut |kind| {
            i += 1;
            order.push(kind);
            timer.record(&events[i.min(launches)])
        })?;
        for (j, kind) in order.iter().enumerate() {
            let ms = events[j]
                .elapsed_ms(&events[j + 1])
                .map_err(|e| ERR.driver("elapsed", e))?;
            match totals.iter_mut().find(|(k, _, _)| k == kind) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += ms as f64 * 1e3;
                }
                None => totals.push((kind, 1, ms as f64 * 1e3)),
            }
        }
    }
    for (kind, count, us) in totals {
        kinds.push(KindTime {
            kind: kind.to_string(),
            launches: count / reps,
            gpu_us: us / reps as f64,
        });
    }
    Ok((launches, kinds))
}

/// GPU time per kernel kind of the step `launch` repeats (any engine's `launch_step_marked`, after
/// at least one real step so that it repeats a valid one): eager, an event after each launch, mean
/// of `reps` steps queued behind a spin kernel.
pub fn kind_profile(
    device: &Device,
    reps: usize,
    launch: &mut MarkedStep,
) -> Result<Vec<KindTime>> {
    let timer = Timer::on(device)?;
    Ok(kind_times(&timer, launch, reps.max(1))?.1)
}

/// Profiles the engine's step on `device` (the engine's device): `warmup` tokens are stepped first
/// (the first step captures the graph, unless the engine is eager), then each measure runs `reps`
/// times. The engine is left in the mode it had (graph when one was captured and not forced off).
pub fn profile_step(
    engine: &mut DecodeEngine,
    device: &Device,
    warmup: usize,
    reps: usize,
) -> Result<StepProfile> {
    let timer = Timer::on(device)?;
    let reps = reps.max(1);
    let vocab = engine.shape().vocab as u32;
    let mut token = 1u32.min(vocab.saturating_sub(1));
    let next_token = |t: u32| (t.wrapping_mul(7919).wrapping_add(13)) % vocab.max(1);
    for _ in 0..warmup.max(1) {
        engine.step(token)?;
        token = next_token(token);
    }
    engine.synchronize()?;
    let was_graph = engine.mode() == &super::engine::StepMode::Graph;
    let position = engine.position().saturating_sub(1);

    let mut noop = |_: &'static str| -> Result<()> { Ok(()) };
    let eager_issue_us = timer.issue_us(reps, &mut || engine.launch_step_marked(&mut noop))?;
    let eager_gpu_us = timer.gpu_us(reps, &mut || engine.launch_step_marked(&mut noop))?;
    let (graph_issue_us, graph_gpu_us) = if was_graph {
        let mut replay = || engine.replay_last_step().map(|_| ());
        (
            Some(timer.issue_us(reps, &mut replay)?),
            Some(timer.gpu_us(reps, &mut replay)?),
        )
    } else {
        (None, None)
    };

    let (launches, kinds) = kind_times(
        &timer,
        &mut |mark: &mut dyn FnMut(&'static str) -> Result<()>| engine.launch_step_marked(mark),
        reps,
    )?;
    let eager_kinds_gpu_us = kinds.iter().map(|k| k.gpu_us).sum();

    // Per token as generation pays it: step (upload + launches) and greedy (wait + read).
    let per_token = |engine: &mut DecodeEngine, token: &mut u32| -> Result<f64> {
        engine.synchronize()?;
        let t = Instant::now();
        for _ in 0..reps {
            engine.step(*token)?;
            *token = engine.greedy()?.0 % vocab.max(1);
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / reps as f64)
    };
    let graph_token_us = if was_graph {
        Some(per_token(engine, &mut token)?)
    } else {
        None
    };
    engine.force_eager("profiling the eager step");
    let eager_token_us = per_token(engine, &mut token)?;
    if was_graph {
        engine.use_graph();
    }
    let sync_read_us = {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            engine.synchronize()?;
            let t = Instant::now();
            engine.greedy()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        median(times)
    };
    Ok(StepProfile {
        position,
        launches,
        eager_issue_us,
        graph_issue_us,
        eager_gpu_us,
        graph_gpu_us,
        eager_kinds_gpu_us,
        kinds,
        eager_token_us,
        graph_token_us,
        sync_read_us,
    })
}

/// The profile as a markdown section (for the overhead report).
pub fn markdown(p: &StepProfile, title: &str) -> String {
    let opt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
    let mut md = format!(
        "### {title}\n\nPosition {}, {} launches per eager step. Microseconds per step.\n\n\
         | | eager (one launch per kernel) | CUDA graph (one replay) |\n|---|---|---|\n",
        p.position, p.launches
    );
    md.push_str(&format!(
        "| host: issue the step (no wait) | {:.1} | {} |\n",
        p.eager_issue_us,
        opt(p.graph_issue_us)
    ));
    md.push_str(&format!(
        "| GPU: the step, launches back to back | {:.1} | {} |\n",
        p.eager_gpu_us,
        opt(p.graph_gpu_us)
    ));
    md.push_str(&format!(
        "| per token as generation pays it (step + greedy: upload, launches, wait, read) | {:.1} | {} |\n",
        p.eager_token_us,
        opt(p.graph_token_us)
    ));
    md.push_str(&format!(
        "| synchronise an idle stream + read 8 bytes (`greedy` alone) | {:.1} | {:.1} |\n\n",
        p.sync_read_us, p.sync_read_us
    ));
    md.push_str("| kernel kind (eager, events between launches) | launches | GPU us per step | share |\n|---|---|---|---|\n");
    for k in &p.kinds {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.0}% |\n",
            k.kind,
            k.launches,
            k.gpu_us,
            100.0 * k.gpu_us / p.eager_kinds_gpu_us.max(f64::MIN_POSITIVE)
        ));
    }
    md.push_str(&format!(
        "| total (events add a small gap per launch) | {} | {:.1} | |\n",
        p.launches, p.eager_kinds_gpu_us
    ));
    md
}
