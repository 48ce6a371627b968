//! Shared helpers of the LoRA and training tests: the tiny random LLaMA of tests/fixtures/peft
//! (made by scripts/make_peft_fixtures.py with transformers) and the expected logits.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use wick::formats::LoadOptions;
use wick::generate::TextModel;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

/// The tiny 2-layer LLaMA (vocab 128, hidden 32) as a dense model in `dtype` on the CPU.
pub fn tiny_model(dtype: DType) -> TextModel {
    TextModel::open(
        &fixtures().join("tiny-llama"),
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(dtype),
        },
    )
    .expect("loading the tiny fixture model")
}

/// input_ids [2, 12] and the logits transformers/PEFT computed.
pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors")
}

pub fn input_ids() -> Tensor {
    expected()["input_ids"].to_dtype(DType::U32).unwrap()
}

/// Inference logits [batch, seq, vocab] (f32) of a full sequence.
pub fn logits(model: &TextModel, ids: &Tensor) -> Tensor {
    let mut cache = model.model.new_cache(ids.dim(0).unwrap());
    model
        .model
        .forward(ids, &mut cache)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
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
