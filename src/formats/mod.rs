//! Model file formats: GGUF, Hugging Face directories (config + safetensors), tokenizers, chat templates.

pub mod config;
pub mod weights;
