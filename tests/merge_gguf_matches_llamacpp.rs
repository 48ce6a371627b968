//! `wick merge --format gguf`: the default GGUF (SmolLM2-135M-Instruct Q4_1) merged with a committed
//! LoRA adapter and exported in three mixes (f16, q8_0, q4_1) gives, byte for byte, the files
//! llama.cpp was run on, and wick decodes each of them greedily to llama.cpp's tokens. (q4_k_m is not
//! in the fixture, to keep this test's time in the dev profile modest; its K-quant blocks are checked
//! against ggml's in tests/gguf_quantize_matches_ggml.rs.)
//!
//! Reference: tests/fixtures/llamacpp/gguf_export.json, made by
//! scripts/llamacpp/make_export_fixture.py: it ran `wick merge` with the adapter in
//! tests/fixtures/llamacpp/export-adapter/ (seeded, rank 1 on q/k/v), kept each file's sha256, and
//! loaded each file in llama.cpp (llama-cpp-python 0.3.36) for 32 greedy tokens on 5 prompts,
//! twice: with llama.cpp's default f16 KV cache and with an f32 one. Only the leading tokens on which
//! both runs agree with a margin that stays >= 0.1 (`comparable`) are compared: past them
//! llama.cpp's own choice depends on its KV cache type (bench/results/q4_1-export-investigation.md).
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
    min_margin: f32,
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
    /// Leading tokens on which llama.cpp's f16 and f32 KV cache runs agree and the smaller top-2
    /// margin, less the two runs' difference in margin, stays >= the fixture's `min_margin` (0.1
    /// nats, the rule of tests/greedy_parity_llamacpp.rs widened by llama.cpp's own spread).
    comparable: usize,
}

/// Compared tokens each mix needs over its 5 prompts (of 160). The fixture of 2026-12-03 has f16 91,
/// q8_0 67, q4_1 104; this bar, a little under the smallest, keeps a regenerated fixture (or a bug
/// that ends decodes early) from letting a mix pass on a handful of tokens.
const MIN_COMPARED: usize = 60;

/// Issue 17's bar: f16 and q8_0 (9 of 10 decodes equal over all 32 tokens, 20 s in the dev
/// profile).
#[test]
fn merged_gguf_exports_match_llamacpp() {
    check_exports(&["f16", "q8_0"]);
}

/// The q4_1 export. With one llama.cpp run it failed on near-ties that llama.cpp itself decides
/// differently with an f32 KV cache (bench/results/q4_1-export-investigation.md); the two-run
/// comparable prefix leaves them out (104 tokens compared, 3 of 5 decodes equal over all 32).
#[test]
fn merged_gguf_q4_1_export_matches_llamacpp() {
    check_exports(&["q4_1"]);
}

fn check_exports(mixes: &[&str]) {
    let mut f: Fixture = read_fixture("gguf_export.json");
    f.exports.retain(|name, _| mixes.contains(&name.as_str()));
    assert_eq!(
        f.exports.len(),
        mixes.len(),
        "mixes missing from the fixture"
    );
    assert_eq!(f.llama_cpp_python, "0.3.36");
    assert_eq!(f.n_generate, 32);
    assert_eq!(f.min_margin, 0.1, "the margin `comparable` was cut at");
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
    let (mut differs_from_base, mut equal_prompts, mut report) = (0, 0, Vec::new());
    let mut totals = Vec::new();
    for (name, export) in &f.exports {
        let mut compared = 0;
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
            // Over the comparable prefix the tokens must be equal; past it llama.cpp's own runs
            // differ or are near-tied, and the rest of the continuation follows from the choice.
            let stable = case.comparable.min(end);
            assert_eq!(
                got[..stable.min(got.len())],
                case.greedy_ids[..stable],
                "{name} {:?}: greedy tokens over llama.cpp's comparable prefix ({stable} tokens)",
                case.prompt
            );
            compared += stable;
            let equal = got == case.greedy_ids[..end];
            equal_prompts += equal as usize;
            report.push(format!(
                "{name} {:?}: {} (compared {stable} tokens)",
                case.prompt,
                if equal {
                    "all tokens equal"
                } else {
                    "differs after the near-tie"
                }
            ));
            differs_from_base += (got != f.base_greedy_ids[i]) as usize;
        }
        std::fs::remove_file(&out).unwrap();
        totals.push(format!("{name} {compared}"));
        assert!(
            compared >= MIN_COMPARED,
            "{name}: only {compared} tokens comparable with llama.cpp (need {MIN_COMPARED})"
        );
    }
    eprintln!(
        "{equal_prompts} of {} decodes equal llama.cpp's over {} tokens; tokens compared: {}:\n{}",
        report.len(),
        f.n_generate,
        totals.join(", "),
        report.join("\n")
    );
    // The adapter changes what the model says: the check is about the merged weights.
    assert!(
        differs_from_base >= f.exports.len() * 3,
        "only {differs_from_base} merged decodes differ from the unmerged base"
    );
}
