//! Fuzzes JSONL dataset lines, the way `wick train --data` and `wick embed --input` read them: the
//! input is one file. `load_jsonl` with the tiny LLaMA's tokenizer and ChatML template (padded and
//! packed, at a short and a long `max_seq_len`) and a batch drawn from what loads; the embedding
//! corpus reader on the same bytes as JSONL and as plain lines, failing and skipping bad lines. A
//! panic, abort, runaway allocation or hang is a bug; a line that cannot be used must be an error
//! naming it (or, for the corpus with skipping, an entry in `bad`).
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wick::embed::corpus::{parse_texts_bytes, ReadOptions};
use wick::formats::{open_model, LoadOptions, ModelFiles};
use wick::train::data::{load_jsonl, DataOptions};

fn files() -> &'static ModelFiles {
    static FILES: OnceLock<ModelFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = common::write_dir(
            "model",
            &[
                ("config.json", common::TINY_CONFIG),
                ("tokenizer.json", common::TINY_TOKENIZER),
                ("tokenizer_config.json", common::TINY_TOKENIZER_CONFIG),
                ("model.safetensors", common::TINY_WEIGHTS),
            ],
        );
        open_model(&dir, &LoadOptions::default()).expect("the tiny model opens")
    })
}

fn train_data(path: &Path) {
    let files = files();
    for (max_seq_len, pack) in [(8, false), (64, true)] {
        let options = DataOptions { max_seq_len, pack };
        let Ok(data) = load_jsonl(
            path,
            &files.tokenizer,
            files.chat_template.as_ref(),
            &options,
            files.config.max_position_embeddings,
        ) else {
            continue;
        };
        assert!(!data.rows.is_empty(), "a dataset that loads has rows");
        let _ = data.batch(1, 3, 0, true);
    }
}

fn corpus(data: &[u8]) {
    for jsonl in [true, false] {
        for skip_bad_lines in [false, true] {
            let options = ReadOptions { skip_bad_lines };
            if let Ok(texts) = parse_texts_bytes(data, jsonl, Path::new("fuzz.jsonl"), options) {
                assert_eq!(texts.texts.len(), texts.lines.len());
                assert_eq!(texts.in_line_order().len(), texts.records());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = common::write_dir("data", &[("data.jsonl", data)]);
    train_data(&dir.join("data.jsonl"));
    corpus(data);
});
