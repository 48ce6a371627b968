//! The training kernels against their f64 references (`reference`) on the GPU, for one activation
//! dtype T, at the default model's shapes (SmolLM2-135M: D 576, H 9, Hkv 3, d 64, F 1536, V 49152)
//! and at odd ones (rows that are not multiples of a 16-byte vector, a misaligned base pointer for
//! the scalar paths). Every output buffer is filled with NaN before the launch, so an element a
//! kernel fails to write gives an infinite error. The reference runs on the inputs as rounded to
//! their device type. Records `trn_*`, one per output.
//!
//! Tolerances (`max |got - want| / max |want|`): outputs in T at `check::tolerance(T)` (f32 1e-5,
//! bf16 1e-2: a few roundings of the output); f32 outputs (rstd, losses, counts, sums, AdamW state)
//! at 1e-5 whatever T is, as they are computed in f32 from the rounded inputs; AdamW's update
//! p1 - p0 at 1e-4 of the largest update (f32 rounding of p itself, see `adamw`).

use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{CudaDevice, DType};

mod attention;
mod flash_attention;
mod loss;
mod rows;

use super::launch::TrainKernels;
use crate::check::{max_rel_err, random_values, tolerance};
use crate::gpu::ptr::device_ptr;
use crate::Result;

/// One checked output: kernel name, pass, shape text, measured error and its tolerance.
pub struct TrainCase {
    pub kernel: String,
    /// fwd, bwd or step.
    pub pass: &'static str,
    pub shape: String,
    pub max_rel_err: f64,
    pub tolerance: f64,
}

/// A device buffer of f32 or of 16-bit floats (bf16 / f16 bits).
enum Buf {
    F32(CudaSlice<f32>),
    Bits(CudaSlice<u16>, DType),
    I32(CudaSlice<i32>),
}

fn round(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        DType::F16 => half::f16::from_f64(v).to_f64(),
        _ => v as f32 as f64,
    }
}

fn driver_err<E: std::fmt::Debug>(context: &str) -> impl Fn(E) -> crate::Error + '_ {
    move |e| crate::Error::Candle {
        context: context.to_string(),
        source: candle_core::Error::Msg(format!("{e:?}")),
    }
}

struct Gpu<'a> {
    k: &'a TrainKernels,
    t: DType,
}

impl Gpu<'_> {
    /// Uploads `v` rounded to `dtype` (F32 or T); returns the buffer and the rounded values.
    fn up_as(&self, v: &[f64], dtype: DType) -> Result<(Buf, Vec<f64>)> {
        let s = self.k.stream();
        let rounded: Vec<f64> = v.iter().map(|&x| round(x, dtype)).collect();
        let buf = match dtype {
            DType::BF16 => Buf::Bits(
                s.clone_htod(
                    &v.iter()
                        .map(|&x| half::bf16::from_f64(x).to_bits())
                        .collect::<Vec<_>>(),
                )
                .map_err(driver_err("train check upload"))?,
                dtype,
            ),
            DType::F16 => Buf::Bits(
                s.clone_htod(
                    &v.iter()
                        .map(|&x| half::f16::from_f64(x).to_bits())
                        .collect::<Vec<_>>(),
                )
                .map_err(driver_err("train check upload"))?,
                dtype,
            ),
            _ => Buf::F32(
                s.clone_htod(&v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                    .map_err(driver_err("train check upload"))?,
            ),
        };
        Ok((buf, rounded))
    }

    fn up_t(&self, v: &[f64]) -> Result<(Buf, Vec<f64>)> {
        self.up_as(v, self.t)
    }

    fn up_f32(&self, v: &[f64]) -> Result<(Buf, Vec<f64>)> {
        self.up_as(v, DType::F32)
    }

    fn up_i32(&self, v: &[i32]) -> Result<Buf> {
        Ok(Buf::I32(
            self.k
                .stream()
                .clone_htod(v)
                .map_err(driver_err("train check upload"))?,
        ))
    }

    /// `len` NaNs of `dtype`.
    fn poison(&self, len: usize, dtype: DType) -> Result<Buf> {
        Ok(self.up_as(&vec![f64::NAN; len], dtype)?.0)
    }

    fn down(&self, b: &Buf) -> Result<Vec<f64>> {
        let s = self.k.stream();
        let err = driver_err("train check read-back");
        Ok(match b {
            Buf::F32(x) => s
                .clone_dtoh(x)
                .map_err(err)?
                .into_iter()
                .map(f64::from)
                .collect(),
            Buf::Bits(x, DType::BF16) => s
                .clone_dtoh(x)
                .map_err(err)?
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f64())
                .collect(),
            Buf::Bits(x, _) => s
                .clone_dtoh(x)
                .map_err(err)?
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f64())
                .collect(),
            Buf::I32(x) => s
                .clone_dtoh(x)
                .map_err(err)?
                .into_iter()
                .map(f64::from)
                .collect(),
        })
    }

    fn ptr(&self, b: &Buf) -> u64 {
        let s = self.k.stream();
        match b {
            Buf::F32(x) => device_ptr(x, s),
            Buf::Bits(x, _) => device_ptr(x, s),
            Buf::I32(x) => device_ptr(x, s),
        }
    }
}

struct Cases<'a> {
    gpu: Gpu<'a>,
    seed: u64,
    out: Vec<TrainCase>,
}

impl Cases<'_> {
    fn next(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed >> 8
    }

    fn rand(&mut self, len: usize, scale: f64) -> Vec<f64> {
        let seed = self.next();
        random_values(len, seed, scale)
    }

    /// Seeded random values uploaded as T, and their rounded values.
    fn rand_t(&mut self, len: usize, scale: f64) -> Result<(Buf, Vec<f64>)> {
        let v = self.rand(len, scale);
        self.gpu.up_t(&v)
    }

    /// Seeded random values uploaded as f32, and their rounded values.
    fn rand_f32(&mut self, len: usize, scale: f64) -> Result<(Buf, Vec<f64>)> {
        let v = self.rand(len, scale);
        self.gpu.up_f32(&v)
    }

    /// Records an output in T (`in_t`) or in f32.
    fn record(
        &mut self,
        kernel: &str,
        pass: &'static str,
        shape: String,
        got: &[f64],
        want: &[f64],
        in_t: bool,
    ) {
        let tol = if in_t {
            tolerance(self.gpu.t)
        } else {
            tolerance(DType::F32)
        };
        self.out.push(TrainCase {
            kernel: kernel.into(),
            pass,
            shape,
            max_rel_err: max_rel_err(got, want),
            tolerance: tol,
        });
    }
}

fn launch_err(kernel: &str) -> impl Fn(candle_core::Error) -> crate::Error + '_ {
    move |source| crate::Error::Candle {
        context: format!("launching {kernel}"),
        source,
    }
}

/// Runs every training-kernel case for activation dtype `dtype` on `dev`; `seed` varies the inputs.
pub fn run(dev: &CudaDevice, dtype: DType, seed: u64) -> Result<Vec<TrainCase>> {
    let k = TrainKernels::load(dev, dtype).map_err(launch_err("loading the training kernels"))?;
    let mut c = Cases {
        gpu: Gpu { k: &k, t: dtype },
        seed,
        out: Vec::new(),
    };
    rows::embed(&mut c)?;
    rows::rms_norm(&mut c)?;
    attention::rope(&mut c)?;
    attention::softmax(&mut c)?;
    flash_attention::run(&mut c, dev)?;
    rows::swiglu(&mut c)?;
    rows::add_bias(&mut c)?;
    rows::lora_dropout(&mut c)?;
    loss::cross_entropy(&mut c)?;
    loss::reductions(&mut c)?;
    loss::adamw(&mut c)?;
    rows::cast(&mut c)?;
    Ok(c.out)
}

/// A view `offset` elements into `b` (a misaligned base for the scalar paths).
fn offset_ptr(g: &Gpu, b: &Buf, offset: usize) -> u64 {
    let bytes = match b {
        Buf::F32(_) | Buf::I32(_) => 4,
        Buf::Bits(..) => 2,
    };
    g.ptr(b) + (offset * bytes) as u64
}
