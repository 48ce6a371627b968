//! Text generation on the default chat model (SmolLM2-135M-Instruct Q4_1, fetched on first use):
//! streaming, the iterator, stop strings, EOS, seeds, UTF-8-safe detokenization with the real
//! tokenizer, and logprobs against a teacher-forced full forward.

use std::sync::OnceLock;

use candle_core::{Tensor, D};
use wick::formats::fetch::ensure_default_chat_model;
use wick::generate::{
    Detokenizer, GenerateOptions, Prompt, SamplingParams, StopReason, TextModel, TokenStream,
};

fn model() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = ensure_default_chat_model().expect("fetching the default chat model");
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

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    }
}

const RAW: Prompt = Prompt::Raw("The three primary colors are");

#[test]
fn streamed_pieces_are_the_decoded_text_and_the_iterator_agrees() {
    let m = model();
    let mut pieces = Vec::new();
    let out = m
        .generate(&RAW, &greedy(24), |t| pieces.push(t.text.clone()))
        .unwrap();
    assert_eq!(out.token_ids.len(), 24);
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    assert_eq!(pieces.concat(), out.text);
    assert_eq!(
        out.text,
        m.tokenizer.decode_skip_special(&out.token_ids).unwrap()
    );
    assert!(!out.text.trim().is_empty());

    let streamed: Vec<_> = m
        .stream(&RAW, &greedy(24))
        .unwrap()
        .map(|t| t.unwrap())
        .collect();
    let ids: Vec<u32> = streamed.iter().map(|t| t.id).collect();
    assert_eq!(ids, out.token_ids);
    let logprobs: Vec<f32> = streamed.iter().map(|t| t.logprob).collect();
    assert_eq!(logprobs, out.logprobs);
}

#[test]
fn logprobs_match_a_teacher_forced_full_forward() {
    let m = model();
    let prompt = m.prompt_ids(&RAW).unwrap();
    let out = m.generate(&RAW, &greedy(12), |_| {}).unwrap();
    // One forward over prompt + generated tokens, no cache reuse: position p predicts token p + 1.
    let all: Vec<u32> = prompt.iter().chain(&out.token_ids).copied().collect();
    let input = Tensor::new(all.as_slice(), m.model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = m.model.new_cache(1);
    let logits = m
        .model
        .forward(&input, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    for (i, (&id, &logprob)) in out.token_ids.iter().zip(&out.logprobs).enumerate() {
        let row = log_probs.get(prompt.len() - 1 + i).unwrap();
        let expected = row.get(id as usize).unwrap().to_scalar::<f32>().unwrap();
        // Batched prefill and one-token decode quantize activations the same way; the sums differ
        // only in order.
        assert!(
            (expected - logprob).abs() < 2e-3,
            "token {i}: generated logprob {logprob}, teacher-forced {expected}"
        );
        // Greedy picked the argmax of the same distribution.
        let best = row.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        let best_lp = row.get(best as usize).unwrap().to_scalar::<f32>().unwrap();
        assert!(
            best_lp - expected < 2e-3,
            "token {i}: {id} is not the argmax {best}"
        );
    }
}

#[test]
fn stop_strings_end_generation_before_the_string() {
    let m = model();
    let full = m.generate(&RAW, &greedy(24), |_| {}).unwrap();
    // A stop string taken from the middle of the greedy text, spanning a token boundary or not.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let expected = &full.text[..full.text.find(&stop).unwrap()];
    let options = GenerateOptions {
        stop_strings: vec![stop.clone()],
        ..greedy(24)
    };
    let mut streamed = String::new();
    let out = m
        .generate(&RAW, &options, |t| streamed.push_str(&t.text))
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::StopString(stop));
    assert_eq!(out.text, expected);
    assert_eq!(streamed, expected);
}

#[test]
fn chat_answer_ends_at_the_end_of_turn_token() {
    let m = model();
    let prompt = Prompt::Chat {
        system: None,
        user: "What is the capital of France?",
    };
    let out = m.generate(&prompt, &greedy(64), |_| {}).unwrap();
    assert_eq!(out.stop_reason, StopReason::Eos, "{:?}", out.text);
    let last = *out.token_ids.last().unwrap();
    assert!(m.model.config().eos_token_ids.contains(&last));
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert!(!out.text.contains("<|im_end|>"));
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let m = model();
    let options = |seed| GenerateOptions {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        },
        ..GenerateOptions::default()
    };
    let run = |seed| m.generate(&RAW, &options(seed), |_| {}).unwrap().token_ids;
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn detokenizer_never_splits_characters_of_the_real_tokenizer() {
    let m = model();
    let text = " naïve café 日本語のテキスト 🎉🚀 Ωμέγα — ok";
    let ids = m.tokenizer.encode(text, false).unwrap();
    // Byte-level BPE: the emoji and CJK characters span several tokens.
    assert!(ids.len() > text.chars().count() / 2);
    let prompt = m.tokenizer.encode("Say:", false).unwrap();
    let mut d = Detokenizer::new(&prompt);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(d.push(&m.tokenizer, id).unwrap());
    }
    pieces.push(d.flush(&m.tokenizer).unwrap());
    for piece in &pieces {
        assert!(!piece.contains('\u{FFFD}'), "split character: {pieces:?}");
    }
    assert_eq!(
        pieces.concat(),
        m.tokenizer.decode_skip_special(&ids).unwrap()
    );
    assert!(
        pieces.iter().any(|p| p.is_empty()),
        "no token was held back: {pieces:?}"
    );
}

#[test]
fn prompt_errors_are_clear() {
    let m = model();
    let context = m.model.config().max_position_embeddings;
    let long = vec![100u32; context + 1];
    let err = TokenStream::new(&m.model, None, &long, &greedy(4))
        .err()
        .unwrap();
    assert!(matches!(err, wick::Error::InvalidRequest(_)));
    assert!(err.to_string().contains("context"), "{err}");
    let err = TokenStream::new(&m.model, None, &[], &greedy(4))
        .err()
        .unwrap();
    assert!(err.to_string().contains("empty prompt"), "{err}");
    let vocab = m.model.config().vocab_size as u32;
    let err = TokenStream::new(&m.model, None, &[vocab], &greedy(4))
        .err()
        .unwrap();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
