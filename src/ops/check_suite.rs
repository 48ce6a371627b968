//! The correctness suite behind `wick bench gpu-check`: every fused op, every dtype (f32, bf16,
//! f16), forward and backward, on odd shapes with fresh random inputs, against the f64 references
//! computed on the same (rounded) inputs. On CUDA every kernel output is poisoned with NaN before the
//! kernel runs (`gpu::launch::set_poison`), so an element a kernel fails to write shows up as an
//! infinite error. Runs on any device (`--device cpu` exercises the CPU ops the same way).

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use super::{cross_entropy, decode_attention, lora_linear, rms_norm, rope, softmax, swiglu};
use crate::check::{self, max_rel_err, pass_tolerance, random_tensor, to_f64_vec, tolerance};
use crate::reference;
use crate::{Context, Result};

/// One checked (kernel, dtype, pass, shape).
#[derive(Debug, Clone, Serialize)]
pub struct CheckRecord {
    /// The op: softmax, rms_norm, add_rms_norm, rope_half_split, ...
    pub kernel: String,
    /// f32, bf16 or f16.
    pub dtype: String,
    /// fwd or bwd.
    pub pass: String,
    /// The input shape, as text.
    pub shape: String,
    /// `max |got - want| / max |want|` (see `check::max_rel_err`); infinite if anything is NaN.
    pub max_rel_err: f64,
    /// The tolerance for the dtype.
    pub tolerance: f64,
    /// max_rel_err <= tolerance.
    pub ok: bool,
    /// The device name.
    pub device: String,
    /// UTC date of the run.
    pub date: String,
    /// The seed of this case's random inputs (fresh per run).
    pub seed: u64,
}

struct Suite<'a> {
    device: &'a Device,
    device_name: &'a str,
    date: &'a str,
    seed: u64,
    records: Vec<CheckRecord>,
}

impl Suite<'_> {
    fn next_seed(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed >> 8
    }

    fn rand(&mut self, shape: &[usize], dtype: DType, scale: f64) -> Result<Tensor> {
        let seed = self.next_seed();
        random_tensor(shape, dtype, self.device, seed, scale)
    }

    /// Records `got` against `want` at the dtype's tolerance for this pass.
    fn record(
        &mut self,
        kernel: &str,
        dtype: DType,
        pass: &str,
        shape: &[usize],
        got: &[f64],
        want: &[f64],
    ) {
        let err = max_rel_err(got, want);
        self.push(kernel, dtype, pass, shape, err, pass_tolerance(dtype, pass));
    }

    /// Records an error already measured (for cases whose scale or tolerance is not the default).
    fn push(
        &mut self,
        kernel: &str,
        dtype: DType,
        pass: &str,
        shape: &[usize],
        err: f64,
        tolerance: f64,
    ) {
        self.records.push(CheckRecord {
            kernel: kernel.into(),
            dtype: dtype.as_str().into(),
            pass: pass.into(),
            shape: format!("{shape:?}"),
            max_rel_err: err,
            tolerance,
            ok: err <= tolerance,
            device: self.device_name.into(),
            date: self.date.into(),
            seed: self.seed,
        });
    }
}

/// Runs every case on `device`; `seed` makes the inputs (pass a fresh one per run).
pub fn run_suite(
    device: &Device,
    device_name: &str,
    date: &str,
    seed: u64,
) -> Result<Vec<CheckRecord>> {
    let mut suite = Suite {
        device,
        device_name,
        date,
        seed,
        records: Vec::new(),
    };
    #[cfg(feature = "cuda")]
    crate::gpu::launch::set_poison(true);
    let result = (|| -> Result<()> {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            check_softmax(&mut suite, dtype)?;
            check_rms_norm(&mut suite, dtype)?;
            check_rope(&mut suite, dtype)?;
            check_swiglu(&mut suite, dtype)?;
            check_cross_entropy(&mut suite, dtype)?;
            check_lora(&mut suite, dtype)?;
            check_small_matmul(&mut suite, dtype)?;
            check_decode_attention(&mut suite, dtype)?;
        }
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = device {
            check_decode_engine_kernels(&mut suite, dev)?;
            check_gemm(&mut suite, dev)?;
            check_training_kernels(&mut suite, dev)?;
            check_train_engine(&mut suite)?;
        }
        Ok(())
    })();
    #[cfg(feature = "cuda")]
    crate::gpu::launch::set_poison(false);
    result?;
    Ok(suite.records)
}

fn v(t: &Tensor) -> Result<Vec<f64>> {
    to_f64_vec(t)
}

/// Gradients of `sum(f(inputs) * weights)` with respect to each input, through Candle's autograd.
fn grads(
    inputs: &[Tensor],
    weights: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Vec<f64>>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).context("check var"))
        .collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts)?;
    let loss = (out.to_dtype(DType::F32)? * weights.to_dtype(DType::F32)?)?.sum_all()?;
    let g = loss.backward().context("check backward")?;
    vars.iter()
        .map(|var| match g.get(var.as_tensor()) {
            Some(t) => v(t),
            None => Ok(vec![0.0; var.elem_count()]),
        })
        .collect()
}

fn check_softmax(s: &mut Suite, dtype: DType) -> Result<()> {
    for shape in [
        [1, 1],
        [3, 17],
        [2, 33],
        [5, 127],
        [2, 4097],
        [3, 8193],
        [2, 151_936],
        // Rows of whole 16-byte vectors: the register path (576, 4096; bf16 32768 at 8 vectors per
        // thread) and the vector online path (f32 32768).
        [4, 576],
        [3, 4096],
        [2, 32_768],
    ] {
        let n = shape[1];
        let x = s.rand(&shape, dtype, 4.0)?;
        let y = softmax::softmax_last_dim(&x)?;
        let want = reference::softmax::softmax(&v(&x)?, n);
        s.record("softmax", dtype, "fwd", &shape, &v(&y)?, &want);
        let dy = s.rand(&shape, dtype, 1.0)?;
        let g = grads(std::slice::from_ref(&x), &dy, |t| {
            softmax::softmax_last_dim(&t[0])
        })?;
        // The backward sees the rounded forward output, as the op does.
        let want = reference::softmax::softmax_backward(&v(&y)?, &v(&dy)?, n);
        s.record("softmax", dtype, "bwd", &shape, &g[0], &want);
    }
    Ok(())
}

fn check_rms_norm(s: &mut Suite, dtype: DType) -> Result<()> {
    let eps = 1e-6;
    // The last three are whole 16-byte vectors: the register path (576, 4096) and the vector
    // two-pass path for long rows (49152).
    for shape in [
        [1, 1],
        [3, 17],
        [2, 33],
        [5, 127],
        [2, 4097],
        [3, 8193],
        [4, 576],
        [3, 4096],
        [2, 49_152],
    ] {
        let n = shape[1];
        let x = s.rand(&shape, dtype, 2.0)?;
        let r = s.rand(&shape, dtype, 2.0)?;
        let w = s.rand(&[n], dtype, 1.5)?;
        let wv = v(&w)?;
        let y = rms_norm::rms_norm(&x, &w, eps)?;
        s.record(
            "rms_norm",
            dtype,
            "fwd",
            &shape,
            &v(&y)?,
            &reference::rms_norm::rms_norm(&v(&x)?, &wv, eps).0,
        );
        let (normed, sum) = rms_norm::add_rms_norm(&x, &r, &w, eps)?;
        let sum_v = v(&sum)?;
        let want_sum: Vec<f64> = v(&(&x + &r)?)?;
        let mut got = v(&normed)?;
        got.extend(&sum_v);
        let mut want = reference::rms_norm::rms_norm(&sum_v, &wv, eps).0;
        want.extend(want_sum);
        s.record("add_rms_norm", dtype, "fwd", &shape, &got, &want);

        let dy = s.rand(&shape, dtype, 1.0)?;
        let g = grads(&[x.clone(), w.clone()], &dy, |t| {
            rms_norm::rms_norm(&t[0], &t[1], eps)
        })?;
        let xv = v(&x)?;
        let rstd = reference::rms_norm::rms_norm(&xv, &wv, eps).1;
        let (dx, dw) = reference::rms_norm::rms_norm_backward(&xv, &wv, &rstd, &v(&dy)?);
        s.record(
            "rms_norm",
            dtype,
            "bwd",
            &shape,
            &[g[0].clone(), g[1].clone()].concat(),
            &[dx, dw].concat(),
        );
    }
    Ok(())
}

fn check_rope(s: &mut Suite, dtype: DType) -> Result<()> {
    for (b, h, seq, d, offset) in [
        (1, 1, 1, 2, 0),
        (1, 3, 17, 8, 5),
        (2, 2, 33, 64, 0),
        (1, 5, 127, 128, 300),
    ] {
        let half = d / 2;
        let total = offset + seq;
        let angles: Vec<f64> = (0..total * half)
            .map(|i| (i / half) as f64 / 10000f64.powf(2.0 * (i % half) as f64 / d as f64))
            .collect();
        let cos_full = Tensor::from_vec(
            angles.iter().map(|a| a.cos()).collect::<Vec<_>>(),
            (total, half),
            s.device,
        )?
        .to_dtype(dtype)?;
        let sin_full = Tensor::from_vec(
            angles.iter().map(|a| a.sin()).collect::<Vec<_>>(),
            (total, half),
            s.device,
        )?
        .to_dtype(dtype)?;
        let cos = cos_full.narrow(0, offset, seq)?;
        let sin = sin_full.narrow(0, offset, seq)?;
        let (cv, sv) = (v(&cos)?, v(&sin)?);
        let neg_sv: Vec<f64> = sv.iter().map(|x| -x).collect();
        for (layout, name) in [
            (rope::RopeLayout::HalfSplit, "rope_half_split"),
            (rope::RopeLayout::Interleaved, "rope_interleaved"),
        ] {
            // Transposed [b, seq, h, d] input: the strided path the decoder uses.
            let x = s.rand(&[b, seq, h, d], dtype, 2.0)?.transpose(1, 2)?;
            let shape = [b, h, seq, d];
            let y = rope::rope(&x, &cos, &sin, layout)?;
            let xc = v(&x.contiguous()?)?;
            s.record(
                name,
                dtype,
                "fwd",
                &shape,
                &v(&y)?,
                &reference::rope::rope(&xc, &cv, &sv, seq, d, layout),
            );
            let dy = s.rand(&shape, dtype, 1.0)?;
            let g = grads(&[x.contiguous()?], &dy, |t| {
                rope::rope(&t[0], &cos, &sin, layout)
            })?;
            let want = reference::rope::rope(&v(&dy)?, &cv, &neg_sv, seq, d, layout);
            s.record(name, dtype, "bwd", &shape, &g[0], &want);
        }
    }
    Ok(())
}

fn check_swiglu(s: &mut Suite, dtype: DType) -> Result<()> {
    for n in [1usize, 3, 17, 33, 127, 4097, 100_003] {
        let shape = [n];
        let g = s.rand(&shape, dtype, 6.0)?;
        let u = s.rand(&shape, dtype, 2.0)?;
        let y = swiglu::swiglu(&g, &u)?;
        let (gv, uv) = (v(&g)?, v(&u)?);
        s.record(
            "swiglu",
            dtype,
            "fwd",
            &shape,
            &v(&y)?,
            &reference::swiglu::swiglu(&gv, &uv),
        );
        let dy = s.rand(&shape, dtype, 1.0)?;
        let gr = grads(&[g.clone(), u.clone()], &dy, |t| {
            swiglu::swiglu(&t[0], &t[1])
        })?;
        let (dg, du) = reference::swiglu::swiglu_backward(&gv, &uv, &v(&dy)?);
        s.record(
            "swiglu",
            dtype,
            "bwd",
            &shape,
            &[gr[0].clone(), gr[1].clone()].concat(),
            &[dg, du].concat(),
        );
    }
    Ok(())
}

fn check_cross_entropy(s: &mut Suite, dtype: DType) -> Result<()> {
    for shape in [
        [1, 3],
        [3, 17],
        [4, 127],
        [5, 4097],
        [2, 49_152],
        [3, 151_936],
    ] {
        let (rows, vocab) = (shape[0], shape[1]);
        let seed = s.next_seed();
        let labels: Vec<i64> = (0..rows)
            .map(|i| {
                if i % 3 == 1 {
                    cross_entropy::IGNORE_INDEX
                } else {
                    ((seed >> (i % 16)) as usize % vocab) as i64
                }
            })
            .collect();
        let lt = Tensor::new(labels.as_slice(), s.device)?;
        let x = s.rand(&shape, dtype, 8.0)?;
        let var = Var::from_tensor(&x)?;
        let loss = cross_entropy::cross_entropy(var.as_tensor(), &lt)?;
        let g = loss.backward()?;
        let k = 1.0 / reference::cross_entropy::label_count(&labels);
        let (row_losses, want_grad) =
            reference::cross_entropy::cross_entropy(&v(&x)?, &labels, vocab, k);
        let want_loss: f64 = row_losses.iter().sum();
        // The loss is f32 whatever the logits: judged at f32's tolerance. Its precision is absolute
        // at the scale of 1 nat (log-sum-exp adds terms next to 1): a random row whose label holds
        // the largest logit by ~12 has a loss of ~1e-5 nats, known only to ~1e-7 in f32, so the
        // error is taken relative to max(loss, 1). Likewise the gradient p - onehot subtracts
        // probabilities next to 1: relative to max(|grad|, 1 / counted rows).
        let got = v(&loss)?;
        let err = check::max_rel_err_with_floor(&got, &[want_loss], 1.0);
        s.push(
            "cross_entropy",
            dtype,
            "fwd",
            &shape,
            err,
            tolerance(DType::F32),
        );
        let grad = g
            .get(var.as_tensor())
            .map(v)
            .transpose()?
            .unwrap_or_default();
        let counted = labels
            .iter()
            .filter(|&&l| l != cross_entropy::IGNORE_INDEX)
            .count()
            .max(1);
        let err = check::max_rel_err_with_floor(&grad, &want_grad, 1.0 / counted as f64);
        s.push(
            "cross_entropy",
            dtype,
            "bwd",
            &shape,
            err,
            pass_tolerance(dtype, "bwd"),
        );
    }
    Ok(())
}

/// wick's small-matrix product (gpu::small_matmul) against y = x W^T + bias in f64: the dot kernel
/// (odd k, k not a multiple of the vector, 64x64x64, m = 3 with n = 1000), the skinny kernel (m <= 8,
/// scalar and 16-byte loads), both tiled kernels, ragged edges; on CUDA also written into a
/// NaN-filled y, so an element the kernel misses shows as an infinite error, through the planned
/// kernel and with the dot, tiled and (m <= 8) skinny kernels forced at every shape.
fn check_small_matmul(s: &mut Suite, dtype: DType) -> Result<()> {
    use crate::gpu::small_matmul;
    // (leading dims of x, n, k): m = product of the leading dims.
    let cases: [(&[usize], usize, usize); 15] = [
        (&[1], 70, 33),
        (&[3], 1000, 64),
        (&[3], 1000, 63),
        (&[7], 33, 30),
        (&[9], 13, 1),
        (&[2, 32], 64, 64),
        (&[1], 300, 300),
        (&[3], 20000, 40),
        (&[64], 300, 64),
        (&[5], 64, 64),
        (&[2, 4], 1000, 136),
        (&[64], 64, 64),
        (&[100], 70, 17),
        (&[3, 7], 129, 40),
        (&[512], 320, 40),
    ];
    for (lead, n, k) in cases {
        let m: usize = lead.iter().product();
        let mut x_shape = lead.to_vec();
        x_shape.push(k);
        let x = s.rand(&x_shape, dtype, 1.0)?;
        let w = s.rand(&[n, k], dtype, 0.5)?;
        let bias = s.rand(&[n], dtype, 0.5)?;
        let (xv, wv, bv) = (v(&x)?, v(&w)?, v(&bias)?);
        let want: Vec<f64> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                bv[j] + (0..k).map(|t| xv[i * k + t] * wv[j * k + t]).sum::<f64>()
            })
            .collect();
        let shape = [m, n, k];
        let y = small_matmul::linear(&x, &w, Some(&bias))?;
        s.record("small_matmul", dtype, "fwd", &shape, &v(&y)?, &want);
        #[cfg(feature = "cuda")]
        if s.device.is_cuda() {
            let mut y_shape = lead.to_vec();
            y_shape.push(n);
            let y = (Tensor::ones(y_shape.as_slice(), dtype, s.device)? * f64::NAN)?;
            small_matmul::linear_into(&y, &x, &w, Some(&bias))?;
            s.record("small_matmul_into", dtype, "fwd", &shape, &v(&y)?, &want);
            use small_matmul::SmallKernel;
            for (kernel, name) in [
                (SmallKernel::Dot, "small_matmul_into_dot"),
                (SmallKernel::Tiled16, "small_matmul_into_tiled16"),
                (SmallKernel::Tiled32, "small_matmul_into_tiled32"),
                (SmallKernel::Skinny, "small_matmul_into_skinny"),
            ] {
                if kernel == SmallKernel::Skinny && m > small_matmul::SKINNY_MAX_ROWS {
                    continue;
                }
                let y = (Tensor::ones(y_shape.as_slice(), dtype, s.device)? * f64::NAN)?;
                small_matmul::linear_into_with(Some(kernel), &y, &x, &w, Some(&bias))?;
                s.record(name, dtype, "fwd", &shape, &v(&y)?, &want);
            }
        }
    }
    Ok(())
}

fn check_lora(s: &mut Suite, dtype: DType) -> Result<()> {
    // (tokens, in, out, rank): up to 8 tokens take the one-kernel path on CUDA, more the cuBLAS one.
    for (t, inf, outf, r) in [
        (1, 3, 5, 1),
        (3, 17, 33, 4),
        (8, 64, 127, 8),
        (1, 1024, 1024, 8),
        (17, 33, 127, 8),
        (127, 64, 17, 16),
    ] {
        let shape = [t, inf, outf, r];
        let x = s.rand(&[t, inf], dtype, 1.0)?;
        let w = s.rand(&[outf, inf], dtype, 0.5)?;
        let bias = s.rand(&[outf], dtype, 0.5)?;
        let a = s.rand(&[r, inf], dtype, 0.5)?;
        let b = s.rand(&[outf, r], dtype, 0.5)?;
        let scale = 2.0;
        let (xv, wv, biasv, av, bv) = (v(&x)?, v(&w)?, v(&bias)?, v(&a)?, v(&b)?);
        let y = lora_linear::lora_linear(&x, Some(&w), Some(&bias), &a, &b, scale)?;
        let want = lora_linear::lora_linear_reference(&xv, &wv, &biasv, &av, &bv, scale, inf, r);
        s.record("lora_linear", dtype, "fwd", &shape, &v(&y)?, &want);
        let d = lora_linear::lora_linear(&x, None, None, &a, &b, scale)?;
        let want = lora_linear::lora_linear_reference(&xv, &[], &[], &av, &bv, scale, inf, r);
        s.record("lora_low_rank", dtype, "fwd", &shape, &v(&d)?, &want);

        let dy = s.rand(&[t, outf], dtype, 1.0)?;
        let g = grads(&[x.clone(), a.clone(), b.clone()], &dy, |ts| {
            lora_linear::lora_linear(&ts[0], Some(&w), Some(&bias), &ts[1], &ts[2], scale)
        })?;
        let want = lora_backward_reference(&xv, &wv, &av, &bv, &v(&dy)?, (t, inf, outf, r), scale)?;
        s.record(
            "lora_linear",
            dtype,
            "bwd",
            &shape,
            &g.concat(),
            &want.concat(),
        );
    }
    Ok(())
}

/// dx, dA, dB in f64 on the CPU through Candle's matmuls (independent of the fused op).
fn lora_backward_reference(
    x: &[f64],
    w: &[f64],
    a: &[f64],
    b: &[f64],
    dy: &[f64],
    (t, inf, outf, r): (usize, usize, usize, usize),
    scale: f64,
) -> Result<Vec<Vec<f64>>> {
    let cpu = Device::Cpu;
    let x = Tensor::from_slice(x, (t, inf), &cpu)?;
    let w = Tensor::from_slice(w, (outf, inf), &cpu)?;
    let a = Tensor::from_slice(a, (r, inf), &cpu)?;
    let b = Tensor::from_slice(b, (outf, r), &cpu)?;
    let g = Tensor::from_slice(dy, (t, outf), &cpu)?;
    let u = g.matmul(&b)?;
    let dx = (g.matmul(&w)? + (u.matmul(&a)? * scale)?)?;
    let da = (u.t()?.matmul(&x)? * scale)?;
    let db = (g.t()?.matmul(&x.matmul(&a.t()?)?)? * scale)?;
    Ok(vec![v(&dx)?, v(&da)?, v(&db)?])
}

/// The CUDA decode engine's kernels (`gpu::decode`) against their CPU references (f32 maths).
#[cfg(feature = "cuda")]
fn check_decode_engine_kernels(s: &mut Suite, dev: &candle_core::CudaDevice) -> Result<()> {
    let seed = s.next_seed();
    for case in crate::gpu::decode::check::run(dev, seed)? {
        let tolerance = case.tolerance.unwrap_or(pass_tolerance(DType::F32, "fwd"));
        let err = max_rel_err(&case.got, &case.want);
        s.push(&case.kernel, DType::F32, "fwd", &[], err, tolerance);
        if let Some(last) = s.records.last_mut() {
            last.shape = case.shape;
        }
    }
    // The engines end to end (adapters, biases, batch) against Candle on the CPU; an error is a
    // failed record naming it.
    let engine_cases =
        crate::generate::cuda_decode::check::run(s.device, seed).unwrap_or_else(|e| {
            vec![crate::generate::cuda_decode::check::EngineCheck {
                kernel: "dec_engine_error".into(),
                shape: e.to_string(),
                max_rel_err: f64::INFINITY,
                tolerance: 0.0,
            }]
        });
    for case in engine_cases {
        s.push(
            &case.kernel,
            DType::F32,
            "fwd",
            &[],
            case.max_rel_err,
            case.tolerance,
        );
        if let Some(last) = s.records.last_mut() {
            last.shape = case.shape;
        }
    }
    Ok(())
}

/// The CUDA training engine's kernels (`gpu::train`) against their f64 references, for T = f32 and
/// bf16: records `trn_*` (tolerance per output in `gpu::train::check`).
#[cfg(feature = "cuda")]
fn check_training_kernels(s: &mut Suite, dev: &candle_core::CudaDevice) -> Result<()> {
    for dtype in [DType::F32, DType::BF16] {
        let seed = s.next_seed();
        for case in crate::gpu::train::check::run(dev, dtype, seed)? {
            s.push(
                &case.kernel,
                dtype,
                case.pass,
                &[],
                case.max_rel_err,
                case.tolerance,
            );
            if let Some(last) = s.records.last_mut() {
                last.shape = case.shape;
            }
        }
    }
    Ok(())
}

/// The CUDA training engine against Candle's autograd (`train::cuda_engine::check`): records
/// `trn_engine_*`, the model and tensor in `shape`.
#[cfg(feature = "cuda")]
fn check_train_engine(s: &mut Suite) -> Result<()> {
    let seed = s.next_seed();
    // An error (a launch or plan that fails) is a failed record naming it, not the end of the suite.
    let cases = crate::train::cuda_engine::check::run(s.device, seed).unwrap_or_else(|e| {
        vec![crate::train::cuda_engine::check::EngineCase {
            kernel: "trn_engine_error".into(),
            dtype: DType::F32,
            pass: "fwd".into(),
            shape: e.to_string(),
            max_rel_err: f64::INFINITY,
            tolerance: 0.0,
        }]
    });
    for case in cases {
        s.push(
            &case.kernel,
            case.dtype,
            &case.pass,
            &[],
            case.max_rel_err,
            case.tolerance,
        );
        if let Some(last) = s.records.last_mut() {
            last.shape = case.shape;
        }
    }
    Ok(())
}

/// `gpu::gemm` (raw-pointer cuBLASLt) against its f64 reference: records `gemm`, dtype = A/B type.
#[cfg(feature = "cuda")]
fn check_gemm(s: &mut Suite, dev: &candle_core::CudaDevice) -> Result<()> {
    let seed = s.next_seed();
    for case in crate::gpu::gemm::check_cases(dev, seed)? {
        s.push(
            "gemm",
            case.ab_type,
            "fwd",
            &[],
            case.max_rel_err,
            case.tolerance,
        );
        if let Some(last) = s.records.last_mut() {
            last.shape = case.shape;
        }
    }
    Ok(())
}

fn check_decode_attention(s: &mut Suite, dtype: DType) -> Result<()> {
    for (b, heads, kv, len, d) in [
        (1, 1, 1, 1, 8),
        (1, 3, 1, 17, 16),
        (2, 9, 3, 33, 64),
        (1, 4, 2, 4097, 64),
        (1, 9, 3, 1000, 128),
    ] {
        let shape = [b, heads, kv, len, d];
        let q = s.rand(&[b, heads, 1, d], dtype, 1.0)?;
        let kfull = s.rand(&[b, kv, len + 7, d], dtype, 1.0)?;
        let vfull = s.rand(&[b, kv, len + 7, d], dtype, 1.0)?;
        let (k, vc) = (kfull.narrow(2, 0, len)?, vfull.narrow(2, 0, len)?);
        let scale = 1.0 / (d as f64).sqrt();
        let y = decode_attention::decode_attention(&q, &k, &vc, scale)?;
        let want = decode_attention::decode_attention_reference(
            &v(&q)?,
            &v(&k.contiguous()?)?,
            &v(&vc.contiguous()?)?,
            (b, heads, kv, len, d),
            scale,
        );
        s.record("decode_attention", dtype, "fwd", &shape, &v(&y)?, &want);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_passes_on_the_cpu() {
        let records = run_suite(&Device::Cpu, "cpu", "test", 42).unwrap();
        let failed: Vec<_> = records.iter().filter(|r| !r.ok).collect();
        assert!(failed.is_empty(), "failed: {failed:#?}");
        assert!(records.len() > 150);
    }
}
