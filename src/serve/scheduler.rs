//! Continuous batching: one thread owns the [`BatchDecoder`] and loops: admit queued requests into
//! free batch slots (at step boundaries), drop the ones whose client left or whose time ran out,
//! run one step of the whole batch, and turn each sequence's logits into its next token (sampling,
//! detokenizing, stop rules: `generate::Continuation`), sent to the request's channel.
//!
//! The queue in front is bounded: [`Submitter::submit`] fails at once when it is full (the HTTP side
//! answers 429). A failing or panicking step fails the sequences of that batch, not the server.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::batch::{BatchDecoder, SeqId};
use super::error::ApiError;
use super::metrics::Metrics;
use super::request::{Event, FinishReason, GenRequest};
use crate::formats::TextTokenizer;
use crate::generate::Continuation;
use crate::Result;

/// How long an idle scheduler sleeps between looks at its queue and shutdown flag.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Sizes of the batch and the queue.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Requests waiting for a slot at most; one more gets 429.
    pub max_queue: usize,
    /// The model's context (positions).
    pub context: usize,
}

/// The sending side of the queue; cheap to clone, one per HTTP worker.
#[derive(Debug, Clone)]
pub struct Submitter {
    tx: SyncSender<GenRequest>,
    metrics: Arc<Metrics>,
}

impl Submitter {
    /// Queues a request, or 429 when the queue is full (503 when the scheduler has stopped).
    pub fn submit(&self, request: GenRequest) -> std::result::Result<(), ApiError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => {
                        self.metrics.outcome("rejected");
                        Err(ApiError::queue_full(1))
                    }
                    TrySendError::Disconnected(_) => Err(ApiError::shutting_down()),
                }
            }
        }
    }
}

/// The scheduler thread.
#[derive(Debug)]
pub struct Scheduler {
    thread: JoinHandle<()>,
    cancel_all: Arc<AtomicBool>,
}

impl Scheduler {
    /// Starts the scheduler thread over `decoder`. It runs until every [`Submitter`] is dropped and
    /// the batch is empty.
    pub fn spawn(
        decoder: Box<dyn BatchDecoder>,
        tokenizer: Arc<TextTokenizer>,
        eos_token_ids: Vec<u32>,
        config: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Submitter)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.max_queue.max(1));
        let cancel_all = Arc::new(AtomicBool::new(false));
        let mut state = Loop {
            decoder,
            tokenizer,
            eos_token_ids,
            config,
            metrics: metrics.clone(),
            active: BTreeMap::new(),
            cancel_all: cancel_all.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("wick-scheduler".into())
            .spawn(move || state.run(rx))
            .map_err(|e| crate::Error::InvalidRequest(format!("starting the scheduler: {e}")))?;
        Ok((Self { thread, cancel_all }, Submitter { tx, metrics }))
    }

    /// Ends every running and queued request now (with a 503 error) instead of letting them finish.
    pub fn cancel_all(&self) {
        self.cancel_all.store(true, Ordering::SeqCst);
    }

    /// A handle that can call [`Scheduler::cancel_all`] from elsewhere (a shutdown timer).
    pub fn canceller(&self) -> Arc<AtomicBool> {
        self.cancel_all.clone()
    }

    /// Waits for the thread to end (after every submitter is gone).
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the scheduler thread panicked");
        }
    }
}

/// A request in the running batch.
struct Active {
    request: GenRequest,
    continuation: Continuation,
    first_token: bool,
}

struct Loop {
    decoder: Box<dyn BatchDecoder>,
    tokenizer: Arc<TextTokenizer>,
    eos_token_ids: Vec<u32>,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    active: BTreeMap<SeqId, Active>,
    cancel_all: Arc<AtomicBool>,
}

impl Loop {
    fn run(&mut self, rx: Receiver<GenRequest>) {
        let mut senders_gone = false;
        loop {
            while !senders_gone && self.active.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(request) => self.admit(request),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => senders_gone = true,
                }
            }
            self.drop_finished_clients();
            if self.active.is_empty() {
                if senders_gone {
                    return;
                }
                match rx.recv_timeout(IDLE_POLL) {
                    Ok(request) => self.admit(request),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => senders_gone = true,
                }
                continue;
            }
            self.step();
        }
    }

    /// Takes a request off the queue into the batch (or fails it at once).
    fn admit(&mut self, request: GenRequest) {
        self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        if request.events.is_closed() {
            self.metrics.outcome("cancelled");
            return;
        }
        let started = Continuation::new(&request.prompt_ids, &request.options, &self.eos_token_ids)
            .and_then(|c| {
                let adapter = request.options.adapter.clone();
                let seq =
                    self.decoder
                        .add(&request.prompt_ids, request.options.max_tokens, adapter)?;
                Ok((c, seq))
            });
        match started {
            Ok((continuation, seq)) => {
                self.metrics
                    .prompt_tokens
                    .fetch_add(request.prompt_ids.len() as u64, Ordering::Relaxed);
                self.active.insert(
                    seq,
                    Active {
                        request,
                        continuation,
                        first_token: true,
                    },
                );
                self.metrics
                    .running
                    .store(self.active.len() as i64, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = request.events.send(Event::Failed(e.into()));
                self.metrics.outcome("error");
            }
        }
    }

    /// Frees the slots of requests whose client left, whose deadline passed, or all of them when
    /// shutdown asks to cancel.
    fn drop_finished_clients(&mut self) {
        let now = Instant::now();
        let cancel_all = self.cancel_all.load(Ordering::SeqCst);
        let ended: Vec<(SeqId, &'static str)> = self
            .active
            .iter()
            .filter_map(|(&seq, a)| {
                if a.request.events.is_closed() {
                    Some((seq, "cancelled"))
                } else if cancel_all {
                    Some((seq, "shutdown"))
                } else if now >= a.request.deadline {
                    Some((seq, "timeout"))
                } else {
                    None
                }
            })
            .collect();
        for (seq, why) in ended {
            if let Some(a) = self.active.remove(&seq) {
                let error = match why {
                    "timeout" => Some(ApiError::timeout(
                        a.request
                            .deadline
                            .duration_since(a.request.arrived)
                            .as_secs(),
                    )),
                    "shutdown" => Some(ApiError::shutting_down()),
                    _ => None,
                };
                if let Some(error) = error {
                    let _ = a.request.events.send(Event::Failed(error));
                }
                tracing::info!(id = %a.request.id, outcome = why, generated = a.continuation.generated(), "request ended early");
            }
            self.decoder.free(seq);
            self.metrics.outcome(why);
        }
        self.metrics
            .running
            .store(self.active.len() as i64, Ordering::Relaxed);
    }

    /// One forward of the whole batch and the tokens it yields.
    fn step(&mut self) {
        let outputs = match catch_unwind(AssertUnwindSafe(|| self.decoder.step())) {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => {
                return self.fail_all(ApiError::internal(format!("batch step failed: {e}")))
            }
            Err(_) => return self.fail_all(ApiError::internal("batch step panicked")),
        };
        let mut generated = 0;
        for (seq, logits) in outputs {
            generated += 1;
            if let Err(e) = self.next_token(seq, &logits) {
                if let Some(a) = self.active.remove(&seq) {
                    let _ = a.request.events.send(Event::Failed(e.into()));
                }
                self.decoder.free(seq);
                self.metrics.outcome("error");
            }
        }
        self.metrics.generated(generated);
        self.metrics
            .prefix_cached_tokens
            .store(self.decoder.reused_prompt_tokens(), Ordering::Relaxed);
        self.metrics
            .running
            .store(self.active.len() as i64, Ordering::Relaxed);
    }

    /// Samples a sequence's next token from its logits, sends it, and either feeds it back or ends
    /// the request.
    fn next_token(&mut self, seq: SeqId, logits: &[f32]) -> Result<()> {
        let Some(a) = self.active.get_mut(&seq) else {
            self.decoder.free(seq);
            return Ok(());
        };
        let sampled = a.continuation.sample(logits)?;
        let top = match a.request.top_logprobs {
            Some(n) if n > 0 => top_logprobs(logits, n),
            _ => Vec::new(),
        };
        let prompt = a.request.prompt_ids.len();
        let context_full = prompt + a.continuation.generated() >= self.config.context;
        let decoder: &dyn crate::generate::TokenDecoder = &*self.tokenizer;
        let token = a
            .continuation
            .accept(sampled, Some(decoder), context_full)?;
        if a.first_token {
            a.first_token = false;
            self.metrics.first_token(a.request.arrived.elapsed());
        }
        let _ = a.request.events.send(Event::Token {
            id: token.id,
            text: token.text,
            logprob: token.logprob,
            top,
        });
        let Some(reason) = a.continuation.stop_reason().cloned() else {
            return self.decoder.push(seq, token.id);
        };
        let a = self
            .active
            .remove(&seq)
            .expect("the sequence was active above");
        self.decoder.free(seq);
        let completion = a.continuation.generated();
        let _ = a.request.events.send(Event::Done {
            finish: FinishReason::of(&reason),
            prompt_tokens: prompt,
            completion_tokens: completion,
        });
        self.metrics.outcome("ok");
        tracing::info!(
            id = %a.request.id,
            prompt_tokens = prompt,
            completion_tokens = completion,
            finish = FinishReason::of(&reason).as_str(),
            ms = a.request.arrived.elapsed().as_millis() as u64,
            "request done"
        );
        Ok(())
    }

    fn fail_all(&mut self, error: ApiError) {
        tracing::error!("{error}");
        for (seq, a) in std::mem::take(&mut self.active) {
            let _ = a.request.events.send(Event::Failed(error.clone()));
            self.decoder.free(seq);
            self.metrics.outcome("error");
        }
    }
}

/// The `n` most likely tokens with their log-probabilities (log-softmax of the raw logits), most
/// likely first, ties by lower id.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = sum.ln();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let n = n.min(ids.len());
    if n == 0 {
        return Vec::new();
    }
    ids.select_nth_unstable_by(n - 1, order);
    ids.truncate(n);
    ids.sort_unstable_by(order);
    ids.into_iter()
        .map(|id| (id, ((logits[id as usize] - max) as f64 - lse) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::log_softmax_at;

    #[test]
    fn top_logprobs_are_the_largest_log_softmax_values_in_order() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.5];
        let top = top_logprobs(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 4]);
        for (id, lp) in top {
            assert!((lp - log_softmax_at(&logits, id as usize)).abs() < 1e-6);
        }
        assert_eq!(top_logprobs(&logits, 9).len(), 5);
    }
}
