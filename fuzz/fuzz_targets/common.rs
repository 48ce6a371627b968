//! Shared by the fuzz targets: scratch directories (one per process, under /dev/shm when it exists)
//! and the real small files of the tiny test model that a target combines with the fuzzed one.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The tiny 2-layer LLaMA of tests/fixtures/peft (vocab 128, hidden 32), file by file.
pub const TINY_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/peft/tiny-llama/config.json");
pub const TINY_TOKENIZER: &[u8] =
    include_bytes!("../../tests/fixtures/peft/tiny-llama/tokenizer.json");
pub const TINY_TOKENIZER_CONFIG: &[u8] =
    include_bytes!("../../tests/fixtures/peft/tiny-llama/tokenizer_config.json");
pub const TINY_WEIGHTS: &[u8] =
    include_bytes!("../../tests/fixtures/peft/tiny-llama/model.safetensors");

/// Where a target splits one input into two files: the bytes before the first occurrence are the
/// first file, the bytes after it the second (seeds are written that way).
pub const SPLIT: &[u8] = b"\n--wick-fuzz-split--\n";

/// (first, second) halves of `data` around `SPLIT`; without it, all of `data` and nothing.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(SPLIT.len()).position(|w| w == SPLIT) {
        Some(at) => (&data[..at], &data[at + SPLIT.len()..]),
        None => (data, &[]),
    }
}

/// A directory private to this process named `name`, emptied of earlier inputs' files.
pub fn scratch_dir(name: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("wick-fuzz-{}", std::process::id()))
    });
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the fuzz scratch directory");
    dir
}

/// Writes `files` (name, bytes) into a fresh scratch directory `name`.
pub fn write_dir(name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = scratch_dir(name);
    for (file, bytes) in files {
        std::fs::write(dir.join(file), bytes).expect("writing a fuzz scratch file");
    }
    dir
}
