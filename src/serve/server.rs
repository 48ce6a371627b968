//! Putting the server together: load the model, the adapters and the embedder, start the
//! scheduler, route the endpoints (bearer auth on `/v1/*`), and serve until a shutdown signal:
//! stop accepting, let running requests finish for up to the grace period, then cancel the rest.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use candle_core::Device;

use super::adapters::AdapterSet;
use super::batch::{BatchDecoder, CpuBatchDecoder};
use super::completions::{chat, completion};
use super::endpoints;
use super::error::ApiError;
use super::metrics::Metrics;
use super::scheduler::{Scheduler, SchedulerConfig};
use super::state::AppState;
use super::validate::Limits;
use crate::embed::Embedder;
use crate::formats::LoadOptions;
use crate::generate::TextModel;
use crate::{Error, Result};

/// Everything `wick serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A GGUF file or HF directory.
    pub model: PathBuf,
    /// Where generation runs: the CPU (`CpuBatchDecoder`) or a CUDA device (`CudaBatchDecoder`,
    /// feature `cuda`; at most `MAX_DECODE_BATCH` sequences per step).
    pub device: Device,
    /// Largest adapter rank the GPU adapter pool holds (`None`: 16, or the largest rank among
    /// `adapters`).
    pub max_lora_rank: Option<usize>,
    /// Tokens a sequence may hold, below the model's context (`None`: the model's; on the GPU at
    /// most `MAX_SEQ_CAP`); the GPU engine's KV caches are sized for it.
    pub max_context: Option<usize>,
    /// The base model's id in the API (default: the file name without extension).
    pub model_id: Option<String>,
    /// `None`: GGUF weights stay quantized (the fast CPU path); `Some(dt)`: every weight dense in dt.
    pub dtype: Option<candle_core::DType>,
    /// Adapters loaded at start, pinned (never evicted): (name, PEFT directory).
    pub adapters: Vec<(String, PathBuf)>,
    /// `default` or a sentence-transformers directory, for `/v1/embeddings`.
    pub embed_model: Option<String>,
    /// Adapters in memory at most (LRU eviction of unpinned ones beyond).
    pub max_adapters: usize,
    /// Sequences per batch step at most.
    pub max_batch: usize,
    /// Requests waiting for a batch slot at most (429 beyond).
    pub max_queue: usize,
    /// Prompt tokens read per step at most (longer prompts are read in pieces).
    pub prefill_chunk: usize,
    /// Bytes of prompt-prefix keys and values the CPU decoder keeps for reuse (0: no prefix cache).
    pub prefix_cache_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` of a request that gives none.
    pub default_max_tokens: usize,
    /// A request still unfinished after this long ends with a 504 / an error event.
    pub request_timeout: Duration,
    /// After a shutdown signal, how long running requests may take before they are cancelled.
    pub shutdown_grace: Duration,
    /// Required as `Authorization: Bearer <key>` on `/v1/*` when set.
    pub api_key: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            device: Device::Cpu,
            max_lora_rank: None,
            max_context: None,
            model_id: None,
            dtype: None,
            adapters: Vec::new(),
            embed_model: None,
            max_adapters: 8,
            max_batch: 8,
            max_queue: 64,
            prefill_chunk: 256,
            prefix_cache_bytes: super::batch::DEFAULT_PREFIX_CACHE_BYTES,
            max_tokens: 4096,
            default_max_tokens: 512,
            request_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            api_key: None,
        }
    }
}

/// A loaded server, ready to serve on a listener.
pub struct Server {
    state: Arc<AppState>,
    scheduler: Scheduler,
    shutdown_grace: Duration,
}

impl Server {
    /// Loads the model (CPU, quantized where the file is), the adapters and the embedder, and
    /// starts the scheduler.
    pub fn load(config: &ServeConfig) -> Result<Self> {
        if config.adapters.len() > config.max_adapters {
            return Err(Error::InvalidOption {
                option: "max-adapters".into(),
                reason: format!(
                    "{} adapters given at start (pinned) but --max-adapters is {}",
                    config.adapters.len(),
                    config.max_adapters
                ),
            });
        }
        let options = LoadOptions {
            device: Device::Cpu,
            dtype: config.dtype,
        };
        let text = TextModel::open(&config.model, &options)?;
        let model_id = config.model_id.clone().unwrap_or_else(|| {
            config
                .model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "base".into())
        });
        let metrics = Arc::new(Metrics::default());
        let adapters = Arc::new(AdapterSet::new(
            text.model.linear_shapes(),
            vec![model_id.clone(), "base".into()],
            config.max_adapters,
            metrics.clone(),
        ));
        for (name, path) in &config.adapters {
            adapters
                .register(name, path, true)
                .map_err(|e| Error::InvalidOption {
                    option: "adapter".into(),
                    reason: e.message,
                })?;
        }
        let embedder = match &config.embed_model {
            Some(spec) => {
                let embedder = Embedder::load(spec, &Device::Cpu)?;
                let id = embedder
                    .model_dir()
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| spec.clone());
                Some((id, Arc::new(embedder)))
            }
            None => None,
        };
        let (decoder, context, max_batch) = if config.device.is_cuda() {
            gpu_decoder(config, &adapters)?
        } else {
            let decoder = CpuBatchDecoder::new(text.model.clone(), config.prefill_chunk)
                .with_prefix_cache(config.prefix_cache_bytes);
            let model_context = text.model.config().max_position_embeddings;
            let context = config
                .max_context
                .map_or(model_context, |c| c.min(model_context));
            (
                Box::new(decoder) as Box<dyn BatchDecoder>,
                context,
                config.max_batch,
            )
        };
        let (scheduler, submitter) = Scheduler::spawn(
            decoder,
            Arc::new(text.tokenizer.clone()),
            text.model.config().eos_token_ids.clone(),
            SchedulerConfig {
                max_batch: max_batch.max(1),
                max_queue: config.max_queue.max(1),
                context,
            },
            metrics.clone(),
        )?;
        let limits = Limits {
            context,
            max_tokens: config.max_tokens,
            default_max_tokens: config.default_max_tokens,
        };
        let state = Arc::new(AppState::new(
            model_id,
            Arc::new(text),
            adapters,
            submitter,
            embedder,
            limits,
            config.request_timeout,
            config.api_key.clone(),
            metrics,
        ));
        Ok(Self {
            state,
            scheduler,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The base model's id.
    pub fn model_id(&self) -> &str {
        &self.state.model_id
    }

    /// The endpoints.
    pub fn router(&self) -> Router {
        let v1 = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completion))
            .route("/v1/embeddings", post(endpoints::embeddings))
            .route("/v1/models", get(endpoints::models))
            .route("/v1/load_lora_adapter", post(endpoints::load_adapter))
            .route("/v1/unload_lora_adapter", post(endpoints::unload_adapter))
            .route_layer(middleware::from_fn_with_state(self.state.clone(), auth));
        Router::new()
            .merge(v1)
            .route("/health", get(endpoints::health))
            .route("/metrics", get(endpoints::metrics))
            .fallback(endpoints::fallback)
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting, lets running requests
    /// finish for up to the grace period, cancels what is left, and returns once the scheduler has
    /// stopped.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let router = self.router();
        let canceller = self.scheduler.canceller();
        let grace = self.shutdown_grace;
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutdown: no new connections; running requests get {grace:?}");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                canceller.store(true, Ordering::SeqCst);
            });
        };
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(signalled)
            .await;
        // The router's copies of the state are gone; this one holds the last queue sender.
        drop(self.state);
        let scheduler = self.scheduler;
        tokio::task::spawn_blocking(move || scheduler.join())
            .await
            .map_err(|e| Error::InvalidRequest(format!("joining the scheduler: {e}")))?;
        served.map_err(|e| Error::InvalidRequest(format!("serving: {e}")))
    }
}

/// The decoder on the CUDA batch decode engine for `config.device`, with the context (positions
/// per sequence) and batch it serves: rows = `max_batch` capped at the engine's 8, adapter slots at
/// `max_lora_rank` (default: 16, or the largest rank among the pinned adapters).
#[cfg(feature = "cuda")]
fn gpu_decoder(
    config: &ServeConfig,
    adapters: &AdapterSet,
) -> Result<(Box<dyn BatchDecoder>, usize, usize)> {
    use crate::generate::cuda_decode::MAX_SEQ_CAP;
    use crate::gpu::decode::launch::MAX_DECODE_BATCH;
    let files = crate::formats::open_model(
        &config.model,
        &LoadOptions {
            device: Device::Cpu,
            dtype: None,
        },
    )?;
    let rows = config.max_batch.clamp(1, MAX_DECODE_BATCH);
    if rows < config.max_batch {
        tracing::warn!(
            "--max-batch {} is more than the CUDA batch engine's {MAX_DECODE_BATCH} rows: {rows} \
             sequences run per step, the others wait in the queue",
            config.max_batch
        );
    }
    let pinned_rank = config
        .adapters
        .iter()
        .filter_map(|(name, _)| adapters.get(name).ok().flatten())
        .map(|a| a.rank())
        .max()
        .unwrap_or(0);
    let max_rank = config.max_lora_rank.unwrap_or(pinned_rank.max(16));
    if pinned_rank > max_rank {
        return Err(Error::InvalidOption {
            option: "max-lora-rank".into(),
            reason: format!("{max_rank} is below the rank {pinned_rank} of an --adapter"),
        });
    }
    adapters.set_max_rank(max_rank);
    let model_positions = files.config.max_position_embeddings.min(MAX_SEQ_CAP);
    let positions = config
        .max_context
        .map_or(model_positions, |c| c.min(model_positions));
    if positions == 0 {
        return Err(Error::InvalidOption {
            option: "max-context".into(),
            reason: "0 leaves no room for a prompt".into(),
        });
    }
    let decoder = super::cuda_batch::CudaBatchDecoder::new(
        &files.config,
        files.weights.as_ref(),
        &config.device,
        rows,
        positions,
        max_rank,
    )?;
    tracing::info!(
        "wick serve: CUDA batch decode engine, {rows} rows of {positions} positions, adapters up to rank {max_rank}"
    );
    Ok((Box::new(decoder), positions, rows))
}

/// Without the `cuda` feature there is no GPU decoder.
#[cfg(not(feature = "cuda"))]
fn gpu_decoder(
    config: &ServeConfig,
    _adapters: &AdapterSet,
) -> Result<(Box<dyn BatchDecoder>, usize, usize)> {
    Err(Error::InvalidOption {
        option: "device".into(),
        reason: format!(
            "{:?}: this build of wick has no CUDA support (build with --features cuda)",
            config.device
        ),
    })
}

/// Rejects `/v1/*` requests without the right bearer token (when a key is set).
async fn auth(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("listening for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("listening for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
