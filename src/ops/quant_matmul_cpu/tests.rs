//! The kernel against exact quantized maths, the unquantized product and Candle's own QMatMul.

use super::*;
use rand::{Rng, SeedableRng};

/// Random GGML blocks of the given format for an [n, k] matrix: f16 scales spread over a few
/// orders of magnitude, every quant value reachable.
fn random_weight(format: WeightFormat, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = Vec::with_capacity(n * k / BLOCK * format.block_bytes());
    for _ in 0..n * k / BLOCK {
        let d = f16::from_f32(
            rng.random_range(1e-4f32..2e-2) * if rng.random_bool(0.5) { 1.0 } else { -1.0 },
        );
        bytes.extend_from_slice(&d.to_le_bytes());
        match format {
            WeightFormat::Q4_1 => {
                let m = f16::from_f32(rng.random_range(-0.2f32..0.1));
                bytes.extend_from_slice(&m.to_le_bytes());
                for _ in 0..BLOCK / 2 {
                    bytes.push(rng.random::<u8>());
                }
            }
            WeightFormat::Q8_0 => {
                for _ in 0..BLOCK {
                    bytes.push(rng.random_range(-127i8..=127) as u8);
                }
            }
        }
    }
    bytes
}

fn random_input(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..m * k)
        .map(|i| {
            // Mostly N(0,1)-ish values with a few outliers, as activations have.
            let v: f32 = rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0);
            if i % 97 == 5 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// The weight dequantized to f64: Q4_1 w = d u + m, Q8_0 w = d v.
fn dequantize(format: WeightFormat, bytes: &[u8]) -> Vec<f64> {
    let mut out = Vec::new();
    for block in bytes.chunks_exact(format.block_bytes()) {
        let d = f16_at(block, 0) as f64;
        match format {
            WeightFormat::Q4_1 => {
                let m = f16_at(block, 2) as f64;
                let low: Vec<f64> = block[4..].iter().map(|b| d * (b & 15) as f64 + m).collect();
                let high: Vec<f64> = block[4..].iter().map(|b| d * (b >> 4) as f64 + m).collect();
                out.extend(low);
                out.extend(high);
            }
            WeightFormat::Q8_0 => out.extend(block[2..].iter().map(|&v| d * v as i8 as f64)),
        }
    }
    out
}

/// Exact maths of the quantized product in f64: sum over blocks of dw*d16*sum(u q) + mw*s16,
/// from the dequantized weight and the quantized activations, for Q4_1 written as
/// sum_i (dw u_i + mw) d16 q_i with the mw term replaced by mw * s16 as the format defines.
fn reference(format: WeightFormat, x: &[f32], m: usize, k: usize, w: &[u8], n: usize) -> Vec<f64> {
    let blocks = k / BLOCK;
    let mut acts = vec![EMPTY_BLOCK; m * blocks];
    for t in 0..m {
        quantize_row_scalar(
            &x[t * k..(t + 1) * k],
            &mut acts[t * blocks..(t + 1) * blocks],
        );
    }
    let wd = dequantize(format, w);
    let mut out = vec![0f64; m * n];
    for t in 0..m {
        for r in 0..n {
            let mut sum = 0f64;
            for b in 0..blocks {
                let a = &acts[t * blocks + b];
                let block = &w[(r * blocks + b) * format.block_bytes()..];
                let mw = if format == WeightFormat::Q4_1 {
                    f16_at(block, 2) as f64
                } else {
                    0.0
                };
                for i in 0..BLOCK {
                    // (w_i - mw) is dw * u_i exactly.
                    sum += (wd[r * k + b * BLOCK + i] - mw) * a.d as f64 * a.qs[i] as f64;
                }
                sum += mw * a.s as f64;
            }
            out[t * n + r] = sum;
        }
    }
    out
}

/// Scale of the terms summed for one output, to state tolerances relative to it.
fn magnitude(format: WeightFormat, x: &[f32], k: usize, w: &[u8], t: usize, r: usize) -> f64 {
    let wd = dequantize(
        format,
        &w[r * (k / BLOCK) * format.block_bytes()..(r + 1) * (k / BLOCK) * format.block_bytes()],
    );
    wd.iter()
        .zip(&x[t * k..(t + 1) * k])
        .map(|(a, b)| (a * *b as f64).abs())
        .sum()
}

fn kernels() -> Vec<Kernel> {
    let mut all = vec![Kernel::Scalar];
    if Kernel::best() != Kernel::Scalar {
        all.push(Kernel::best());
    }
    all
}

#[test]
fn matches_exact_quantized_maths_on_odd_shapes() {
    // Shapes: decode (m = 1), prefill tiles with remainders in both directions, n not a
    // multiple of 4, k of one block.
    let shapes = [
        (1, 576, 192),
        (1, 32, 5),
        (7, 96, 13),
        (5, 1536, 576),
        (3, 64, 4),
        (11, 160, 9),
    ];
    for (case, &(m, k, n)) in shapes.iter().enumerate() {
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let seed = 100 + case as u64 * 7 + format.block_bytes() as u64;
            let w = random_weight(format, n, k, seed);
            let x = random_input(m, k, seed + 1);
            let want = reference(format, &x, m, k, &w, n);
            for kernel in kernels() {
                let mut got = vec![f32::NAN; m * n];
                matmul_with(format, &x, m, k, &w, n, &mut got, kernel).expect("matmul");
                for t in 0..m {
                    for r in 0..n {
                        let i = t * n + r;
                        // f32 accumulation over k/32 block sums: relative 1e-5 of the
                        // magnitude of the terms.
                        let tol = 1e-5 * magnitude(format, &x, k, &w, t, r) + 1e-6;
                        assert!(
                            (got[i] as f64 - want[i]).abs() <= tol,
                            "{format:?} {kernel:?} m={m} k={k} n={n} at ({t},{r}): got {} want {} tol {tol}",
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn close_to_the_unquantized_product() {
    // Against x (f32, not quantized) times the dequantized weight in f64: the only error left
    // is the Q8 activation rounding, at most d/2 per element, d = amax/127 per block.
    let (m, k, n) = (4, 256, 12);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let w = random_weight(format, n, k, 7);
        let x = random_input(m, k, 8);
        let wd = dequantize(format, &w);
        let mut got = vec![0f32; m * n];
        matmul(format, &x, m, k, &w, n, &mut got).expect("matmul");
        for t in 0..m {
            for r in 0..n {
                let mut exact = 0f64;
                let mut bound = 0f64;
                for b in 0..k / BLOCK {
                    let xs = &x[t * k + b * BLOCK..t * k + (b + 1) * BLOCK];
                    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    for (i, v) in xs.iter().enumerate() {
                        let wi = wd[r * k + b * BLOCK + i];
                        exact += wi * *v as f64;
                        // half a quantization step, plus f16 rounding of d (2^-11 relative).
                        bound += wi.abs() * (amax / 127.0 * 0.5 + v.abs() as f64 * 1e-3);
                    }
                }
                let err = (got[t * n + r] as f64 - exact).abs();
                assert!(
                    err <= bound + 1e-4,
                    "{format:?} ({t},{r}): got {} exact {exact} bound {bound}",
                    got[t * n + r]
                );
            }
        }
    }
}

#[test]
fn avx2_quantization_equals_the_reference_bit_for_bit() {
    if Kernel::best() == Kernel::Scalar {
        return;
    }
    let k = 1536;
    let mut x = random_input(1, k, 42);
    // Exact ties (x * 127 / amax = n + 0.5) and an all-zero block.
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = -2.5;
    for v in &mut x[64..96] {
        *v = 0.0;
    }
    let mut scalar = vec![EMPTY_BLOCK; k / BLOCK];
    let mut simd = vec![EMPTY_BLOCK; k / BLOCK];
    quantize_rows(&x, k, &mut scalar, Kernel::Scalar);
    quantize_rows(&x, k, &mut simd, Kernel::best());
    for (a, b) in scalar.iter().zip(&simd) {
        assert_eq!(a.qs, b.qs);
        assert_eq!(a.d.to_bits(), b.d.to_bits());
        assert_eq!(a.s.to_bits(), b.s.to_bits());
    }
    assert_eq!(scalar[0].qs[1], 0, "0.5 rounds to even");
    assert_eq!(scalar[0].qs[2], -2, "-2.5 rounds to even");
}

#[test]
fn agrees_with_candle_qmatmul() {
    // Candle's own Q4_1 / Q8_0 path (independent code, rounding ties away from zero) on the same
    // blocks: agreement to activation-quantization noise.
    use candle_core::quantized::{QMatMul, QStorage};
    use candle_core::Module;
    let (m, k, n) = (3, 576, 40);
    for (format, dtype) in [
        (WeightFormat::Q4_1, GgmlDType::Q4_1),
        (WeightFormat::Q8_0, GgmlDType::Q8_0),
    ] {
        let w = random_weight(format, n, k, 11);
        let x = random_input(m, k, 12);
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(&w), &Device::Cpu, dtype)
            .expect("storage");
        let qt = std::sync::Arc::new(QTensor::new(storage, (n, k)).expect("qtensor"));
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("x");
        let want: Vec<f32> = QMatMul::from_arc(qt.clone())
            .expect("qmatmul")
            .forward(&xt)
            .expect("fwd")
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("vec");
        let got: Vec<f32> = forward(&xt, &qt)
            .expect("forward")
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("vec");
        for i in 0..m * n {
            let tol = 2e-3 * magnitude(format, &x, k, &w, i / n, i % n) + 1e-4;
            assert!(
                (got[i] - want[i]).abs() as f64 <= tol,
                "{format:?} {i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }
}

/// Several weights in one call (each on its own rows of x, in both formats, one of them past
/// INLINE_MACS so the pool runs) give each product's bits exactly as a call of its own; parts
/// that do not fit x, or an output of the wrong size, are refused.
#[test]
fn parts_equal_separate_products() {
    let (m, k) = (7, 576);
    let x = random_input(m, k, 41);
    let specs = [
        (WeightFormat::Q4_1, 576, 0..7),
        (WeightFormat::Q8_0, 16, 2..5),
        (WeightFormat::Q8_0, 3, 6..7),
    ];
    let weights: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (f, n, _))| random_weight(*f, *n, k, 50 + i as u64))
        .collect();
    for kernel in kernels() {
        let mut outs: Vec<Vec<f32>> = specs
            .iter()
            .map(|(_, n, t)| vec![f32::NAN; n * t.len()])
            .collect();
        let mut parts: Vec<Part> = specs
            .iter()
            .zip(&weights)
            .zip(outs.iter_mut())
            .map(|(((format, n, tokens), weight), out)| Part {
                format: *format,
                weight,
                n: *n,
                tokens: tokens.clone(),
                out,
            })
            .collect();
        matmul_parts_with(&x, m, k, &mut parts, kernel).expect("parts");
        for (((format, n, tokens), weight), got) in specs.iter().zip(&weights).zip(&outs) {
            let rows = &x[tokens.start * k..tokens.end * k];
            let mut alone = vec![f32::NAN; n * tokens.len()];
            matmul_with(
                *format,
                rows,
                tokens.len(),
                k,
                weight,
                *n,
                &mut alone,
                kernel,
            )
            .expect("alone");
            assert_eq!(got, &alone, "{format:?} {kernel:?} rows {tokens:?}");
        }
    }
    let mut out = vec![0f32; 16 * 9];
    let mut bad = [Part {
        format: WeightFormat::Q8_0,
        weight: &weights[1],
        n: 16,
        tokens: 0..9,
        out: &mut out,
    }];
    assert!(matmul_parts(&x, m, k, &mut bad).is_err(), "rows past x");
    let mut short = vec![0f32; 5];
    let mut bad = [Part {
        format: WeightFormat::Q8_0,
        weight: &weights[1],
        n: 16,
        tokens: 0..1,
        out: &mut short,
    }];
    assert!(matmul_parts(&x, m, k, &mut bad).is_err(), "short output");
}

/// Prefetching other bytes from part 0's items (fewer lines than items, more, slices that end
/// mid-line, an empty one) leaves every product's bits as they are without it.
#[test]
fn prefetch_changes_no_bit() {
    let (m, k) = (5, 576);
    let x = random_input(m, k, 71);
    let base = random_weight(WeightFormat::Q4_1, 300, k, 72);
    let side = random_weight(WeightFormat::Q8_0, 16, k, 73);
    let other: Vec<u8> = (0..9000u32).map(|v| v as u8).collect();
    let run = |ahead: &[&[u8]]| {
        let (mut y, mut low) = (vec![f32::NAN; m * 300], vec![f32::NAN; 2 * 16]);
        let mut parts = [
            Part {
                format: WeightFormat::Q4_1,
                weight: &base,
                n: 300,
                tokens: 0..m,
                out: &mut y,
            },
            Part {
                format: WeightFormat::Q8_0,
                weight: &side,
                n: 16,
                tokens: 1..3,
                out: &mut low,
            },
        ];
        matmul_parts_prefetch(&x, m, k, &mut parts, ahead).expect("parts");
        (y, low)
    };
    let plain = run(&[]);
    for ahead in [
        vec![&side[..100]],
        vec![&side[..], &other[..], &[][..], &other[..77]],
    ] {
        assert_eq!(run(&ahead), plain);
    }
}
