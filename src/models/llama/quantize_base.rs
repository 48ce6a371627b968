//! QLoRA from a dense checkpoint: the projections of a model loaded dense (an HF directory, or a
//! GGUF loaded with a dtype) quantized to GGML blocks once, at load, by wick's ggml-exact writers
//! (`formats::gguf::quantize_rows`), so that training keeps a 4- or 8-bit base instead of the dense one.
//! The embedding, the norms, the biases and an untied LM head stay dense (as in bitsandbytes'
//! QLoRA). On CUDA the training engine dequantizes one layer at a time from these blocks.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::DType;

use super::Llama;
use crate::formats::gguf::quantize_rows;
use crate::models::linear::BaseWeight;
use crate::{Context, Error, Result};

/// The formats a dense base can be quantized to at load, by name (`--quantize-base NAME`).
pub const BASE_FORMATS: [(&str, GgmlDType); 5] = [
    ("q4_k", GgmlDType::Q4K),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q6_k", GgmlDType::Q6K),
    ("q8_0", GgmlDType::Q8_0),
];

/// The format named `name` (one of [`BASE_FORMATS`]).
pub fn base_format(name: &str) -> Result<GgmlDType> {
    BASE_FORMATS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, f)| f)
        .ok_or_else(|| Error::InvalidOption {
            option: "quantize-base".into(),
            reason: format!(
                "{name:?}: expected one of {}",
                BASE_FORMATS.map(|(n, _)| n).join(", ")
            ),
        })
}

impl Llama {
    /// Quantizes every dense projection (q, k, v, o, gate, up, down of every layer) to `format`,
    /// on the model's device; projections already in blocks stay as they are. Errors name the
    /// projection whose rows are not whole blocks of `format` (Q4_K/Q6_K: 256 weights, the others
    /// 32; Qwen2.5-0.5B's 896-wide rows take the 32-weight formats only).
    pub fn quantize_projections(&mut self, format: GgmlDType) -> Result<()> {
        let device = self.device.clone();
        for (path, linear) in self.linear_layers_mut() {
            let BaseWeight::Dense(w) = linear.weight() else {
                continue;
            };
            let (rows, cols) = w.dims2().context(format!("shape of {path}"))?;
            let values: Vec<f32> = w
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .context(format!("reading {path}"))?;
            let blocks = quantize_rows(format, &values, cols).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "{path}: rows of {cols} weights are not whole {format:?} blocks; \
                     choose a 32-weight format (q4_1, q5_0, q8_0)"
                ))
            })?;
            let storage = QStorage::from_data(blocks.into(), &device, format)
                .context(format!("{path}: blocks to {device:?}"))?;
            let q = QTensor::new(storage, (rows, cols)).context(format!("{path} as blocks"))?;
            let matmul = QMatMul::from_arc(Arc::new(q)).context(format!("{path} as blocks"))?;
            linear.set_base_weight(BaseWeight::Quantized(matmul));
        }
        Ok(())
    }
}
