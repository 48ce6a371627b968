//! The batched-prefill kernels (`prefill`, kernels/prefill.cu) against their CPU references
//! (`reference::prefill_*`) on the GPU, at the default model's shapes and odd ones; outputs are
//! poisoned with NaN before each launch. Records `dec_prefill_*` (through `check::run`); the GEMM
//! attention (`PrefillKernels::attention_gemm`, with cuBLASLt) as `dec_prefill_attention_gemm`,
//! its head-major rotated queries as `dec_prefill_rope_qh`.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::{CudaDevice, DType};

use super::attention_reference::{self, AttentionShape};
use super::check::{blocks, f32s, DecodeCase};
use super::launch::device_ptr;
use super::prefill::{gemm_attention_scores_len, PrefillKernels};
use super::reference;
use super::QuantType;
use crate::gpu::gemm::Gemm;
use crate::Result;

fn gpu_err(what: &str, e: impl std::fmt::Debug) -> crate::Error {
    crate::Error::Candle {
        context: format!("prefill check: {what}"),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

fn launch_err(kernel: &str) -> impl Fn(candle_core::Error) -> crate::Error + '_ {
    move |source| crate::Error::Candle {
        context: format!("launching {kernel}"),
        source,
    }
}

struct Gpu<'a> {
    k: &'a PrefillKernels,
}

impl Gpu<'_> {
    fn up<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.k
            .stream()
            .clone_htod(v)
            .map_err(|e| gpu_err("upload", e))
    }
    fn down(&self, s: &CudaSlice<f32>) -> Result<Vec<f64>> {
        let v = self
            .k
            .stream()
            .clone_dtoh(s)
            .map_err(|e| gpu_err("read-back", e))?;
        Ok(v.into_iter().map(|x| x as f64).collect())
    }
    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        device_ptr(s, self.k.stream())
    }
}

/// Runs every prefill-kernel case on `dev`; `next` draws seeds.
pub fn run(dev: &CudaDevice, next: &mut dyn FnMut() -> u64) -> Result<Vec<DecodeCase>> {
    let kernels = PrefillKernels::load(dev).map_err(launch_err("loading the prefill kernels"))?;
    let gpu = Gpu { k: &kernels };
    let mut cases = Vec::new();
    embed_cases(&gpu, next, &mut cases)?;
    dequant_cases(&gpu, next, &mut cases)?;
    row_cases(&gpu, next, &mut cases)?;
    attention_cases(&gpu, next, &mut cases)?;
    let gemm = Gemm::for_device(dev).map_err(launch_err("creating the GEMM handle"))?;
    gemm_attention_cases(&gpu, &gemm, next, &mut cases)?;
    Ok(cases)
}

/// Embedding of n tokens, every format (rows of whole K-quant super-blocks for those).
fn embed_cases(
    gpu: &Gpu,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.k;
    let formats = super::QUANT_TYPES;
    for q in formats {
        let (vocab, n) = (301, 37);
        let hidden = if q.block_weights() == 256 { 512 } else { 576 };
        let table = blocks(q, vocab, hidden, next())?;
        let ids: Vec<u32> = (0..n).map(|_| (next() % vocab as u64) as u32).collect();
        let ids_i: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let (td, idd) = (gpu.up(&table)?, gpu.up(&ids_i)?);
        let xd = gpu.up(&vec![f32::NAN; n * hidden])?;
        kernels
            .embed_rows(q, gpu.ptr(&td), gpu.ptr(&idd), gpu.ptr(&xd), n, hidden)
            .map_err(launch_err("embed_rows"))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: format!("dec_prefill_embed_{}", q.suffix()),
            shape: format!("[{vocab}, {hidden}] x {n} ids"),
            got: gpu.down(&xd)?,
            want: reference::prefill_embed_rows(q, &table, &ids, hidden),
        });
    }
    Ok(())
}

/// One layer's matrices in mixed formats, dequantized by one launch (5 and 3 segments).
fn dequant_cases(
    gpu: &Gpu,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.k;
    let formats = super::QUANT_TYPES;
    for dims in [
        vec![
            (960usize, 576usize),
            (576, 576),
            (1536, 576),
            (1536, 576),
            (576, 1536),
        ],
        vec![(37, 96), (5, 32), (64, 160)],
        vec![(64, 512), (32, 256), (48, 768), (7, 256)],
    ] {
        let mats: Vec<(QuantType, Vec<u8>, usize, usize)> = dims
            .iter()
            .enumerate()
            .map(
                |(i, &(rows, k))| -> Result<(QuantType, Vec<u8>, usize, usize)> {
                    // A random format whose blocks fit rows of k weights.
                    let fits: Vec<QuantType> = formats
                        .into_iter()
                        .filter(|q| k % q.block_weights() == 0)
                        .collect();
                    let q = fits[(i + next() as usize) % fits.len()];
                    Ok((q, blocks(q, rows, k, next())?, rows, k))
                },
            )
            .collect::<Result<_>>()?;
        let devs: Vec<CudaSlice<u8>> = mats.iter().map(|m| gpu.up(&m.1)).collect::<Result<_>>()?;
        let total: usize = dims.iter().map(|(r, k)| r * k).sum();
        let out = gpu.up(&vec![f32::NAN; total])?;
        let segments: Vec<super::prefill::DequantSegment> = mats
            .iter()
            .zip(&devs)
            .map(|(m, d)| (gpu.ptr(d), m.0, m.2 * m.3 / super::BLOCK))
            .collect();
        kernels
            .dequant_layer(gpu.ptr(&out), DType::F32, &segments)
            .map_err(launch_err("dequant_layer"))?;
        let out_bf16 = gpu.up(&vec![half::bf16::NAN; total])?;
        kernels
            .dequant_layer(gpu.ptr(&out_bf16), DType::BF16, &segments)
            .map_err(launch_err("dequant_layer_bf16"))?;
        let refs: Vec<(QuantType, &[u8], usize, usize)> = mats
            .iter()
            .map(|m| (m.0, m.1.as_slice(), m.2, m.3))
            .collect();
        let formats_text: Vec<&str> = mats.iter().map(|m| m.0.suffix()).collect();
        let got = gpu.down(&out)?;
        // The bf16 output is the f32 output rounded to nearest, element for element (exact).
        let rounded: Vec<f64> = got
            .iter()
            .map(|&w| half::bf16::from_f32(w as f32).to_f64())
            .collect();
        let got_bf16 = gpu
            .k
            .stream()
            .clone_dtoh(&out_bf16)
            .map_err(|e| gpu_err("read-back", e))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_dequant_layer_bf16".into(),
            shape: format!("{dims:?} as {formats_text:?}, against the f32 output rounded"),
            got: got_bf16.into_iter().map(|w| w.to_f64()).collect(),
            want: rounded,
        });
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_dequant_layer".into(),
            shape: format!("{dims:?} as {formats_text:?}"),
            got,
            want: reference::prefill_dequant_layer(&refs),
        });
    }
    Ok(())
}

/// RMSNorm, SwiGLU and the bias add over rows.
fn row_cases(gpu: &Gpu, next: &mut dyn FnMut() -> u64, cases: &mut Vec<DecodeCase>) -> Result<()> {
    let kernels = gpu.k;
    for &(n, k, ffn) in &[
        (37usize, 576usize, 1536usize),
        (512, 576, 1536),
        (3, 96, 40),
    ] {
        let x = f32s(n * k, next(), 2.0);
        let w = f32s(k, next(), 1.0);
        let (xd, wd) = (gpu.up(&x)?, gpu.up(&w)?);
        let yd = gpu.up(&vec![f32::NAN; n * k])?;
        kernels
            .rms_rows(gpu.ptr(&xd), gpu.ptr(&wd), gpu.ptr(&yd), n, k, 1e-5)
            .map_err(launch_err("rms_rows"))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_rms_rows".into(),
            shape: format!("[{n}, {k}]"),
            got: gpu.down(&yd)?,
            want: reference::prefill_rms_rows(&x, &w, 1e-5),
        });
        let gu = f32s(n * 2 * ffn, next(), 3.0);
        let gud = gpu.up(&gu)?;
        let act = gpu.up(&vec![f32::NAN; n * ffn])?;
        kernels
            .swiglu_rows(gpu.ptr(&gud), gpu.ptr(&act), n, ffn)
            .map_err(launch_err("swiglu_rows"))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_swiglu_rows".into(),
            shape: format!("[{n}, 2 x {ffn}]"),
            got: gpu.down(&act)?,
            want: reference::prefill_swiglu_rows(&gu, ffn),
        });
        let (y, bias) = (f32s(n * k, next(), 2.0), f32s(k, next(), 0.5));
        let (yd, bd) = (gpu.up(&y)?, gpu.up(&bias)?);
        kernels
            .add_bias_rows(gpu.ptr(&yd), gpu.ptr(&bd), n, k)
            .map_err(launch_err("add_bias_rows"))?;
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_add_bias_rows".into(),
            shape: format!("[{n}, {k}]"),
            got: gpu.down(&yd)?,
            want: reference::prefill_add_bias_rows(&y, &bias),
        });
    }
    Ok(())
}

/// RoPE + cache write for n positions after pos0 cached ones, then causal attention.
fn attention_cases(
    gpu: &Gpu,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.k;
    for &(heads, kv_heads, d, pos0, n) in &[
        (9usize, 3usize, 64usize, 0usize, 1usize),
        (9, 3, 64, 0, 37),
        (9, 3, 64, 100, 77),
        (9, 3, 64, 0, 512),
        (9, 3, 64, 512, 512),
        (4, 4, 128, 5, 33),
        (8, 2, 128, 3, 50),
    ] {
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
        };
        let max_seq = pos0 + n + 5;
        let width = (heads + 2 * kv_heads) * d;
        let row = kv_heads * d;
        let qkv = f32s(n * width, next(), 1.0);
        let mut kc = f32s(max_seq * row, next(), 1.0);
        let mut vc = f32s(max_seq * row, next(), 1.0);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let (qd, kd, vd, id) = (gpu.up(&qkv)?, gpu.up(&kc)?, gpu.up(&vc)?, gpu.up(&inv)?);
        let od = gpu.up(&vec![f32::NAN; n * heads * d])?;
        kernels
            .rope_kv_rows(
                gpu.ptr(&qd),
                gpu.ptr(&kd),
                gpu.ptr(&vd),
                gpu.ptr(&id),
                0,
                pos0,
                n,
                shape,
            )
            .map_err(launch_err("rope_kv_rows"))?;
        let scale = 1.0 / (d as f32).sqrt();
        kernels
            .attention(
                gpu.ptr(&qd),
                gpu.ptr(&kd),
                gpu.ptr(&vd),
                gpu.ptr(&od),
                pos0,
                n,
                shape,
                scale,
            )
            .map_err(launch_err("prefill_attention"))?;
        let q_want =
            attention_reference::prefill_rope_kv(&qkv, &mut kc, &mut vc, &inv, pos0, shape);
        let q32: Vec<f32> = q_want.iter().map(|&v| v as f32).collect();
        let want = attention_reference::prefill_attention(&q32, &kc, &vc, pos0, shape, scale);
        let text = format!("h{heads} kv{kv_heads} d{d} pos0 {pos0} n{n}");
        // The rotated queries left in qkv (the q columns of each row).
        let qkv_after = gpu.down(&qd)?;
        let q_got: Vec<f64> = qkv_after
            .chunks_exact(width)
            .flat_map(|r| r[..heads * d].to_vec())
            .collect();
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_rope_q".into(),
            shape: text.clone(),
            got: q_got,
            want: q_want,
        });
        // The whole caches: rows pos0 .. pos0 + n written, every other row untouched.
        let got_kv: Vec<f64> = gpu.down(&kd)?.into_iter().chain(gpu.down(&vd)?).collect();
        let want_kv: Vec<f64> = kc.iter().chain(&vc).map(|&v| v as f64).collect();
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_kv_write".into(),
            shape: text.clone(),
            got: got_kv,
            want: want_kv,
        });
        cases.push(DecodeCase {
            tolerance: None,
            kernel: "dec_prefill_attention".into(),
            shape: text,
            got: gpu.down(&od)?,
            want,
        });
    }
    Ok(())
}

/// The GEMM attention: rope with head-major q, then S = Q K^T, offset softmax, P V, to tokens,
/// against the same f64 reference as the kernel (pos0 0 and later chunks, odd head counts, MHA,
/// keys not a multiple of 4).
fn gemm_attention_cases(
    gpu: &Gpu,
    gemm: &Gemm,
    next: &mut dyn FnMut() -> u64,
    cases: &mut Vec<DecodeCase>,
) -> Result<()> {
    let kernels = gpu.k;
    for &(heads, kv_heads, d, pos0, n) in &[
        (9usize, 3usize, 64usize, 0usize, 1usize),
        (9, 3, 64, 0, 37),
        (9, 3, 64, 100, 77),
        (9, 3, 64, 0, 512),
        (9, 3, 64, 512, 512),
        (9, 3, 64, 1029, 333),
        (7, 7, 64, 3, 45),
        (15, 5, 32, 0, 129),
        (8, 2, 128, 61, 50),
    ] {
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim: d,
        };
        let max_seq = pos0 + n + 3;
        let width = (heads + 2 * kv_heads) * d;
        let row = kv_heads * d;
        let qkv = f32s(n * width, next(), 1.0);
        let mut kc = f32s(max_seq * row, next(), 1.0);
        let mut vc = f32s(max_seq * row, next(), 1.0);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let (qd, kd, vd, id) = (gpu.up(&qkv)?, gpu.up(&kc)?, gpu.up(&vc)?, gpu.up(&inv)?);
        let qhd = gpu.up(&vec![f32::NAN; heads * n * d])?;
        let sd = gpu.up(&vec![
            f32::NAN;
            gemm_attention_scores_len(shape, n, pos0 + n)
        ])?;
        let od = gpu.up(&vec![f32::NAN; n * heads * d])?;
        kernels
            .rope_kv_rows(
                gpu.ptr(&qd),
                gpu.ptr(&kd),
                gpu.ptr(&vd),
                gpu.ptr(&id),
                gpu.ptr(&qhd),
                pos0,
                n,
                shape,
            )
            .map_err(launch_err("rope_kv_rows (head-major q)"))?;
        // The head-major queries, read before the attention overwrites them with its output.
        let qh_after = gpu.down(&qhd)?;
        let qkv_after = gpu.down(&qd)?;
        let scale = 1.0 / (d as f32).sqrt();
        kernels
            .attention_gemm(
                gemm,
                (gpu.ptr(&qhd), gpu.ptr(&kd), gpu.ptr(&vd)),
                (gpu.ptr(&sd), gpu.ptr(&od)),
                pos0,
                n,
                shape,
                (scale, false),
                &mut |_| Ok(()),
            )
            .map_err(launch_err("attention_gemm"))?;
        let q_want =
            attention_reference::prefill_rope_kv(&qkv, &mut kc, &mut vc, &inv, pos0, shape);
        let q32: Vec<f32> = q_want.iter().map(|&v| v as f32).collect();
        let want = attention_reference::prefill_attention(&q32, &kc, &vc, pos0, shape, scale);
        let text = format!("h{heads} kv{kv_heads} d{d} pos0 {pos0} n{n}");
        // qh[h][i] against the reference's token-major q[i][h]; qkv itself unchanged.
        let mut qh_want = vec![0f64; heads * n * d];
        for i in 0..n {
            for h in 0..heads {
                for c in 0..d {
                    qh_want[(h * n + i) * d + c] = q_want[i * heads * d + h * d + c];
                }
            }
        }
        let mut qh_got = qh_after;
        qh_got.extend(qkv_after);
        qh_want.extend(qkv.iter().map(|&v| v as f64));
        cases.push(DecodeCase::f32(
            "dec_prefill_rope_qh",
            text.clone(),
            qh_got,
            qh_want,
        ));
        cases.push(DecodeCase::f32(
            "dec_prefill_attention_gemm",
            text,
            gpu.down(&od)?,
            want,
        ));
    }
    Ok(())
}
