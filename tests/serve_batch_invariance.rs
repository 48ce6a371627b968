//! The ragged batch step that `wick serve` runs, on the default model (Q4_1, CPU kernels):
//! - one sequence without an adapter gives bitwise the logits of `Llama::forward_last` (the path of
//!   `wick generate`);
//! - in a batch of sequences with different adapters (one without), different prompt lengths and
//!   a prompt read in pieces, every sequence gets bitwise the logits it gets alone;
//! - the row-wise adapter (f16 pair) against the same adapter, rounded to f16 the same way, in the
//!   `Linear` slots (the f32 Candle op): logits within 1e-3 of their range, same greedy tokens.

mod serve_support;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serve_support::*;
use wick::generate::sampler::argmax;
use wick::generate::TextModel;
use wick::lora::ResidentAdapter;
use wick::models::kv_cache::KvCache;
use wick::models::llama::{Llama, RaggedSeq, SeqLora};

fn model() -> TextModel {
    TextModel::open(&chat_model(), &Default::default()).unwrap()
}

fn dense_model() -> TextModel {
    let options = wick::formats::LoadOptions {
        device: Device::Cpu,
        dtype: Some(candle_core::DType::F32),
    };
    TextModel::open(&chat_model(), &options).unwrap()
}

fn lora(a: &Option<Arc<ResidentAdapter>>) -> Option<SeqLora<'_>> {
    a.as_ref().map(|a| SeqLora {
        layers: a.layers(),
        scale: a.scale(),
    })
}

/// Runs sequences through `steps` ragged steps: step s gives sequence i the tokens `plan[i][s]`
/// (empty: it sits this step out). Returns each sequence's logits per step that asked for them.
fn run(
    model: &Llama,
    adapters: &[Option<Arc<ResidentAdapter>>],
    plan: &[Vec<Vec<u32>>],
) -> Vec<Vec<Vec<f32>>> {
    let mut caches: Vec<KvCache> = plan.iter().map(|_| model.new_cache(1)).collect();
    let mut out = vec![Vec::new(); plan.len()];
    let steps = plan.iter().map(Vec::len).max().unwrap();
    for s in 0..steps {
        let mut seqs = Vec::new();
        let mut who = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate() {
            if let Some(tokens) = plan[i].get(s).filter(|t| !t.is_empty()) {
                seqs.push(RaggedSeq {
                    tokens,
                    cache,
                    lora: lora(&adapters[i]),
                    logits: true,
                });
                who.push(i);
            }
        }
        if seqs.is_empty() {
            continue;
        }
        for (i, logits) in who
            .into_iter()
            .zip(model.forward_ragged(&mut seqs).unwrap())
        {
            out[i].push(logits.unwrap());
        }
    }
    out
}

#[test]
fn one_sequence_without_adapter_is_forward_last_bitwise() {
    let m = model();
    let prompt = m
        .prompt_ids(&wick::generate::Prompt::Raw("The three primary colors are"))
        .unwrap();
    let steps: Vec<Vec<u32>> = std::iter::once(prompt.clone())
        .chain([[42u32], [7], [1999], [5]].map(|t| t.to_vec()))
        .collect();
    let ragged = run(&m.model, &[None], std::slice::from_ref(&steps));
    let mut cache = m.model.new_cache(1);
    for (s, tokens) in steps.iter().enumerate() {
        let input = Tensor::new(tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want: Vec<f32> = m
            .model
            .forward_last(&input, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ragged[0][s], want, "step {s}");
    }
}

#[test]
fn every_sequence_of_a_mixed_batch_gets_its_alone_logits_bitwise() {
    mixed_batch(&model(), true);
}

/// Dense weights go through Candle's gemm, whose one-row product (a gemv) and several-row product
/// round differently: batch invariance there holds to f32 rounding, and greedy tokens agree.
#[test]
fn every_sequence_of_a_mixed_batch_gets_its_alone_logits_dense_within_rounding() {
    mixed_batch(&dense_model(), false);
}

fn mixed_batch(m: &TextModel, bitwise: bool) {
    let shapes = m.model.linear_shapes();
    let adapters: Vec<Option<Arc<ResidentAdapter>>> = [Some(1u64), Some(2), None, Some(3)]
        .iter()
        .map(|seed| {
            seed.map(|s| {
                Arc::new(
                    ResidentAdapter::new(
                        "t",
                        &random_adapter(&shapes, s, 8),
                        &shapes,
                        "t".as_ref(),
                    )
                    .unwrap(),
                )
            })
        })
        .collect();
    let vocab = m.model.config().vocab_size as u32;
    let tokens = |seed: u32, n: usize| {
        (0..n as u32)
            .map(|i| (seed * 7919 + i * 104_729) % vocab)
            .collect::<Vec<u32>>()
    };
    // Sequence 0: a prompt in two pieces; 1: joins one step late; 2 and 3: short prompts.
    let plan: Vec<Vec<Vec<u32>>> = vec![
        vec![tokens(1, 9), tokens(2, 9), vec![11], vec![12], vec![13]],
        vec![vec![], tokens(3, 5), vec![21], vec![22], vec![23]],
        vec![tokens(4, 3), vec![31], vec![32], vec![33]],
        vec![tokens(5, 12), vec![41], vec![42], vec![43], vec![44]],
    ];
    let together = run(&m.model, &adapters, &plan);
    for (i, steps) in plan.iter().enumerate() {
        let alone = run(&m.model, &adapters[i..=i], std::slice::from_ref(steps));
        if bitwise {
            assert!(
                together[i] == alone[0],
                "sequence {i}: batched logits differ from alone"
            );
            continue;
        }
        for (s, (got, want)) in together[i].iter().zip(&alone[0]).enumerate() {
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = got
                .iter()
                .zip(want)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                diff <= 1e-3 * scale,
                "sequence {i} step {s}: batched vs alone differ by {diff}"
            );
            assert_eq!(
                argmax(got),
                argmax(want),
                "sequence {i} step {s}: greedy token"
            );
        }
    }
    // The adapters matter: sequence 0 without its adapter differs.
    let plain = run(&m.model, &[None], &plan[..1]);
    assert_ne!(plain[0], together[0]);
}

#[test]
fn row_wise_adapter_matches_the_exact_slot_path() {
    // Dense f32 weights: on the quantized path any last-bit difference can flip the Q8 rounding of
    // an activation, which 30 layers amplify to a few percent of the logits; without Q8 the two
    // paths must agree to f32 rounding.
    let m = dense_model();
    let shapes = m.model.linear_shapes();
    let adapter = random_adapter(&shapes, 9, 16);
    // A and B rounded to f16 (what the row-wise kernel stores) for both paths, so what is compared
    // is the kernel, not the rounding (which 30 perturbed layers amplify).
    for layer in &adapter.layers {
        for var in [&layer.a, &layer.b] {
            let rounded = var
                .as_tensor()
                .to_dtype(candle_core::DType::F16)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            var.set(&rounded).unwrap();
        }
    }
    let resident = Arc::new(ResidentAdapter::new("t", &adapter, &shapes, "t".as_ref()).unwrap());
    let held = Some(resident.clone());
    let mut slots = m.model.clone();
    adapter
        .apply(slots.linear_layers_mut(), "t".as_ref())
        .unwrap();
    let prompt = m
        .prompt_ids(&wick::generate::Prompt::Raw("Once upon a time"))
        .unwrap();
    let mut cache = slots.new_cache(1);
    let mut ragged_cache = m.model.new_cache(1);
    let mut tokens = prompt;
    for step in 0..8 {
        let input = Tensor::new(tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want: Vec<f32> = slots
            .forward_last(&input, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut seqs = [RaggedSeq {
            tokens: &tokens,
            cache: &mut ragged_cache,
            lora: lora(&held),
            logits: true,
        }];
        let got = m
            .model
            .forward_ragged(&mut seqs)
            .unwrap()
            .remove(0)
            .unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            diff <= 1e-3 * scale,
            "step {step}: row-wise vs slot adapter differ by {diff} (max |logit| {scale})"
        );
        assert_eq!(argmax(&got), argmax(&want), "step {step}: greedy token");
        tokens = vec![argmax(&want)];
    }
}
