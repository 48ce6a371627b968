//! Model architectures. `llama` covers LLaMA-family, Mistral and Qwen2 decoders; `bert` the encoders.

pub mod bert;
pub mod dora;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod seeded_dropout;
