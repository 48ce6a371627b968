//! wick against llama.cpp on the same GGUF file (the default chat model, SmolLM2-135M-Instruct
//! Q4_1): tokenization, greedy generation and teacher-forced logits.
//!
//! Reference: tests/fixtures/llamacpp/greedy.json, made by scripts/llamacpp/make_fixture.py with
//! llama-cpp-python 0.3.36 (version and GGUF sha256 recorded in the fixture). Its prompts are the
//! ones where two different llama.cpp builds (native and a no-AVX2 generic build) produce the same
//! 16 greedy tokens: a 135M model has near-tied logits, and a summation order that differs from
//! llama.cpp's may flip a tie, so the greedy check only uses prompts that are stable across builds,
//! and the teacher-forced check compares logits with a tolerance everywhere.

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use wick::formats::fetch::{ensure_default_chat_model, sha256_file};
use wick::generate::{greedy_token_ids, Prompt, TextModel};

/// Largest allowed |wick logit - llama.cpp logit| for llama.cpp's top-5 tokens at a position.
/// Both sides quantize activations to Q8 the same way (src/ops/quant_matmul_cpu.rs); what is left is
/// f32 summation order through 30 layers. Logits here span about -10..25.
const LOGIT_TOLERANCE: f32 = 0.15;

#[derive(Deserialize)]
struct Fixture {
    llama_cpp_python: String,
    model_sha256: String,
    n_generate: usize,
    prompts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    top_ids: Vec<u32>,
    top_logits: Vec<f32>,
    margin: f32,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/llamacpp/greedy.json"
        );
        let text = std::fs::read_to_string(path).expect("reading the llama.cpp fixture");
        serde_json::from_str(&text).expect("parsing the llama.cpp fixture")
    })
}

fn model() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = ensure_default_chat_model().expect("fetching the default chat model");
        let sha = sha256_file(&path).expect("hashing the default chat model");
        assert_eq!(
            sha,
            fixture().model_sha256,
            "the fixture was made from another GGUF file than {}",
            path.display()
        );
        TextModel::open(
            &path,
            // Dense f32 weights: wick's CPU default (the quantized CPU path is an open bug).
            &wick::formats::LoadOptions {
                dtype: Some(candle_core::DType::F32),
                ..Default::default()
            },
        )
        .expect("loading the default chat model")
    })
}

#[test]
fn fixture_is_what_the_tests_expect() {
    let f = fixture();
    assert_eq!(f.llama_cpp_python, "0.3.36");
    assert!(f.prompts.len() >= 5);
    for case in &f.prompts {
        assert_eq!(case.greedy_ids.len(), f.n_generate);
        assert_eq!(case.steps.len(), f.n_generate);
        assert_eq!(f.n_generate, 16);
    }
}

#[test]
fn tokenization_matches_llamacpp() {
    let m = model();
    for case in &fixture().prompts {
        let ids = m.prompt_ids(&Prompt::Raw(&case.prompt)).unwrap();
        assert_eq!(ids, case.prompt_ids, "prompt {:?}", case.prompt);
    }
}

#[test]
#[ignore = "open: wick's logits sit ~1.5% below llama.cpp's at every position (a scale, not noise); 4 of 6 greedy prompts match. Run with --ignored."]
fn first_16_greedy_tokens_match_llamacpp() {
    let m = model();
    let mut failures = Vec::new();
    for case in &fixture().prompts {
        let got = greedy_token_ids(&m.model, &case.prompt_ids, case.greedy_ids.len()).unwrap();
        if got != case.greedy_ids {
            let at = got
                .iter()
                .zip(&case.greedy_ids)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(case.greedy_ids.len()));
            failures.push(format!(
                "{:?}: first difference at token {at}: wick {:?}, llama.cpp {:?} (llama.cpp top-2 margin there {:.4})",
                case.prompt,
                got,
                case.greedy_ids,
                case.steps.get(at).map_or(f32::NAN, |s| s.margin)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Feeds llama.cpp's own tokens (prompt + its greedy continuation) in one forward and compares the
/// logits at every generated position with llama.cpp's top-5.
#[test]
#[ignore = "open: wick's logits sit ~1.5% below llama.cpp's at every position (a scale, not noise); 4 of 6 greedy prompts match. Run with --ignored."]
fn teacher_forced_logits_match_llamacpp() {
    let m = model();
    let mut worst = 0f32;
    let mut problems = Vec::new();
    let mut top1_differences = Vec::new();
    for case in &fixture().prompts {
        let n = case.greedy_ids.len();
        // Position p predicts token p + 1: the logits at the last prompt position and at the first
        // n - 1 generated tokens are the ones that chose the n generated tokens.
        let mut ids = case.prompt_ids.clone();
        ids.extend_from_slice(&case.greedy_ids[..n - 1]);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut cache = m.model.new_cache(1);
        let logits = m.model.forward(&input, &mut cache).unwrap();
        let logits: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
        let first = case.prompt_ids.len() - 1;
        for (i, step) in case.steps.iter().enumerate() {
            let row = &logits[first + i];
            for (id, want) in step.top_ids.iter().zip(&step.top_logits) {
                let got = row[*id as usize];
                let diff = (got - want).abs();
                worst = worst.max(diff);
                if diff > LOGIT_TOLERANCE {
                    problems.push(format!(
                        "{:?} position {i} token {id}: wick {got:.4}, llama.cpp {want:.4}",
                        case.prompt
                    ));
                }
            }
            let wick_top = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
                    if v > best.1 {
                        (j, v)
                    } else {
                        best
                    }
                })
                .0 as u32;
            if wick_top != step.top_ids[0] {
                top1_differences.push(format!(
                    "{:?} position {i}: wick top-1 {wick_top}, llama.cpp {} (llama.cpp top-2 margin {:.4})",
                    case.prompt, step.top_ids[0], step.margin
                ));
                // A flipped top-1 is only acceptable where llama.cpp itself nearly tied.
                if step.margin > 2.0 * LOGIT_TOLERANCE {
                    problems.push(top1_differences.last().cloned().unwrap_or_default());
                }
            }
        }
    }
    eprintln!(
        "teacher-forced: largest |logit difference| {worst:.4} (tolerance {LOGIT_TOLERANCE}); top-1 differences: {}",
        if top1_differences.is_empty() {
            "none".to_string()
        } else {
            top1_differences.join("; ")
        }
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
