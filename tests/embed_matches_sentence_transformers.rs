//! all-MiniLM-L6-v2 embeddings agree with sentence-transformers (fixture made on the CPU with the full
//! fp32 model by scripts/make_embed_fixture.py): cosine >= 0.9999 on every one of 35 varied sentences
//! (short, long, two over max_seq_length, accents, CJK, Cyrillic, Arabic, emoji, punctuation only,
//! empty), at batch sizes that do and do not pad.

use candle_core::Device;
use serde::Deserialize;
use wick::embed::{Embedder, EmbedderOptions};

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    tokens_untruncated: usize,
    embedding: Vec<f32>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let text = std::fs::read_to_string("tests/fixtures/embed/minilm_reference.json").unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    assert!(reference.items.len() >= 30);
    let model_dir = wick::formats::fetch::ensure_default_embedding_model().unwrap();
    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    let expected_truncated = reference
        .items
        .iter()
        .filter(|i| i.tokens_untruncated > reference.max_seq_length)
        .count();
    assert!(
        expected_truncated >= 1,
        "the fixture must exercise truncation"
    );

    // Batch 1: no padding at all. Batch 8: padded batches of mixed lengths (masks matter).
    for batch_size in [1, 8] {
        let options = EmbedderOptions {
            batch_size,
            ..Default::default()
        };
        let embedder =
            Embedder::load_with(model_dir.to_str().unwrap(), &Device::Cpu, options).unwrap();
        assert_eq!(embedder.max_seq_length(), reference.max_seq_length);
        assert_eq!(embedder.dim(), 384);
        assert!(embedder.normalized());
        let (got, stats) = embedder.embed_with(&texts, None, &mut |_| {}).unwrap();
        assert_eq!(stats.truncated, expected_truncated);
        let got: Vec<Vec<f32>> = got.to_vec2().unwrap();
        let mut worst_cos = 1.0f64;
        let mut max_abs = 0.0f32;
        for (item, row) in reference.items.iter().zip(&got) {
            let cos = cosine(row, &item.embedding);
            let abs = row
                .iter()
                .zip(&item.embedding)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            worst_cos = worst_cos.min(cos);
            max_abs = max_abs.max(abs);
            assert!(
                cos >= 0.9999,
                "batch {batch_size}: cosine {cos:.6} for {:?} (max abs diff {abs:.2e})",
                item.text
            );
        }
        eprintln!(
            "batch {batch_size}: {} sentences, worst cosine {worst_cos:.7}, max abs difference {max_abs:.2e}",
            got.len()
        );
    }
}
