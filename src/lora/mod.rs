//! LoRA adapters: configuration with PEFT's field names, initialisation as PEFT does it, attaching
//! adapters to a model's `Linear` layers by module name, PEFT-format safetensors io, a registry of
//! several adapters over one base, and merging an adapter into the base weights.
//!
//! An adapter is a set of `(module path, A [r, in], B [out, r])` triples plus a scale; module paths are
//! PEFT's (`model.layers.0.self_attn.q_proj`), so a wick adapter and a PEFT adapter are the same file.

pub mod attach;
pub mod config;
pub mod init;
pub mod merge;
pub mod peft_io;
pub mod registry;
pub mod resident;

pub use attach::{attach, Adapter, AdapterLayer};
pub use config::{LoraConfig, TargetModules};
pub use registry::AdapterRegistry;
pub use resident::ResidentAdapter;
