//! The endpoints besides generation: `/v1/models`, `/v1/embeddings`, adapter loading and
//! unloading (vLLM's `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`), `/health`, `/metrics`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::json;

use super::error::ApiError;
use super::openai::{
    unix_now, EmbeddingRequest, LoadAdapterRequest, ModelCard, UnloadAdapterRequest, Usage,
};
use super::state::AppState;
use super::validate::parse_body;

/// Most inputs in one embeddings request (OpenAI's limit).
const MAX_EMBED_INPUTS: usize = 2048;

/// `GET /v1/models`: the base model, every known adapter (with `parent`), the embedding model.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let created = unix_now();
    let card = |id: String, parent: Option<String>| ModelCard {
        id,
        object: "model",
        created,
        owned_by: "wick",
        parent,
    };
    let mut data = vec![card(state.model_id.clone(), None)];
    for adapter in state.adapters.list() {
        data.push(card(adapter.name, Some(state.model_id.clone())));
    }
    if let Some((id, _)) = &state.embedder {
        data.push(card(id.clone(), None));
    }
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    embeddings_inner(state, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn embeddings_inner(state: Arc<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse_body(&body)?;
    let Some((id, embedder)) = state.embedder.clone() else {
        return Err(ApiError::not_found(
            "model",
            "this server has no embedding model (start it with --embed-model)",
        ));
    };
    if request.model != id {
        return Err(ApiError::not_found(
            "model",
            format!("the embedding model is `{id}`, not `{}`", request.model),
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("`{other}`: use float or base64"),
            ))
        }
    };
    let inputs = request.input.into_vec();
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(
            Some("input"),
            format!("{} inputs: give 1 to {MAX_EMBED_INPUTS}", inputs.len()),
        ));
    }
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let tokens = embedder.token_count(&texts)?;
        let vectors = embedder.embed(&texts)?.to_vec2::<f32>()?;
        Ok::<_, crate::Error>((vectors, tokens))
    })
    .await
    .map_err(|e| ApiError::internal(format!("embedding task: {e}")))??;
    let data: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": id,
        "usage": { "prompt_tokens": tokens, "total_tokens": Usage::new(tokens, 0).total_tokens },
    }))
    .into_response())
}

/// `POST /v1/load_lora_adapter` with `{"lora_name", "lora_path"}` (+ wick's `"pinned"`).
pub async fn load_adapter(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = async {
        let request: LoadAdapterRequest = parse_body(&body)?;
        let adapters = state.adapters.clone();
        let name = request.lora_name.clone();
        tokio::task::spawn_blocking(move || {
            adapters.register(&name, &PathBuf::from(&request.lora_path), request.pinned)
        })
        .await
        .map_err(|e| ApiError::internal(format!("adapter load task: {e}")))??;
        Ok::<_, ApiError>(format!(
            "Success: LoRA adapter '{}' added successfully.",
            request.lora_name
        ))
    };
    match result.await {
        Ok(message) => (StatusCode::OK, message).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/unload_lora_adapter` with `{"lora_name"}`.
pub async fn unload_adapter(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = parse_body::<UnloadAdapterRequest>(&body).and_then(|request| {
        state.adapters.unregister(&request.lora_name)?;
        Ok(format!(
            "Success: LoRA adapter '{}' removed successfully.",
            request.lora_name
        ))
    });
    match result {
        Ok(message) => (StatusCode::OK, message).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /health`: 200 while the server accepts requests.
pub async fn health() -> Response {
    (StatusCode::OK, "ok").into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Any other path: 404 in OpenAI's shape.
pub async fn fallback() -> Response {
    ApiError {
        code: None,
        ..ApiError::not_found("path", "no such endpoint")
    }
    .into_response()
}
