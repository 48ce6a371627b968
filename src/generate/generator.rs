//! Text generation with a KV cache: prefill the prompt once, then one forward per new token on the
//! last position only, sampling, stop on EOS ids / stop strings / max tokens / a full context.
//!
//! Two ways to consume it, the same tokens either way:
//! - [`TokenStream`], an iterator of [`GeneratedToken`] (id, text piece, logprob);
//! - [`generate`], which runs the stream to the end, calls a callback per token and returns the text.
//!
//! ```no_run
//! # fn demo(model: &wick::models::llama::Llama, tokenizer: &wick::formats::TextTokenizer, prompt: &[u32])
//! # -> wick::Result<()> {
//! use wick::generate::{generate, GenerateOptions, SamplingParams};
//! let options = GenerateOptions { max_tokens: 32, sampling: SamplingParams::greedy(), ..Default::default() };
//! let out = generate(model, Some(tokenizer), prompt, &options, |t| print!("{}", t.text))?;
//! eprintln!("{:?}, {:.1} tok/s", out.stop_reason, out.timings.decode_tokens_per_second());
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::generate::continuation::Continuation;
use crate::generate::detokenizer::TokenDecoder;
use crate::generate::sampler::{Sampled, SamplingParams};
use crate::lora::ResidentAdapter;
use crate::models::kv_cache::KvCache;
use crate::models::llama::{Llama, RaggedSeq, SeqLora};
use crate::{Context, Error, Result};

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate (the EOS token included when it comes).
    pub max_tokens: usize,
    /// How to choose each token.
    pub sampling: SamplingParams,
    /// Generation ends before any of these strings; the string itself is not returned.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation; `None` uses the model's (`DecoderConfig::eos_token_ids`).
    pub eos_token_ids: Option<Vec<u32>>,
    /// A resident LoRA adapter applied row-wise by the ragged forward (`Llama::forward_ragged`),
    /// leaving the model's own adapter slots alone: the path the server's batches take, so a
    /// generation here and the same request in a server batch give the same tokens.
    pub adapter: Option<GenerationAdapter>,
}

/// An adapter for one generation and the factor its update is scaled by (1: as trained).
#[derive(Debug, Clone)]
pub struct GenerationAdapter {
    pub adapter: std::sync::Arc<ResidentAdapter>,
    pub scale: f32,
}

impl GenerationAdapter {
    /// The adapter as one sequence of a ragged step uses it.
    pub fn seq_lora(&self) -> SeqLora<'_> {
        SeqLora {
            layers: self.adapter.layers(),
            scale: self.adapter.scale() * self.scale,
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            eos_token_ids: None,
            adapter: None,
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub id: u32,
    /// The text this token releases: empty while bytes of a character or a possible stop string are
    /// held back, longer when it completes held text. The pieces concatenate to the generated text.
    pub text: String,
    /// log p(id) under the model's raw distribution at this position.
    pub logprob: f32,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token was generated (it is the last token returned).
    Eos,
    /// A stop string appeared; the text ends just before it.
    StopString(String),
    /// `max_tokens` were generated.
    MaxTokens,
    /// The model's context is full.
    ContextFull,
}

/// Token counts and wall time of the two phases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Tokens in the prompt (run in one batched forward).
    pub prompt_tokens: usize,
    /// Wall time of the prompt's forward (and its logits' transfer).
    pub prefill: Duration,
    /// Single-token forwards run after the prompt (one fewer than the tokens generated: the last token
    /// needs no forward).
    pub decode_steps: usize,
    /// Wall time of the steps that ran a forward: sampling, detokenizing, the forward and the logits'
    /// transfer.
    pub decode: Duration,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill)
    }

    /// Generated tokens per second in the decode phase.
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_steps, self.decode)
    }
}

fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text (stop string excluded).
    pub text: String,
    /// Every generated token id (an EOS token included).
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token.
    pub logprobs: Vec<f32>,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

/// The outcome of a forward: logits for the sampler, or the token the device already chose (the CUDA
/// decode engine's greedy argmax, identical to the sampler's when greedy without penalty).
enum NextToken {
    Logits(Vec<f32>),
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Chosen(Sampled),
}

/// An iterator over generated tokens. Created by [`TokenStream::new`], which runs the prompt.
pub struct TokenStream<'a> {
    model: &'a Llama,
    decoder: Option<&'a dyn TokenDecoder>,
    cache: KvCache,
    /// Sampling, detokenization and the stop rules.
    continuation: Continuation,
    /// What decides the next token, from the last forward.
    next_logits: Option<NextToken>,
    /// The adapter run row-wise through the ragged forward, if any.
    adapter: Option<GenerationAdapter>,
    /// The CUDA decode engine running this generation, when the model has one (`cuda_decode`).
    #[cfg(feature = "cuda")]
    engine: Option<crate::generate::cuda_decode::Session>,
    timings: Timings,
}

impl<'a> TokenStream<'a> {
    /// Runs the prompt through the model and gets ready to generate. `decoder` turns ids into text
    /// (`None`: every piece is empty and stop strings never match, for id-only use).
    /// Errors: an empty prompt, a prompt longer than the context, bad sampling settings.
    pub fn new(
        model: &'a Llama,
        decoder: Option<&'a dyn TokenDecoder>,
        prompt_ids: &[u32],
        options: &GenerateOptions,
    ) -> Result<Self> {
        if prompt_ids.is_empty() {
            return Err(Error::InvalidRequest(
                "empty prompt: generation needs at least one token (a BOS token will do)".into(),
            ));
        }
        let config = model.config();
        let context = config.max_position_embeddings;
        if prompt_ids.len() > context {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens, more than the model's context of {context} tokens",
                prompt_ids.len()
            )));
        }
        if let Some(&bad) = prompt_ids
            .iter()
            .find(|&&id| id as usize >= config.vocab_size)
        {
            return Err(Error::InvalidRequest(format!(
                "prompt token id {bad} is outside the vocabulary of {} tokens",
                config.vocab_size
            )));
        }
        let continuation = Continuation::new(prompt_ids, options, &config.eos_token_ids)?;
        let capacity = prompt_ids.len() + options.max_tokens;
        let mut cache = KvCache::with_capacity(config, 1, capacity, model.dtype(), model.device());
        #[cfg(feature = "cuda")]
        let engine = match options.adapter {
            // The engine does not run row-wise adapters: the ragged Candle path does.
            Some(_) => None,
            None => crate::generate::cuda_decode::session_for(model, capacity, &options.sampling),
        };
        let start = Instant::now();
        #[cfg(feature = "cuda")]
        let from_engine = match &engine {
            Some(session) => Some(engine_next(session.prefill(model, &mut cache, prompt_ids)?)),
            None => None,
        };
        #[cfg(not(feature = "cuda"))]
        let from_engine: Option<NextToken> = None;
        let logits = match from_engine {
            Some(next) => next,
            None => match &options.adapter {
                Some(adapter) => {
                    NextToken::Logits(ragged_logits(model, prompt_ids, &mut cache, adapter)?)
                }
                None => {
                    let input = Tensor::new(prompt_ids, model.device())
                        .and_then(|t| t.unsqueeze(0))
                        .context("prompt ids")?;
                    NextToken::Logits(last_logits(model, &input, &mut cache)?)
                }
            },
        };
        let timings = Timings {
            prompt_tokens: prompt_ids.len(),
            prefill: start.elapsed(),
            ..Timings::default()
        };
        Ok(Self {
            model,
            decoder,
            cache,
            continuation,
            next_logits: (options.max_tokens > 0).then_some(logits),
            adapter: options.adapter.clone(),
            #[cfg(feature = "cuda")]
            engine,
            timings,
        })
    }

    /// Why generation ended, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.continuation.stop_reason()
    }

    /// Counts and times so far.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Samples the next token, decodes its text and, unless generation ends here, runs its forward.
    fn step(&mut self) -> Result<GeneratedToken> {
        let next = self
            .next_logits
            .take()
            .expect("next_logits is set whenever generation has not ended");
        let step_start = Instant::now();
        let sampled = match next {
            NextToken::Logits(logits) => self.continuation.sample(&logits)?,
            NextToken::Chosen(sampled) => sampled,
        };
        let context_full = self.cache.len() >= self.cache.max_len();
        let token = self
            .continuation
            .accept(sampled, self.decoder, context_full)?;
        if self.continuation.stop_reason().is_none() {
            self.next_logits = Some(self.forward_token(token.id)?);
            self.timings.decode += step_start.elapsed();
            self.timings.decode_steps += 1;
        }
        Ok(token)
    }

    /// Runs one generated token through the engine or the model.
    fn forward_token(&mut self, id: u32) -> Result<NextToken> {
        #[cfg(feature = "cuda")]
        if let Some(session) = &self.engine {
            return Ok(engine_next(session.step(id)?));
        }
        if let Some(adapter) = &self.adapter {
            return Ok(NextToken::Logits(ragged_logits(
                self.model,
                &[id],
                &mut self.cache,
                adapter,
            )?));
        }
        let input = Tensor::new(&[[id]], self.model.device()).context("next token id")?;
        Ok(NextToken::Logits(last_logits(
            self.model,
            &input,
            &mut self.cache,
        )?))
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<GeneratedToken>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_logits.as_ref()?;
        let item = self.step();
        if item.is_err() {
            // A failed step ends the stream.
            self.next_logits = None;
        }
        Some(item)
    }
}

#[cfg(feature = "cuda")]
fn engine_next(next: crate::generate::cuda_decode::registry::Next) -> NextToken {
    use crate::generate::cuda_decode::registry::Next;
    match next {
        Next::Logits(logits) => NextToken::Logits(logits),
        Next::Greedy(id, logprob) => NextToken::Chosen(Sampled { id, logprob }),
    }
}

/// Runs the model on `input` [1, t] and returns the logits of its last position as a vector.
fn last_logits(model: &Llama, input: &Tensor, cache: &mut KvCache) -> Result<Vec<f32>> {
    model
        .forward_last(input, cache)?
        .squeeze(0)
        .and_then(|l| l.to_vec1::<f32>())
        .context("reading logits")
}

/// Runs `tokens` of one sequence with its adapter through the ragged forward; the last token's logits.
fn ragged_logits(
    model: &Llama,
    tokens: &[u32],
    cache: &mut KvCache,
    adapter: &GenerationAdapter,
) -> Result<Vec<f32>> {
    let mut seqs = [RaggedSeq {
        tokens,
        cache,
        lora: Some(adapter.seq_lora()),
        logits: true,
    }];
    model
        .forward_ragged(&mut seqs)?
        .pop()
        .flatten()
        .ok_or_else(|| Error::InvalidRequest("ragged step returned no logits".into()))
}

/// Generates from `prompt_ids` to a stop, calling `on_token` with each token as it comes.
pub fn generate(
    model: &Llama,
    decoder: Option<&dyn TokenDecoder>,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(&GeneratedToken),
) -> Result<Generation> {
    let mut stream = TokenStream::new(model, decoder, prompt_ids, options)?;
    let mut text = String::new();
    let mut token_ids = Vec::new();
    let mut logprobs = Vec::new();
    for token in stream.by_ref() {
        let token = token?;
        on_token(&token);
        text.push_str(&token.text);
        token_ids.push(token.id);
        logprobs.push(token.logprob);
    }
    Ok(Generation {
        text,
        token_ids,
        logprobs,
        stop_reason: stream
            .stop_reason()
            .cloned()
            .unwrap_or(StopReason::MaxTokens),
        timings: stream.timings(),
    })
}

/// Greedy token ids after a prompt, no text: what a comparison with llama.cpp needs. Stops after
/// `max_tokens` or at one of the model's EOS ids (included).
pub fn greedy_token_ids(model: &Llama, prompt_ids: &[u32], max_tokens: usize) -> Result<Vec<u32>> {
    let options = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    };
    Ok(generate(model, None, prompt_ids, &options, |_| {})?.token_ids)
}
