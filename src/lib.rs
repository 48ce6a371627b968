//! # wick
//!
//! Fine-tune small language models with LoRA, generate text with them and embed text for search,
//! on NVIDIA GPUs and on the CPU, in one Rust library and binary built on Candle.
//!
//! The whole loop, on the tiny test models under `tests/fixtures` (a 2-layer LLaMA with a character
//! tokenizer and a ChatML template, and a 2-layer sentence-transformers encoder); swap in a GGUF
//! file or a Hugging Face directory (`formats::fetch` downloads the default models) for real use:
//!
//! ```
//! use wick::{
//!     load_jsonl, load_adapter, search_index, train, DType, DataOptions, Device, Embedder,
//!     GenerateOptions, Index, LoadOptions, LoraConfig, Prompt, SamplingParams, TextModel,
//!     TrainConfig, TrainRun,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
//! let work = tempfile::tempdir()?;
//!
//! // 1. Open a decoder (dense f32 weights: what training needs) and generate greedily.
//! let load = LoadOptions { device: Device::Cpu, dtype: Some(DType::F32) };
//! let mut model = TextModel::open(&fixtures.join("peft/tiny-llama"), &load)?;
//! let greedy = GenerateOptions {
//!     max_tokens: 5,
//!     sampling: SamplingParams::greedy(),
//!     ..Default::default()
//! };
//! let prompt = Prompt::Chat { system: None, user: "q7 hi" };
//! let before = model.generate(&prompt, &greedy, |_| {})?.text;
//!
//! // 2. Train a LoRA adapter on chat examples (JSONL: {"messages": [...]}, {"prompt", "completion"}
//! //    or {"text"}) that always answer "Ahoy!".
//! let lines: Vec<String> = (0..24)
//!     .map(|i| {
//!         let question = format!("q{i} {}", ["hi", "yo", "ok"][i % 3]);
//!         serde_json::json!({"messages": [
//!             {"role": "user", "content": question},
//!             {"role": "assistant", "content": "Ahoy!"},
//!         ]})
//!         .to_string()
//!     })
//!     .collect();
//! let data_path = work.path().join("data.jsonl");
//! std::fs::write(&data_path, lines.join("\n"))?;
//! let options = DataOptions { max_seq_len: 48, pack: false };
//! let context = model.model.config().max_position_embeddings;
//! let tokenizer = &model.tokenizer;
//! let data = load_jsonl(&data_path, tokenizer, model.chat_template.as_ref(), &options, context)?;
//! let out = work.path().join("adapter");
//! let run = TrainRun {
//!     config: TrainConfig {
//!         lora: LoraConfig { r: 8, lora_alpha: 16.0, ..Default::default() },
//!         lr: 1e-2,
//!         total_steps: 30,
//!         grad_accum: 2,
//!         ..Default::default()
//!     },
//!     ..TrainRun::new(&data, &out)
//! };
//! let (_adapter, summary) = train(&mut model.model, run, &mut |_progress| {})?;
//! assert!(summary.losses[29] < 0.3 * summary.losses[0]);
//!
//! // 3. Generate with it: the trained adapter stays attached to `model`, and the saved one
//! //    (PEFT layout: adapter_config.json + adapter_model.safetensors) loads onto a fresh base.
//! let after = model.generate(&prompt, &greedy, |_| {})?.text;
//! assert_ne!(before, after);
//! assert!(after.starts_with("Ahoy!"), "{after:?}");
//! let mut fresh = TextModel::open(&fixtures.join("peft/tiny-llama"), &load)?;
//! load_adapter(&out, &Device::Cpu)?.apply(fresh.model.linear_layers_mut(), &out)?;
//! assert_eq!(fresh.generate(&prompt, &greedy, |_| {})?.text, after);
//!
//! // 4. Embed texts and search them by meaning (cosine similarity of sentence embeddings).
//! let encoder = fixtures.join("embed/tiny/bge-cls");
//! let embedder = Embedder::load(encoder.to_str().unwrap(), &Device::Cpu)?;
//! let docs = ["the cat sat on the mat", "stock markets fell sharply", "rain is expected"];
//! let index = Index::build(&embedder, docs.map(String::from).to_vec(), &mut |_| {})?;
//! let hits = search_index(&index, &embedder, "stock markets fell sharply", 2)?;
//! assert_eq!(hits[0].text, "stock markets fell sharply");
//! # Ok(())
//! # }
//! ```
//!
//! Data flows one way: `formats` -> `models` (+ `lora`) -> `train` | `generate` | `embed` -> the CLI,
//! with `ops` (fused kernels) and `gpu` (CUDA plumbing) under all of them (`tests/layering.rs` keeps
//! it so). The types above are re-exported here; the modules hold the rest.

/// Numeric checks against f64 references (seeded inputs, error measure, tolerances), shared by the
/// ops' unit tests and the GPU checks; it sits under `ops` and `gpu` so that both may import it.
pub mod check;
pub mod device;
pub mod embed;
pub mod error;
pub mod formats;
pub mod generate;
pub mod gpu;
pub mod lora;
pub mod models;
pub mod ops;
pub mod reference;
pub mod serve;
pub mod train;

pub use candle_core::{DType, Device};
pub use device::parse_device;
pub use embed::{search_index, Embedder, EmbedderOptions, Hit, Index};
pub use error::{Context, Error, Result};
pub use formats::LoadOptions;
pub use generate::{GenerateOptions, Generation, Prompt, SamplingParams, TextModel};
pub use lora::peft_io::load_adapter;
pub use lora::{Adapter, LoraConfig, TargetModules};
pub use train::data::{load_jsonl, DataOptions, Dataset};
pub use train::trainer::{train, Progress, TrainConfig, TrainRun, TrainSummary};
