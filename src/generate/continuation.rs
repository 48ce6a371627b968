//! What happens to each new token of one generation, whatever ran the forward: sampling from the
//! logits, the history for the repetition penalty, EOS, incremental detokenization, stop strings,
//! the token budget and the context limit. [`TokenStream`](super::TokenStream) drives one with a
//! model; a server's scheduler drives one per request of a batch.

use crate::generate::detokenizer::{Detokenizer, TokenDecoder};
use crate::generate::generator::{GenerateOptions, GeneratedToken, StopReason};
use crate::generate::sampler::{Sampled, Sampler};
use crate::generate::stop::StopMatcher;
use crate::Result;

/// The per-token state of one generation.
#[derive(Debug)]
pub struct Continuation {
    sampler: Sampler,
    /// Prompt and generated ids, for the repetition penalty.
    history: Vec<u32>,
    eos_token_ids: Vec<u32>,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    max_tokens: usize,
    generated: usize,
    stop_reason: Option<StopReason>,
}

impl Continuation {
    /// The state after `prompt_ids`; `default_eos` are the model's EOS ids, used unless the options
    /// name others. Errors: bad sampling settings.
    pub fn new(prompt_ids: &[u32], options: &GenerateOptions, default_eos: &[u32]) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(options.sampling.clone())?,
            history: prompt_ids.to_vec(),
            eos_token_ids: options
                .eos_token_ids
                .clone()
                .unwrap_or_else(|| default_eos.to_vec()),
            detokenizer: Detokenizer::new(prompt_ids),
            stop: StopMatcher::new(&options.stop_strings),
            max_tokens: options.max_tokens,
            generated: 0,
            stop_reason: (options.max_tokens == 0).then_some(StopReason::MaxTokens),
        })
    }

    /// Why generation ended, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop_reason.as_ref()
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Chooses the next token from the logits [vocab] of the last position.
    pub fn sample(&mut self, logits: &[f32]) -> Result<Sampled> {
        self.sampler.sample(logits, &self.history)
    }

    /// Takes a chosen token: its text (held back while it may be part of a character or a stop
    /// string) and whether generation ends with it. `context_full`: the model has no room for
    /// another position after this token's.
    pub fn accept(
        &mut self,
        sampled: Sampled,
        decoder: Option<&dyn TokenDecoder>,
        context_full: bool,
    ) -> Result<GeneratedToken> {
        let id = sampled.id;
        self.history.push(id);
        self.generated += 1;
        let is_eos = self.eos_token_ids.contains(&id);
        let mut text = String::new();
        if !is_eos {
            let piece = match decoder {
                Some(decoder) => self.detokenizer.push(decoder, id)?,
                None => String::new(),
            };
            let check = self.stop.push(&piece);
            text = check.emit;
            if let Some(stop) = check.stopped {
                self.stop_reason = Some(StopReason::StopString(stop));
            }
        }
        if self.stop_reason.is_none() {
            if is_eos {
                self.stop_reason = Some(StopReason::Eos);
            } else if self.generated >= self.max_tokens {
                self.stop_reason = Some(StopReason::MaxTokens);
            } else if context_full {
                self.stop_reason = Some(StopReason::ContextFull);
            }
            if self.stop_reason.is_some() {
                text.push_str(&self.flush(decoder)?);
            }
        }
        Ok(GeneratedToken {
            id,
            text,
            logprob: sampled.logprob,
        })
    }

    /// Text still held by the detokenizer and the stop matcher, at the end of generation.
    fn flush(&mut self, decoder: Option<&dyn TokenDecoder>) -> Result<String> {
        let Some(decoder) = decoder else {
            return Ok(String::new());
        };
        let rest = self.detokenizer.flush(decoder)?;
        let check = self.stop.push(&rest);
        if let Some(stop) = check.stopped {
            self.stop_reason = Some(StopReason::StopString(stop));
            return Ok(check.emit);
        }
        Ok(check.emit + &self.stop.flush())
    }
}
