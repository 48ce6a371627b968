//! `/v1/chat/completions` and `/v1/completions`: validate, queue, then either stream the tokens as
//! server-sent events (ending with `data: [DONE]`) or gather them into one JSON answer.
//!
//! A client that goes away drops the response, and with it the request's event channel: the
//! scheduler sees the channel closed at its next step boundary and frees the slot.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::openai::{unix_now, ChatRequest, CompletionRequest, Content, SamplingFields, Usage};
use super::request::{Event, GenRequest};
use super::state::AppState;
use super::validate::{generate_options, number, parse_body};
use crate::formats::ChatMessage;
use crate::generate::Prompt;

/// Most alternatives per token: 20 for chat (`top_logprobs`), 5 for completions (`logprobs`).
const MAX_TOP_CHAT: i64 = 20;
const MAX_TOP_COMPLETION: i64 = 5;

/// Which endpoint's shapes a response takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// What a handler needs to shape the answer.
struct Shape {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    logprobs: bool,
    include_usage: bool,
    /// Completions with `echo`: the prompt text, sent before the generated text.
    echo: Option<String>,
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    run(chat_inner(state, body).await)
}

/// `POST /v1/completions`.
pub async fn completion(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    run(completion_inner(state, body).await)
}

fn run(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_inner(state: Arc<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_body(&body)?;
    let messages = chat_messages(&request)?;
    let top = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (_, Some(n)) if !(0..=MAX_TOP_CHAT).contains(&n) => {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                format!("top_logprobs = {n} is not in [0, {MAX_TOP_CHAT}]"),
            ))
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            ))
        }
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, None) => None,
    };
    let prompt_ids = state
        .text
        .prompt_ids(&Prompt::Messages(&messages))
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    let shape = Shape {
        kind: Kind::Chat,
        id: state.new_id("chatcmpl"),
        model: request.model.clone(),
        created: unix_now(),
        logprobs: top.is_some(),
        include_usage: include_usage(&request.sampling),
        echo: None,
    };
    submit(
        state,
        &request.model,
        &request.sampling,
        prompt_ids,
        "messages",
        top,
        shape,
    )
    .await
}

async fn completion_inner(state: Arc<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_body(&body)?;
    let mut prompts = request.prompt.clone().into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::invalid(
            Some("prompt"),
            format!("{} prompts: give exactly one", prompts.len()),
        ));
    }
    let prompt = prompts.remove(0);
    let top = match request.logprobs {
        Some(n) if !(0..=MAX_TOP_COMPLETION).contains(&n) => {
            return Err(ApiError::invalid(
                Some("logprobs"),
                format!("logprobs = {n} is not in [0, {MAX_TOP_COMPLETION}]"),
            ))
        }
        Some(n) => Some(n as usize),
        None => None,
    };
    let prompt_ids = state
        .text
        .prompt_ids(&Prompt::Raw(&prompt))
        .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?;
    let shape = Shape {
        kind: Kind::Completion,
        id: state.new_id("cmpl"),
        model: request.model.clone(),
        created: unix_now(),
        logprobs: top.is_some(),
        include_usage: include_usage(&request.sampling),
        echo: request.echo.then_some(prompt),
    };
    submit(
        state,
        &request.model,
        &request.sampling,
        prompt_ids,
        "prompt",
        top,
        shape,
    )
    .await
}

fn include_usage(fields: &SamplingFields) -> bool {
    fields
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage)
}

/// The request's messages as the chat template takes them.
fn chat_messages(request: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    let mut out = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    Some(&format!("messages[{i}].role")),
                    format!("unknown role `{other}` (system, developer, user, assistant, tool)"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                Some(&format!("messages[{i}].content[{j}]")),
                                format!(
                                    "content part of type `{}`: only text parts are supported",
                                    p.kind
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

/// Validates the sampling fields, resolves the adapter, queues the request and answers.
#[allow(clippy::too_many_arguments)]
async fn submit(
    state: Arc<AppState>,
    model: &str,
    fields: &SamplingFields,
    prompt_ids: Vec<u32>,
    prompt_field: &str,
    top_logprobs: Option<usize>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let mut options = generate_options(fields, prompt_ids.len(), prompt_field, &state.limits)?;
    let lora_scale = number(fields.lora_scale, "lora_scale", 1.0, -100.0..=100.0)?;
    options.adapter = state.resolve_model(model, lora_scale).await?;
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompt_ids.len();
    tracing::info!(id = %shape.id, model, prompt_tokens, max_tokens = options.max_tokens, stream = fields.stream, "request");
    state.submitter.submit(GenRequest {
        id: shape.id.clone(),
        prompt_ids,
        options,
        top_logprobs,
        arrived,
        deadline: arrived + state.request_timeout,
        events: tx,
    })?;
    if fields.stream {
        return Ok(stream(state, rx, shape).into_response());
    }
    gather(state, rx, shape).await
}

/// Token strings for the logprobs fields: each id decoded alone (special tokens kept).
fn token_text(state: &AppState, id: u32) -> String {
    state.text.tokenizer.decode(&[id]).unwrap_or_default()
}

/// The `logprobs` value of one token, in the endpoint's shape (chat: one entry of `content`).
fn chat_logprob(state: &AppState, id: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
    let entry = |id: u32, lp: f32| {
        let token = token_text(state, id);
        json!({ "token": token, "logprob": lp, "bytes": token.as_bytes() })
    };
    let mut first = entry(id, logprob);
    first["top_logprobs"] = Value::Array(top.iter().map(|&(t, lp)| entry(t, lp)).collect());
    first
}

/// Legacy completion logprobs accumulated over tokens.
#[derive(Default)]
struct LegacyLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
}

impl LegacyLogprobs {
    fn push(&mut self, state: &AppState, id: u32, logprob: f32, top: &[(u32, f32)], offset: usize) {
        self.tokens.push(token_text(state, id));
        self.token_logprobs.push(logprob);
        let map: serde_json::Map<String, Value> = top
            .iter()
            .map(|&(t, lp)| (token_text(state, t), json!(lp)))
            .collect();
        self.top_logprobs.push(Value::Object(map));
        self.text_offset.push(offset);
    }

    fn value(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// Waits for the whole generation and answers with one JSON body.
async fn gather(
    state: Arc<AppState>,
    mut rx: UnboundedReceiver<Event>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let mut text = shape.echo.clone().unwrap_or_default();
    let mut chat_lps = Vec::new();
    let mut legacy = LegacyLogprobs::default();
    loop {
        let Some(event) = rx.recv().await else {
            return Err(ApiError::internal("the scheduler dropped the request"));
        };
        match event {
            Event::Token {
                id,
                text: piece,
                logprob,
                top,
            } => {
                if shape.logprobs {
                    match shape.kind {
                        Kind::Chat => chat_lps.push(chat_logprob(&state, id, logprob, &top)),
                        Kind::Completion => legacy.push(&state, id, logprob, &top, text.len()),
                    }
                }
                text.push_str(&piece);
            }
            Event::Failed(e) => return Err(e),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let usage = Usage::new(prompt_tokens, completion_tokens);
                let choice = match shape.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "logprobs": shape.logprobs.then(|| json!({ "content": chat_lps })),
                        "finish_reason": finish.as_str(),
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": shape.logprobs.then(|| legacy.value()),
                        "finish_reason": finish.as_str(),
                    }),
                };
                let object = match shape.kind {
                    Kind::Chat => "chat.completion",
                    Kind::Completion => "text_completion",
                };
                return Ok(Json(json!({
                    "id": shape.id,
                    "object": object,
                    "created": shape.created,
                    "model": shape.model,
                    "system_fingerprint": "wick",
                    "choices": [choice],
                    "usage": usage,
                }))
                .into_response());
            }
        }
    }
}

/// State of one SSE stream.
struct Streaming {
    state: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    shape: Shape,
    ready: VecDeque<SseEvent>,
    /// Bytes of text sent so far (completion `text_offset`).
    offset: usize,
    done: bool,
}

impl Streaming {
    fn chunk(&self, choice: Value, usage: Option<Usage>) -> SseEvent {
        let object = match self.shape.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut body = json!({
            "id": self.shape.id,
            "object": object,
            "created": self.shape.created,
            "model": self.shape.model,
            "system_fingerprint": "wick",
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(usage) = usage {
            body["usage"] = json!(usage);
        }
        SseEvent::default().data(body.to_string())
    }

    fn piece(&self, text: &str, logprobs: Option<Value>, finish: Option<&str>) -> Value {
        match self.shape.kind {
            Kind::Chat => {
                let delta = if text.is_empty() {
                    json!({})
                } else {
                    json!({ "content": text })
                };
                json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
            Kind::Completion => {
                json!({ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish })
            }
        }
    }

    /// Turns one scheduler event into SSE events.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Token {
                id,
                text,
                logprob,
                top,
            } => {
                let logprobs = self.shape.logprobs.then(|| match self.shape.kind {
                    Kind::Chat => {
                        json!({ "content": [chat_logprob(&self.state, id, logprob, &top)] })
                    }
                    Kind::Completion => {
                        let mut one = LegacyLogprobs::default();
                        one.push(&self.state, id, logprob, &top, self.offset);
                        one.value()
                    }
                });
                self.offset += text.len();
                if !text.is_empty() || logprobs.is_some() {
                    let choice = self.piece(&text, logprobs, None);
                    self.ready.push_back(self.chunk(choice, None));
                }
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let choice = self.piece("", None, Some(finish.as_str()));
                self.ready.push_back(self.chunk(choice, None));
                if self.shape.include_usage {
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    self.ready.push_back(self.chunk(Value::Null, Some(usage)));
                }
                self.finish();
            }
            Event::Failed(e) => {
                self.ready
                    .push_back(SseEvent::default().data(e.body().to_string()));
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        self.ready.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

/// The SSE answer: a first chunk (the assistant role, or the echoed prompt), then the tokens.
fn stream(state: Arc<AppState>, rx: UnboundedReceiver<Event>, shape: Shape) -> impl IntoResponse {
    let mut s = Streaming {
        state,
        rx,
        shape,
        ready: VecDeque::new(),
        offset: 0,
        done: false,
    };
    let first = match (s.shape.kind, s.shape.echo.clone()) {
        (Kind::Chat, _) => Some(
            json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }),
        ),
        (Kind::Completion, Some(text)) => {
            s.offset = text.len();
            Some(s.piece(&text, None, None))
        }
        (Kind::Completion, None) => None,
    };
    if let Some(first) = first {
        let chunk = s.chunk(first, None);
        s.ready.push_back(chunk);
    }
    let events = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(event) = s.ready.pop_front() {
                return Some((Ok::<_, Infallible>(event), s));
            }
            if s.done {
                return None;
            }
            match s.rx.recv().await {
                Some(event) => s.on_event(event),
                None => {
                    s.on_event(Event::Failed(ApiError::internal(
                        "the scheduler dropped the request",
                    )));
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
