//! CUDA graphs: record a sequence of launches on a device's stream once, replay it many times for
//! the cost of one launch.
//!
//! What may run inside `capture`: kernel launches and cuBLASLt products on tensors that already
//! exist (`cublaslt::matmul_into`, in-place ops). Not: host/device copies (Candle refuses them during
//! capture), reading a value on the host, or allocating (a graph replays the addresses it recorded,
//! so every buffer it touches must outlive it and stay where it is). When capture fails, the reason
//! is returned and logged, and the caller runs the same work eagerly.

use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::Device;

use crate::{Error, Result};

/// A captured, instantiated graph bound to one device's stream.
pub struct Graph {
    graph: CudaGraph,
}

fn graph_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Candle {
        context: format!("CUDA graph {what}"),
        source: candle_core::Error::Msg(err.to_string()),
    }
}

/// Runs `work` once while recording its launches on `device`'s stream, and returns the graph with
/// what `work` returned. The work itself is not executed during capture: replay the graph to run it.
pub fn capture<R>(device: &Device, work: impl FnOnce() -> Result<R>) -> Result<(Graph, R)> {
    let Device::Cuda(cuda) = device else {
        return Err(graph_error(
            "capture",
            format!("needs a CUDA device, got {device:?}"),
        ));
    };
    let stream = cuda.cuda_stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| graph_error("begin capture", format!("{e:?}")))?;
    let result = work();
    // End the capture whatever happened, so the stream is usable again.
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    let value = result
        .inspect_err(|err| tracing::warn!("CUDA graph capture failed, running eagerly: {err}"))?;
    match ended {
        Ok(Some(graph)) => Ok((Graph { graph }, value)),
        Ok(None) => Err(graph_error("end capture", "nothing was captured")),
        Err(e) => {
            tracing::warn!("CUDA graph instantiation failed, running eagerly: {e:?}");
            Err(graph_error("end capture", format!("{e:?}")))
        }
    }
}

impl Graph {
    /// Launches the recorded work once more, asynchronously on the stream it was captured on.
    pub fn replay(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(|e| graph_error("launch", format!("{e:?}")))
    }

    /// Uploads the graph's resources so the first replay costs no more than the next ones.
    pub fn upload(&self) -> Result<()> {
        self.graph
            .upload()
            .map_err(|e| graph_error("upload", format!("{e:?}")))
    }
}
