//! The CPU server decoder's prefix cache (`wick::serve::prefix_cache`) on the default model:
//! - a second prompt sharing a system prompt with the first reuses the shared whole blocks, and its
//!   logits over a greedy continuation are bitwise those of a decoder without the cache;
//! - prefixes are kept per adapter: a sequence with an adapter does not take the base model's keys
//!   and values (nor another adapter's), and gets its own logits bitwise;
//! - a prompt equal to a cached one still runs its last token (its logits start the answer).

mod serve_support;

use std::sync::Arc;

use serve_support::*;
use wick::generate::sampler::argmax;
use wick::generate::{GenerationAdapter, Prompt, TextModel};
use wick::lora::ResidentAdapter;
use wick::serve::prefix_cache::PREFIX_BLOCK;
use wick::serve::{BatchDecoder, CpuBatchDecoder};

const SYSTEM: &str = "You are a careful assistant who answers questions about colours, \
paint and light in short, plain sentences, and who says so when a question has no answer.";

fn model() -> TextModel {
    TextModel::open(&chat_model(), &Default::default()).unwrap()
}

fn prompt(m: &TextModel, question: &str) -> Vec<u32> {
    m.prompt_ids(&Prompt::Raw(&format!("{SYSTEM}\n{question}")))
        .unwrap()
}

fn adapter(m: &TextModel, seed: u64) -> GenerationAdapter {
    let shapes = m.model.linear_shapes();
    let resident = ResidentAdapter::new(
        "t",
        &random_adapter(&shapes, seed, 8),
        &shapes,
        "t".as_ref(),
    )
    .unwrap();
    GenerationAdapter {
        adapter: Arc::new(resident),
        scale: 1.0,
    }
}

/// Reads `prompt` and `steps` greedy tokens on `decoder`; every step's logits, in order.
fn run(
    decoder: &mut CpuBatchDecoder,
    prompt: &[u32],
    adapter: Option<GenerationAdapter>,
    steps: usize,
) -> Vec<Vec<f32>> {
    let seq = decoder.add(prompt, steps + 1, adapter).unwrap();
    let mut out = Vec::new();
    while out.len() < steps {
        for (id, logits) in decoder.step().unwrap() {
            assert_eq!(id, seq);
            decoder.push(seq, argmax(&logits) as u32).unwrap();
            out.push(logits);
        }
    }
    decoder.free(seq);
    out
}

#[test]
fn a_shared_system_prompt_is_read_once_and_outputs_do_not_change() {
    let m = model();
    let first = prompt(&m, "What colour do blue and yellow paint make?");
    let second = prompt(&m, "Why is the sky blue?");
    let shared = first
        .iter()
        .zip(&second)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        shared >= 2 * PREFIX_BLOCK,
        "the prompts share {shared} tokens"
    );

    let mut cached = CpuBatchDecoder::new(m.model.clone(), 256);
    let mut plain = CpuBatchDecoder::new(m.model.clone(), 256).with_prefix_cache(0);
    assert_eq!(
        run(&mut cached, &first, None, 4),
        run(&mut plain, &first, None, 4)
    );
    assert_eq!(cached.reused_prompt_tokens(), 0);

    let got = run(&mut cached, &second, None, 8);
    let reused = cached.reused_prompt_tokens() as usize;
    assert!(reused > 0, "the shared system prompt was read again");
    assert_eq!(reused, shared / PREFIX_BLOCK * PREFIX_BLOCK);
    assert_eq!(
        got,
        run(&mut plain, &second, None, 8),
        "logits changed by reuse"
    );
    assert_eq!(plain.reused_prompt_tokens(), 0);

    // The same prompt again: everything but its last (partial) block comes from the cache, and
    // the answer is still the same.
    let again = run(&mut cached, &second, None, 3);
    assert_eq!(again, got[..3]);
    assert_eq!(
        cached.reused_prompt_tokens() as usize - reused,
        (second.len() - 1) / PREFIX_BLOCK * PREFIX_BLOCK
    );
}

#[test]
fn prefixes_are_kept_per_adapter() {
    let m = model();
    let first = prompt(&m, "Name a warm colour.");
    let second = prompt(&m, "Name a cold colour.");
    let (a, b) = (adapter(&m, 3), adapter(&m, 4));

    let mut cached = CpuBatchDecoder::new(m.model.clone(), 256);
    let mut plain = CpuBatchDecoder::new(m.model.clone(), 256).with_prefix_cache(0);
    run(&mut cached, &first, None, 2);
    run(&mut cached, &first, Some(a.clone()), 2);
    assert_eq!(
        cached.reused_prompt_tokens(),
        0,
        "adapter a took the base model's prefix"
    );

    let with_b = run(&mut cached, &second, Some(b.clone()), 4);
    assert_eq!(
        cached.reused_prompt_tokens(),
        0,
        "adapter b took another's prefix"
    );
    assert_eq!(with_b, run(&mut plain, &second, Some(b), 4));

    let with_a = run(&mut cached, &second, Some(a.clone()), 4);
    assert!(
        cached.reused_prompt_tokens() > 0,
        "adapter a did not reuse its own prefix"
    );
    assert_eq!(with_a, run(&mut plain, &second, Some(a), 4));
}
