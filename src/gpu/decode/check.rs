//! The decode kernels against their CPU references (`reference`) on the GPU, at the default model's
//! shapes and at odd ones: each case returns the kernel's output and the reference's, which
//! `ops::check_suite` records (kernel names `dec_*`).

use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::quantized::QTensor;
use candle_core::{CudaDevice, Device, Tensor};

use super::attention_reference::{self, AttentionShape};
use super::launch::{device_ptr, DecodeKernels, Epilogue, LoraEpilogue};
use super::reference::{self, Activations};
use super::QuantType;
use crate::check::random_values;
use crate::{Context, Result};

/// One checked launch: kernel name, shape text, GPU output, reference output, and the tolerance
/// when it is not f32's.
pub struct DecodeCase {
    pub tolerance: Option<f64>,
    pub kernel: String,
    pub shape: String,
    pub got: Vec<f64>,
    pub want: Vec<f64>,
}

impl DecodeCase {
    /// A case judged at f32's tolerance.
    pub fn f32(kernel: &str, shape: String, got: Vec<f64>, want: Vec<f64>) -> Self {
        Self {
            tolerance: None,
            kernel: kernel.into(),
            shape,
            got,
            want,
        }
    }
}

pub(super) fn f32s(len: usize, seed: u64, scale: f64) -> Vec<f32> {
    random_values(len, seed, scale)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// Seeded random weights [rows, k] quantized by Candle to `q`: the raw blocks.
pub(super) fn blocks(q: QuantType, rows: usize, k: usize, seed: u64) -> Result<Vec<u8>> {
    let t = Tensor::from_vec(f32s(rows * k, seed, 1.0), (rows, k), &Device::Cpu)
        .context("check weights")?;
    let qt = QTensor::quantize(&t, q.ggml()).context("quantizing check weights")?;
    Ok(qt.data().context("check weight bytes")?.to_vec())
}

struct Gpu<'a> {
    kernels: &'a DecodeKernels,
}

impl Gpu<'_> {
    fn up<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>> {
        self.kernels
            .stream()
            .clone_htod(v)
            .map_err(|e| crate::Error::Candle {
                context: "decode check upload".into(),
                source: candle_core::Error::Msg(format!("{e:?}")),
            })
    }

    fn down(&self, s: &CudaSlice<f32>) -> Result<Vec<f64>> {
        let v = self
            .kernels
            .stream()
            .clone_dtoh(s)
            .map_err(|e| crate::Error::Candle {
                context: "decode check read-back".into(),
                source: candle_core::Error::Msg(format!("{e:?}")),
            })?;
        Ok(v.into_iter().map(|x| x as f64).collect())
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        device_ptr(s, self.kernels.stream())
    }
}

fn launch_err(kernel: &str) -> impl Fn(candle_core::Error) -> crate::Error + '_ {
    move |source| crate::Error::Candle {
        context: format!("launching {kernel}"),
        source,
    }
}

/// Tolerance of the int8-activation mat-vecs against their reference (which quantizes the same
/// f32 values in the same f32 operations): after the fused RMSNorm the kernel's x differs from the
/// reference's in the last bits (rsqrtf), which can move a value across a rounding boundary: one
/// step (amax / 127 of its block) on one input, ~5e-4 of a row's scale at these shapes.
pub const INT8_TOLERANCE: f64 = 5e-3;

/// Runs every decode-kernel case on `dev`; `seed` varies the inputs. The f32-activation kernels
/// first (every case), then the int8-activation ones (`dec_qmv_q8x_*`).
pub fn run(dev: &CudaDevice, seed: u64) -> Result<Vec<DecodeCase>> {
    let mut kernels = DecodeKernels::load(dev).map_err(launch_err("loading the decode kernels"))?;
    kernels.set_int8_activations(false);
    let mut cases = f32_activation_cases(dev, &kernels, seed)?;
    kernels.set_int8_policy(super::launch::Int8Policy::All);
    let gpu = Gpu { kernels: &kernels };
    let mut seed = seed ^ 0x9e37_79b9;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        seed >> 8
    };
    for q in super::QUANT_TYPES {
        if super::launch::has_int8_activations(q) {
            matvec_cases(&gpu, q, Activations::Int8, &mut next, &mut cases)?;
        }
    }
    cases.extend(super::check_lora::run_batch1(
        &kernels,
        Activations::Int8,
        &mut next,
    )?);
    Ok(cases)
}

fn f32_activation_cases(
    dev: &CudaDevice,
    kernels: &DecodeKernels,
    seed: u64,
) -> Result<Vec<DecodeCase>> {
    let gpu = Gpu { kernels };
    let mut cases = Vec::new();
    let mut seed = seed;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        seed >> 8
    };
    for q in super::QUANT_TYPES {
        matvec_cases(&gpu, q, Activations::F32, &mut next, &mut cases)?;
        batched_matvec_cases(&gpu, q, &mut next, &mut cases)?;
        embed_cases(&gpu, q, &mut next, &mut cases)?;
    }
    attention_cases(&gpu, &mut next, &mut cases)?;
    argmax_cases(&gpu, &mut next, &mut cases)?;
    // The LoRA shrink and the mat-vec epilogue (bias, per-sequence adapters): `dec_lora_*`.
    cases.extend(super::check_lora::run(kernels, &mut next)?);
    // The batched prefill's kernels (records `dec_prefill_*`).
    cases.extend(super::check_prefill::run(dev, &mut next)?);
    Ok(cases)
}

/// The mat-vec shapes for `q`: (rows, k) at an odd size and the default model's, and the hidden
/// width of its embedding table. K-quant rows are whole super-blocks of 256.
fn matvec_shapes(q: QuantType) -> ([(usize, usize); 3], usize) {
    if q.block_weights() == 256 {
        ([(37, 256), (960, 768), (576, 1536)], 512)
    } else {
        ([(37, 96), (960, 576), (576, 1536)], 576)
    }
}

/// RMSNorm epsilon of the fused mat-vecs.
const EPS: f32 = 1e-5;

/// `qmv` with the fused norm and accumulation, without either, and `qmv_swiglu`, on the kernels of
/// `act` (the kernels' mode must match).
fn matvec_cases(
    gpu: &Gpu,
    q: QuantType,
    act: Activations,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let (kernels, eps) = (gpu.kernels, EPS);
    let (family, tolerance) = match act {
        Activations::F32 => ("qmv", None),
        Activations::Int8 => ("qmv_q8x", Some(INT8_TOLERANCE)),
    };
    let (shapes, _) = matvec_shapes(q);
    for &(rows, k) in &shapes {
        let w = blocks(q, rows, k, next())?;
        let x = f32s(k, next(), 2.0);
        let g = f32s(k, next(), 1.0);
        let y0 = f32s(rows, next(), 1.0);
        let (wd, xd, gd, yd) = (gpu.up(&w)?, gpu.up(&x)?, gpu.up(&g)?, gpu.up(&y0)?);
        let name = format!("{family}_{}", q.suffix());
        kernels
            .qmv(
                q,
                gpu.ptr(&wd),
                gpu.ptr(&xd),
                gpu.ptr(&gd),
                gpu.ptr(&yd),
                rows,
                k,
                eps,
                true,
                &Epilogue::NONE,
            )
            .map_err(launch_err(&name))?;
        cases.push(DecodeCase {
            tolerance,
            kernel: format!("dec_{name}_norm_add"),
            shape: format!("[{rows}, {k}]"),
            got: gpu.down(&yd)?,
            want: reference::qmv(q, &w, &x, Some((&g, eps)), &y0, true, act),
        });
        kernels
            .qmv(
                q,
                gpu.ptr(&wd),
                gpu.ptr(&xd),
                0,
                gpu.ptr(&yd),
                rows,
                k,
                eps,
                false,
                &Epilogue::NONE,
            )
            .map_err(launch_err(&name))?;
        cases.push(DecodeCase {
            tolerance,
            kernel: format!("dec_{name}"),
            shape: format!("[{rows}, {k}]"),
            got: gpu.down(&yd)?,
            want: reference::qmv(q, &w, &x, None, &y0, false, act),
        });
        let u = blocks(q, rows, k, next())?;
        let ud = gpu.up(&u)?;
        let name = format!("{family}_swiglu_{}", q.suffix());
        kernels
            .qmv_swiglu(
                q,
                gpu.ptr(&wd),
                gpu.ptr(&ud),
                gpu.ptr(&xd),
                gpu.ptr(&gd),
                gpu.ptr(&yd),
                rows,
                k,
                eps,
                &LoraEpilogue::default(),
            )
            .map_err(launch_err(&name))?;
        cases.push(DecodeCase {
            tolerance,
            kernel: format!("dec_{name}"),
            shape: format!("[{rows}, {k}]"),
            got: gpu.down(&yd)?,
            want: reference::qmv_swiglu(q, &w, &u, &x, Some((&g, eps)), rows, act),
        });
    }
    Ok(())
}

/// The batched mat-vecs (the batch decode engine): each sequence against the batch-1 reference.
fn batched_matvec_cases(
    gpu: &Gpu,
    q: QuantType,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let (kernels, eps) = (gpu.kernels, EPS);
    let (shapes, _) = matvec_shapes(q);
    let narrow = shapes[0].1;
    for &(rows, k, nb) in &[
        (37usize, narrow, 3usize),
        (960, shapes[1].1, 8),
        (576, 1536, 8),
    ] {
        let w = blocks(q, rows, k, next())?;
        let u = blocks(q, rows, k, next())?;
        let x = f32s(nb * k, next(), 2.0);
        let g = f32s(k, next(), 1.0);
        let y0 = f32s(nb * rows, next(), 1.0);
        let (wd, ud, xd, gd) = (gpu.up(&w)?, gpu.up(&u)?, gpu.up(&x)?, gpu.up(&g)?);
        let yd = gpu.up(&y0)?;
        let name = format!("qmv_batch_{}", q.suffix());
        kernels
            .qmv_batch(
                q,
                gpu.ptr(&wd),
                gpu.ptr(&xd),
                gpu.ptr(&gd),
                gpu.ptr(&yd),
                rows,
                k,
                eps,
                true,
                nb,
                &Epilogue::NONE,
            )
            .map_err(launch_err(&name))?;
        let per_seq = |f: &dyn Fn(usize) -> Vec<f64>| -> Vec<f64> { (0..nb).flat_map(f).collect() };
        cases.push(DecodeCase {
            tolerance: None,
            kernel: format!("dec_{name}_norm_add"),
            shape: format!("{nb} x [{rows}, {k}]"),
            got: gpu.down(&yd)?,
            want: per_seq(&|b| {
                reference::qmv(
                    q,
                    &w,
                    &x[b * k..(b + 1) * k],
                    Some((&g, eps)),
                    &y0[b * rows..(b + 1) * rows],
                    true,
                    Activations::F32,
                )
            }),
        });
        let name = format!("qmv_swiglu_batch_{}", q.suffix());
        kernels
            .qmv_swiglu_batch(
                q,
                gpu.ptr(&wd),
                gpu.ptr(&ud),
                gpu.ptr(&xd),
                gpu.ptr(&gd),
                gpu.ptr(&yd),
                rows,
                k,
                eps,
                nb,
                &LoraEpilogue::default(),
            )
            .map_err(launch_err(&name))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: format!("dec_{name}"),
            shape: format!("{nb} x [{rows}, {k}]"),
            got: gpu.down(&yd)?,
            want: per_seq(&|b| {
                reference::qmv_swiglu(
                    q,
                    &w,
                    &u,
                    &x[b * k..(b + 1) * k],
                    Some((&g, eps)),
                    rows,
                    Activations::F32,
                )
            }),
        });
    }
    Ok(())
}

/// The embedding lookups: a batch of rows, then one row `token` of a [vocab, hidden] table.
fn embed_cases(
    gpu: &Gpu,
    q: QuantType,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.kernels;
    let (_, hidden) = matvec_shapes(q);
    {
        let (vocab, nb) = (301, 5);
        let table = blocks(q, vocab, hidden, next())?;
        let tokens: Vec<usize> = (0..nb).map(|_| (next() % vocab as u64) as usize).collect();
        let state: Vec<i32> = tokens.iter().flat_map(|&t| [t as i32, 0]).collect();
        let (td, sd) = (gpu.up(&table)?, gpu.up(&state)?);
        let xd = gpu.up(&vec![f32::NAN; nb * hidden])?;
        let name = format!("embed_batch_{}", q.suffix());
        kernels
            .embed_batch(q, gpu.ptr(&td), gpu.ptr(&sd), gpu.ptr(&xd), hidden, nb)
            .map_err(launch_err(&name))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: format!("dec_{name}"),
            shape: format!("{nb} x [{vocab}, {hidden}] rows {tokens:?}"),
            got: gpu.down(&xd)?,
            want: tokens
                .iter()
                .flat_map(|&t| reference::embed(q, &table, t, hidden))
                .collect(),
        });
    }
    // Embedding: row `token` of a [vocab, hidden] table.
    let vocab = 301;
    let table = blocks(q, vocab, hidden, next())?;
    let token = (next() % vocab as u64) as i32;
    let (td, sd) = (gpu.up(&table)?, gpu.up(&[token, 0i32])?);
    let xd = gpu.up(&vec![f32::NAN; hidden])?;
    let name = format!("embed_{}", q.suffix());
    kernels
        .embed(q, gpu.ptr(&td), gpu.ptr(&sd), gpu.ptr(&xd), hidden)
        .map_err(launch_err(&name))?;
    cases.push(DecodeCase {
        tolerance: None,
        kernel: format!("dec_{name}"),
        shape: format!("[{vocab}, {hidden}] row {token}"),
        got: gpu.down(&xd)?,
        want: reference::embed(q, &table, token as usize, hidden),
    });
    Ok(())
}

/// Attention at the default model's shape (and a GQA-free one), short and long positions: the
/// output, the cache row written and the counters reset.
fn attention_cases(
    gpu: &Gpu,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.kernels;
    for &(heads, kv_heads, d, pos) in &[
        (9usize, 3usize, 64usize, 0usize),
        (9, 3, 64, 5),
        (9, 3, 64, 31),
        (9, 3, 64, 32),
        (9, 3, 64, 700),
        (9, 3, 64, 1024),
        (9, 3, 64, 4000),
        (4, 4, 128, 333),
        (32, 32, 64, 100),
        (32, 32, 64, 1500),
    ] {
        // pos 4000: 125 chunks over 32 splits (several chunks per block). 32 kv heads (SmolLM2-1.7B):
        // the grid of the kernel capped at five blocks an SM.
        let max_seq = 4096;
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
        };
        let qkv = f32s((heads + 2 * kv_heads) * d, next(), 1.0);
        let mut kc = f32s(max_seq * kv_heads * d, next(), 1.0);
        let mut vc = f32s(max_seq * kv_heads * d, next(), 1.0);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let (qd, kd, vd) = (gpu.up(&qkv)?, gpu.up(&kc)?, gpu.up(&vc)?);
        let (sd, id) = (gpu.up(&[7i32, pos as i32])?, gpu.up(&inv)?);
        let od = gpu.up(&vec![f32::NAN; heads * d])?;
        let part = gpu.up(&vec![
            f32::NAN;
            super::launch::attention_scratch_floats(shape)
        ])?;
        let counters = gpu.up(&vec![0u32; kv_heads])?;
        let scale = 1.0 / (d as f32).sqrt();
        kernels
            .rope_attention(
                gpu.ptr(&qd),
                gpu.ptr(&kd),
                gpu.ptr(&vd),
                gpu.ptr(&sd),
                gpu.ptr(&id),
                gpu.ptr(&od),
                gpu.ptr(&part),
                gpu.ptr(&counters),
                shape,
                scale,
            )
            .map_err(launch_err("rope_attention"))?;
        let want =
            attention_reference::rope_attention(&qkv, &mut kc, &mut vc, pos, &inv, shape, scale);
        let shape_text = format!("h{heads} kv{kv_heads} d{d} pos{pos}");
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_rope_attention".into(),
            shape: shape_text.clone(),
            got: gpu.down(&od)?,
            want,
        });
        // The cache row written at pos (k rotated, v as is).
        let row = kv_heads * d;
        let got_k = gpu.down(&kd)?[pos * row..(pos + 1) * row].to_vec();
        let got_v = gpu.down(&vd)?[pos * row..(pos + 1) * row].to_vec();
        let want_kv: Vec<f64> = kc[pos * row..(pos + 1) * row]
            .iter()
            .chain(&vc[pos * row..(pos + 1) * row])
            .map(|&v| v as f64)
            .collect();
        // The last block of each kv head resets its counter for the next launch (next layer/token).
        let counters_after =
            kernels
                .stream()
                .clone_dtoh(&counters)
                .map_err(|e| crate::Error::Candle {
                    context: "attention counters read-back".into(),
                    source: candle_core::Error::Msg(format!("{e:?}")),
                })?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_attention_counters".into(),
            shape: shape_text.clone(),
            got: counters_after.into_iter().map(f64::from).collect(),
            want: vec![0.0; kv_heads],
        });
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_rope_kv_write".into(),
            shape: shape_text,
            got: got_k.into_iter().chain(got_v).collect(),
            want: want_kv,
        });
    }
    Ok(())
}

/// Greedy argmax + log-probability over the default model's vocabulary, with a tie.
fn argmax_cases(
    gpu: &Gpu,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.kernels;
    let n = 49152;
    let mut logits = f32s(n, next(), 8.0);
    let tie = (next() % n as u64) as usize;
    logits[tie] = 9.0;
    logits[(tie + 1000) % n] = 9.0;
    let (ld, rd, sd) = (gpu.up(&logits)?, gpu.up(&[0u32, 0])?, gpu.up(&[0i32, 0])?);
    kernels
        .argmax(gpu.ptr(&ld), n, gpu.ptr(&rd), gpu.ptr(&sd))
        .map_err(launch_err("argmax_logprob"))?;
    let result = kernels
        .stream()
        .clone_dtoh(&rd)
        .map_err(|e| crate::Error::Candle {
            context: "argmax read-back".into(),
            source: candle_core::Error::Msg(format!("{e:?}")),
        })?;
    let state = kernels
        .stream()
        .clone_dtoh(&sd)
        .map_err(|e| crate::Error::Candle {
            context: "argmax state read-back".into(),
            source: candle_core::Error::Msg(format!("{e:?}")),
        })?;
    let (want_id, want_lp) = reference::argmax_logprob(&logits);
    cases.push(DecodeCase {
        tolerance: None,
        kernel: "dec_argmax".into(),
        shape: format!("[{n}] (id, id written to state)"),
        got: vec![result[0] as f64, state[0] as f64],
        want: vec![want_id as f64, want_id as f64],
    });
    cases.push(DecodeCase {
        tolerance: None,
        kernel: "dec_argmax_logprob".into(),
        shape: format!("[{n}]"),
        got: vec![f32::from_bits(result[1]) as f64],
        want: vec![want_lp],
    });
    Ok(())
}
