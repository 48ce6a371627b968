//! The frozen product of QLoRA on the CPU: `y = x W^T` with W kept in its GGML blocks (Q4_1 or Q8_0),
//! differentiable in x only.
//!
//! ```text
//! forward:  y = x W^T       ops::quant_matmul_cpu (llama.cpp's maths: x rounded to Q8 blocks)
//! backward: dx = dy W       W dequantized a chunk of rows at a time, never whole
//! ```
//!
//! The backward treats the forward's activation rounding as the identity (a straight-through
//! estimate, as QLoRA does): dx is the exact product with the dequantized weight. Only a chunk of
//! about [`CHUNK_ELEMS`] dequantized weights exists at any time (1 MiB of f32), so the model stays as
//! large as its blocks: SmolLM2-135M's 30 layers take 85 MB as Q4_1 and 540 MB dense in f32.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use super::quant_matmul_cpu::{self, WeightFormat};
use crate::{Context, Error, Result};

/// Dequantized weights per backward chunk (rows x in-features), at least 32 rows.
const CHUNK_ELEMS: usize = 1 << 18;
/// Weights per GGML block.
const BLOCK: usize = 32;

/// x: [..., in] f32 on the CPU -> [..., out] = x W^T, with `weight` [out, in] in Q4_1 or Q8_0
/// blocks (frozen: never given a gradient). Differentiable in x.
pub fn quant_frozen_linear(x: &Tensor, weight: &Arc<QTensor>) -> Result<Tensor> {
    let format = format_of(weight)?;
    let (out_features, in_features) = weight.shape().dims2().context("quantized linear weight")?;
    let dims = x.dims();
    if dims.last() != Some(&in_features) || x.dtype() != DType::F32 {
        return Err(Error::InvalidRequest(format!(
            "quantized frozen linear: x {dims:?} {:?} does not fit the weight [{out_features}, {in_features}] (f32 input)",
            x.dtype()
        )));
    }
    let tokens = x.elem_count() / in_features.max(1);
    let x2 = x
        .reshape((tokens, in_features))
        .and_then(|t| t.contiguous())
        .context("quantized frozen linear input")?;
    let op = QuantFrozenLinear {
        weight: weight.clone(),
        format,
    };
    let y = x2.apply_op1(op).context("quantized frozen linear")?;
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_features;
    }
    y.reshape(out_dims)
        .context("quantized frozen linear output")
}

/// Whether [`quant_frozen_linear`] can train through this weight (a 2-D CPU tensor in Q4_1 or Q8_0).
pub fn supports(weight: &QTensor) -> bool {
    quant_matmul_cpu::supports(weight)
}

fn format_of(weight: &QTensor) -> Result<WeightFormat> {
    if !supports(weight) {
        return Err(Error::InvalidRequest(format!(
            "quantized frozen linear: a {:?} weight of shape {:?} on {:?}; training a quantized base \
             needs Q4_1 or Q8_0 blocks on the CPU (load the model dense instead: --dtype f32)",
            weight.dtype(),
            weight.shape().dims(),
            weight.device()
        )));
    }
    WeightFormat::of(weight.dtype())
        .ok_or_else(|| Error::InvalidRequest(format!("{:?} is not Q4_1 or Q8_0", weight.dtype())))
}

/// Dequantizes rows `rows` of a [n, k] matrix of `format` blocks into `out` ([rows.len(), k]).
pub fn dequantize_rows(
    format: WeightFormat,
    bytes: &[u8],
    k: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let row_bytes = k / BLOCK * format.block_bytes();
    out.par_chunks_mut(k).zip(rows).for_each(|(dst, row)| {
        let src = &bytes[row * row_bytes..(row + 1) * row_bytes];
        for (block, d) in src
            .chunks_exact(format.block_bytes())
            .zip(dst.chunks_exact_mut(BLOCK))
        {
            dequantize_block(format, block, d);
        }
    });
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// One block of 32 weights (layouts in `ops::quant_matmul_cpu`).
fn dequantize_block(format: WeightFormat, block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    match format {
        WeightFormat::Q4_1 => {
            let m = f16_at(block, 2);
            for (j, &byte) in block[4..20].iter().enumerate() {
                out[j] = d * (byte & 15) as f32 + m;
                out[j + 16] = d * (byte >> 4) as f32 + m;
            }
        }
        WeightFormat::Q8_0 => {
            for (j, &byte) in block[2..34].iter().enumerate() {
                out[j] = d * (byte as i8) as f32;
            }
        }
    }
}

/// dx [t, k] = dy [t, n] W [n, k], W dequantized a chunk of rows at a time (Candle's gemm for each
/// chunk's product, accumulated in f32).
pub fn input_gradient(dy: &Tensor, weight: &QTensor) -> Result<Tensor> {
    let format = format_of(weight)?;
    let (n, k) = weight.shape().dims2().context("quantized weight shape")?;
    let dy = dy
        .to_dtype(DType::F32)
        .and_then(|t| t.contiguous())
        .context("quantized linear backward: dy")?;
    let (t, dn) = dy.dims2().context("quantized linear backward: dy shape")?;
    if dn != n {
        return Err(Error::InvalidRequest(format!(
            "quantized linear backward: dy [{t}, {dn}] against a weight of {n} rows"
        )));
    }
    let bytes = weight
        .data()
        .context("quantized linear backward: weight data")?;
    let rows_per = (CHUNK_ELEMS / k.max(1)).max(BLOCK).min(n.max(1));
    let mut scratch = vec![0f32; rows_per * k];
    let mut dx: Option<Tensor> = None;
    let mut r0 = 0;
    while r0 < n {
        let c = rows_per.min(n - r0);
        let chunk = &mut scratch[..c * k];
        dequantize_rows(format, &bytes, k, r0..r0 + c, chunk);
        let w = Tensor::from_slice(chunk, (c, k), dy.device())
            .context("quantized linear backward: chunk")?;
        let part = dy
            .narrow(1, r0, c)
            .and_then(|g| g.contiguous())
            .and_then(|g| g.matmul(&w))
            .context("quantized linear backward: chunk product")?;
        dx = Some(match dx {
            Some(acc) => (acc + part).context("quantized linear backward: sum")?,
            None => part,
        });
        r0 += c;
    }
    match dx {
        Some(dx) => Ok(dx),
        None => Tensor::zeros((t, k), DType::F32, dy.device())
            .context("quantized linear backward: empty weight"),
    }
}

/// x [t, in] -> x W^T [t, out] with W quantized.
struct QuantFrozenLinear {
    weight: Arc<QTensor>,
    format: WeightFormat,
}

impl CustomOp1 for QuantFrozenLinear {
    fn name(&self) -> &'static str {
        "wick-quant-frozen-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, _) = self.weight.shape().dims2()?;
        let x = match xl.contiguous_offsets() {
            Some((start, end)) => &xs.as_slice::<f32>()?[start..end],
            None => candle_core::bail!("quantized frozen linear: input is not contiguous"),
        };
        let bytes = self.weight.data()?;
        let mut out = vec![0f32; m * n];
        quant_matmul_cpu::matmul(self.format, x, m, k, &bytes, n, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        input_gradient(grad, &self.weight)
            .map(Some)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{random_tensor, to_f64_vec};
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};

    fn quantized(n: usize, k: usize, dtype: GgmlDType, seed: u64) -> (Arc<QTensor>, Tensor) {
        let w = random_tensor(&[n, k], DType::F32, &Device::Cpu, seed, 0.5).unwrap();
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let dense = q.dequantize(&Device::Cpu).unwrap();
        (q, dense)
    }

    /// max |got - want| / max |want|, in f64.
    fn rel(got: &Tensor, want: &[f64]) -> f64 {
        let got = to_f64_vec(got).unwrap();
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((g - w).abs()))
            / scale
    }

    /// dy W in f64 from the dequantized weight.
    fn dy_w(dy: &Tensor, w: &Tensor) -> Vec<f64> {
        let (dyv, wv) = (to_f64_vec(dy).unwrap(), to_f64_vec(w).unwrap());
        let (n, k) = w.dims2().unwrap();
        dyv.chunks(n)
            .flat_map(|row| {
                let wv = &wv;
                (0..k).map(move |j| (0..n).map(|o| row[o] * wv[o * k + j]).sum::<f64>())
            })
            .collect()
    }

    /// Dequantization against Candle's; the forward is `quant_matmul_cpu`'s exactly; dx of the op
    /// (through autograd, with chunks of several sizes: one row block, many, a ragged last one)
    /// against dy W in f64 with W dequantized by Candle; the weight gets no gradient.
    #[test]
    fn gradient_matches_the_dequantized_dense_product() {
        for (i, &(n, k, dtype)) in [
            (40usize, 64usize, GgmlDType::Q4_1),
            (9000, 32, GgmlDType::Q8_0),
            (8200, 96, GgmlDType::Q4_1),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 + 10 * i as u64;
            let (q, dense) = quantized(n, k, dtype, seed);
            let format = WeightFormat::of(dtype).unwrap();
            let mut deq = vec![0f32; n * k];
            dequantize_rows(format, &q.data().unwrap(), k, 0..n, &mut deq);
            assert_eq!(deq, dense.flatten_all().unwrap().to_vec1::<f32>().unwrap());

            let x = Var::from_tensor(
                &random_tensor(&[2, 3, k], DType::F32, &Device::Cpu, seed + 1, 1.0).unwrap(),
            )
            .unwrap();
            let y = quant_frozen_linear(x.as_tensor(), &q).unwrap();
            let direct = quant_matmul_cpu::forward(x.as_tensor(), &q).unwrap();
            assert_eq!(y.dims(), [2, 3, n]);
            assert_eq!(
                to_f64_vec(&y).unwrap(),
                to_f64_vec(&direct).unwrap(),
                "forward is the quantized kernel's"
            );
            let r = random_tensor(&[2, 3, n], DType::F32, &Device::Cpu, seed + 2, 1.0).unwrap();
            let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(x.as_tensor()).unwrap();
            let want = dy_w(&r.reshape((6, n)).unwrap(), &dense);
            let err = rel(&dx.reshape((6, k)).unwrap(), &want);
            assert!(err < 1e-5, "{n}x{k} {dtype:?}: dx rel err {err:e}");
        }
    }

    #[test]
    fn refuses_other_formats_with_the_reason() {
        let w = random_tensor(&[8, 256], DType::F32, &Device::Cpu, 3, 0.5).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap());
        let x = random_tensor(&[1, 256], DType::F32, &Device::Cpu, 4, 1.0).unwrap();
        let err = quant_frozen_linear(&x, &q).unwrap_err().to_string();
        assert!(err.contains("Q4_1 or Q8_0"), "{err}");
    }
}
