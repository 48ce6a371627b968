//! GGUF loading: metadata -> config, llama.cpp -> HF names, Q/K un-permutation on raw blocks for every
//! supported type, dequantization, and the real default model (SmolLM2-135M-Instruct Q4_1).

mod formats_support;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use formats_support::*;
use wick::formats::config::Architecture;
use wick::formats::gguf::{GgufFile, GgufSource};
use wick::formats::{open_model, LoadOptions, ModelFiles, Weight, WeightSource};

fn tokenizer_meta() -> Vec<(&'static str, Meta)> {
    // A byte-level vocabulary: 3 control tokens, then printable ASCII letters and the space byte 'Ġ'.
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    tokens.extend(('a'..='z').map(|c| c.to_string()));
    tokens.push("Ġ".into());
    tokens.extend(["Ġh", "Ġhi", "hi"].iter().map(|s| s.to_string()));
    while tokens.len() < TINY.vocab {
        tokens.push(format!("<unused{}>", tokens.len()));
    }
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| if i < 3 { 3 } else { 1 })
        .collect();
    vec![
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        (
            "tokenizer.ggml.merges",
            Meta::Strs(vec!["Ġ h".into(), "Ġh i".into(), "h i".into()]),
        ),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
    ]
}

fn model_meta(arch: &str) -> Vec<(&'static str, Meta)> {
    let key = |k: &str| -> &'static str { Box::leak(format!("{arch}.{k}").into_boxed_str()) };
    let mut meta = vec![
        ("general.architecture", Meta::Str(arch.into())),
        (key("context_length"), Meta::U32(256)),
        (key("embedding_length"), Meta::U32(TINY.hidden as u32)),
        (key("feed_forward_length"), Meta::U32(TINY.ffn as u32)),
        (key("block_count"), Meta::U32(TINY.layers as u32)),
        (key("attention.head_count"), Meta::U32(TINY.heads as u32)),
        (
            key("attention.head_count_kv"),
            Meta::U32(TINY.kv_heads as u32),
        ),
        (key("attention.layer_norm_rms_epsilon"), Meta::F32(1e-5)),
        (key("rope.freq_base"), Meta::F32(50_000.0)),
    ];
    meta.extend(tokenizer_meta());
    meta
}

/// Writes a tiny model as llama.cpp would: HF weights, Q/K permuted for `llama`, stored as F32,
/// optionally without `output.weight` (tied). Returns the HF tensors.
fn write_tiny(path: &std::path::Path, arch: &str, tied: bool, bias: bool) -> Vec<(String, Tensor)> {
    let mut hf = Vec::new();
    let mut raw = Vec::new();
    for (i, (name, dims)) in TINY.hf_tensors(bias).into_iter().enumerate() {
        if tied && name == "lm_head.weight" {
            continue;
        }
        let w = seeded_tensor(100 + i as u64, &dims);
        let heads = if name.contains("q_proj") {
            Some(TINY.heads)
        } else if name.contains("k_proj") {
            Some(TINY.kv_heads)
        } else {
            None
        };
        let stored = match heads {
            Some(n) if arch == "llama" && dims.len() == 2 => llamacpp_permute(&w, n),
            Some(n) if arch == "llama" => llamacpp_permute(&w.unsqueeze(1).unwrap(), n)
                .squeeze(1)
                .unwrap(),
            _ => w.clone(),
        };
        raw.push(RawTensor::quantize(
            &hf_to_gguf(&name),
            &stored,
            GgmlDType::F32,
        ));
        hf.push((name, w));
    }
    std::fs::write(path, gguf_bytes(&model_meta(arch), &raw)).unwrap();
    hf
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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

/// Opens `path` on the CPU with every weight dense in `dtype`.
fn open_dense(path: &std::path::Path, dtype: DType) -> ModelFiles {
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(dtype),
    };
    open_model(path, &options).unwrap()
}

/// Every HF tensor comes back from `files` bit-exact (as f32).
fn assert_weights_exact(files: &ModelFiles, hf: &[(String, Tensor)]) {
    for (name, want) in hf {
        let got = files
            .weights
            .get(name)
            .unwrap()
            .to_dense(DType::F32)
            .unwrap();
        assert_eq!(max_abs_diff(&got, want), 0.0, "{name}");
    }
}

#[test]
fn llama_gguf_config_names_and_unpermuted_qk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-llama.gguf");
    let hf = write_tiny(&path, "llama", true, true);
    let files = open_dense(&path, DType::F32);
    let c = &files.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
        (64, 96, 2)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (4, 2, 16)
    );
    assert_eq!((c.vocab_size, c.max_position_embeddings), (TINY.vocab, 256));
    assert_eq!(c.rope_theta, 50_000.0);
    assert!(
        c.tie_word_embeddings,
        "no output.weight means tied embeddings"
    );
    assert!(c.attention_bias, "blk.0.attn_q.bias present");
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    // Every HF tensor comes back bit-exact, Q/K rows (and biases) un-permuted.
    assert_weights_exact(&files, &hf);
    let mut names = files.weights.names();
    names.sort();
    let mut want: Vec<String> = hf.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    wick::formats::validate::check_tensors(
        files.weights.as_ref(),
        &TINY
            .hf_tensors(true)
            .into_iter()
            .filter(|(n, _)| n != "lm_head.weight")
            .collect::<Vec<_>>(),
    )
    .unwrap();
}

#[test]
fn qwen2_gguf_is_not_permuted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-qwen2.gguf");
    let hf = write_tiny(&path, "qwen2", false, true);
    let files = open_dense(&path, DType::F32);
    assert_eq!(files.config.architecture, Architecture::Qwen2);
    assert!(!files.config.tie_word_embeddings);
    assert!(files.config.attention_bias);
    assert_weights_exact(&files, &hf);
}

/// For every GGML type: a matrix stored permuted and quantized comes back quantized, in that type,
/// equal block for block to quantizing the HF matrix directly (rows are independent block runs, so
/// permuting rows commutes with quantizing).
#[test]
fn every_quant_type_unpermutes_on_raw_blocks() {
    let types = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::F32,
    ];
    let (heads, head_dim, cols) = (2usize, 8usize, 256usize);
    let dir = tempfile::tempdir().unwrap();
    for (seed, dtype) in types.into_iter().enumerate() {
        let w = seeded_tensor(7 + seed as u64, &[heads * head_dim, cols]);
        let meta = vec![
            ("general.architecture", Meta::Str("llama".into())),
            ("llama.attention.head_count", Meta::U32(heads as u32)),
            ("llama.attention.head_count_kv", Meta::U32(heads as u32)),
        ];
        let raw = vec![
            RawTensor::quantize("blk.0.attn_q.weight", &llamacpp_permute(&w, heads), dtype),
            RawTensor::quantize("blk.0.attn_v.weight", &w, dtype),
        ];
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        std::fs::write(&path, gguf_bytes(&meta, &raw)).unwrap();
        let file = Arc::new(GgufFile::open(&path).unwrap());
        let source = GgufSource::from_file(file, LoadOptions::default()).unwrap();
        let reference = QTensor::quantize(&w, dtype).unwrap();
        for name in [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
        ] {
            let Weight::Quantized(q) = source.get(name).unwrap() else {
                panic!("{dtype:?} {name}: expected a quantized weight");
            };
            assert_eq!(q.dtype(), dtype);
            assert_eq!(q.shape().dims(), &[heads * head_dim, cols]);
            assert_eq!(
                q.data().unwrap(),
                reference.data().unwrap(),
                "{dtype:?} {name}: blocks differ"
            );
        }
    }
}

#[test]
fn vectors_are_dense_f32_when_quantized_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny(&path, "llama", true, false);
    let files = open_model(&path, &LoadOptions::default()).unwrap();
    match files.weights.get("model.norm.weight").unwrap() {
        Weight::Dense(t) => assert_eq!((t.dtype(), t.dims()), (DType::F32, &[TINY.hidden][..])),
        Weight::Quantized(_) => panic!("norm weights must be dense"),
    }
    assert!(matches!(
        files
            .weights
            .get("model.layers.1.mlp.up_proj.weight")
            .unwrap(),
        Weight::Quantized(_)
    ));
    let bf16 = open_dense(&path, DType::BF16);
    match bf16
        .weights
        .get("model.layers.1.mlp.up_proj.weight")
        .unwrap()
    {
        Weight::Dense(t) => assert_eq!(t.dtype(), DType::BF16),
        Weight::Quantized(_) => panic!("dtype Some(bf16) must dequantize"),
    }
}

/// The real default model: SmolLM2-135M-Instruct Q4_1 (fetched through the library on first use).
#[test]
fn smollm2_default_model_config_and_tensors() {
    let path = wick::formats::fetch::ensure_default_chat_model().unwrap();
    let files = open_model(&path, &LoadOptions::default()).unwrap();
    let c = &files.config;
    // Values from the GGUF metadata, which match HuggingFaceTB/SmolLM2-135M-Instruct's config.json.
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size),
        (49152, 576, 1536)
    );
    assert_eq!(
        (
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (30, 9, 3, 64)
    );
    assert_eq!((c.rope_theta, c.max_position_embeddings), (100_000.0, 8192));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert!(c.tie_word_embeddings && !c.attention_bias);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(files.weights.names().len(), 272);
    assert_eq!(
        files
            .weights
            .shape("model.layers.29.self_attn.k_proj.weight"),
        Some(vec![192, 576])
    );
    let Weight::Quantized(q) = files
        .weights
        .get("model.layers.0.self_attn.q_proj.weight")
        .unwrap()
    else {
        panic!("q_proj should stay quantized");
    };
    assert_eq!(q.dtype(), GgmlDType::Q4_1);
    let Weight::Quantized(e) = files.weights.get("model.embed_tokens.weight").unwrap() else {
        panic!("embeddings stay quantized as stored");
    };
    assert_eq!(
        (e.dtype(), e.shape().dims()),
        (GgmlDType::Q8_0, &[49152, 576][..])
    );
}
