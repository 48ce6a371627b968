//! Text generation: sampling, the generation loop with a KV cache, streaming, stop strings and
//! UTF-8-safe incremental detokenization.

pub mod continuation;
#[cfg(feature = "cuda")]
pub mod cuda_decode;
pub mod decode_adapter;
pub mod detokenizer;
pub mod generator;
pub mod sampler;
pub mod stop;
pub mod text_model;

pub use continuation::Continuation;
pub use detokenizer::{Detokenizer, TokenDecoder};
pub use generator::{
    generate, greedy_token_ids, GenerateOptions, GeneratedToken, Generation, GenerationAdapter,
    StopReason, Timings, TokenStream,
};
pub use sampler::{Sampled, Sampler, SamplingParams};
pub use text_model::{Prompt, TextModel};
