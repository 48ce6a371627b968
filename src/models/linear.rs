//! A linear layer that any LoRA adapter can wrap and any device can run with its fastest kernel.
//!
//! `y = x W^T (+ b) + s * (dropout(x) A^T) B^T`, with W frozen (quantized or dense), A: [r, in] and
//! B: [out, r] the adapter, s = alpha / r (or alpha / sqrt(r) with rsLoRA). Models build every projection
//! as a `Linear` so that `lora::` can attach adapters by module name without knowing the model.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::formats::weights::Weight;
use crate::ops::lora_delta_cpu::LowRankCpu;
use crate::{Context, Result};

/// Rows `start..start + len` of a batched input and the adapter (with its scale) they use, if any.
#[derive(Debug, Clone, Copy)]
pub struct RowsLora<'a> {
    pub start: usize,
    pub len: usize,
    pub lora: Option<(&'a LowRankCpu, f32)>,
}

/// The frozen base weight of a linear layer.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// Quantized GGML blocks, multiplied without dequantizing (inference).
    Quantized(QMatMul),
    /// Dense weight [out, in] in the compute dtype.
    Dense(Tensor),
}

/// The low-rank update attached to a layer. `a` and `b` are usually `Var`s while training.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// a: [r, in]
    pub a: Tensor,
    /// b: [out, r]
    pub b: Tensor,
    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scale: f64,
    /// Dropout probability applied to the layer input of the low-rank branch while training.
    pub dropout: f32,
}

/// A linear projection `x W^T + b`, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: BaseWeight,
    bias: Option<Tensor>,
    in_features: usize,
    out_features: usize,
    /// The active adapter, if any. Swapped by `lora::` (registry, trainer) without touching the base.
    pub lora: Option<LoraWeights>,
}

impl Linear {
    /// Builds a layer from a loaded weight [out, in] and optional bias [out].
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Result<Self> {
        let dims = weight.dims();
        let (out_features, in_features) = match dims.as_slice() {
            [o, i] => (*o, *i),
            other => {
                return Err(crate::Error::InvalidRequest(format!(
                    "linear weight must be 2-D, got shape {other:?}"
                )))
            }
        };
        let weight = match weight {
            Weight::Quantized(q) => {
                BaseWeight::Quantized(QMatMul::from_arc(q).context("building quantized matmul")?)
            }
            Weight::Dense(t) => BaseWeight::Dense(t),
        };
        Ok(Self {
            weight,
            bias,
            in_features,
            out_features,
            lora: None,
        })
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The frozen base weight.
    pub fn weight(&self) -> &BaseWeight {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The base weight as a dense tensor [out, in] (dequantized if needed), for merging and training.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            BaseWeight::Dense(t) => Ok(t.clone()),
            BaseWeight::Quantized(q) => match q {
                QMatMul::QTensor(qt) => qt
                    .dequantize(&qt.device())
                    .context("dequantizing linear weight"),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.clone()),
            },
        }
    }

    /// Replaces the base weight (used by merge).
    pub fn set_dense_weight(&mut self, weight: Tensor) {
        self.weight = BaseWeight::Dense(weight);
    }

    /// x: [..., in] -> [..., out]. `train` enables adapter dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = crate::ops::lora_linear::forward(self, x, train)?;
        Ok(y)
    }

    /// Inference forward (no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// A batch whose rows carry adapters of their own (the BGMV idea): the layer's product (with
    /// its own adapter slot, if set) for every row, then each group's low-rank update on its rows.
    /// Groups without an adapter cost nothing more. x: [rows, in] -> [rows, out].
    pub fn forward_rows(&self, x: &Tensor, groups: &[RowsLora<'_>]) -> Result<Tensor> {
        let y = self.forward(x)?;
        if groups.iter().all(|g| g.lora.is_none()) {
            return Ok(y);
        }
        let (rows, out) = y.dims2().context("row-wise linear output")?;
        let dtype = y.dtype();
        let to_vec = |t: &Tensor| {
            t.to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
        };
        let xs = to_vec(x).context("row-wise linear input")?;
        let mut ys = to_vec(&y).context("row-wise linear output")?;
        let inf = self.in_features;
        for group in groups {
            let Some((pair, scale)) = group.lora else {
                continue;
            };
            if group.start + group.len > rows
                || pair.in_features() != inf
                || pair.out_features() != out
            {
                return Err(crate::Error::InvalidRequest(format!(
                    "row-wise linear: rows {}..{} of {rows}, adapter {}x{} for a {out}x{inf} layer",
                    group.start,
                    group.start + group.len,
                    pair.out_features(),
                    pair.in_features()
                )));
            }
            let (a, b) = (group.start, group.start + group.len);
            pair.add_to(&mut ys[a * out..b * out], &xs[a * inf..b * inf], scale)?;
        }
        Tensor::from_vec(ys, (rows, out), x.device())
            .and_then(|t| t.to_dtype(dtype))
            .context("row-wise linear result")
    }

    /// x W^T + b, the frozen part alone. x: [..., in].
    pub fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            // Q4_1 / Q8_0 on the CPU: wick's kernel (llama.cpp's maths, Q8 activations quantized
            // once per call, tiled, on Candle's thread pool); other formats and devices: QMatMul.
            BaseWeight::Quantized(QMatMul::QTensor(q))
                if x.dtype() == candle_core::DType::F32
                    && crate::ops::quant_matmul_cpu::supports(q) =>
            {
                crate::ops::quant_matmul_cpu::forward(x, q)?
            }
            BaseWeight::Quantized(q) => q.forward(x).context("quantized matmul")?,
            BaseWeight::Dense(w) => x
                .broadcast_matmul(&w.t().context("transposing weight")?)
                .context("dense matmul")?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b).context("adding bias"),
            None => Ok(y),
        }
    }
}
