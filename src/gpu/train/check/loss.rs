//! The loss and optimizer kernels against their references: label count and cross-entropy, the
//! sum and sum-of-squares reductions, and AdamW (clipped, unclipped, skipped on a non-finite norm).

use candle_core::DType;

use super::{launch_err, offset_ptr, round, Cases, TrainCase};
use crate::check::max_rel_err;
use crate::gpu::train::launch::sum_squares_partials;
use crate::gpu::train::reference as r;
use crate::reference;
use crate::Result;

pub(super) fn cross_entropy(c: &mut Cases) -> Result<()> {
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

pub(super) fn reductions(c: &mut Cases) -> Result<()> {
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

pub(super) fn adamw(c: &mut Cases) -> Result<()> {
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
        let got = [g.down(&p)?, g.down(&m)?, g.down(&v)?, g.down(&lowp)?];
        record_adamw(c, text, skip, got, [wp, wm, wv], &pr);
    }
    Ok(())
}

/// Records one AdamW step: `got` the kernel's (p, m, v, p in T), `want` the reference's (p, m, v),
/// `p0` the parameters before the step.
fn record_adamw(
    c: &mut Cases,
    text: String,
    skip: bool,
    got: [Vec<f64>; 4],
    want: [Vec<f64>; 3],
    p0: &[f64],
) {
    let [got_p, got_m, got_v, got_l] = got;
    let [wp, wm, wv] = want;
    let t = c.gpu.t;
    let name = if skip { "trn_adamw_skip" } else { "trn_adamw" };
    // The update itself (p1 - p0) is what matters: compare it, not p, so the tolerance is
    // relative to the step size rather than to the parameters.
    let got_update: Vec<f64> = got_p.iter().zip(p0).map(|(a, b)| a - b).collect();
    let want_update: Vec<f64> = wp.iter().zip(p0).map(|(a, b)| a - b).collect();
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
        return;
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
