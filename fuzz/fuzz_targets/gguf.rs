//! Fuzzes the whole GGUF read path on arbitrary bytes: header parsing, config and tokenizer from the
//! metadata, and every tensor (un-permuted, dequantized). Any panic, abort or runaway allocation is a bug;
//! errors are the expected outcome for almost every input.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use wick::formats::gguf::{GgufFile, GgufSource};
use wick::formats::{DecoderConfig, LoadOptions, TextTokenizer, WeightSource};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let file = Arc::new(file);
    let _ = DecoderConfig::from_gguf(&file);
    let _ = TextTokenizer::from_gguf(&file);
    for options in [
        LoadOptions::default(),
        LoadOptions {
            dtype: Some(candle_core::DType::F32),
            ..Default::default()
        },
    ] {
        if let Ok(source) = GgufSource::from_file(file.clone(), options) {
            for name in source.names() {
                let _ = source.get(&name);
            }
        }
    }
});
