//! What every handler shares: the model's tokenizer and template, the adapters, the queue into the
//! scheduler, the embedder, limits, the API key and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::adapters::AdapterSet;
use super::error::ApiError;
use super::metrics::Metrics;
use super::scheduler::Submitter;
use super::validate::Limits;
use crate::embed::Embedder;
use crate::generate::{GenerationAdapter, TextModel};
use crate::lora::ResidentAdapter;

/// Shared server state.
pub struct AppState {
    /// The base model's id in `/v1/models` (`base` is accepted too).
    pub model_id: String,
    /// Tokenizer, chat template and config (the weights run in the scheduler's decoder).
    pub text: Arc<TextModel>,
    pub adapters: Arc<AdapterSet>,
    pub submitter: Submitter,
    /// The embedding model and its id, when `--embed-model` was given.
    pub embedder: Option<(String, Arc<Embedder>)>,
    pub limits: Limits,
    pub request_timeout: Duration,
    pub api_key: Option<String>,
    pub metrics: Arc<Metrics>,
    next_id: AtomicU64,
}

impl AppState {
    /// Assembles the state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model_id: String,
        text: Arc<TextModel>,
        adapters: Arc<AdapterSet>,
        submitter: Submitter,
        embedder: Option<(String, Arc<Embedder>)>,
        limits: Limits,
        request_timeout: Duration,
        api_key: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            model_id,
            text,
            adapters,
            submitter,
            embedder,
            limits,
            request_timeout,
            api_key,
            metrics,
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh response id with `prefix` (`chatcmpl`, `cmpl`, `embd`).
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06}", std::process::id())
    }

    /// Whether `model` names the base model.
    pub fn is_base(&self, model: &str) -> bool {
        model == "base" || model == self.model_id
    }

    /// The adapter a request's `model` names (`None` for the base model), loaded again if it was
    /// evicted; 404 when nothing has that name. `lora_scale` multiplies the adapter's alpha / r.
    pub async fn resolve_model(
        self: &Arc<Self>,
        model: &str,
        lora_scale: f64,
    ) -> Result<Option<GenerationAdapter>, ApiError> {
        if self.is_base(model) {
            return Ok(None);
        }
        let state = self.clone();
        let name = model.to_string();
        let found: Option<Arc<ResidentAdapter>> =
            tokio::task::spawn_blocking(move || state.adapters.get(&name))
                .await
                .map_err(|e| ApiError::internal(format!("adapter lookup: {e}")))??;
        match found {
            Some(adapter) => Ok(Some(GenerationAdapter {
                adapter,
                scale: lora_scale as f32,
            })),
            None => Err(ApiError::not_found(
                "model",
                format!(
                    "the model `{model}` does not exist: use `{}`, `base` or a loaded adapter's name (GET /v1/models)",
                    self.model_id
                ),
            )),
        }
    }
}
