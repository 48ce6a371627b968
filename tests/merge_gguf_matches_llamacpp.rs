//! `wick merge --format gguf`: the default GGUF (SmolLM2-135M-Instruct Q4_1) merged with a committed
//! LoRA adapter and exported in four mixes (f16, q8_0, q4_1, q4_k_m) gives, byte for byte, the files
//! llama.cpp was run on, and wick decodes each of them greedily to llama.cpp's tokens.
//!
//! Reference: tests/fixtures/llamacpp/gguf_export.json, made by
//! scripts/llamacpp/make_export_fixture.py: it ran `wick merge` with the adapter in
//! tests/fixtures/llamacpp/export-adapter/ (seeded, rank 1 on q/k/v), kept each file's sha256, and
//! loaded each file in llama.cpp (llama-cpp-python 0.3.36) for 32 greedy tokens on 5 prompts.
//! Equal hashes mean llama.cpp's verdict (it loads the file, and these are its tokens) applies to the
//! bytes this test writes.

mod llamacpp_support;

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use llamacpp_support::{default_model_path, read_fixture};
use serde::Deserialize;
use wick::formats::fetch::sha256_file;
use wick::formats::gguf::GgufQuant;
use wick::formats::LoadOptions;
use wick::generate::{greedy_token_ids, Prompt, TextModel};
use wick::lora::merge::{merge_into_layers, write_gguf_model};
use wick::lora::peft_io::load_adapter;

#[derive(Deserialize)]
struct Fixture {
    llama_cpp_python: String,
    model_sha256: String,
    adapter: String,
    n_generate: usize,
    base_greedy_ids: Vec<Vec<u32>>,
    exports: BTreeMap<String, Export>,
}

#[derive(Deserialize)]
struct Export {
    sha256: String,
    prompts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

#[test]
#[ignore = "needs tests/fixtures/llamacpp/gguf_export.json from scripts/llamacpp/make_export_fixture.py (not yet committed)"]
fn merged_gguf_exports_match_llamacpp() {
    let f: Fixture = read_fixture("gguf_export.json");
    assert_eq!(f.llama_cpp_python, "0.3.36");
    assert_eq!(f.n_generate, 32);
    let base = default_model_path(&f.model_sha256);

    // What `wick merge` does (src/cli/merge.rs): base in f32, adapter folded in, weights exported.
    let f32_options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::F32),
    };
    let mut model = TextModel::open(&base, &f32_options).unwrap();
    let adapter_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&f.adapter);
    let adapter = load_adapter(&adapter_dir, &Device::Cpu).unwrap();
    merge_into_layers(&adapter, model.model.linear_layers_mut(), &adapter_dir).unwrap();
    let weights = model.model.named_weights().unwrap();
    let config = model.model.config().clone();
    drop(model);

    let dir = tempfile::tempdir().unwrap();
    let mut differs_from_base = 0;
    for (name, export) in &f.exports {
        let quant = GgufQuant::parse(name).expect("a mix wick knows");
        let out = dir.path().join(format!("merged-{name}.gguf"));
        write_gguf_model(&out, &base, &config, weights.clone(), quant).unwrap();
        assert_eq!(
            sha256_file(&out).unwrap(),
            export.sha256,
            "{name}: the export is not the file llama.cpp was run on"
        );
        let merged = TextModel::open(&out, &LoadOptions::inference(Device::Cpu)).unwrap();
        for (i, case) in export.prompts.iter().enumerate() {
            let ids = merged.prompt_ids(&Prompt::Raw(&case.prompt)).unwrap();
            assert_eq!(ids, case.prompt_ids, "{name} {:?}: tokens", case.prompt);
            let got = greedy_token_ids(&merged.model, &ids, f.n_generate).unwrap();
            // wick stops after an end-of-sequence token; llama.cpp's run went on past it.
            let end = case
                .greedy_ids
                .iter()
                .position(|t| config.eos_token_ids.contains(t))
                .map_or(case.greedy_ids.len(), |p| p + 1);
            assert_eq!(
                got,
                case.greedy_ids[..end],
                "{name} {:?}: greedy tokens",
                case.prompt
            );
            differs_from_base += (got != f.base_greedy_ids[i]) as usize;
        }
        std::fs::remove_file(&out).unwrap();
    }
    // The adapter changes what the model says: the check is about the merged weights.
    assert!(
        differs_from_base >= f.exports.len() * 3,
        "only {differs_from_base} merged decodes differ from the unmerged base"
    );
}
