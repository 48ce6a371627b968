//! Greedy parity with llama.cpp on 54 prompts (prose, code, lists, numbers, multilingual, chat) of
//! the default GGUF (SmolLM2-135M-Instruct Q4_1), wick's default quantized CPU path.
//!
//! Reference: tests/fixtures/llamacpp/greedy_parity.json, made by
//! scripts/llamacpp/make_parity_fixture.py with two CPU builds of llama.cpp (llama-cpp-python 0.3.36:
//! native AVX-512 and portable AVX2), each with its greedy tokens and top-3 logits at every position.
//! Two builds of llama.cpp already disagree where the top-2 logits nearly tie (another summation
//! order flips them), so the reference is the builds' common prefix. The rule (issue 17): wick
//! reproduces the whole common prefix of every prompt along which llama.cpp's top-2 margin (the
//! smaller of the two builds') stays at least 0.1 nats; every other divergence inside a common
//! prefix is listed with both engines' margins (bench/results/greedy-parity.md; set
//! WICK_PARITY_REPORT=path to write the table).

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use wick::formats::fetch::{ensure_default_chat_model, sha256_file};
use wick::generate::{greedy_token_ids, Prompt, TextModel};

/// llama.cpp's top-2 margin (nats) above which a divergence counts against wick.
const MIN_MARGIN: f32 = 0.1;

#[derive(Deserialize)]
struct Fixture {
    llama_cpp_python: String,
    model_sha256: String,
    n_generate: usize,
    prompts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    kind: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    steps: Vec<Step>,
    second_build_steps: Vec<Step>,
    second_build_greedy_ids: Vec<u32>,
    common_prefix: usize,
}

#[derive(Deserialize)]
struct Step {
    top_logits: Vec<f32>,
}

impl Step {
    fn margin(&self) -> f32 {
        self.top_logits[0] - self.top_logits[1]
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/llamacpp/greedy_parity.json"
        );
        let text = std::fs::read_to_string(path).expect("reading the parity fixture");
        serde_json::from_str(&text).expect("parsing the parity fixture")
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
            "the fixture was made from another GGUF"
        );
        TextModel::open(&path, &wick::formats::LoadOptions::inference(Device::Cpu))
            .expect("loading the default chat model")
    })
}

/// One greedy step of wick: the chosen token, the runner-up and the logits of both.
struct WickStep {
    token: u32,
    runner_up: u32,
    row: Vec<f32>,
}

impl WickStep {
    fn margin(&self) -> f32 {
        self.row[self.token as usize] - self.row[self.runner_up as usize]
    }
}

/// wick's greedy decode with its logits: the prompt in one forward, then one token per forward,
/// the loop `wick::generate` runs (checked against `greedy_token_ids` on the first prompt).
fn wick_greedy(m: &TextModel, prompt_ids: &[u32], n: usize) -> Vec<WickStep> {
    let mut cache = m.model.new_cache(1);
    let mut input = prompt_ids.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ids = Tensor::new(input.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let row: Vec<f32> = m
            .model
            .forward_last(&ids, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let (token, runner_up) = top2(&row);
        out.push(WickStep {
            token,
            runner_up,
            row,
        });
        input = vec![token];
    }
    out
}

/// The two largest entries' indices (first index wins a tie, as an argmax does).
fn top2(row: &[f32]) -> (u32, u32) {
    let (mut first, mut second) = (0usize, usize::MAX);
    for j in 1..row.len() {
        if row[j] > row[first] {
            second = first;
            first = j;
        } else if second == usize::MAX || row[j] > row[second] {
            second = j;
        }
    }
    (first as u32, second as u32)
}

#[test]
fn fixture_covers_the_issue() {
    let f = fixture();
    assert_eq!(f.llama_cpp_python, "0.3.36");
    assert!(f.prompts.len() >= 50, "{} prompts", f.prompts.len());
    for kind in ["prose", "code", "list", "numbers", "multilingual", "chat"] {
        assert!(
            f.prompts.iter().filter(|c| c.kind == kind).count() >= 5,
            "fewer than 5 {kind} prompts"
        );
    }
    for c in &f.prompts {
        assert_eq!(c.greedy_ids.len(), f.n_generate);
        assert_eq!(c.steps.len(), f.n_generate);
        assert_eq!(c.second_build_steps.len(), f.n_generate);
        let common = c
            .greedy_ids
            .iter()
            .zip(&c.second_build_greedy_ids)
            .take_while(|(a, b)| a == b)
            .count();
        assert_eq!(common, c.common_prefix, "{:?}", c.prompt);
    }
}

#[test]
fn prompts_tokenize_as_llamacpp() {
    let m = model();
    for c in &fixture().prompts {
        let prompt = match c.kind.as_str() {
            "chat" => Prompt::Chat {
                system: None,
                user: &c.prompt,
            },
            _ => Prompt::Raw(&c.prompt),
        };
        assert_eq!(
            m.prompt_ids(&prompt).unwrap(),
            c.prompt_ids,
            "[{}] {:?}",
            c.kind,
            c.prompt
        );
    }
}

/// A divergence from llama.cpp inside the builds' common prefix, with both engines' margins.
struct Divergence {
    row: String,
    counts: bool,
}

fn divergence(c: &Case, wick: &[WickStep]) -> Option<Divergence> {
    let at = (0..c.common_prefix).find(|&i| wick[i].token != c.greedy_ids[i])?;
    let (first, second) = (c.steps[at].margin(), c.second_build_steps[at].margin());
    // Did llama.cpp's margin stay >= MIN_MARGIN along the whole common prefix?
    let stable = (0..c.common_prefix)
        .all(|i| c.steps[i].margin().min(c.second_build_steps[i].margin()) >= MIN_MARGIN);
    let w = &wick[at];
    let llama_token = c.greedy_ids[at];
    let row = format!(
        "| {} | {:?} | {at} of {} | {llama_token} / {} | {first:.3} / {second:.3} | {:.3} | {:.3} |",
        c.kind,
        c.prompt,
        c.common_prefix,
        w.token,
        w.margin(),
        w.row[w.token as usize] - w.row[llama_token as usize],
    );
    Some(Divergence {
        row,
        counts: stable,
    })
}

#[test]
#[ignore = "not yet run to completion: >15 min on the loaded 2-core box; run with --ignored and commit bench/results/greedy-parity.md"]
fn greedy_matches_llamacpp_common_prefix() {
    let m = model();
    let f = fixture();
    let first = &f.prompts[0];
    let (mut matched, mut stable_prompts, mut rows, mut failures) = (0, 0, Vec::new(), Vec::new());
    for (i, c) in f.prompts.iter().enumerate() {
        let wick = wick_greedy(m, &c.prompt_ids, c.common_prefix);
        if i == 0 {
            let tokens: Vec<u32> = wick.iter().map(|s| s.token).collect();
            assert_eq!(
                tokens,
                greedy_token_ids(&m.model, &first.prompt_ids, first.common_prefix).unwrap(),
                "the test's decode loop differs from wick::generate's"
            );
        }
        let stable = (0..c.common_prefix)
            .all(|i| c.steps[i].margin().min(c.second_build_steps[i].margin()) >= MIN_MARGIN);
        stable_prompts += stable as usize;
        match divergence(c, &wick) {
            None => matched += 1,
            Some(d) => {
                if d.counts {
                    failures.push(d.row.clone());
                }
                rows.push(d.row);
            }
        }
    }
    let report = format!(
        "wick matches llama.cpp's common prefix on {matched} of {} prompts; {stable_prompts} prompts keep \
         llama.cpp's top-2 margin >= {MIN_MARGIN} along it.\n\nDivergences inside the common prefix:\n\n\
         | kind | prompt | position of common prefix | token llama.cpp / wick | llama.cpp margin native / avx2 | wick margin | wick's logit gap to llama.cpp's token |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        f.prompts.len(),
        rows.join("\n")
    );
    eprintln!("{report}");
    if let Ok(path) = std::env::var("WICK_PARITY_REPORT") {
        std::fs::write(path, &report).expect("writing the parity report");
    }
    assert!(
        failures.is_empty(),
        "wick diverges inside the common prefix of prompts where llama.cpp's margin stays >= {MIN_MARGIN}:\n{}",
        failures.join("\n")
    );
}
