//! A linear layer that any LoRA adapter can wrap and any device can run with its fastest kernel.
//!
//! `y = x W^T (+ b) + s * (dropout(x) A^T) B^T`, with W frozen (quantized or dense), A: [r, in] and
//! B: [out, r] the adapter, s = alpha / r (or alpha / sqrt(r) with rsLoRA). Models build every projection
//! as a `Linear` so that `lora::` can attach adapters by module name without knowing the model.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};

use crate::formats::weights::Weight;
use crate::ops::lora_delta_cpu::LowRankCpu;
use crate::ops::lora_linear::lora_linear;
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
    /// Where the dropout masks come from: seeded masks (`DropoutMasks`), or None for Candle's
    /// unseeded dropout.
    pub dropout_masks: Option<std::sync::Arc<dyn DropoutMasks>>,
    /// DoRA's magnitude when the adapter is a DoRA adapter (PEFT `use_dora`), see `models::dora`.
    pub dora: Option<DoraWeights>,
}

/// Seeded LoRA dropout masks: `keep / (1 - p)` (or 0) per element of the low-rank branch's input
/// [batch, t, in], for training that must draw known masks (the CUDA training engine's check draws
/// the engine's own, `reference::lora_dropout`).
pub trait DropoutMasks: Send + Sync + std::fmt::Debug {
    /// The mask for an input of `dims`, on `device` in `dtype`.
    fn mask(&self, dims: &[usize], device: &candle_core::Device, dtype: DType) -> Result<Tensor>;
}

/// The low-rank branch's input while training: `x`, or dropout(x) by the layer's masks (seeded) or
/// Candle's dropout.
pub(crate) fn lora_input(lora: &LoraWeights, x: &Tensor, train: bool) -> Result<Tensor> {
    if !train || lora.dropout <= 0.0 {
        return Ok(x.clone());
    }
    match &lora.dropout_masks {
        Some(masks) => {
            let mask = masks.mask(x.dims(), x.device(), x.dtype())?;
            (x * mask).context("lora dropout (seeded)")
        }
        None => candle_nn::ops::dropout(x, lora.dropout).context("lora dropout"),
    }
}

/// The DoRA part of an adapted layer.
#[derive(Debug, Clone)]
pub struct DoraWeights {
    /// magnitude: [out] (a `Var` while training).
    pub magnitude: Tensor,
    /// `||W + s B A||` per output row, computed once when the adapter is frozen (inference); `None`:
    /// computed at every forward pass (training, where A and B change).
    pub weight_norm: Option<Tensor>,
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

    /// Converts the layer's dense parts (a dense base weight, the bias) to `dtype`; quantized
    /// blocks stay as they are.
    pub fn convert_dense(&mut self, dtype: DType) -> Result<()> {
        if let BaseWeight::Dense(w) = &self.weight {
            self.weight = BaseWeight::Dense(w.to_dtype(dtype).context("converting a weight")?);
        }
        if let Some(b) = &self.bias {
            self.bias = Some(b.to_dtype(dtype).context("converting a bias")?);
        }
        Ok(())
    }

    /// Replaces the base weight with blocks or another tensor of the same shape (QLoRA's
    /// quantization at load).
    pub fn set_base_weight(&mut self, weight: BaseWeight) {
        self.weight = weight;
    }

    /// Replaces the base weight (used by merge).
    pub fn set_dense_weight(&mut self, weight: Tensor) {
        self.weight = BaseWeight::Dense(weight);
    }

    /// x: [..., in] -> [..., out]. `train` enables adapter dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        adapter_forward(self, x, train)
    }

    /// Inference forward (no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// A batch whose rows carry adapters of their own (the BGMV idea): the layer's product (with
    /// its own adapter slot, if set) for every row, then each group's low-rank update on its rows.
    /// Groups without an adapter cost nothing more. x: [rows, in] -> [rows, out].
    pub fn forward_rows(&self, x: &Tensor, groups: &[RowsLora<'_>]) -> Result<Tensor> {
        if groups.iter().all(|g| g.lora.is_none()) {
            return self.forward(x);
        }
        let rows = x.dim(0).context("row-wise linear input")?;
        for group in groups {
            let Some((pair, _)) = group.lora else {
                continue;
            };
            if group.start + group.len > rows
                || pair.in_features() != self.in_features
                || pair.out_features() != self.out_features
            {
                return Err(crate::Error::InvalidRequest(format!(
                    "row-wise linear: rows {}..{} of {rows}, adapter {}x{} for a {}x{} layer",
                    group.start,
                    group.start + group.len,
                    pair.out_features(),
                    pair.in_features(),
                    self.out_features,
                    self.in_features
                )));
            }
        }
        if let Some(y) = self.quant_forward_rows(x, groups)? {
            return Ok(y);
        }
        let y = self.forward(x)?;
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
            let (a, b) = (group.start, group.start + group.len);
            pair.add_to(&mut ys[a * out..b * out], &xs[a * inf..b * inf], scale)?;
        }
        Tensor::from_vec(ys, (rows, out), x.device())
            .and_then(|t| t.to_dtype(dtype))
            .context("row-wise linear result")
    }

    /// [`Linear::forward_rows`] on a Q4_1 / Q8_0 base on the CPU with f32 rows, through
    /// `lora_delta_cpu::quant_product_with_updates`: the base product and every group's shrink in
    /// one pool dispatch (its items prefetching the pairs' A and B), then the bias and each
    /// group's expand. `None` where that kernel does not run (the caller takes the general path).
    fn quant_forward_rows(&self, x: &Tensor, groups: &[RowsLora<'_>]) -> Result<Option<Tensor>> {
        use crate::ops::lora_delta_cpu::{quant_product_with_updates, RowsUpdate};
        use crate::ops::quant_matmul_cpu::{self as qmm, WeightFormat};
        let BaseWeight::Quantized(QMatMul::QTensor(q)) = &self.weight else {
            return Ok(None);
        };
        let format = WeightFormat::of(q.dtype());
        let (Some(format), true, candle_core::DType::F32, 2) =
            (format, qmm::supports(q), x.dtype(), x.rank())
        else {
            return Ok(None);
        };
        let (rows, (inf, out)) = (x.dim(0)?, (self.in_features, self.out_features));
        let updates: Vec<RowsUpdate> = groups
            .iter()
            .filter_map(|g| {
                let (pair, scale) = g.lora?;
                Some(RowsUpdate {
                    tokens: g.start..g.start + g.len,
                    pair,
                    scale,
                })
            })
            .collect();
        let bias = match &self.bias {
            Some(b) => Some(
                b.to_dtype(candle_core::DType::F32)
                    .and_then(|b| b.to_vec1::<f32>())
                    .context("linear bias")?,
            ),
            None => None,
        };
        let weight = q.data().context("quantized base weight")?;
        let x = x.contiguous().context("row-wise linear input")?;
        let ys = qmm::with_cpu_f32(&x, |xs| {
            quant_product_with_updates(
                format,
                &weight,
                out,
                xs,
                rows,
                inf,
                bias.as_deref(),
                &updates,
            )
        })?;
        ys.map(|ys| Tensor::from_vec(ys, (rows, out), x.device()))
            .transpose()
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
            // QMatMul takes f32 activations; a quantized base under bf16 activations (QLoRA on
            // CUDA, `Llama::with_activation_dtype`) multiplies in f32 and returns x's dtype.
            BaseWeight::Quantized(q) if x.dtype() != candle_core::DType::F32 => x
                .to_dtype(candle_core::DType::F32)
                .and_then(|x32| q.forward(&x32))
                .and_then(|y| y.to_dtype(x.dtype()))
                .context("quantized matmul")?,
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

/// x: [..., in] -> [..., out] through the base weight and the active adapter, if any: one fused
/// `ops::lora_linear` call when the base is dense and no dropout runs, else the base product plus
/// the low-rank term.
fn adapter_forward(layer: &Linear, x: &Tensor, train: bool) -> Result<Tensor> {
    let Some(lora) = &layer.lora else {
        return frozen_forward(layer, x);
    };
    if let Some(dora) = &lora.dora {
        return super::dora::forward(layer, lora, dora, x, train);
    }
    let dropout = train && lora.dropout > 0.0;
    let dtype = x.dtype();
    let same_dtype = lora.a.dtype() == dtype && lora.b.dtype() == dtype;
    if let (BaseWeight::Dense(w), false, true) = (layer.weight(), dropout, same_dtype) {
        if w.dtype() == dtype {
            let bias = layer
                .bias()
                .map(|b| b.to_dtype(dtype))
                .transpose()
                .context("lora bias dtype")?;
            return lora_linear(x, Some(w), bias.as_ref(), &lora.a, &lora.b, lora.scale);
        }
    }
    let y = frozen_forward(layer, x)?;
    let x_in = lora_input(lora, x, train)?;
    let x_in = x_in.to_dtype(lora.a.dtype()).context("lora input dtype")?;
    let delta = lora_linear(&x_in, None, None, &lora.a, &lora.b, lora.scale)?;
    let delta = delta.to_dtype(y.dtype()).context("lora output dtype")?;
    (y + delta).context("adding lora update")
}

/// The frozen product `x W^T + b`. Inside a training graph (x carries one) a dense base goes through
/// `ops::frozen::frozen_linear`, whose backward gives dx and no dW: Candle's matmul backward would
/// compute and keep the gradient of every frozen weight (the LM head's alone is [batch, in, vocab]).
/// A quantized base (Q4_1/Q8_0 on the CPU) goes through `ops::quant_linear` (QLoRA); any other
/// quantized base is refused there, since its product would silently cut the gradient.
pub(crate) fn frozen_forward(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    use crate::ops::{frozen, quant_linear};
    match layer.weight() {
        BaseWeight::Dense(w) if x.track_op() && w.dtype() == x.dtype() => {
            let bias = layer
                .bias()
                .map(|b| b.to_dtype(x.dtype()))
                .transpose()
                .context("linear bias dtype")?;
            frozen::frozen_linear(x, w, bias.as_ref())
        }
        // QLoRA on the CPU: the base stays in its blocks; dx through the dequantized weight.
        BaseWeight::Quantized(QMatMul::QTensor(q))
            if x.track_op() && x.dtype() == DType::F32 && quant_linear::supports(q) =>
        {
            let y = quant_linear::quant_frozen_linear(x, q)?;
            match layer.bias() {
                Some(b) => frozen::add_frozen(&y, b),
                None => Ok(y),
            }
        }
        BaseWeight::Quantized(QMatMul::QTensor(q)) if x.track_op() => {
            Err(crate::Error::InvalidRequest(format!(
                "a quantized base weight of this kind ({:?} on {:?}) cannot pass a gradient to its \
                 input: training through it needs Q4_1 or Q8_0 blocks on the CPU (load the model \
                 dense instead)",
                q.dtype(),
                q.device()
            )))
        }
        _ => layer.base_forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, random_tensor, to_f64_vec};
    use crate::ops::lora_linear::lora_linear_reference;
    use candle_core::{DType, Device};

    #[test]
    fn linear_layer_uses_the_adapter() {
        let dev = Device::Cpu;
        let w = random_tensor(&[9, 5], DType::F32, &dev, 1, 0.5).unwrap();
        let mut layer = Linear::new(Weight::Dense(w.clone()), None).unwrap();
        let a = random_tensor(&[2, 5], DType::F32, &dev, 2, 0.5).unwrap();
        let b = random_tensor(&[9, 2], DType::F32, &dev, 3, 0.5).unwrap();
        layer.lora = Some(LoraWeights {
            dora: None,
            a: a.clone(),
            b: b.clone(),
            scale: 4.0,
            dropout: 0.0,
            dropout_masks: None,
        });
        let x = random_tensor(&[2, 3, 5], DType::F32, &dev, 4, 1.0).unwrap();
        let y = layer.forward(&x).unwrap();
        assert_eq!(y.dims(), [2, 3, 9]);
        let v = |t: &Tensor| to_f64_vec(t).unwrap();
        let want = lora_linear_reference(&v(&x), &v(&w), &[], &v(&a), &v(&b), 4.0, 5, 2);
        assert_close(&v(&y), &want, DType::F32, "Linear with adapter");
        // Dropout path (train) keeps the base product apart; with p > 0 it must differ from eval.
        layer.lora.as_mut().unwrap().dropout = 0.5;
        let yt = layer.forward_t(&x, true).unwrap();
        assert_eq!(yt.dims(), [2, 3, 9]);
    }
}
