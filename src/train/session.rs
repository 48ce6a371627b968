//! The training loop of one rank: [`train_rank`] runs a whole run (`trainer::train`) or one rank's
//! part of a data-parallel run (`train::parallel`). A `Session` holds what lives through the run
//! (adapter, optimizer or CUDA engine, step counters, metrics file); the loop around it evaluates,
//! checkpoints and reports progress. In a data-parallel run only rank 0 writes files and reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};

use super::checkpoint::{
    load_checkpoint, remove_stale_temporaries, save_checkpoint, SaveFault, TrainerState,
};
use super::data::{Batch, Dataset};
use super::engine_steps::{EnginePolicy, EngineSteps};
use super::metrics::{read_metrics, MetricRecord, MetricsWriter};
use super::optimizer::AdamW;
use super::parallel::Collective;
use super::schedule::Schedule;
use super::trainer::{
    candle_step, evaluate, MaskSeeds, Progress, TrainConfig, TrainRun, TrainSummary,
};
use crate::lora::{attach, peft_io, Adapter};
use crate::models::llama::Llama;
use crate::models::seeded_dropout::DropoutSeed;
use crate::{Error, Result};

/// The training loop of one rank: the whole run when `collective` is `None`, else this rank's part
/// of a data-parallel run (`train::parallel`), where only rank 0 writes files and reports progress.
pub(crate) fn train_rank(
    model: &mut Llama,
    run: TrainRun<'_>,
    fault: SaveFault,
    collective: Option<&dyn Collective>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Adapter, TrainSummary)> {
    let mut session = Session::start(model, &run, fault, collective)?;
    let config = session.config.clone();
    progress(&Progress::Start {
        step: session.state.step,
        total_steps: config.total_steps,
        trainable_parameters: session.adapter.num_parameters(),
    });
    let per_epoch = run.train_data.batches_per_epoch(config.batch_size);
    let started = Instant::now();
    let mut losses = Vec::new();
    let mut tokens_this_run = 0usize;
    let mut final_eval_loss = None;
    let stop_at = run.stop_after_steps.map_or(config.total_steps, |n| {
        (session.state.step + n).min(config.total_steps)
    });
    while session.state.step < stop_at {
        let record = session.step(model, run.train_data)?;
        let step = session.state.step;
        losses.push(record.loss);
        tokens_this_run += record.tokens;
        let tokens_per_s = record.tokens as f64 / record.seconds.max(1e-9);
        session.write_metrics(&MetricRecord::Train {
            step,
            epoch: session.state.micro_batches as f64 / per_epoch as f64,
            loss: record.loss,
            lr: record.lr,
            grad_norm: record.grad_norm,
            tokens: record.tokens,
            tokens_per_s,
            elapsed_s: started.elapsed().as_secs_f64(),
        })?;
        progress(&Progress::Step {
            step,
            total_steps: config.total_steps,
            loss: record.loss,
            lr: record.lr,
            grad_norm: record.grad_norm,
            tokens_per_s,
        });
        let last = step == config.total_steps;
        if let Some(eval_data) = run.eval_data {
            if last || config.eval_every.is_some_and(|n| step % n == 0) {
                let eval_loss = session.evaluate(model, eval_data)?;
                session.write_metrics(&MetricRecord::Eval { step, eval_loss })?;
                progress(&Progress::Eval { step, eval_loss });
                if last {
                    final_eval_loss = Some(eval_loss);
                }
            }
        }
        let save_due = config
            .save_every
            .is_some_and(|n| step % n == 0 || last || step == stop_at);
        if save_due {
            if let Some(dir) = session.save_checkpoint(&run.out_dir)? {
                progress(&Progress::Checkpoint { step, dir });
            }
        }
    }
    let summary = TrainSummary {
        losses,
        final_eval_loss,
        adapter_dir: run.out_dir.clone(),
        steps: session.state.step,
        tokens: tokens_this_run,
        seconds: started.elapsed().as_secs_f64(),
        engine_mode: session.engine.as_ref().map(|e| e.mode.clone()),
    };
    session.finish(&run.out_dir, summary)
}

/// What one rank holds through a run: the adapter being trained, its optimizer (or the CUDA
/// engine), the step counters and, on rank 0 only, the metrics file.
struct Session<'c> {
    adapter: Adapter,
    config: TrainConfig,
    state: TrainerState,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    engine: Option<EngineSteps>,
    schedule: Schedule,
    /// `metrics.jsonl`; `None` on ranks other than 0.
    metrics: Option<MetricsWriter>,
    last_checkpoint: Option<PathBuf>,
    collective: Option<&'c dyn Collective>,
    fault: SaveFault,
    /// The model's LoRA dropout seed, when an adapted projection has dropout (Candle's path).
    dropout_seed: Option<DropoutSeed>,
}

/// What one optimizer step did.
struct StepRecord {
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens: usize,
    seconds: f64,
}

impl<'c> Session<'c> {
    /// Attaches a fresh adapter (or restores a checkpoint's) and builds the optimizer and, where
    /// it applies, the CUDA engine.
    fn start(
        model: &mut Llama,
        run: &TrainRun<'_>,
        fault: SaveFault,
        collective: Option<&'c dyn Collective>,
    ) -> Result<Self> {
        let device = model.device().clone();
        let root = collective.is_none_or(|c| c.rank() == 0);
        if root {
            std::fs::create_dir_all(&run.out_dir).map_err(crate::error::io_error(&run.out_dir))?;
            remove_stale_temporaries(&run.out_dir)?;
        }
        let (adapter, config, state, optimizer_state) = attach_or_resume(model, run)?;
        let seed = DropoutSeed::default();
        let dropout_seed = model.use_seeded_dropout(&seed).then_some(seed);
        let vars = adapter.vars();
        let mut optimizer = AdamW::new(vars.clone(), config.adamw)?;
        if let Some(tensors) = &optimizer_state {
            optimizer.load_state(tensors, state.step)?;
        }
        let policy = match collective {
            Some(_) if run.engine == EnginePolicy::Auto && device.is_cuda() => {
                tracing::info!(
                    "data-parallel training runs Candle's autograd on every rank (the CUDA \
                     training engine has no all-reduce yet)"
                );
                EnginePolicy::Off
            }
            Some(_) => EnginePolicy::Off,
            None => run.engine,
        };
        let engine = EngineSteps::start(
            model,
            &adapter,
            &config,
            run.train_data,
            policy,
            optimizer_state.as_ref(),
            state.step,
        )?;
        let schedule = Schedule {
            kind: config.scheduler,
            lr: config.lr,
            warmup_steps: config.warmup_steps,
            total_steps: config.total_steps,
        };
        let metrics = match root {
            true => Some(MetricsWriter::open(
                &run.out_dir.join(METRICS_FILE),
                state.step,
            )?),
            false => None,
        };
        let last_checkpoint = run
            .resume
            .as_ref()
            .and_then(|p| super::checkpoint::resolve_checkpoint(p).ok());
        Ok(Self {
            adapter,
            config,
            state,
            vars,
            optimizer,
            engine,
            schedule,
            metrics,
            last_checkpoint,
            collective,
            fault,
            dropout_seed,
        })
    }

    fn is_root(&self) -> bool {
        self.collective.is_none_or(|c| c.rank() == 0)
    }

    /// One optimizer step over the next `grad_accum` micro-batches of `data`.
    fn step(&mut self, model: &Llama, data: &Dataset) -> Result<StepRecord> {
        let started = Instant::now();
        let config = &self.config;
        let micro: Vec<(Batch, Vec<usize>)> = (0..config.grad_accum)
            .map(|k| {
                let index = self.state.micro_batches + k;
                data.batch(config.seed, config.batch_size, index, config.shuffle)
            })
            .collect();
        let tokens: usize = micro.iter().map(|(b, l)| b.real_tokens(l)).sum();
        let lr = self.schedule.lr_at(self.state.step);
        let vars = &self.vars;
        let masks = self.dropout_seed.as_ref().map(|seed| MaskSeeds {
            seed,
            step: self.state.step as u64 + 1,
            first_micro: 0,
        });
        let (loss, grad_norm) = match (self.engine.as_mut(), self.collective) {
            (Some(engine), _) => engine.step(&micro, lr, config.max_grad_norm)?,
            (None, Some(collective)) => super::parallel::step::data_parallel_step(
                model,
                vars,
                &mut self.optimizer,
                config,
                &micro,
                lr,
                collective,
                masks,
            )?,
            (None, None) => {
                candle_step(model, vars, &mut self.optimizer, config, &micro, lr, masks)?
            }
        };
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::Diverged {
                step: self.state.step + 1,
                loss: loss as f32,
                checkpoint: self.last_checkpoint.clone(),
            });
        }
        self.state.step += 1;
        self.state.micro_batches += config.grad_accum;
        self.state.tokens_seen += tokens;
        Ok(StepRecord {
            loss,
            lr,
            grad_norm,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn write_metrics(&mut self, record: &MetricRecord) -> Result<()> {
        match &mut self.metrics {
            Some(metrics) => metrics.write(record),
            None => Ok(()),
        }
    }

    /// Eval loss on `data` with the adapter as it is; in a data-parallel run every rank takes its
    /// share of the batches.
    fn evaluate(&self, model: &Llama, data: &Dataset) -> Result<f64> {
        if let Some(engine) = &self.engine {
            engine.store_params(&self.adapter)?;
        }
        match self.collective {
            Some(c) => {
                super::parallel::step::evaluate_sharded(model, data, self.config.batch_size, c)
            }
            None => evaluate(model, data, self.config.batch_size),
        }
    }

    /// Writes `OUT/checkpoint-{step}` on rank 0 (every rank holds the same adapter and moments);
    /// `None` on the other ranks.
    fn save_checkpoint(&mut self, out_dir: &Path) -> Result<Option<PathBuf>> {
        if !self.is_root() {
            return Ok(None);
        }
        let optimizer_tensors = match &self.engine {
            Some(engine) => {
                engine.store_params(&self.adapter)?;
                engine.optimizer_state()?
            }
            None => self.optimizer.state_tensors(),
        };
        let dir = save_checkpoint(
            out_dir,
            &self.adapter,
            optimizer_tensors,
            &self.state,
            self.config.keep_last,
            self.fault,
        )?;
        self.last_checkpoint = Some(dir.clone());
        Ok(Some(dir))
    }

    /// Saves the final adapter and the loss curve (rank 0) and hands the adapter back.
    fn finish(self, out_dir: &Path, summary: TrainSummary) -> Result<(Adapter, TrainSummary)> {
        if let Some(engine) = &self.engine {
            engine.store_params(&self.adapter)?;
        }
        if self.is_root() {
            let mut final_adapter = self.adapter.clone();
            final_adapter.config.inference_mode = true;
            peft_io::save_adapter(&final_adapter, out_dir)?;
            let records = read_metrics(&out_dir.join(METRICS_FILE))?;
            if let Err(e) = super::plot::write_loss_curve(&out_dir.join("loss.png"), &records) {
                tracing::warn!("loss curve not written: {e}");
            }
        }
        Ok((self.adapter, summary))
    }
}

/// The metrics file of a run's output directory.
const METRICS_FILE: &str = "metrics.jsonl";

/// A fresh adapter attached with the run's config, or the checkpoint's adapter, config, state and
/// AdamW moments when the run resumes.
#[allow(clippy::type_complexity)]
fn attach_or_resume(
    model: &mut Llama,
    run: &TrainRun<'_>,
) -> Result<(
    Adapter,
    TrainConfig,
    TrainerState,
    Option<HashMap<String, Tensor>>,
)> {
    let device = model.device().clone();
    if let Some(path) = &run.resume {
        let ckpt = load_checkpoint(path, &device)?;
        ckpt.adapter.apply(model.linear_layers_mut(), &ckpt.dir)?;
        tracing::info!(
            "resuming from {} at step {}",
            ckpt.dir.display(),
            ckpt.state.step
        );
        let config = ckpt.state.config.clone();
        return Ok((ckpt.adapter, config, ckpt.state, Some(ckpt.optimizer)));
    }
    run.config.check()?;
    let adapter = attach(
        run.config.lora.clone(),
        model.linear_layers_mut(),
        run.config.seed,
        &device,
    )?;
    let state = TrainerState {
        step: 0,
        micro_batches: 0,
        tokens_seen: 0,
        config: run.config.clone(),
        wick_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Ok((adapter, run.config.clone(), state, None))
}
