//! HF directories: config.json defaults per architecture, generation_config eos ids, llama3 rope
//! scaling, sharded safetensors, dtype conversion, chat templates from tokenizer_config.json.

mod formats_support;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use formats_support::*;
use wick::formats::config::{Architecture, DecoderConfig};
use wick::formats::{open_model, LoadOptions};

fn tokenizer_json() -> serde_json::Value {
    serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "<s>": 1, "</s>": 2, "<|eot|>": 3}, "unk_token": "a"}
    })
}

#[test]
fn qwen2_defaults_and_generation_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TINY.config_json("qwen2");
    let obj = config.as_object_mut().unwrap();
    for key in [
        "rope_theta",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
    ] {
        obj.remove(key);
    }
    write_json(&dir.path().join("config.json"), &config);
    write_json(
        &dir.path().join("generation_config.json"),
        &serde_json::json!({"eos_token_id": [2, 3]}),
    );
    let c = DecoderConfig::from_hf_config(&dir.path().join("config.json")).unwrap();
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert!(c.attention_bias, "qwen2 always has q/k/v bias");
    assert_eq!(
        c.num_key_value_heads, TINY.heads,
        "defaults to num_attention_heads"
    );
    assert_eq!(
        (c.rope_theta, c.max_position_embeddings),
        (10_000.0, 32_768)
    );
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.head_dim, TINY.hidden / TINY.heads);
    assert_eq!(
        c.eos_token_ids,
        vec![2, 3],
        "config eos 2 merged with generation_config [2, 3]"
    );
    assert_eq!(c.rope_scaling, None);
}

#[test]
fn llama3_rope_scaling_and_head_dim() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TINY.config_json("llama");
    config["head_dim"] = 32.into();
    config["eos_token_id"] = serde_json::json!([2, 3]);
    config["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    write_json(&dir.path().join("config.json"), &config);
    let c = DecoderConfig::from_hf_config(&dir.path().join("config.json")).unwrap();
    assert_eq!(c.head_dim, 32);
    assert_eq!(c.eos_token_ids, vec![2, 3]);
    let s = c.rope_scaling.unwrap();
    assert_eq!(
        (
            s.factor,
            s.low_freq_factor,
            s.high_freq_factor,
            s.original_max_position_embeddings
        ),
        (32.0, 1.0, 4.0, 8192)
    );
    config["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
    write_json(&dir.path().join("config.json"), &config);
    let err = DecoderConfig::from_hf_config(&dir.path().join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("yarn") && err.contains("config.json"), "{err}");
}

#[test]
fn sharded_safetensors_converted_to_dtype() {
    let dir = tempfile::tempdir().unwrap();
    write_json(
        &dir.path().join("config.json"),
        &TINY.config_json("mistral"),
    );
    write_json(&dir.path().join("tokenizer.json"), &tokenizer_json());
    write_json(
        &dir.path().join("tokenizer_config.json"),
        &serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}\n{% endfor %}"}
        ]}),
    );
    let tensors = TINY.hf_tensors(false);
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    let mut originals = HashMap::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let map: HashMap<String, Tensor> = part
            .iter()
            .enumerate()
            .map(|(i, (n, d))| {
                (
                    n.clone(),
                    seeded_tensor(1000 + i as u64 + shard.len() as u64 * 31, d)
                        .to_dtype(DType::BF16)
                        .unwrap(),
                )
            })
            .collect();
        for (n, t) in &map {
            weight_map.insert(n.clone(), shard.into());
            originals.insert(n.clone(), t.clone());
        }
        candle_core::safetensors::save(&map, dir.path().join(shard)).unwrap();
    }
    write_json(
        &dir.path().join("model.safetensors.index.json"),
        &serde_json::json!({"metadata": {}, "weight_map": weight_map}),
    );
    let files = open_model(
        dir.path(),
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(DType::F32),
        },
    )
    .unwrap();
    assert_eq!(files.config.architecture, Architecture::Mistral);
    assert_eq!(files.weights.names().len(), tensors.len());
    wick::formats::validate::check_tensors(files.weights.as_ref(), &tensors).unwrap();
    for (name, want) in &originals {
        let got = files
            .weights
            .get(name)
            .unwrap()
            .to_dense(DType::F32)
            .unwrap();
        assert_eq!(got.dtype(), DType::F32);
        // bf16 -> f32 is exact.
        let want = want.to_dtype(DType::F32).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
        // As stored, whatever the load dtype: what the CUDA decode engine uploads.
        let wick::formats::weights::Weight::Dense(stored) = files.weights.get_stored(name).unwrap()
        else {
            panic!("{name}: a safetensors tensor is dense");
        };
        assert_eq!(stored.dtype(), DType::BF16, "{name}");
        assert!(stored.device().is_cpu(), "{name}");
        let bf16s = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
        assert!(
            bf16s(&stored) == bf16s(&originals[name]),
            "{name}: stored values differ"
        );
    }
    let template = files
        .chat_template
        .as_ref()
        .expect("the `default` entry of the list");
    let messages = [wick::formats::ChatMessage::new("user", "  hi  ")];
    assert_eq!(
        template.render(&messages, false, "<s>", "</s>").unwrap(),
        "[user] hi\n"
    );
    assert_eq!(files.tokenizer.eos_id(), Some(2));
    // A listed shard that does not exist is named.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = open_model(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}
