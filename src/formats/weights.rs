//! Where a model's tensors come from. Models ask for tensors by their Hugging Face name
//! (`model.layers.0.self_attn.q_proj.weight`) whatever the file format; the GGUF reader maps
//! those names to llama.cpp's (`blk.0.attn_q.weight`) and undoes llama.cpp's Q/K row permutation,
//! so that every model runs with the same (HF, half-split) RoPE layout and LoRA adapters keep PEFT's layout.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::{Context, Result};

/// How a source hands out its tensors: on which device, and whether to dequantize.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device every tensor is created on.
    pub device: Device,
    /// `None`: GGUF matrices stay quantized (inference with `QMatMul`), vectors are f32, and HF
    /// safetensors are converted to f32. `Some(dtype)`: every tensor is dense in `dtype` (training, merge).
    pub dtype: Option<DType>,
}

impl LoadOptions {
    /// What `wick generate` and `wick quickstart` load for inference on `device`: GGUF weights stay
    /// quantized on every device (on the CPU through `ops::quant_matmul_cpu`, llama.cpp's maths).
    pub fn inference(device: Device) -> Self {
        Self {
            device,
            dtype: None,
        }
    }
}

impl Default for LoadOptions {
    /// CPU, quantized where the file is.
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
        }
    }
}

/// One weight tensor as stored: quantized blocks (kept quantized for inference) or a dense tensor.
#[derive(Debug, Clone)]
pub enum Weight {
    /// GGML-quantized blocks; `QMatMul` runs on them directly.
    Quantized(Arc<QTensor>),
    /// A dense tensor, already on the target device.
    Dense(Tensor),
}

impl Weight {
    /// The logical shape of the weight.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Quantized(q) => q.shape().dims().to_vec(),
            Weight::Dense(t) => t.dims().to_vec(),
        }
    }

    /// The weight as a dense tensor of `dtype` on its device (dequantizing a quantized one).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        let t = match self {
            Weight::Quantized(q) => q.dequantize(&q.device()).context("dequantizing weight")?,
            Weight::Dense(t) => t.clone(),
        };
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype).context("converting weight dtype")
        }
    }
}

/// A source of named weights on one device (a GGUF file or an HF safetensors directory).
pub trait WeightSource {
    /// The file or directory the weights come from, for error messages.
    fn path(&self) -> &Path;
    /// Whether a tensor of that HF name exists.
    fn contains(&self, name: &str) -> bool;
    /// The tensor of that HF name; an error naming the file and tensor if it is absent.
    fn get(&self, name: &str) -> Result<Weight>;
    /// Every tensor name (HF naming) in the source, for validation.
    fn names(&self) -> Vec<String>;
    /// The shape of a tensor without loading it (`None` if absent). Sources override the default,
    /// which loads the tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).ok().map(|w| w.dims())
    }
    /// How a tensor is stored in the file (`Q4_1`, `F32`, `BF16`, ...), for `wick models info`.
    fn stored_type(&self, _name: &str) -> Option<String> {
        None
    }
    /// The tensor as the file stores it, on the CPU: quantized blocks as they are, a dense tensor in
    /// its stored dtype (not converted to the load dtype), for consumers with their own copy of
    /// the weights (the CUDA decode engine). The default is [`WeightSource::get`], which is that
    /// for every source that does not convert.
    fn get_stored(&self, name: &str) -> Result<Weight> {
        self.get(name)
    }
}
