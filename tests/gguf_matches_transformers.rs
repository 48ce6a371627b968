//! wick's decoder against HF transformers on the default GGUF file (SmolLM2-135M-Instruct Q4_1),
//! both with the weights dequantized to f32 and no activation quantization: the same maths, two
//! implementations. Teacher-forced over the prompt and a continuation, every position checked.
//!
//! (The tiny random-weight Qwen2/LLaMA checks are tests/decoder_matches_transformers.rs.)
//!
//! Reference: tests/fixtures/transformers/smollm2_gguf_logits.json, made by
//! scripts/make_transformers_gguf_fixture.py (transformers and torch versions recorded in it).

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use wick::formats::fetch::{ensure_default_chat_model, sha256_file};
use wick::generate::TextModel;

/// Largest allowed |wick logit - transformers logit|. Both sides compute in f32 with different
/// summation orders through 30 layers (measured: 8.6e-5 at worst); logits span about -10..30.
const LOGIT_TOLERANCE: f64 = 5e-4;

#[derive(Deserialize)]
struct Fixture {
    model_sha256: String,
    fixed_ids: Vec<u32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    positions: Vec<Position>,
}

#[derive(Deserialize)]
struct Position {
    top_ids: Vec<u32>,
    top_logits: Vec<f64>,
    fixed_logits: Vec<f64>,
    logsumexp: f64,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/transformers/smollm2_gguf_logits.json"
    );
    let text = std::fs::read_to_string(path).expect("reading the transformers fixture");
    serde_json::from_str(&text).expect("parsing the transformers fixture")
}

fn dense_model(expected_sha: &str) -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = ensure_default_chat_model().expect("fetching the default chat model");
        let sha = sha256_file(&path).expect("hashing the default chat model");
        assert_eq!(
            sha,
            expected_sha,
            "the fixture was made from another GGUF file than {}",
            path.display()
        );
        TextModel::open(
            &path,
            &wick::formats::LoadOptions {
                dtype: Some(DType::F32),
                ..Default::default()
            },
        )
        .expect("loading the default chat model")
    })
}

fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

#[test]
fn dense_logits_match_transformers_at_every_position() {
    let f = fixture();
    let m = dense_model(&f.model_sha256);
    let mut worst = 0f64;
    let mut problems = Vec::new();
    for case in &f.cases {
        let input = Tensor::new(case.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut cache = m.model.new_cache(1);
        let logits = m.model.forward(&input, &mut cache).unwrap();
        let rows: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(rows.len(), case.positions.len(), "{:?}", case.prompt);
        for (p, (row, want)) in rows.iter().zip(&case.positions).enumerate() {
            let ids = want.top_ids.iter().chain(&f.fixed_ids);
            let values = want.top_logits.iter().chain(&want.fixed_logits);
            let checks = ids
                .map(|&id| (format!("token {id}"), row[id as usize] as f64))
                .chain(std::iter::once(("logsumexp".to_string(), logsumexp(row))));
            for ((what, got), &expected) in checks.zip(values.chain([&want.logsumexp])) {
                let diff = (got - expected).abs();
                worst = worst.max(diff);
                if diff > LOGIT_TOLERANCE {
                    problems.push(format!(
                        "{:?} position {p} {what}: wick {got:.5}, transformers {expected:.5}",
                        case.prompt
                    ));
                }
            }
        }
    }
    eprintln!(
        "largest |logit difference| vs transformers: {worst:.2e} (tolerance {LOGIT_TOLERANCE:.0e})"
    );
    assert!(
        problems.is_empty(),
        "{}",
        problems[..problems.len().min(20)].join("\n")
    );
}
