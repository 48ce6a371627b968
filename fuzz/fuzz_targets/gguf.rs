//! Fuzzes the whole GGUF read path on arbitrary bytes, the way `wick generate --model FILE.gguf` takes
//! it: the header parser on bytes in memory, then `open_model` on the same bytes written to a file
//! (mmap, config and tokenizer from the metadata, chat template compiled, `GgufSource` with Q/K
//! un-permutation), a short encode/decode through the GGUF tokenizer, the tensor validation against
//! the config, and `Llama::load` when the tensors match. Every tensor is also read through the source
//! quantized and dequantized to f32. Any panic, abort, runaway allocation or hang is a bug; errors are
//! the expected outcome for almost every input.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use wick::formats::gguf::{GgufFile, GgufSource};
use wick::formats::validate::check_tensors;
use wick::formats::{open_model, DecoderConfig, LoadOptions, TextTokenizer, WeightSource};
use wick::models::llama::{expected_tensors, Llama};

/// One file per fuzzing process, rewritten for every input.
fn scratch_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("wick-fuzz-{}.gguf", std::process::id()))
    })
}

fn read_every_tensor(file: &Arc<GgufFile>) {
    for dtype in [None, Some(candle_core::DType::F32)] {
        let options = LoadOptions {
            dtype,
            ..Default::default()
        };
        if let Ok(source) = GgufSource::from_file(file.clone(), options) {
            for name in source.names() {
                let _ = source.shape(&name);
                let _ = source.get(&name);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. The reader on bytes in memory, and every tensor through the weight source.
    if let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) {
        let file = Arc::new(file);
        let _ = DecoderConfig::from_gguf(&file);
        let _ = TextTokenizer::from_gguf(&file);
        read_every_tensor(&file);
    }

    // 2. What `TextModel::open` does with a .gguf path.
    let path = scratch_path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let options = LoadOptions::default();
    let Ok(files) = open_model(path, &options) else {
        return;
    };
    if let Ok(ids) = files.tokenizer.encode("Hello wörld, 12 tokens!", true) {
        let _ = files.tokenizer.decode(&ids);
        let _ = files.tokenizer.decode_skip_special(&ids);
    }
    if check_tensors(files.weights.as_ref(), &expected_tensors(&files.config)).is_ok() {
        let _ = Llama::load(&files.config, files.weights.as_ref(), &options);
    }
});
