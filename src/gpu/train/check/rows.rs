//! Row-wise training kernels against their references: the embedding gather, RMSNorm (forward,
//! backward, accumulating backward), SwiGLU, the bias add, LoRA dropout and the f32 -> T cast.

use candle_core::DType;

use super::{launch_err, offset_ptr, round, Buf, Cases};
use crate::gpu::train::reference as r;
use crate::reference;
use crate::Result;

pub(super) fn embed(c: &mut Cases) -> Result<()> {
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

pub(super) fn rms_norm(c: &mut Cases) -> Result<()> {
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

pub(super) fn swiglu(c: &mut Cases) -> Result<()> {
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

pub(super) fn add_bias(c: &mut Cases) -> Result<()> {
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

pub(super) fn cast(c: &mut Cases) -> Result<()> {
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

/// LoRA dropout against `reference::lora_dropout` (the same mask, exactly): written and
/// accumulated, two drop rates, rows of several positions (the mask keyed by row / s, row % s).
pub(super) fn lora_dropout(c: &mut Cases) -> Result<()> {
    for &(rows, cols, s, p, accumulate) in &[
        (48usize, 896usize, 24usize, 0.1f32, false),
        (48, 896, 24, 0.1, true),
        (7, 37, 3, 0.5, false),
    ] {
        let text = format!("[{rows}, {cols}] in rows of {s}, p {p}, accumulate {accumulate}");
        let (xb, xr) = c.rand_t(rows * cols, 2.0)?;
        let (yb, yr) = if accumulate {
            c.rand_t(rows * cols, 1.0)?
        } else {
            (c.gpu.poison(rows * cols, c.gpu.t)?, vec![0.0; rows * cols])
        };
        let (seed, stream) = (c.next(), (c.next() % 224) as u32);
        let halves = [seed as u32 as i32, (seed >> 32) as u32 as i32];
        let seed_buf = c.gpu.up_i32(&halves)?;
        let g = &c.gpu;
        g.k.lora_dropout(
            g.ptr(&xb),
            g.ptr(&yb),
            (rows, cols, s),
            g.ptr(&seed_buf),
            stream,
            p,
            accumulate,
        )
        .map_err(launch_err("trn_lora_dropout"))?;
        let got = g.down(&yb)?;
        let dropped = reference::lora_dropout::apply(&xr, cols, s, seed, stream, p);
        let want: Vec<f64> = dropped.iter().zip(&yr).map(|(d, y)| d + y).collect();
        c.record("trn_lora_dropout", "fwd", text, &got, &want, true);
    }
    Ok(())
}
