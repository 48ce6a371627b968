//! How a decode engine's fixed step runs: captured as a CUDA graph on first use and replayed, or
//! launched eagerly (capture failed, `WICK_CUDA_GRAPH=0`, or forced for a comparison), with the
//! reason kept. Shared by the batch-1 engine and the batch engine.

use candle_core::Device;

use crate::gpu::graph::{self, Graph};
use crate::Result;

/// How steps run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMode {
    /// Not decided yet: the first step tries to capture.
    Pending,
    /// Replaying the captured graph.
    Graph,
    /// Launching eagerly, for the reason given (capture failed or was turned off).
    Eager(String),
}

/// The captured step (if any) and the mode.
pub struct StepGraph {
    /// Names the engine in log lines.
    engine: &'static str,
    graph: Option<Graph>,
    mode: StepMode,
}

impl StepGraph {
    /// Pending, or eager when `WICK_CUDA_GRAPH=0`.
    pub fn new(engine: &'static str) -> Self {
        let mode = if std::env::var("WICK_CUDA_GRAPH").is_ok_and(|v| v == "0") {
            StepMode::Eager("WICK_CUDA_GRAPH=0".into())
        } else {
            StepMode::Pending
        };
        Self {
            engine,
            graph: None,
            mode,
        }
    }

    /// A stand-in left in the engine while its step graph runs (`std::mem::replace`): the closure
    /// that launches the step borrows the engine, so the graph cannot stay inside it meanwhile.
    pub fn stand_in(engine: &'static str) -> Self {
        Self {
            engine,
            graph: None,
            mode: StepMode::Pending,
        }
    }

    /// Drops the captured step (the kernels it launches changed): the next step captures again,
    /// as a new one would (eager when `WICK_CUDA_GRAPH=0`).
    pub fn recapture(&mut self) {
        *self = Self::new(self.engine);
    }

    pub fn mode(&self) -> &StepMode {
        &self.mode
    }

    /// The captured graph, if any (whatever the mode).
    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// Launches every later step eagerly (the graph, if any, is kept).
    pub fn force_eager(&mut self, reason: &str) {
        self.mode = StepMode::Eager(reason.into());
    }

    /// Replays the graph again from the next step, when one was captured.
    pub fn use_graph(&mut self) {
        if self.graph.is_some() {
            self.mode = StepMode::Graph;
        }
    }

    /// Runs one step: the first captures `launch` (eager from then on, with the reason logged, when
    /// that fails), later ones replay the graph, or call `launch` when eager.
    pub fn run(&mut self, device: &Device, launch: impl Fn() -> Result<()>) -> Result<()> {
        if self.mode == StepMode::Pending {
            match graph::capture(device, &launch).and_then(|(g, ())| g.upload().map(|()| g)) {
                Ok(g) => {
                    self.graph = Some(g);
                    self.mode = StepMode::Graph;
                }
                Err(e) => {
                    tracing::warn!("{}: no CUDA graph, running eagerly: {e}", self.engine);
                    self.mode = StepMode::Eager(format!("graph capture failed: {e}"));
                }
            }
        }
        match &self.graph {
            Some(g) if self.mode == StepMode::Graph => g.replay(),
            _ => launch(),
        }
    }
}
