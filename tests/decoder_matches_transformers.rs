//! The decoder against HF transformers on tiny random-weight models (f32, logits within 1e-4):
//! Qwen2 (q/k/v bias, tied embeddings, GQA) and LLaMA (untied head, GQA 8/2, head_dim != hidden/heads,
//! llama3 RoPE scaling, positions past the original context). Fixtures and the script that made them:
//! tests/fixtures/tiny_decoders/, scripts/make_tiny_decoder_fixtures.py.
//!
//! Also: incremental decoding through the KV cache (prefill, then chunks and single tokens, the cache
//! growing from a tiny capacity) gives the same logits as transformers' full forward.
//!
//! `WICK_TEST_DEVICE=cuda` runs the same checks on the GPU (CPU otherwise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use wick::formats::config::DecoderConfig;
use wick::formats::weights::{Weight, WeightSource};
use wick::models::kv_cache::KvCache;
use wick::models::llama::{expected_tensors, Llama, LoadOptions};

/// Logit tolerance against transformers in f32 (logits have std ~1.2).
const TOLERANCE: f32 = 1e-4;

/// A weight source over one safetensors file, read with candle (independent of wick's HF reader).
struct SafetensorsFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl WeightSource for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn get(&self, name: &str) -> wick::Result<Weight> {
        self.tensors
            .get(name)
            .cloned()
            .map(Weight::Dense)
            .ok_or_else(|| wick::Error::InvalidRequest(format!("no tensor {name}")))
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

struct Fixture {
    model: Llama,
    source: SafetensorsFile,
    /// [batch, seq] u32
    input_ids: Tensor,
    /// [batch, seq, vocab] f32
    logits: Tensor,
}

/// The device under test: `WICK_TEST_DEVICE` (cpu, cuda, cuda:N), CPU by default.
fn device() -> Device {
    match std::env::var("WICK_TEST_DEVICE") {
        Ok(name) => wick::device::parse_device(&name).expect("WICK_TEST_DEVICE"),
        Err(_) => Device::Cpu,
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_decoders")
        .join(name);
    let config = DecoderConfig::from_hf_config(&dir.join("config.json")).unwrap();
    let path = dir.join("model.safetensors");
    let device = device();
    let tensors = candle_core::safetensors::load(&path, &device).unwrap();
    let source = SafetensorsFile { path, tensors };
    let options = LoadOptions {
        device: device.clone(),
        dtype: None,
    };
    let model = Llama::load(&config, &source, &options).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &device).unwrap();
    let input_ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    Fixture {
        model,
        source,
        input_ids,
        logits: reference["logits"].clone(),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_device(&Device::Cpu).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn full_forward_matches(name: &str) {
    let f = fixture(name);
    let (batch, _) = f.input_ids.dims2().unwrap();
    let mut cache = f.model.new_cache(batch);
    let logits = f.model.forward(&f.input_ids, &mut cache).unwrap();
    let diff = max_abs_diff(&logits, &f.logits);
    assert!(
        diff < TOLERANCE,
        "{name}: max |wick - transformers| = {diff}"
    );
    // The training forward (no cache) is the same function of the input.
    let train = f.model.forward_train(&f.input_ids).unwrap();
    let diff = max_abs_diff(&train, &f.logits);
    assert!(diff < TOLERANCE, "{name} forward_train: max diff {diff}");
}

#[test]
fn qwen2_logits_match_transformers() {
    full_forward_matches("qwen2");
}

#[test]
fn llama_with_llama3_rope_logits_match_transformers() {
    full_forward_matches("llama");
}

/// Feeds the input in chunks of the given sizes through one cache that starts with room for 3
/// positions, comparing each chunk's logits with the reference rows.
fn incremental_matches(name: &str, chunks: &[usize]) {
    let f = fixture(name);
    let (batch, seq) = f.input_ids.dims2().unwrap();
    assert_eq!(chunks.iter().sum::<usize>(), seq);
    let cfg = f.model.config().clone();
    let mut cache = KvCache::with_capacity(&cfg, batch, 3, DType::F32, f.model.device());
    let mut start = 0;
    for &len in chunks {
        let ids = f.input_ids.narrow(1, start, len).unwrap();
        let expected = f.logits.narrow(1, start, len).unwrap();
        if len % 2 == 0 {
            let logits = f.model.forward(&ids, &mut cache).unwrap();
            let diff = max_abs_diff(&logits, &expected);
            assert!(
                diff < TOLERANCE,
                "{name}: chunk at {start}+{len}: max diff {diff}"
            );
        } else {
            // Odd chunks exercise the last-position head.
            let logits = f.model.forward_last(&ids, &mut cache).unwrap();
            let expected = expected.narrow(1, len - 1, 1).unwrap().squeeze(1).unwrap();
            let diff = max_abs_diff(&logits, &expected);
            assert!(
                diff < TOLERANCE,
                "{name}: last of chunk {start}+{len}: max diff {diff}"
            );
        }
        start += len;
        assert_eq!(cache.len(), start);
    }
}

#[test]
fn qwen2_incremental_decode_matches_full_forward() {
    incremental_matches("qwen2", &[5, 1, 1, 4, 1, 3, 1, 1, 2, 5]);
}

#[test]
fn llama_incremental_decode_matches_full_forward() {
    let mut chunks = vec![7, 2];
    chunks.extend(std::iter::repeat_n(1, 31));
    incremental_matches("llama", &chunks);
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let f = fixture("qwen2");
    let context = f.model.config().max_position_embeddings;
    let ids: Vec<u32> = (0..=context as u32).map(|i| (i * 7 + 3) % 200).collect();
    let ids = Tensor::new(ids, f.model.device()).unwrap();
    let ids = ids.unsqueeze(0).unwrap();
    let mut cache = f.model.new_cache(1);
    let err = f.model.forward(&ids, &mut cache).unwrap_err();
    assert!(matches!(err, wick::Error::InvalidRequest(_)), "{err}");
    assert!(err.to_string().contains("context of 128 tokens"), "{err}");
    assert!(f.model.forward_train(&ids).is_err());
    // Filling the context exactly works; one more token is refused.
    let fits = ids.narrow(1, 0, context).unwrap();
    f.model.forward_last(&fits, &mut cache).unwrap();
    let one = ids.narrow(1, 0, 1).unwrap();
    let err = f.model.forward_last(&one, &mut cache).unwrap_err();
    assert!(matches!(err, wick::Error::InvalidRequest(_)), "{err}");
}

#[test]
fn expected_and_named_weights_agree_with_the_files() {
    for name in ["qwen2", "llama"] {
        let f = fixture(name);
        let expected = expected_tensors(f.model.config());
        let mut in_file: Vec<(String, Vec<usize>)> = f
            .source
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        in_file.sort();
        let mut sorted = expected.clone();
        sorted.sort();
        assert_eq!(sorted, in_file, "{name}: expected_tensors vs the file");
        let named = f.model.named_weights().unwrap();
        let names: Vec<&String> = named.iter().map(|(n, _)| n).collect();
        assert_eq!(names, expected.iter().map(|(n, _)| n).collect::<Vec<_>>());
        for (n, t) in &named {
            assert_eq!(max_abs_diff(t, &f.source.tensors[n]), 0.0, "{name}: {n}");
        }
        let paths: Vec<String> = f
            .model
            .linear_layers()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(paths.len(), 14);
        assert_eq!(paths[0], "model.layers.0.self_attn.q_proj");
        assert_eq!(paths[13], "model.layers.1.mlp.down_proj");
    }
}
