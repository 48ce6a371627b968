//! The attention layout kernels against their references: RoPE scatter to heads and its backward
//! gather, the head/token permutes, and the causal softmax with its backward.

use super::{launch_err, Buf, Cases};
use crate::gpu::train::reference::{self as r, HeadShape};
use crate::Result;

pub(super) fn rope(c: &mut Cases) -> Result<()> {
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
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        // Tables longer than the sequence (the engine builds them for its longest bucket).
        let (cos, sin) = r::rope_tables(&inv, seq + 5);
        let cos: Vec<f64> = cos.into_iter().map(f64::from).collect();
        let sin: Vec<f64> = sin.into_iter().map(f64::from).collect();
        let (cb, _) = c.gpu.up_f32(&cos)?;
        let (sb, _) = c.gpu.up_f32(&sin)?;
        let tables = Tables {
            cos: &cos,
            sin: &sin,
            cos_buf: &cb,
            sin_buf: &sb,
        };
        rope_scatter(c, sh, &text, &tables)?;
        rope_gather_backward(c, sh, &text, &tables)?;
        head_permutes(c, sh, text)?;
    }
    Ok(())
}

/// RoPE's cos/sin tables [S, d/2] as the reference reads them and as uploaded.
struct Tables<'a> {
    cos: &'a [f64],
    sin: &'a [f64],
    cos_buf: &'a Buf,
    sin_buf: &'a Buf,
}

fn rope_scatter(c: &mut Cases, sh: HeadShape, text: &str, tables: &Tables) -> Result<()> {
    let HeadShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    } = sh;
    let n = sh.tokens();
    let (lq, lk) = (n * heads * head_dim, n * kv_heads * head_dim);
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
        g.ptr(tables.cos_buf),
        g.ptr(tables.sin_buf),
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
    let (wq, wk, wv) = r::rope_scatter(&qr, &kr, &vr, tables.cos, tables.sin, sh);
    let got = [g.down(&qh)?, g.down(&kh)?, g.down(&vh)?].concat();
    c.record(
        "trn_rope_scatter",
        "fwd",
        text.to_string(),
        &got,
        &[wq, wk, wv].concat(),
        true,
    );
    Ok(())
}

fn rope_gather_backward(c: &mut Cases, sh: HeadShape, text: &str, tables: &Tables) -> Result<()> {
    let HeadShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    } = sh;
    let n = sh.tokens();
    let (lq, lk) = (n * heads * head_dim, n * kv_heads * head_dim);
    let (dqh, dqr) = c.rand_t(lq, 1.0)?;
    let (dkh, dkr) = c.rand_t(lk, 1.0)?;
    let (dvh, dvr) = c.rand_t(lk, 1.0)?;
    let t = c.gpu.t;
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
        g.ptr(tables.cos_buf),
        g.ptr(tables.sin_buf),
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
    let (wq, wk, wv) = r::rope_gather_backward(&dqr, &dkr, &dvr, tables.cos, tables.sin, sh);
    let got = [g.down(&dq)?, g.down(&dk)?, g.down(&dv)?].concat();
    c.record(
        "trn_rope_gather_backward",
        "bwd",
        text.to_string(),
        &got,
        &[wq, wk, wv].concat(),
        true,
    );
    Ok(())
}

/// The head permutes on q-shaped data: tokens to heads and back.
fn head_permutes(c: &mut Cases, sh: HeadShape, text: String) -> Result<()> {
    let HeadShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    } = sh;
    let lq = sh.tokens() * heads * head_dim;
    let t = c.gpu.t;
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
    Ok(())
}

pub(super) fn softmax(c: &mut Cases) -> Result<()> {
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
