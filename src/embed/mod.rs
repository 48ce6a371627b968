//! Text embeddings and semantic search, as sentence-transformers computes them.
//!
//! ```no_run
//! use candle_core::Device;
//! use wick::embed::{rank_by_cosine, Embedder};
//!
//! # fn main() -> wick::Result<()> {
//! let embedder = Embedder::load("default", &Device::Cpu)?; // all-MiniLM-L6-v2
//! let docs = ["The cat sat on the mat.", "Stock markets fell sharply today."];
//! let corpus = embedder.embed_passages(&docs)?; // [2, 384], L2-normalized
//! let query = embedder.embed_queries(&["a pet resting"])?;
//! let best = rank_by_cosine(&corpus, &query, 1)?;
//! assert_eq!(best[0].0, 0);
//! # Ok(())
//! # }
//! ```
//!
//! - `embedder`: loading a sentence-transformers directory and batching texts through the encoder,
//! - `pooling`: mean / CLS / max / ... pooling and normalization,
//! - `model_dir`: what the directory's modules.json and sentence-transformers configs say,
//! - `corpus`: reading texts (plain lines or JSONL),
//! - `index`: a saved index with the model's fingerprint, and cosine search,
//! - `npy`: writing embeddings for NumPy.

pub mod corpus;
pub mod embedder;
pub mod index;
pub mod model_dir;
pub mod npy;
pub mod pooling;

pub use embedder::{EmbedStats, Embedder, EmbedderOptions};
pub use index::{rank_by_cosine, search_index, Hit, Index, IndexManifest, RowSource};
pub use model_dir::{Prompts, DEFAULT_MODEL};
pub use pooling::{PoolingConfig, PoolingMode};
