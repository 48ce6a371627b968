//! Tokenizers: the GGUF-embedded SmolLM2 tokenizer against llama.cpp's own tokenization
//! (tests/fixtures/formats/smollm2_llamacpp_tokens.json, made by scripts/formats/make_tokenizer_fixture.py),
//! a synthetic SentencePiece vocabulary against an independent re-implementation of llama.cpp's SPM
//! algorithm, and tokenizer.json + tokenizer_config.json loading.

mod formats_support;

use std::collections::HashMap;

use formats_support::*;
use wick::formats::gguf::GgufFile;
use wick::formats::TextTokenizer;

#[test]
fn smollm2_gguf_tokenizer_matches_llamacpp() {
    let path = wick::formats::fetch::ensure_default_chat_model().unwrap();
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/formats/smollm2_llamacpp_tokens.json").unwrap(),
    )
    .unwrap();
    assert_eq!(tok.add_bos(), fixture["add_bos"].as_bool().unwrap());
    assert!(!tok.add_bos(), "SmolLM2's GGUF sets add_bos_token = false");
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "encoding {text:?}");
        assert_eq!(
            tok.decode(&got).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
    }
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(
        tok.encode("hi", true).unwrap()[0],
        1,
        "add_bos=true puts BOS first"
    );
    assert_eq!(
        (tok.bos_id(), tok.bos_token()),
        (Some(1), Some("<|im_start|>"))
    );
    assert_eq!(
        (tok.eos_id(), tok.eos_token()),
        (Some(2), Some("<|im_end|>"))
    );
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.id_to_token(19556).as_deref(), Some("Hello"));
    assert_eq!(tok.decode_skip_special(&[1, 19556, 2]).unwrap(), "Hello");
}

/// llama.cpp's SentencePiece algorithm (llm_tokenizer_spm), re-implemented here as the reference:
/// start from characters, repeatedly merge the adjacent pair whose concatenation is in the vocabulary
/// with the highest score (leftmost on ties), then map pieces to ids with byte fallback.
fn llamacpp_spm(text: &str, pieces: &[(String, f32, i32)]) -> Vec<u32> {
    let vocab: HashMap<&str, (u32, f32)> = pieces
        .iter()
        .enumerate()
        .map(|(i, (p, s, _))| (p.as_str(), (i as u32, *s)))
        .collect();
    let text = format!("\u{2581}{}", text.replace(' ', "\u{2581}"));
    let mut symbols: Vec<String> = text.chars().map(|c| c.to_string()).collect();
    loop {
        let mut best: Option<(usize, f32)> = None;
        for i in 0..symbols.len().saturating_sub(1) {
            let merged = format!("{}{}", symbols[i], symbols[i + 1]);
            if let Some(&(_, score)) = vocab.get(merged.as_str()) {
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i, score));
                }
            }
        }
        let Some((i, _)) = best else { break };
        let right = symbols.remove(i + 1);
        symbols[i].push_str(&right);
    }
    let mut ids = Vec::new();
    for s in symbols {
        match vocab.get(s.as_str()) {
            Some(&(id, _)) => ids.push(id),
            None => ids.extend(s.bytes().map(|b| vocab[format!("<0x{b:02X}>").as_str()].0)),
        }
    }
    ids
}

fn spm_pieces() -> Vec<(String, f32, i32)> {
    // (piece, score, type): 2 = unknown, 3 = control, 6 = byte, 1 = normal. As in real SentencePiece
    // vocabularies, every character of a multi-character piece is itself a piece.
    let mut pieces = vec![
        ("<unk>".to_string(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    let normal = [
        "\u{2581}",
        "a",
        "b",
        "c",
        "d",
        "e",
        "h",
        "l",
        "o",
        "r",
        "w",
        "t",
        "s",
        "n",
        "i",
        "g",
        "he",
        "ll",
        "lo",
        "llo",
        "hello",
        "\u{2581}h",
        "\u{2581}hello",
        "\u{2581}w",
        "or",
        "\u{2581}wor",
        "ld",
        "\u{2581}world",
        "\u{2581}t",
        "th",
        "\u{2581}th",
        "\u{2581}the",
        "in",
        "ing",
        "st",
        "\u{2581}s",
        "es",
        "\u{2581}test",
        "te",
        "\u{2581}te",
        "\u{2581}tes",
        "ab",
        "abc",
        "bc",
    ];
    for (i, p) in normal.iter().enumerate() {
        // Seeded, varied scores so merge order is not just vocabulary order.
        let score = -(((i * 37) % 53) as f32) - 1.0;
        pieces.push((p.to_string(), score, 1));
    }
    pieces
}

fn write_spm_gguf(path: &std::path::Path, pieces: &[(String, f32, i32)]) {
    let meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("tokenizer.ggml.model", Meta::Str("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Meta::Strs(pieces.iter().map(|p| p.0.clone()).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Meta::F32s(pieces.iter().map(|p| p.1).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Meta::I32s(pieces.iter().map(|p| p.2).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Meta::U32(0)),
    ];
    std::fs::write(path, gguf_bytes(&meta, &[])).unwrap();
}

#[test]
fn sentencepiece_gguf_matches_llamacpp_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spm.gguf");
    let pieces = spm_pieces();
    write_spm_gguf(&path, &pieces);
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert!(
        tok.add_bos(),
        "SentencePiece models take BOS by default (llama.cpp rule)"
    );
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    let mut texts: Vec<String> = [
        "hello world",
        "the test",
        "abc",
        "hellohello  world",
        "héllo wörld ✓",
        "testing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Seeded random strings over the vocabulary's letters, spaces and a non-vocabulary letter.
    let alphabet: Vec<char> = "abcdehlorwtsni x".chars().collect();
    for (k, v) in seeded(42, 200).chunks(10).enumerate() {
        let s: String = v
            .iter()
            .map(|x| alphabet[((x + 1.0) * 8.0) as usize % alphabet.len()])
            .collect();
        texts.push(format!("{s}{}", if k % 3 == 0 { "q" } else { "" }));
    }
    for text in &texts {
        let want = llamacpp_spm(text, &pieces);
        let got = tok.encode(text, false).unwrap();
        assert_eq!(
            got,
            want,
            "{text:?}: got {:?}",
            got.iter()
                .map(|&i| &pieces[i as usize].0)
                .collect::<Vec<_>>()
        );
        assert_eq!(tok.decode(&got).unwrap(), *text, "round trip");
    }
    let with_bos = tok.encode("hello", true).unwrap();
    assert_eq!(with_bos[0], 1);
    assert_eq!(
        tok.encode("<s>hello", false).unwrap()[0],
        1,
        "control tokens in text encode as one id"
    );
}

#[test]
fn tokenizer_json_with_config() {
    let dir = tempfile::tempdir().unwrap();
    // A WordLevel tokenizer with a TemplateProcessing post-processor that adds <s>, as HF Llama ones do.
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "[UNK]": 4}, "unk_token": "[UNK]"}
    });
    let tj = dir.path().join("tokenizer.json");
    write_json(&tj, &tokenizer);
    // Without tokenizer_config.json: no BOS/EOS names known, so no BOS policy.
    let bare = TextTokenizer::from_files(&tj, None).unwrap();
    assert_eq!(
        bare.encode("hello world", false).unwrap(),
        vec![2, 3],
        "post-processor never adds BOS"
    );
    let tc = dir.path().join("tokenizer_config.json");
    write_json(
        &tc,
        &serde_json::json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>"}),
    );
    let tok = TextTokenizer::from_files(&tj, Some(&tc)).unwrap();
    assert!(
        tok.add_bos(),
        "read off the post-processor when add_bos_token is absent"
    );
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(0), Some(1)));
    assert_eq!(
        tok.encode("hello world", tok.add_bos()).unwrap(),
        vec![0, 2, 3]
    );
    write_json(
        &tc,
        &serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false}),
    );
    assert!(!TextTokenizer::from_files(&tj, Some(&tc)).unwrap().add_bos());
    let missing = TextTokenizer::from_files(&dir.path().join("nope.json"), None)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.json"), "{missing}");
}
