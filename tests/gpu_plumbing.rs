//! GPU plumbing on CUDA (runs on the GPU machine through scripts/device-run.sh): the cached cuBLASLt
//! product against an f64 CPU reference, plan reuse, and the dispatch entry point.
//!
//! Tolerances are relative to sum_k |x[m,k] w[n,k]| (the size of the terms the product adds, so the
//! bound does not depend on cancellation): f32 1e-5 (f32 accumulation, no TF32), f16 2e-3 and bf16
//! 1e-2 (the output rounding: 2^-11 and 2^-8 of |y| <= the bound).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use wick::gpu::cublaslt::{self, LtContext, WeightLayout};
use wick::gpu::dispatch::{linear_with, MatmulPath};

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device")
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1e-2,
    }
}

/// Random [rows, cols] in (-1, 1), rounded to `dtype`; returns the device tensor and the rounded
/// values as f64 (what the GPU actually multiplies).
fn random(
    rng: &mut impl Rng,
    rows: usize,
    cols: usize,
    dtype: DType,
    dev: &Device,
) -> (Tensor, Vec<f64>) {
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let rounded: Vec<f64> = t
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (t.to_device(dev).unwrap(), rounded)
}

/// Checks y [m, n] against x [m, k] and w ([n, k] or [k, n]) (+ bias [n]) in f64.
#[allow(clippy::too_many_arguments)]
fn check(
    y: &Tensor,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    (m, n, k): (usize, usize, usize),
    layout: WeightLayout,
    dtype: DType,
    what: &str,
) {
    assert_eq!(y.dims(), [m, n], "{what}: output shape");
    let got: Vec<f64> = y
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut want, mut size) = (0f64, 0f64);
            for t in 0..k {
                let wv = match layout {
                    WeightLayout::OutIn => w[j * k + t],
                    WeightLayout::InOut => w[t * n + j],
                };
                want += x[i * k + t] * wv;
                size += (x[i * k + t] * wv).abs();
            }
            if let Some(b) = bias {
                want += b[j];
                size += b[j].abs();
            }
            let err = (got[i * n + j] - want).abs() / size.max(1e-30);
            assert!(
                err.is_finite(),
                "{what}: y[{i},{j}] = {} (want {want})",
                got[i * n + j]
            );
            worst = worst.max(err);
        }
    }
    assert!(
        worst <= tolerance(dtype),
        "{what}: max relative error {worst:.3e} > {:.0e}",
        tolerance(dtype)
    );
}

#[test]
fn cublaslt_matches_f64_reference_at_odd_shapes() {
    let dev = cuda();
    let shapes = [
        (1, 1, 1),
        (1, 3, 17),
        (3, 17, 33),
        (17, 33, 127),
        (33, 127, 4097),
        (127, 576, 64),
        (4097, 3, 17),
    ];
    for (case, dtype) in [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .enumerate()
    {
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    (case * 100 + s * 2) as u64 + (layout == WeightLayout::InOut) as u64,
                );
                let (x, xs) = random(&mut rng, m, k, dtype, &dev);
                let (w, ws) = match layout {
                    WeightLayout::OutIn => random(&mut rng, n, k, dtype, &dev),
                    WeightLayout::InOut => random(&mut rng, k, n, dtype, &dev),
                };
                let y = cublaslt::matmul(&x, &w, None, layout).unwrap();
                check(
                    &y,
                    &xs,
                    &ws,
                    None,
                    (m, n, k),
                    layout,
                    dtype,
                    &format!("{dtype:?} {layout:?} m={m} n={n} k={k}"),
                );
            }
        }
    }
}

#[test]
fn cublaslt_bias_epilogue_matches_f64_reference() {
    let dev = cuda();
    for (case, dtype) in [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .enumerate()
    {
        for (s, &(m, n, k)) in [(1, 33, 17), (65, 127, 576), (3, 4097, 33)]
            .iter()
            .enumerate()
        {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + (case * 10 + s) as u64);
            let (x, xs) = random(&mut rng, m, k, dtype, &dev);
            let (w, ws) = random(&mut rng, n, k, dtype, &dev);
            let (b, bs) = random(&mut rng, 1, n, dtype, &dev);
            let b = b.reshape(n).unwrap();
            let y = cublaslt::matmul(&x, &w, Some(&b), WeightLayout::OutIn).unwrap();
            check(
                &y,
                &xs,
                &ws,
                Some(&bs),
                (m, n, k),
                WeightLayout::OutIn,
                dtype,
                &format!("{dtype:?} bias m={m} n={n} k={k}"),
            );
        }
    }
}

#[test]
fn cublaslt_reuses_plans_and_folds_leading_dimensions() {
    let dev = cuda();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (x, xs) = random(&mut rng, 6, 48, DType::F32, &dev);
    let (w, ws) = random(&mut rng, 40, 48, DType::F32, &dev);
    let x3 = x.reshape((2, 3, 48)).unwrap();
    let ctx = match dev {
        Device::Cuda(ref d) => LtContext::for_device(d).unwrap(),
        _ => unreachable!("cuda() returns a CUDA device"),
    };
    let y = cublaslt::matmul(&x3, &w, None, WeightLayout::OutIn).unwrap();
    assert_eq!(y.dims(), [2, 3, 40]);
    let plans = ctx.cached_plans();
    for _ in 0..5 {
        cublaslt::matmul(&x3, &w, None, WeightLayout::OutIn).unwrap();
    }
    assert_eq!(
        ctx.cached_plans(),
        plans,
        "the same shape must reuse its plan"
    );
    check(
        &y.reshape((6, 40)).unwrap(),
        &xs,
        &ws,
        None,
        (6, 40, 48),
        WeightLayout::OutIn,
        DType::F32,
        "folded [2, 3, 48]",
    );
}

#[test]
fn every_dispatch_path_agrees_with_the_reference() {
    let dev = cuda();
    for (s, &(m, n, k)) in [(1, 64, 64), (64, 64, 64), (129, 576, 1536)]
        .iter()
        .enumerate()
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(50 + s as u64);
        let (x, xs) = random(&mut rng, m, k, DType::F32, &dev);
        let (w, ws) = random(&mut rng, n, k, DType::F32, &dev);
        for path in MatmulPath::ALL {
            let y = linear_with(path, &x, &w, None).unwrap();
            check(
                &y,
                &xs,
                &ws,
                None,
                (m, n, k),
                WeightLayout::OutIn,
                DType::F32,
                &format!("{path:?} m={m} n={n} k={k}"),
            );
        }
    }
}

#[test]
fn graph_replay_of_cublaslt_products_matches_the_reference() {
    let dev = cuda();
    for (s, dtype) in [DType::F32, DType::BF16].into_iter().enumerate() {
        let (m, n, k) = (33, 65, 127);
        let mut rng = rand::rngs::StdRng::seed_from_u64(300 + s as u64);
        let (x, xs) = random(&mut rng, m, k, dtype, &dev);
        let (w, ws) = random(&mut rng, n, k, dtype, &dev);
        let (y, _) = random(&mut rng, m, n, dtype, &dev);
        // Plan built outside the capture; the capture records the launches without running them.
        cublaslt::matmul_into(&y, &x, &w, WeightLayout::OutIn).unwrap();
        let (graph, ()) = wick::gpu::graph::capture(&dev, || {
            for _ in 0..4 {
                cublaslt::matmul_into(&y, &x, &w, WeightLayout::OutIn)
                    .map_err(wick::Error::from)?;
            }
            Ok(())
        })
        .unwrap();
        // Overwrite y with fresh random values; only the replay can restore the product.
        let (noise, _) = random(&mut rng, m, n, dtype, &dev);
        y.slice_set(&noise, 0, 0).unwrap();
        graph.replay().unwrap();
        check(
            &y,
            &xs,
            &ws,
            None,
            (m, n, k),
            WeightLayout::OutIn,
            dtype,
            &format!("graph {dtype:?}"),
        );
    }
}
