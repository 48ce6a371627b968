//! `wick serve`: an OpenAI-compatible HTTP server over one base model and any number of LoRA
//! adapters, with continuous batching (requests join the running batch at step boundaries, each
//! sequence with its own adapter), chunked prefill, prefix caching (CPU), a bounded queue, cancellation, timeouts,
//! graceful shutdown, bearer auth, `/health` and Prometheus `/metrics`.
//!
//! Layout, one idea per file:
//! - [`openai`]: request and response bodies; [`error`]: OpenAI-style error answers;
//!   [`validate`]: field checks (400 naming the field);
//! - [`adapters`]: known and resident adapters (LRU eviction, pinning);
//! - [`batch`]: the [`batch::BatchDecoder`] seam and the CPU decoder (`Llama::forward_ragged`);
//!   [`prefix_cache`]: the CPU decoder's cache of prompt prefixes;
//!   `cuda_batch` (feature `cuda`): the decoder on the CUDA batch decode engine;
//! - [`scheduler`]: the continuous-batching loop; [`request`]: what flows between it and HTTP;
//! - [`completions`], [`endpoints`]: the handlers; [`state`]: what they share;
//! - [`metrics`]: Prometheus exposition; [`server`]: assembling and running it all.
//!
//! ```no_run
//! # async fn demo() -> wick::Result<()> {
//! use wick::serve::{Server, ServeConfig};
//! let config = ServeConfig { model: "model.gguf".into(), ..Default::default() };
//! let server = Server::load(&config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.map_err(wick::error::io_error("127.0.0.1:8080"))?;
//! server.serve(listener, wick::serve::shutdown_signal()).await
//! # }
//! ```

pub mod adapters;
pub mod batch;
pub mod completions;
#[cfg(feature = "cuda")]
pub mod cuda_batch;
pub mod endpoints;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod prefix_cache;
pub mod request;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod validate;

pub use batch::{BatchDecoder, CpuBatchDecoder, SeqId};
pub use error::ApiError;
pub use server::{shutdown_signal, ServeConfig, Server};
