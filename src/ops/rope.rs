//! Rotary position embedding. Each pair `(a, b)` of a head at position p is rotated by its angle:
//! `a' = a cos - b sin`, `b' = a sin + b cos`, with cos/sin taken at row p of the tables.
//! Half-split layout (GPT-NeoX / HF `rotate_half`) pairs element i with i + d/2; interleaved
//! (GPT-J, llama.cpp "normal") pairs 2i with 2i + 1.
//!
//! The KV-cache offset is carried by the tables: pass `cos.narrow(0, offset, seq)` (a view; the
//! kernels honour its start offset, so nothing is copied). The input may be strided in its first three
//! dims (a transposed `[b, seq, h, d]` projection) as long as the head dim is contiguous.
//! Backward: the rotation is orthogonal, so `dx = rope(dy, cos, -sin)`. The f64 specification every
//! check uses is `crate::reference::rope`, which also defines [`RopeLayout`].

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::common::{contiguous_as, dispatch_float, storage, Acc};
pub use crate::reference::rope::RopeLayout;
use crate::{Context, Result};

/// x: [batch, heads, seq, head_dim]; cos, sin: [seq, head_dim / 2] already offset to the positions of x.
/// Returns a contiguous [batch, heads, seq, head_dim]. Differentiable in x.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let (_b, _h, seq, dim) = x.dims4().context("rope input")?;
    if dim % 2 != 0 || cos.dims() != [seq, dim / 2] || sin.dims() != [seq, dim / 2] {
        return Err(crate::Error::InvalidRequest(format!(
            "rope: x {:?} needs cos/sin [{seq}, {}], got {:?} and {:?}",
            x.dims(),
            dim / 2,
            cos.dims(),
            sin.dims()
        )));
    }
    let x = if x.stride()[3] == 1 {
        x.clone()
    } else {
        x.contiguous().context("rope input")?
    };
    let cos = cos
        .to_dtype(x.dtype())
        .and_then(|t| t.contiguous())
        .context("rope cos")?;
    let sin = sin
        .to_dtype(x.dtype())
        .and_then(|t| t.contiguous())
        .context("rope sin")?;
    x.apply_op3(&cos, &sin, Rope { layout }).context("rope")
}

/// The op: (x, cos, sin) -> rotated x.
pub(crate) struct Rope {
    pub(crate) layout: RopeLayout,
}

fn rope_rows<T: WithDType, A: Acc>(
    x: &[T],
    l: &Layout,
    cos: &[T],
    sin: &[T],
    layout: RopeLayout,
) -> Vec<T> {
    let dims = l.dims();
    let (h, seq, dim) = (dims[1], dims[2], dims[3]);
    let st = l.stride();
    let half = dim / 2;
    let mut out = vec![T::zero(); l.shape().elem_count()];
    out.par_chunks_mut(dim).enumerate().for_each(|(row, dst)| {
        let (bi, hi, p) = (row / (h * seq), (row / seq) % h, row % seq);
        let src = &x[l.start_offset() + bi * st[0] + hi * st[1] + p * st[2]..][..dim];
        let (cos, sin) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for i in 0..half {
            let (ia, ib) = match layout {
                RopeLayout::HalfSplit => (i, i + half),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (a, b) = (A::load(src[ia]), A::load(src[ib]));
            let (c, s) = (A::load(cos[i]), A::load(sin[i]));
            dst[ia] = (a * c - b * s).store();
            dst[ib] = (a * s + b * c).store();
        }
    });
    out
}

fn check_shapes(l: &Layout, lc: &Layout, ls: &Layout) -> candle_core::Result<()> {
    let dims = l.dims();
    if dims.len() != 4 || l.stride()[3] != 1 {
        candle_core::bail!("rope: x must be 4-D with a contiguous last dim, got {l:?}");
    }
    let want = [dims[2], dims[3] / 2];
    if lc.dims() != want || ls.dims() != want {
        candle_core::bail!("rope: cos/sin must be {want:?}");
    }
    Ok(())
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "wick-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        check_shapes(l1, l2, l3)?;
        let out = dispatch_float!(s1, "rope", |x: T, A| {
            let cos = contiguous_as::<T>(s2, l2, "rope cos")?;
            let sin = contiguous_as::<T>(s3, l3, "rope sin")?;
            storage(rope_rows::<T, A>(x, l1, cos, sin, self.layout))
        });
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        check_shapes(l1, l2, l3)?;
        let interleaved = self.layout == RopeLayout::Interleaved;
        let out = crate::gpu::launch::rope(s1, l1, s2, l2, s3, l3, interleaved)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if grad.stride()[3] == 1 {
            grad.clone()
        } else {
            grad.contiguous()?
        };
        let dx = grad.apply_op3_no_bwd(cos, &sin.neg()?, self)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, finite_difference_check, random_tensor, to_f64_vec};
    use candle_core::{DType, Device};

    fn tables(seq_total: usize, half: usize) -> (Tensor, Tensor) {
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..seq_total {
            for i in 0..half {
                let theta = p as f64 / 10000f64.powf(2.0 * i as f64 / (2 * half) as f64);
                cos.push(theta.cos());
                sin.push(theta.sin());
            }
        }
        let dev = Device::Cpu;
        (
            Tensor::from_vec(cos, (seq_total, half), &dev).unwrap(),
            Tensor::from_vec(sin, (seq_total, half), &dev).unwrap(),
        )
    }

    #[test]
    fn forward_matches_reference_with_offset_and_strided_input() {
        let dev = Device::Cpu;
        for (case, &(b, h, seq, d, offset)) in [
            (1, 1, 1, 2, 0),
            (1, 3, 17, 8, 5),
            (2, 2, 33, 64, 0),
            (1, 1, 127, 128, 300),
        ]
        .iter()
        .enumerate()
        {
            let (cos_full, sin_full) = tables(offset + seq, d / 2);
            let cos = cos_full.narrow(0, offset, seq).unwrap();
            let sin = sin_full.narrow(0, offset, seq).unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
                    // [b, seq, h, d] transposed to [b, h, seq, d]: strided, as in the decoder.
                    let x = random_tensor(&[b, seq, h, d], dtype, &dev, case as u64, 2.0)
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap();
                    let y = rope(&x, &cos, &sin, layout).unwrap();
                    let xc = to_f64_vec(&x.contiguous().unwrap()).unwrap();
                    let c = to_f64_vec(&cos.to_dtype(dtype).unwrap()).unwrap();
                    let s = to_f64_vec(&sin.to_dtype(dtype).unwrap()).unwrap();
                    let want = crate::reference::rope::rope(&xc, &c, &s, seq, d, layout);
                    assert_close(&to_f64_vec(&y).unwrap(), &want, dtype, "rope fwd");
                }
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (cos, sin) = tables(20, 4);
        let (cos, sin) = (cos.narrow(0, 3, 17).unwrap(), sin.narrow(0, 3, 17).unwrap());
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            let x = random_tensor(&[2, 3, 17, 8], DType::F64, &Device::Cpu, 7, 1.0).unwrap();
            finite_difference_check(&[x], |t| rope(&t[0], &cos, &sin, layout), 8).unwrap();
        }
    }
}
