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

use super::launch::{sum_squares_partials, TrainKernels};
use super::reference::{self as r, HeadShape};
use crate::check::{max_rel_err, random_values, tolerance};
use crate::gpu::ptr::device_ptr;
use crate::reference;
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
    embed(&mut c)?;
    rms_norm(&mut c)?;
    rope(&mut c)?;
    softmax(&mut c)?;
    swiglu(&mut c)?;
    add_bias(&mut c)?;
    cross_entropy(&mut c)?;
    reductions(&mut c)?;
    adamw(&mut c)?;
    cast(&mut c)?;
    Ok(c.out)
}

fn embed(c: &mut Cases) -> Result<()> {
    for &(vocab, width, n) in &[(301usize, 576usize, 37usize), (50, 37, 5)] {
        let (table, tr) = c.rand_t(vocab * width, 1.0)?;
        let ids: Vec<i32> = (0..n).map(|_| (c.next() % vocab as u64) as i32).collect();
        let idb = c.gpu.up_i32(&ids)?;
        let x = c.gpu.poison(n * width, c.gpu.t)?;
        let g = &c.gpu;
        g.k.embed(g.ptr(&table), g.ptr(&idb), g.ptr(&x), n, width)
            .map_err(launch_err("trn_embed"))?;
        let got = g.down(&x)?;
        c.record(
            "trn_embed",
            "fwd",
            format!("[{vocab}, {width}] x {n}"),
            &got,
            &r::embed(&tr, &ids, width),
            true,
        );
    }
    Ok(())
}

fn rms_norm(c: &mut Cases) -> Result<()> {
    let eps = 1e-5;
    for &(rows, n) in &[(300usize, 576usize), (7, 37), (3, 1001), (2, 5000)] {
        let shape = format!("[{rows}, {n}]");
        let (x, xr) = c.rand_t(rows * n, 2.0)?;
        let (w, wr) = c.rand_t(n, 1.5)?;
        let (y, rstd) = (
            c.gpu.poison(rows * n, c.gpu.t)?,
            c.gpu.poison(rows, DType::F32)?,
        );
        let g = &c.gpu;
        g.k.rms_norm(
            g.ptr(&x),
            g.ptr(&w),
            g.ptr(&y),
            g.ptr(&rstd),
            rows,
            n,
            eps as f32,
        )
        .map_err(launch_err("trn_rms_norm"))?;
        let (want_y, want_r) = reference::rms_norm::rms_norm(&xr, &wr, eps);
        let (got_y, got_r) = (g.down(&y)?, g.down(&rstd)?);
        c.record("trn_rms_norm", "fwd", shape.clone(), &got_y, &want_y, true);
        c.record(
            "trn_rms_norm_rstd",
            "fwd",
            shape.clone(),
            &got_r,
            &want_r,
            false,
        );
        // Backward at the kernel's own rstd (an f32 input of the backward), plain and accumulating.
        for accumulate in [false, true] {
            let (dy, dyr) = c.rand_t(rows * n, 1.0)?;
            let (dx, dx0) = if accumulate {
                c.rand_t(rows * n, 1.0)?
            } else {
                (c.gpu.poison(rows * n, c.gpu.t)?, Vec::new())
            };
            let g = &c.gpu;
            g.k.rms_norm_backward(
                g.ptr(&x),
                g.ptr(&w),
                g.ptr(&rstd),
                g.ptr(&dy),
                g.ptr(&dx),
                rows,
                n,
                accumulate,
            )
            .map_err(launch_err("trn_rms_norm_backward"))?;
            let want =
                r::rms_norm_backward_dx(&xr, &wr, &got_r, &dyr, accumulate.then_some(&dx0[..]));
            let got = g.down(&dx)?;
            let name = if accumulate {
                "trn_rms_norm_backward_acc"
            } else {
                "trn_rms_norm_backward"
            };
            c.record(name, "bwd", shape.clone(), &got, &want, true);
        }
    }
    Ok(())
}

fn rope(c: &mut Cases) -> Result<()> {
    for &(batch, seq, heads, kv_heads, head_dim) in &[
        (2usize, 37usize, 9usize, 3usize, 64usize),
        (1, 5, 4, 2, 6),
        (3, 8, 2, 2, 8),
        (1, 3, 3, 1, 10),
    ] {
        let sh = HeadShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        };
        let text = format!("b{batch} s{seq} h{heads} kv{kv_heads} d{head_dim}");
        let n = sh.tokens();
        let (lq, lk) = (n * heads * head_dim, n * kv_heads * head_dim);
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        // Tables longer than the sequence (the engine builds them for its longest bucket).
        let (cos, sin) = r::rope_tables(&inv, seq + 5);
        let cos: Vec<f64> = cos.into_iter().map(f64::from).collect();
        let sin: Vec<f64> = sin.into_iter().map(f64::from).collect();
        let (cb, _) = c.gpu.up_f32(&cos)?;
        let (sb, _) = c.gpu.up_f32(&sin)?;
        let (q, qr) = c.rand_t(lq, 1.0)?;
        let (kk, kr) = c.rand_t(lk, 1.0)?;
        let (v, vr) = c.rand_t(lk, 1.0)?;
        let t = c.gpu.t;
        let (qh, kh, vh) = (
            c.gpu.poison(lq, t)?,
            c.gpu.poison(lk, t)?,
            c.gpu.poison(lk, t)?,
        );
        let g = &c.gpu;
        g.k.rope_scatter(
            g.ptr(&q),
            g.ptr(&kk),
            g.ptr(&v),
            g.ptr(&cb),
            g.ptr(&sb),
            g.ptr(&qh),
            g.ptr(&kh),
            g.ptr(&vh),
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        )
        .map_err(launch_err("trn_rope_scatter"))?;
        let (wq, wk, wv) = r::rope_scatter(&qr, &kr, &vr, &cos, &sin, sh);
        let got = [g.down(&qh)?, g.down(&kh)?, g.down(&vh)?].concat();
        c.record(
            "trn_rope_scatter",
            "fwd",
            text.clone(),
            &got,
            &[wq, wk, wv].concat(),
            true,
        );

        let (dqh, dqr) = c.rand_t(lq, 1.0)?;
        let (dkh, dkr) = c.rand_t(lk, 1.0)?;
        let (dvh, dvr) = c.rand_t(lk, 1.0)?;
        let (dq, dk, dv) = (
            c.gpu.poison(lq, t)?,
            c.gpu.poison(lk, t)?,
            c.gpu.poison(lk, t)?,
        );
        let g = &c.gpu;
        g.k.rope_gather_backward(
            g.ptr(&dqh),
            g.ptr(&dkh),
            g.ptr(&dvh),
            g.ptr(&cb),
            g.ptr(&sb),
            g.ptr(&dq),
            g.ptr(&dk),
            g.ptr(&dv),
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        )
        .map_err(launch_err("trn_rope_gather_backward"))?;
        let (wq, wk, wv) = r::rope_gather_backward(&dqr, &dkr, &dvr, &cos, &sin, sh);
        let got = [g.down(&dq)?, g.down(&dk)?, g.down(&dv)?].concat();
        c.record(
            "trn_rope_gather_backward",
            "bwd",
            text.clone(),
            &got,
            &[wq, wk, wv].concat(),
            true,
        );

        // Head permutes on q-shaped data.
        let (o, or) = c.rand_t(lq, 1.0)?;
        let oh = c.gpu.poison(lq, t)?;
        let g = &c.gpu;
        g.k.tokens_to_heads(g.ptr(&o), g.ptr(&oh), batch, seq, heads, kv_heads, head_dim)
            .map_err(launch_err("trn_tokens_to_heads"))?;
        let got = g.down(&oh)?;
        c.record(
            "trn_tokens_to_heads",
            "fwd",
            text.clone(),
            &got,
            &r::tokens_to_heads(&or, sh),
            true,
        );
        let back = c.gpu.poison(lq, t)?;
        let g = &c.gpu;
        g.k.heads_to_tokens(
            g.ptr(&oh),
            g.ptr(&back),
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        )
        .map_err(launch_err("trn_heads_to_tokens"))?;
        let got = g.down(&back)?;
        c.record("trn_heads_to_tokens", "fwd", text, &got, &or, true);
    }
    Ok(())
}

fn softmax(c: &mut Cases) -> Result<()> {
    // (batch * heads, seq): SmolLM2 at seq 512 (one batch row), odd ones (scalar path at 37).
    for &(bh, seq) in &[(9usize, 512usize), (3, 37), (2, 64), (1, 2048)] {
        let rows = bh * seq;
        let text = format!("rows {rows} s{seq}");
        let scale = 1.0 / 8.0;
        let (scores, sr) = c.rand_f32(rows * seq, 12.0)?;
        let p = c.gpu.poison(rows * seq, c.gpu.t)?;
        let g = &c.gpu;
        g.k.causal_softmax(g.ptr(&scores), g.ptr(&p), rows, seq, scale as f32)
            .map_err(launch_err("trn_causal_softmax"))?;
        let got_p = g.down(&p)?;
        c.record(
            "trn_causal_softmax",
            "fwd",
            text.clone(),
            &got_p,
            &r::causal_softmax(&sr, seq, scale),
            true,
        );
        // Backward from the kernel's own p (a T input of the backward).
        let (dp, dpr) = c.rand_f32(rows * seq, 1.0)?;
        let ds = c.gpu.poison(rows * seq, c.gpu.t)?;
        let g = &c.gpu;
        g.k.causal_softmax_backward(g.ptr(&p), g.ptr(&dp), g.ptr(&ds), rows, seq, scale as f32)
            .map_err(launch_err("trn_causal_softmax_backward"))?;
        let got = g.down(&ds)?;
        let want = r::causal_softmax_backward(&got_p, &dpr, seq, scale);
        c.record(
            "trn_causal_softmax_backward",
            "bwd",
            text,
            &got,
            &want,
            true,
        );
    }
    Ok(())
}

/// A view `offset` elements into `b` (a misaligned base for the scalar paths).
fn offset_ptr(g: &Gpu, b: &Buf, offset: usize) -> u64 {
    let bytes = match b {
        Buf::F32(_) | Buf::I32(_) => 4,
        Buf::Bits(..) => 2,
    };
    g.ptr(b) + (offset * bytes) as u64
}

fn swiglu(c: &mut Cases) -> Result<()> {
    // SmolLM2's [512 tokens, F 1536]; an odd length; an odd length at a misaligned base.
    for &(n, offset) in &[(512usize * 1536, 0usize), (12345, 0), (1001, 1)] {
        let text = format!("[{n}] offset {offset}");
        let len = n + offset;
        let (gb, gr) = c.rand_t(len, 4.0)?;
        let (ub, ur) = c.rand_t(len, 2.0)?;
        let (dyb, dyr) = c.rand_t(len, 1.0)?;
        let t = c.gpu.t;
        let (y, dg, du) = (
            c.gpu.poison(len, t)?,
            c.gpu.poison(len, t)?,
            c.gpu.poison(len, t)?,
        );
        let g = &c.gpu;
        let p = |b: &Buf| offset_ptr(g, b, offset);
        g.k.swiglu(p(&gb), p(&ub), p(&y), n)
            .map_err(launch_err("trn_swiglu"))?;
        g.k.swiglu_backward(p(&gb), p(&ub), p(&dyb), p(&dg), p(&du), n)
            .map_err(launch_err("trn_swiglu_backward"))?;
        let (gs, us, dys) = (&gr[offset..], &ur[offset..], &dyr[offset..]);
        let (want_dg, want_du) = reference::swiglu::swiglu_backward(gs, us, dys);
        let (got_y, got_dg, got_du) = (g.down(&y)?, g.down(&dg)?, g.down(&du)?);
        c.record(
            "trn_swiglu",
            "fwd",
            text.clone(),
            &got_y[offset..],
            &reference::swiglu::swiglu(gs, us),
            true,
        );
        c.record(
            "trn_swiglu_backward_dg",
            "bwd",
            text.clone(),
            &got_dg[offset..],
            &want_dg,
            true,
        );
        c.record(
            "trn_swiglu_backward_du",
            "bwd",
            text,
            &got_du[offset..],
            &want_du,
            true,
        );
    }
    Ok(())
}

fn add_bias(c: &mut Cases) -> Result<()> {
    // Qwen2.5-0.5B's q bias over 37 tokens (vector path); an odd width (scalar path); a bias at a
    // misaligned base.
    for &(rows, cols, offset) in &[(37usize, 896usize, 0usize), (5, 37, 0), (3, 64, 1)] {
        let text = format!("[{rows}, {cols}] offset {offset}");
        let (yb, yr) = c.rand_t(rows * cols, 3.0)?;
        let (bb, br) = c.rand_t(cols + offset, 1.0)?;
        let g = &c.gpu;
        g.k.add_bias(g.ptr(&yb), offset_ptr(g, &bb, offset), rows, cols)
            .map_err(launch_err("trn_add_bias"))?;
        let got = g.down(&yb)?;
        c.record(
            "trn_add_bias",
            "fwd",
            text,
            &got,
            &r::add_bias(&yr, &br[offset..]),
            true,
        );
    }
    Ok(())
}

fn cross_entropy(c: &mut Cases) -> Result<()> {
    // SmolLM2's vocabulary with few rows; an odd vocabulary (scalar path). One ignored row each.
    for &(rows, vocab) in &[(5usize, 49152usize), (7, 301)] {
        let text = format!("[{rows}, {vocab}]");
        let mut labels: Vec<i32> = (0..rows)
            .map(|_| (c.next() % vocab as u64) as i32)
            .collect();
        labels[1] = -1;
        labels[rows - 1] = vocab as i32 - 1;
        let lb = c.gpu.up_i32(&labels)?;
        let count = c.gpu.poison(1, DType::F32)?;
        let g = &c.gpu;
        g.k.label_count(g.ptr(&lb), rows, g.ptr(&count))
            .map_err(launch_err("trn_label_count"))?;
        let got_count = g.down(&count)?;
        let labels_i64: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        let want_count = reference::cross_entropy::label_count(&labels_i64);
        c.record(
            "trn_label_count",
            "fwd",
            format!("[{rows}]"),
            &got_count,
            &[want_count],
            false,
        );
        let (logits, lr) = c.rand_t(rows * vocab, 8.0)?;
        let (scale, _) = c.gpu.up_f32(&[0.37])?;
        let loss = c.gpu.poison(rows, DType::F32)?;
        let g = &c.gpu;
        g.k.cross_entropy(
            g.ptr(&logits),
            g.ptr(&lb),
            g.ptr(&count),
            g.ptr(&scale),
            g.ptr(&loss),
            rows,
            vocab,
        )
        .map_err(launch_err("trn_cross_entropy"))?;
        let k = round(0.37, DType::F32) / want_count;
        let (want_loss, want_grad) =
            reference::cross_entropy::cross_entropy(&lr, &labels_i64, vocab, k);
        let (got_grad, got_loss) = (g.down(&logits)?, g.down(&loss)?);
        c.record(
            "trn_cross_entropy",
            "bwd",
            text.clone(),
            &got_grad,
            &want_grad,
            true,
        );
        c.record(
            "trn_cross_entropy_loss",
            "fwd",
            text,
            &got_loss,
            &want_loss,
            false,
        );
    }
    // All labels ignored: count 1 (not 0).
    let lb = c.gpu.up_i32(&[-1, -1, -1])?;
    let count = c.gpu.poison(1, DType::F32)?;
    let g = &c.gpu;
    g.k.label_count(g.ptr(&lb), 3, g.ptr(&count))
        .map_err(launch_err("trn_label_count"))?;
    let got = g.down(&count)?;
    c.record(
        "trn_label_count",
        "fwd",
        "[3] all ignored".into(),
        &got,
        &[1.0],
        false,
    );
    Ok(())
}

fn reductions(c: &mut Cases) -> Result<()> {
    // Positive values: the sum has no cancellation, so its relative error measures the kernel.
    for &(n, accumulate) in &[(4096usize, false), (1001, true)] {
        let vals: Vec<f64> = c.rand(n, 1.0).into_iter().map(|v| v + 1.5).collect();
        let (x, xr) = c.gpu.up_f32(&vals)?;
        let (out, start) = if accumulate {
            c.gpu.up_f32(&[3.25])?
        } else {
            (c.gpu.poison(1, DType::F32)?, vec![0.0])
        };
        let g = &c.gpu;
        g.k.sum_into(g.ptr(&x), n, g.ptr(&out), accumulate)
            .map_err(launch_err("trn_sum_into"))?;
        let got = g.down(&out)?;
        c.record(
            "trn_sum_into",
            "fwd",
            format!("[{n}] accumulate {accumulate}"),
            &got,
            &[start[0] + r::sum(&xr)],
            false,
        );
    }
    // The engine's LoRA gradient vector (~4.9M for SmolLM2 r16 on 7 targets) and an odd length.
    for &(n, offset) in &[(4_884_480usize, 0usize), (1001, 1)] {
        let (x, xr) = c.rand_f32(n + offset, 1e-2)?;
        let partials = c.gpu.poison(sum_squares_partials(n), DType::F32)?;
        let out = c.gpu.poison(1, DType::F32)?;
        let g = &c.gpu;
        g.k.sum_squares(offset_ptr(g, &x, offset), n, g.ptr(&partials), g.ptr(&out))
            .map_err(launch_err("trn_sum_squares"))?;
        let got = g.down(&out)?;
        c.record(
            "trn_sum_squares",
            "fwd",
            format!("[{n}] offset {offset}"),
            &got,
            &[r::sum_squares(&xr[offset..])],
            false,
        );
    }
    Ok(())
}

fn adamw(c: &mut Cases) -> Result<()> {
    let config = r::AdamConstants {
        weight_decay: 0.01,
        ..Default::default()
    };
    let t = c.gpu.t;
    // (n, step, max_norm relative to the norm: < 1 clips, None does not clip, skip: NaN norm).
    for &(n, step, clip, skip) in &[
        (100_003usize, 1usize, Some(0.5), false),
        (4096, 7, None, false),
        (1001, 3, Some(2.0), false),
        (999, 2, Some(0.5), true),
    ] {
        let text = format!(
            "[{n}] step {step} clip {clip:?}{}",
            if skip { " non-finite norm" } else { "" }
        );
        let (p, pr) = c.rand_f32(n, 0.5)?;
        let (gb, gr) = c.rand_f32(n, 1e-2)?;
        let (m, mr) = c.rand_f32(n, 1e-3)?;
        let second: Vec<f64> = c.rand(n, 1e-5).into_iter().map(f64::abs).collect();
        let (v, vr) = c.gpu.up_f32(&second)?;
        let lowp = c.gpu.poison(n, t)?;
        let gnorm_sq = if skip {
            f64::NAN
        } else {
            round(r::sum_squares(&gr), DType::F32)
        };
        let max_norm = clip.map(|f| f * gnorm_sq.sqrt());
        let hyper = r::adamw_hyper(&config, 0.05, step, max_norm);
        let (hb, _) = c.gpu.up_f32(&hyper.map(f64::from))?;
        let (gn, _) = c.gpu.up_f32(&[gnorm_sq])?;
        let (loss, _) = c.gpu.up_f32(&[2.5])?;
        let g = &c.gpu;
        g.k.adamw(
            g.ptr(&p),
            g.ptr(&gb),
            g.ptr(&m),
            g.ptr(&v),
            g.ptr(&lowp),
            g.ptr(&hb),
            g.ptr(&gn),
            g.ptr(&loss),
            n,
        )
        .map_err(launch_err("trn_adamw"))?;
        let (mut wp, mut wm, mut wv) = (pr.clone(), mr.clone(), vr.clone());
        r::adamw(
            &mut wp,
            &gr,
            &mut wm,
            &mut wv,
            &hyper.map(f64::from),
            gnorm_sq,
            2.5,
        );
        let (got_p, got_m, got_v, got_l) = (g.down(&p)?, g.down(&m)?, g.down(&v)?, g.down(&lowp)?);
        let name = if skip { "trn_adamw_skip" } else { "trn_adamw" };
        // The update itself (p1 - p0) is what matters: compare it, not p, so the tolerance is
        // relative to the step size rather than to the parameters.
        let got_update: Vec<f64> = got_p.iter().zip(&pr).map(|(a, b)| a - b).collect();
        let want_update: Vec<f64> = wp.iter().zip(&pr).map(|(a, b)| a - b).collect();
        if skip {
            c.record(
                name,
                "step",
                text.clone(),
                &[got_p, got_m, got_v].concat(),
                &[wp, wm, wv].concat(),
                false,
            );
            // param_lowp untouched: still NaN.
            let untouched = if got_l.iter().all(|x| x.is_nan()) {
                0.0
            } else {
                f64::INFINITY
            };
            c.out.push(TrainCase {
                kernel: "trn_adamw_skip_lowp".into(),
                pass: "step",
                shape: text,
                max_rel_err: untouched,
                tolerance: 0.0,
            });
            continue;
        }
        // Two f32 roundings of p (|p| <= 0.5: 6e-8) against the largest update (lr 0.05: >= 4e-3 in
        // every case here): <= 1.5e-5, plus ~1e-6 relative from the update's own f32 maths.
        c.out.push(TrainCase {
            kernel: format!("{name}_update"),
            pass: "step",
            shape: text.clone(),
            max_rel_err: max_rel_err(&got_update, &want_update),
            tolerance: 1e-4,
        });
        c.record(
            &format!("{name}_exp_avg"),
            "step",
            text.clone(),
            &got_m,
            &wm,
            false,
        );
        c.record(
            &format!("{name}_exp_avg_sq"),
            "step",
            text.clone(),
            &got_v,
            &wv,
            false,
        );
        c.record(
            &format!("{name}_param_lowp"),
            "step",
            text,
            &got_l,
            &got_p.iter().map(|&x| round(x, t)).collect::<Vec<_>>(),
            true,
        );
    }
    Ok(())
}

fn cast(c: &mut Cases) -> Result<()> {
    for &(n, offset) in &[(65536usize, 0usize), (1001, 1)] {
        let (src, sr) = c.rand_f32(n + offset, 3.0)?;
        let dst = c.gpu.poison(n + offset, c.gpu.t)?;
        let g = &c.gpu;
        g.k.cast(offset_ptr(g, &src, offset), offset_ptr(g, &dst, offset), n)
            .map_err(launch_err("trn_cast"))?;
        let got = g.down(&dst)?;
        let want: Vec<f64> = sr[offset..].iter().map(|&x| round(x, c.gpu.t)).collect();
        c.record(
            "trn_cast",
            "fwd",
            format!("[{n}] offset {offset}"),
            &got[offset..],
            &want,
            true,
        );
    }
    Ok(())
}
