//! Every encoder layout and pooling variant wick reads, against sentence-transformers on tiny random
//! models (tests/fixtures/embed/tiny, made by scripts/make_embed_fixture.py):
//! BGE-style CLS pooling from a `bert.`-prefixed checkpoint with LayerNorm gamma/beta names and
//! truncation at 24 word pieces; E5 mean pooling with "query: "/"passage: " prefixes; prompt tokens
//! excluded from pooling (`include_prompt: false`); four pooling modes concatenated with gelu_new;
//! the XLM-RoBERTa layout.

use std::collections::BTreeMap;

use candle_core::Device;
use serde::Deserialize;
use wick::embed::Embedder;

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<String>,
    queries: Vec<String>,
    models: BTreeMap<String, ModelReference>,
}

#[derive(Deserialize)]
struct ModelReference {
    max_seq_length: usize,
    dim: usize,
    truncated: usize,
    plain: Vec<Vec<f32>>,
    query_prompt: Option<String>,
    queries: Option<Vec<Vec<f32>>>,
    passages: Option<Vec<Vec<f32>>>,
}

const DIR: &str = "tests/fixtures/embed/tiny";

fn reference() -> Reference {
    let text = std::fs::read_to_string(format!("{DIR}/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Cosine >= 0.9999 and max abs difference < 1e-4 row by row (f32 on tiny random models).
fn assert_close(what: &str, got: &candle_core::Tensor, want: &[Vec<f32>]) {
    let got: Vec<Vec<f32>> = got.to_vec2().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: row count");
    let mut max_abs = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: width");
        let dot: f64 = g
            .iter()
            .zip(w)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let ng = g.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let nw = w.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (ng * nw);
        let abs = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        max_abs = max_abs.max(abs);
        assert!(
            cos >= 0.9999 && abs < 1e-4,
            "{what} row {i}: cosine {cos:.6}, max abs {abs:.2e}"
        );
    }
    eprintln!(
        "{what}: {} rows, max abs difference {max_abs:.2e}",
        got.len()
    );
}

fn check_model(name: &str) {
    let all = reference();
    let r = &all.models[name];
    let sentences: Vec<&str> = all.sentences.iter().map(String::as_str).collect();
    let queries: Vec<&str> = all.queries.iter().map(String::as_str).collect();
    let mut embedder = Embedder::load(&format!("{DIR}/{name}"), &Device::Cpu).unwrap();
    embedder.set_batch_size(4);
    assert_eq!(embedder.dim(), r.dim, "{name}: dim");
    assert_eq!(
        embedder.max_seq_length(),
        r.max_seq_length,
        "{name}: max_seq_length"
    );
    let (plain, stats) = embedder.embed_with(&sentences, None, &mut |_| {}).unwrap();
    assert_eq!(stats.truncated, r.truncated, "{name}: truncated count");
    assert_close(&format!("{name} plain"), &plain, &r.plain);
    assert_eq!(
        embedder.prompts().query,
        r.query_prompt,
        "{name}: query prompt"
    );
    if let Some(want) = &r.queries {
        assert_close(
            &format!("{name} queries"),
            &embedder.embed_queries(&queries).unwrap(),
            want,
        );
    }
    if let Some(want) = &r.passages {
        let got = embedder.embed_passages(&sentences).unwrap();
        assert_close(&format!("{name} passages"), &got, want);
    }
}

#[test]
fn bge_cls_pooling_prefixed_tf_names_truncation() {
    check_model("bge-cls");
}

#[test]
fn e5_mean_pooling_with_query_and_passage_prefixes() {
    check_model("e5-mean");
}

#[test]
fn prompt_excluded_from_pooling() {
    check_model("instruct");
}

#[test]
fn concatenated_pooling_modes_and_gelu_tanh() {
    check_model("multi");
}

#[test]
fn xlm_roberta_layout() {
    check_model("xlmr");
}
