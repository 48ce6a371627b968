//! Temporary: the old f64 references against the new ones (issue 13 unification).
#![allow(dead_code, clippy::all)]
use crate::check::random_values;
use crate::reference::rope::RopeLayout;

fn ops_rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let n = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v * r * w));
    }
    out
}

fn ops_rms_bwd(x: &[f64], w: &[f64], dy: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let n = w.len();
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![0.0; n];
    for (row, dy) in x.chunks(n).zip(dy.chunks(n)) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + eps).sqrt();
        let dot: f64 = (0..n).map(|i| dy[i] * w[i] * row[i]).sum();
        for i in 0..n {
            dx.push(r * (dy[i] * w[i] - row[i] * r * r * dot / n as f64));
            dw[i] += dy[i] * row[i] * r;
        }
    }
    (dx, dw)
}

fn ops_swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

fn ops_swiglu_bwd(gate: &[f64], up: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dg = Vec::with_capacity(gate.len());
    let mut du = Vec::with_capacity(gate.len());
    for ((g, u), d) in gate.iter().zip(up).zip(dy) {
        let s = 1.0 / (1.0 + (-g).exp());
        dg.push(d * u * s * (1.0 + g * (1.0 - s)));
        du.push(d * g * s);
    }
    (dg, du)
}

fn ops_softmax(x: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        out.extend(row.iter().map(|v| (v - max).exp() / sum));
    }
    out
}

fn ops_softmax_bwd(y: &[f64], dy: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(y.len());
    for (y, dy) in y.chunks(n).zip(dy.chunks(n)) {
        let dot: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
        out.extend(y.iter().zip(dy).map(|(y, dy)| y * (dy - dot)));
    }
    out
}

fn ops_rope(
    x: &[f64],
    cos: &[f64],
    sin: &[f64],
    seq: usize,
    dim: usize,
    layout: RopeLayout,
) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0.0; x.len()];
    for (row, (src, dst)) in x.chunks(dim).zip(out.chunks_mut(dim)).enumerate() {
        let p = row % seq;
        for i in 0..half {
            let (ia, ib) = match layout {
                RopeLayout::HalfSplit => (i, i + half),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (c, s) = (cos[p * half + i], sin[p * half + i]);
            dst[ia] = src[ia] * c - src[ib] * s;
            dst[ib] = src[ia] * s + src[ib] * c;
        }
    }
    out
}

fn ops_ce(logits: &[f64], labels: &[i64], vocab: usize) -> (f64, Vec<f64>) {
    let count = labels.iter().filter(|l| **l >= 0).count().max(1) as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; logits.len()];
    for ((row, g), &label) in logits.chunks(vocab).zip(grad.chunks_mut(vocab)).zip(labels) {
        if label < 0 {
            continue;
        }
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += (max + sum.ln() - row[label as usize]) / count;
        for (g, v) in g.iter_mut().zip(row) {
            *g = (v - max).exp() / sum / count;
        }
        g[label as usize] -= 1.0 / count;
    }
    (loss, grad)
}

fn tr_rms(x: &[f64], w: &[f64], n: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut y = Vec::with_capacity(x.len());
    let mut rstd = Vec::with_capacity(x.len() / n);
    for row in x.chunks(n) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(v, w)| v * r * w));
        rstd.push(r);
    }
    (y, rstd)
}

fn tr_rms_bwd(
    x: &[f64],
    w: &[f64],
    rstd: &[f64],
    dy: &[f64],
    dx0: Option<&[f64]>,
    n: usize,
) -> Vec<f64> {
    let mut dx = Vec::with_capacity(x.len());
    for (row, (xr, dyr)) in x.chunks(n).zip(dy.chunks(n)).enumerate() {
        let r = rstd[row];
        let mean_gx = xr
            .iter()
            .zip(dyr)
            .zip(w)
            .map(|((x, dy), w)| dy * w * x)
            .sum::<f64>()
            / n as f64;
        for i in 0..n {
            let v = r * (dyr[i] * w[i] - xr[i] * r * r * mean_gx);
            dx.push(v + dx0.map_or(0.0, |d| d[row * n + i]));
        }
    }
    dx
}

fn tr_causal(scores: &[f64], s: usize, scale: f64) -> Vec<f64> {
    let mut p = vec![0.0; scores.len()];
    for (r, (row, out)) in scores.chunks(s).zip(p.chunks_mut(s)).enumerate() {
        let len = r % s + 1;
        let m = row[..len]
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(scale * v));
        let sum: f64 = row[..len].iter().map(|&v| (scale * v - m).exp()).sum();
        for j in 0..len {
            out[j] = (scale * row[j] - m).exp() / sum;
        }
    }
    p
}

fn tr_causal_bwd(p: &[f64], dp: &[f64], s: usize, scale: f64) -> Vec<f64> {
    let mut ds = vec![0.0; p.len()];
    for (r, ((pr, dr), out)) in p
        .chunks(s)
        .zip(dp.chunks(s))
        .zip(ds.chunks_mut(s))
        .enumerate()
    {
        let len = r % s + 1;
        let dot: f64 = (0..len).map(|j| pr[j] * dr[j]).sum();
        for j in 0..len {
            out[j] = scale * pr[j] * (dr[j] - dot);
        }
    }
    ds
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn tr_swiglu(g: &[f64], u: &[f64]) -> Vec<f64> {
    g.iter().zip(u).map(|(g, u)| g * sigmoid(*g) * u).collect()
}

fn tr_swiglu_bwd(g: &[f64], u: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dg = Vec::with_capacity(g.len());
    let mut du = Vec::with_capacity(g.len());
    for ((g, u), dy) in g.iter().zip(u).zip(dy) {
        let s = sigmoid(*g);
        dg.push(dy * u * s * (1.0 + g * (1.0 - s)));
        du.push(dy * g * s);
    }
    (dg, du)
}

fn tr_ce(
    logits: &[f64],
    labels: &[i32],
    count: f64,
    scale: f64,
    vocab: usize,
) -> (Vec<f64>, Vec<f64>) {
    let k = scale / count;
    let mut grad = vec![0.0; logits.len()];
    let mut loss = Vec::with_capacity(labels.len());
    for ((row, &label), out) in logits.chunks(vocab).zip(labels).zip(grad.chunks_mut(vocab)) {
        if label < 0 || label as usize >= vocab {
            loss.push(if label < 0 { 0.0 } else { f64::NAN });
            continue;
        }
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for (o, v) in out.iter_mut().zip(row) {
            *o = (v - m).exp() / sum * k;
        }
        out[label as usize] -= k;
        loss.push((m + sum.ln() - row[label as usize]) * k);
    }
    (grad, loss)
}

fn tr_rotate(x: &[f64], cos: &[f64], sin: &[f64], sign: f64, out: &mut [f64]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (c, s) = (cos[i], sign * sin[i]);
        out[i] = x[i] * c - x[i + half] * s;
        out[i + half] = x[i] * s + x[i + half] * c;
    }
}

fn de_rms(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let mean = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (mean + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| v as f64 * r * g as f64)
        .collect()
}

fn de_swiglu_rows(gu: &[f32], ffn: usize) -> Vec<f64> {
    gu.chunks_exact(2 * ffn)
        .flat_map(|row| {
            (0..ffn).map(move |j| {
                let (g, u) = (row[j] as f64, row[ffn + j] as f64);
                g / (1.0 + (-g).exp()) * u
            })
        })
        .collect()
}

fn de_causal(s: &mut [f64], n: usize, ld: usize, pos0: usize, scale: f64) {
    for (r, row) in s.chunks_exact_mut(ld).enumerate() {
        let len = pos0 + r % n + 1;
        let max = row[..len]
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(scale * v));
        let total: f64 = row[..len].iter().map(|&v| (scale * v - max).exp()).sum();
        for v in &mut row[..len] {
            *v = (scale * *v - max).exp() / total;
        }
        for v in &mut row[len..pos0 + n] {
            *v = 0.0;
        }
    }
}

fn de_rope_attention(
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    pos: usize,
    inv_freq: &[f32],
    shape: crate::gpu::decode::attention_reference::AttentionShape,
    scale: f32,
) -> Vec<f64> {
    let crate::gpu::decode::attention_reference::AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let half = d / 2;
    // Angles as the kernel forms them: an f32 product, then sin/cos.
    let angles: Vec<f64> = inv_freq.iter().map(|&f| (pos as f32 * f) as f64).collect();
    let rotate = |x: &[f32]| -> Vec<f64> {
        let mut out = vec![0f64; d];
        for i in 0..half {
            let (s, c) = angles[i].sin_cos();
            let (a, b) = (x[i] as f64, x[i + half] as f64);
            out[i] = a * c - b * s;
            out[i + half] = a * s + b * c;
        }
        out
    };
    let row = kv_heads * d;
    for kvh in 0..kv_heads {
        let k = rotate(&qkv[(heads + kvh) * d..(heads + kvh + 1) * d]);
        let v = &qkv[(heads + kv_heads + kvh) * d..(heads + kv_heads + kvh + 1) * d];
        for i in 0..d {
            k_cache[pos * row + kvh * d + i] = k[i] as f32;
            v_cache[pos * row + kvh * d + i] = v[i];
        }
    }
    let group = heads / kv_heads;
    let mut out = vec![0f64; heads * d];
    for h in 0..heads {
        let kvh = h / group;
        let q = rotate(&qkv[h * d..(h + 1) * d]);
        let scores: Vec<f64> = (0..=pos)
            .map(|t| {
                let k = &k_cache[t * row + kvh * d..t * row + kvh * d + d];
                q.iter().zip(k).map(|(a, &b)| a * b as f64).sum::<f64>() * scale as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for (t, w) in weights.iter().enumerate() {
            let v = &v_cache[t * row + kvh * d..t * row + kvh * d + d];
            for i in 0..d {
                out[h * d + i] += w / total * v[i] as f64;
            }
        }
    }
    out
}

fn de_rope_kv(
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    inv_freq: &[f32],
    pos0: usize,
    shape: crate::gpu::decode::attention_reference::AttentionShape,
) -> Vec<f64> {
    let crate::gpu::decode::attention_reference::AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let half = d / 2;
    let width = (heads + 2 * kv_heads) * d;
    let row = kv_heads * d;
    let mut q_out = Vec::with_capacity(qkv.len() / width * heads * d);
    for (i, r) in qkv.chunks_exact(width).enumerate() {
        let pos = pos0 + i;
        let angles: Vec<f64> = inv_freq.iter().map(|&f| (pos as f32 * f) as f64).collect();
        let rotate = |x: &[f32]| -> Vec<f64> {
            let mut out = vec![0f64; d];
            for j in 0..half {
                let (s, c) = angles[j].sin_cos();
                let (a, b) = (x[j] as f64, x[j + half] as f64);
                out[j] = a * c - b * s;
                out[j + half] = a * s + b * c;
            }
            out
        };
        for h in 0..heads {
            q_out.extend(rotate(&r[h * d..(h + 1) * d]));
        }
        for kvh in 0..kv_heads {
            let k = rotate(&r[(heads + kvh) * d..(heads + kvh + 1) * d]);
            let v = &r[(heads + kv_heads + kvh) * d..(heads + kv_heads + kvh + 1) * d];
            for j in 0..d {
                k_cache[pos * row + kvh * d + j] = k[j] as f32;
                v_cache[pos * row + kvh * d + j] = v[j];
            }
        }
    }
    q_out
}

fn de_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    shape: crate::gpu::decode::attention_reference::AttentionShape,
    scale: f32,
) -> Vec<f64> {
    let crate::gpu::decode::attention_reference::AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let group = heads / kv_heads;
    let row = kv_heads * d;
    let mut out = vec![0f64; q.len()];
    for (i, qi) in q.chunks_exact(heads * d).enumerate() {
        let pos = pos0 + i;
        for h in 0..heads {
            let kvh = h / group;
            let qh = &qi[h * d..(h + 1) * d];
            let scores: Vec<f64> = (0..=pos)
                .map(|t| {
                    let k = &k_cache[t * row + kvh * d..t * row + kvh * d + d];
                    qh.iter()
                        .zip(k)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let o = &mut out[i * heads * d + h * d..i * heads * d + (h + 1) * d];
            for (t, w) in weights.iter().enumerate() {
                let v = &v_cache[t * row + kvh * d..t * row + kvh * d + d];
                for j in 0..d {
                    o[j] += w / total * v[j] as f64;
                }
            }
        }
    }
    out
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err / scale <= 1e-14, "{what}: {:.3e}", err / scale);
    eprintln!("{what}: rel {:.2e}", err / scale);
}
fn f32s(n: usize, seed: u64) -> Vec<f32> {
    random_values(n, seed, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

#[test]
fn old_and_new_references_agree() {
    use crate::gpu::decode::{attention_reference as anew, reference as dnew};
    use crate::gpu::train::reference as tnew;
    use crate::reference::*;
    let (rows, n) = (5, 37);
    let x = random_values(rows * n, 1, 3.0);
    let w = random_values(n, 2, 1.5);
    let dy = random_values(rows * n, 3, 1.0);
    let (y, rstd) = rms_norm::rms_norm(&x, &w, 1e-5);
    close(&y, &ops_rms(&x, &w, 1e-5), "rms fwd ops");
    close(&y, &tr_rms(&x, &w, n, 1e-5).0, "rms fwd train");
    close(&rstd, &tr_rms(&x, &w, n, 1e-5).1, "rms rstd train");
    let (dx, dw) = rms_norm::rms_norm_backward(&x, &w, &rstd, &dy);
    let (odx, odw) = ops_rms_bwd(&x, &w, &dy, 1e-5);
    close(&dx, &odx, "rms dx ops");
    close(&dw, &odw, "rms dw ops");
    close(
        &tnew::rms_norm_backward_dx(&x, &w, &rstd, &dy, Some(&dy)),
        &tr_rms_bwd(&x, &w, &rstd, &dy, Some(&dy), n),
        "rms dx train acc",
    );
    let (x32, w32) = (f32s(rows * n, 4), f32s(n, 5));
    close(
        &dnew::prefill_rms_rows(&x32, &w32, 1e-5),
        &x32.chunks(n)
            .flat_map(|r| de_rms(r, &w32, 1e-5))
            .collect::<Vec<_>>(),
        "rms decode rows",
    );
    // swiglu
    let g = random_values(rows * n, 6, 5.0);
    close(&swiglu::swiglu(&g, &x), &ops_swiglu(&g, &x), "swiglu ops");
    close(&swiglu::swiglu(&g, &x), &tr_swiglu(&g, &x), "swiglu train");
    let (a, b) = swiglu::swiglu_backward(&g, &x, &dy);
    let (oa, ob) = ops_swiglu_bwd(&g, &x, &dy);
    close(&a, &oa, "swiglu dg ops");
    close(&b, &ob, "swiglu du ops");
    let (oa, ob) = tr_swiglu_bwd(&g, &x, &dy);
    close(&a, &oa, "swiglu dg train");
    close(&b, &ob, "swiglu du train");
    let gu = f32s(rows * 2 * n, 7);
    close(
        &dnew::prefill_swiglu_rows(&gu, n),
        &de_swiglu_rows(&gu, n),
        "swiglu decode rows",
    );
    // softmax
    let s = softmax::softmax(&x, n);
    close(&s, &ops_softmax(&x, n), "softmax ops");
    close(
        &softmax::softmax_backward(&s, &dy, n),
        &ops_softmax_bwd(&s, &dy, n),
        "softmax bwd ops",
    );
    let seq = 6;
    let sc = random_values(4 * seq * seq, 8, 3.0);
    let dp = random_values(4 * seq * seq, 9, 1.0);
    let p = tnew::causal_softmax(&sc, seq, 0.37);
    close(&p, &tr_causal(&sc, seq, 0.37), "causal train");
    close(
        &tnew::causal_softmax_backward(&p, &dp, seq, 0.37),
        &tr_causal_bwd(&p, &dp, seq, 0.37),
        "causal bwd train",
    );
    let (nq, ld, pos0) = (3, 8, 4);
    let mut s1 = random_values(2 * nq * ld, 10, 3.0);
    let mut s2 = s1.clone();
    anew::prefill_causal_softmax(&mut s1, nq, ld, pos0, 0.5);
    de_causal(&mut s2, nq, ld, pos0, 0.5);
    close(&s1, &s2, "causal decode");
    // rope
    let d = 8;
    let seqr = 5;
    let half = d / 2;
    let xr = random_values(3 * seqr * d, 11, 1.0);
    let c = random_values(seqr * half, 12, 1.0);
    let sn = random_values(seqr * half, 13, 1.0);
    for layout in [rope::RopeLayout::HalfSplit, rope::RopeLayout::Interleaved] {
        close(
            &rope::rope(&xr, &c, &sn, seqr, d, layout),
            &ops_rope(&xr, &c, &sn, seqr, d, layout),
            "rope ops",
        );
    }
    let mut o = vec![0.0; d];
    tr_rotate(&xr[..d], &c[..half], &sn[..half], -1.0, &mut o);
    let neg: Vec<f64> = sn[..half].iter().map(|v| -v).collect();
    close(
        &rope::rope(
            &xr[..d],
            &c[..half],
            &neg,
            1,
            d,
            rope::RopeLayout::HalfSplit,
        ),
        &o,
        "rope train rotate",
    );
    let shape = anew::AttentionShape {
        heads: 6,
        kv_heads: 2,
        head_dim: 8,
    };
    let width = (6 + 4) * 8;
    let (pos0, nt, max_seq) = (3, 4, 9);
    let qkv = f32s(nt * width, 14);
    let inv: Vec<f32> = (0..4)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 8.0))
        .collect();
    let k0 = f32s(max_seq * 16, 15);
    let v0 = f32s(max_seq * 16, 16);
    let (mut k1, mut v1, mut k2, mut v2) = (k0.clone(), v0.clone(), k0.clone(), v0.clone());
    let q1 = anew::prefill_rope_kv(&qkv, &mut k1, &mut v1, &inv, pos0, shape);
    let q2 = de_rope_kv(&qkv, &mut k2, &mut v2, &inv, pos0, shape);
    assert_eq!(q1, q2);
    assert_eq!(k1, k2);
    assert_eq!(v1, v2);
    let q32: Vec<f32> = q1.iter().map(|&v| v as f32).collect();
    close(
        &anew::prefill_attention(&q32, &k1, &v1, pos0, shape, 0.35),
        &de_attention(&q32, &k2, &v2, pos0, shape, 0.35),
        "prefill attention",
    );
    let (mut k1, mut v1, mut k2, mut v2) = (k0.clone(), v0.clone(), k0.clone(), v0.clone());
    let a1 = anew::rope_attention(&qkv[..width], &mut k1, &mut v1, 5, &inv, shape, 0.35);
    let a2 = de_rope_attention(&qkv[..width], &mut k2, &mut v2, 5, &inv, shape, 0.35);
    close(&a1, &a2, "rope attention");
    assert_eq!(k1, k2);
    assert_eq!(v1, v2);
    // cross entropy
    let vocab = 11;
    let logits = random_values(4 * vocab, 17, 4.0);
    let labels = [3i64, -100, 10, 0];
    let l32 = [3i32, -100, 10, 0];
    let count = cross_entropy::label_count(&labels);
    let (rl, gr) = cross_entropy::cross_entropy(&logits, &labels, vocab, 1.0 / count);
    let (ol, og) = ops_ce(&logits, &labels, vocab);
    close(&[rl.iter().sum::<f64>()], &[ol], "ce loss ops");
    close(&gr, &og, "ce grad ops");
    let (rl, gr) = cross_entropy::cross_entropy(&logits, &labels, vocab, 0.37 / count);
    let (og, ol) = tr_ce(&logits, &l32, count, 0.37, vocab);
    close(&rl, &ol, "ce loss train");
    close(&gr, &og, "ce grad train");
}
