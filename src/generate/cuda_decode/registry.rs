//! Which loaded model has an engine: [`attach`] builds one when a model is opened on CUDA for
//! inference (`TextModel::open`: a GGUF's blocks, or an HF directory's dense weights), keyed by the
//! model's instance (a `Weak` shared by its clones, so a dropped model frees its engine) and the
//! identity of each projection weight (a model whose weights were replaced since, by merging an
//! adapter, no longer matches); [`session_for`] hands it to one generation at a time.
//!
//! Per thread: Candle's CUDA stream is the per-thread default stream and a captured graph is not
//! `Send`, so an engine serves generations on the thread that loaded the model (other threads take
//! the Candle path).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Weak};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::TensorId;

use super::adapters::DecodeAdapter;
use super::DecodeEngine;
use crate::formats::config::DecoderConfig;
use crate::formats::weights::{LoadOptions, WeightSource};
use crate::generate::sampler::SamplingParams;
use crate::models::kv_cache::KvCache;
use crate::models::linear::{BaseWeight, Linear};
use crate::models::llama::Llama;
use crate::{Context, Result};

/// What identifies a projection's weight: its quantized tensor (held weakly: the allocation, and so
/// its address, cannot be reused while the entry lives), or the id of its dense tensor (a merged or
/// converted weight is a new tensor).
#[derive(Debug, Clone)]
enum WeightId {
    Quantized(Weak<QTensor>),
    Dense(TensorId),
}

impl WeightId {
    fn of(linear: &Linear) -> Self {
        match linear.weight() {
            BaseWeight::Quantized(QMatMul::QTensor(q)) => WeightId::Quantized(Arc::downgrade(q)),
            BaseWeight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t))
            | BaseWeight::Dense(t) => WeightId::Dense(t.id()),
        }
    }

    /// Whether `linear` still holds this weight.
    fn matches(&self, linear: &Linear) -> bool {
        match (self, linear.weight()) {
            (WeightId::Quantized(w), BaseWeight::Quantized(QMatMul::QTensor(q))) => {
                std::ptr::eq(w.as_ptr(), Arc::as_ptr(q))
            }
            (
                WeightId::Dense(id),
                BaseWeight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t))
                | BaseWeight::Dense(t),
            ) => t.id() == *id,
            _ => false,
        }
    }
}

struct Entry {
    key: Weak<()>,
    /// The projections' weights the engine was built from, in `Llama::linear_layers` order.
    weights: Vec<WeightId>,
    engine: Rc<RefCell<DecodeEngine>>,
    busy: Rc<Cell<bool>>,
}

thread_local! {
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Why `linears` no longer match the weights their engine was built from (a merged adapter changed
/// what they compute).
fn ineligible(linears: &[(String, &Linear)], built_from: &[WeightId]) -> Option<String> {
    if linears.len() != built_from.len() {
        return Some("the model's projections changed since the engine was built".into());
    }
    for ((name, linear), id) in linears.iter().zip(built_from) {
        if !id.matches(linear) {
            return Some(format!(
                "{name} changed since the engine was built (a merged adapter?)"
            ));
        }
    }
    None
}

/// Selects the engine's adapter slot for the adapters attached to `linears` (loading them into a
/// slot the first time: `DecodeAdapter::key_of` identifies them), or no adapter.
fn select_adapter(engine: &mut DecodeEngine, linears: &[(String, &Linear)]) -> Result<()> {
    let slot = match DecodeAdapter::key_of(linears) {
        Some(key) => Some(engine.adapter_slot(key, || {
            DecodeAdapter::from_linears(linears)?
                .ok_or_else(|| crate::Error::InvalidRequest("the model's adapters vanished".into()))
        })?),
        None => None,
    };
    engine.set_adapter(slot)
}

/// Builds an engine for `model` (just loaded from `source` with `options`) when it runs on CUDA
/// for inference (no forced dtype) and the engine supports it; logs why not otherwise. Never
/// fails: the Candle path remains.
pub fn attach(
    model: &Llama,
    config: &DecoderConfig,
    source: &dyn WeightSource,
    options: &LoadOptions,
) {
    if !options.device.is_cuda() || options.dtype.is_some() || super::disabled_by_env() {
        return;
    }
    match DecodeEngine::new(config, source, &options.device) {
        Ok(engine) => ENTRIES.with_borrow_mut(|list| {
            list.retain(|e| e.key.strong_count() > 0);
            list.push(Entry {
                key: Arc::downgrade(model.instance()),
                weights: model
                    .linear_layers()
                    .iter()
                    .map(|(_, l)| WeightId::of(l))
                    .collect(),
                engine: Rc::new(RefCell::new(engine)),
                busy: Rc::new(Cell::new(false)),
            });
        }),
        Err(e) => tracing::info!("CUDA decode engine not used: {e}"),
    }
}

/// What a decode step returns to the generator.
#[derive(Debug, Clone)]
pub enum Next {
    /// The logits [vocab], for the sampler.
    Logits(Vec<f32>),
    /// The greedy token and its log-probability, computed on the device.
    Greedy(u32, f32),
}

/// One generation's hold on an engine (released on drop).
pub struct Session {
    engine: Rc<RefCell<DecodeEngine>>,
    busy: Rc<Cell<bool>>,
    /// Greedy without a repetition penalty: the argmax kernel's answer is the sampler's.
    device_greedy: bool,
}

/// The engine of `model` for a generation of `positions` tokens (prompt + new), if it has one that
/// is free and fits; `None` sends the generation down the Candle path.
pub fn session_for(model: &Llama, positions: usize, sampling: &SamplingParams) -> Option<Session> {
    if super::disabled_by_env() {
        return None;
    }
    let key = model.instance();
    let (engine, busy, built_from) = ENTRIES.with_borrow(|list| {
        list.iter()
            .find(|e| e.key.upgrade().is_some_and(|k| Arc::ptr_eq(&k, key)))
            .map(|entry| {
                (
                    entry.engine.clone(),
                    entry.busy.clone(),
                    entry.weights.clone(),
                )
            })
    })?;
    let linears = model.linear_layers();
    if let Some(reason) = ineligible(&linears, &built_from) {
        tracing::info!("CUDA decode engine not used: {reason}");
        return None;
    }
    let max_seq = engine.try_borrow().ok()?.shape().max_seq;
    if positions > max_seq {
        tracing::info!(
            "CUDA decode engine not used: {positions} positions > its cache of {max_seq}"
        );
        return None;
    }
    if busy.replace(true) {
        return None;
    }
    // Only now that this generation holds the engine: its adapter slot (loaded the first time).
    let selected = match engine.try_borrow_mut() {
        Ok(mut e) => select_adapter(&mut e, &linears),
        Err(_) => Err(crate::Error::InvalidRequest("the engine is in use".into())),
    };
    if let Err(e) = selected {
        tracing::info!("CUDA decode engine not used: its adapter slots: {e}");
        busy.set(false);
        return None;
    }
    Some(Session {
        engine,
        busy,
        device_greedy: sampling.is_greedy() && sampling.repeat_penalty == 1.0,
    })
}

impl Session {
    fn run(&self, ids: &[u32]) -> Result<Next> {
        let mut engine = self.engine.borrow_mut();
        for &id in ids {
            engine.step(id)?;
        }
        if self.device_greedy {
            let (id, logprob) = engine.greedy()?;
            Ok(Next::Greedy(id, logprob))
        } else {
            Ok(Next::Logits(engine.logits()?))
        }
    }

    /// Runs the prompt from position 0 and returns what follows its last token: prompts of at least
    /// [`super::BATCHED_PREFILL_MIN`] tokens through the engine's batched prefill
    /// ([`DecodeEngine::prefill`]: f32 GEMMs over the prompt, keys and values straight into its
    /// cache), shorter ones one engine step per token. When the batched prefill fails (logged), the
    /// prompt goes through Candle's batched forward (`model` into `cache`, cleared first) and the
    /// engine takes over its keys and values ([`DecodeEngine::load_prefix`]).
    pub fn prefill(&self, model: &Llama, cache: &mut KvCache, prompt_ids: &[u32]) -> Result<Next> {
        if prompt_ids.len() < super::BATCHED_PREFILL_MIN {
            self.engine.borrow_mut().reset();
            return self.run(prompt_ids);
        }
        let engine_prefill = {
            let mut engine = self.engine.borrow_mut();
            engine.reset();
            let result = engine.prefill(prompt_ids);
            if result.is_err() {
                engine.reset();
            }
            result
        };
        match engine_prefill {
            Ok(()) => return self.run(&[]),
            Err(e) => tracing::warn!(
                "CUDA decode engine: batched prefill failed, prefilling through Candle's forward instead: {e}"
            ),
        }
        let input = candle_core::Tensor::new(prompt_ids, model.device())
            .and_then(|t| t.unsqueeze(0))
            .context("prompt ids")?;
        cache.clear();
        let logits = model
            .forward_last(&input, cache)?
            .squeeze(0)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .context("prefill logits")?;
        self.engine.borrow_mut().load_prefix(cache)?;
        Ok(Next::Logits(logits))
    }

    /// Runs one generated token.
    pub fn step(&self, id: u32) -> Result<Next> {
        self.run(&[id])
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.busy.set(false);
    }
}
