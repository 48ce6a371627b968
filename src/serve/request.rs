//! A generation request as the scheduler sees it, and the events it sends back to the HTTP side.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use crate::generate::{GenerateOptions, StopReason};

/// One request for the running batch.
#[derive(Debug)]
pub struct GenRequest {
    /// The id in the response and the logs (`chatcmpl-..`, `cmpl-..`).
    pub id: String,
    pub prompt_ids: Vec<u32>,
    /// max_tokens, sampling, stop strings and the adapter.
    pub options: GenerateOptions,
    /// `Some(n)`: report each token's log-probability and its n most likely alternatives.
    pub top_logprobs: Option<usize>,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
    /// When it must be done; past it the scheduler ends it with a timeout.
    pub deadline: Instant,
    /// Where its tokens go. A closed channel (the client left) cancels it.
    pub events: UnboundedSender<Event>,
}

/// Why a generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// max_tokens or the context.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }

    /// From the generator's reason.
    pub fn of(reason: &StopReason) -> Self {
        match reason {
            StopReason::Eos | StopReason::StopString(_) => Self::Stop,
            StopReason::MaxTokens | StopReason::ContextFull => Self::Length,
        }
    }
}

/// What the scheduler sends for a request, in order: tokens, then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    Token {
        id: u32,
        /// The text this token releases (see `GeneratedToken::text`).
        text: String,
        logprob: f32,
        /// The most likely tokens at this position with their log-probabilities (when asked).
        top: Vec<(u32, f32)>,
    },
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(ApiError),
}
