//! ggml's reference quantizers, bit for bit: rows of f32 weights to the block formats a GGUF stores.
//!
//! Each function follows `quantize_row_*_ref` of ggml-quants.c (llama.cpp as vendored in
//! llama-cpp-python 0.3.36), the code `llama-quantize` and `convert_hf_to_gguf.py` run when no
//! importance matrix is given: the same float operations in the same order (ggml-base is built
//! without FMA, so no contraction either), so a row quantized here has the bytes llama.cpp would
//! write. tests/gguf_quantize_matches_ggml.rs checks that against bytes made by ggml itself
//! (scripts/llamacpp/make_quant_fixture.py); the K-quants (Q4_K, Q6_K) are in `quantize_k`.
//!
//! Block layouts (little endian, `d`/`m` are IEEE f16):
//! - Q8_0, 32 weights, 34 bytes: `d`, 32 x i8. `w = d * q`.
//! - Q4_1, 32 weights, 20 bytes: `d`, `m`, 16 bytes of nibbles (weight j low, j + 16 high). `w = d * q + m`.
//! - Q5_0, 32 weights, 22 bytes: `d`, u32 of fifth bits, 16 bytes of nibbles. `w = d * (q - 16)`.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use super::quantize_k::{quantize_row_q4_k, quantize_row_q6_k};

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa. Valid for |x| <= 2^22 (ggml asserts it); the quantizers only call it on small values.
pub(super) fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// f32 to IEEE half, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
pub(super) fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// The f32 value ggml reads back from a stored half (`GGML_FP16_TO_FP32`).
pub(super) fn f16_round_trip(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Weights per block and bytes per block of the types wick writes.
pub fn block_layout(dtype: GgmlDType) -> Option<(usize, usize)> {
    Some(match dtype {
        GgmlDType::F32 => (1, 4),
        GgmlDType::F16 => (1, 2),
        GgmlDType::Q8_0 => (32, 34),
        GgmlDType::Q4_1 => (32, 20),
        GgmlDType::Q5_0 => (32, 22),
        GgmlDType::Q4K => (256, 144),
        GgmlDType::Q6K => (256, 210),
        _ => return None,
    })
}

/// Quantizes a row-major matrix (`values.len() / row_len` rows of `row_len`) to `dtype`, rows in
/// parallel. `None` when wick has no writer for `dtype` or `row_len` is not whole blocks.
pub fn quantize_rows(dtype: GgmlDType, values: &[f32], row_len: usize) -> Option<Vec<u8>> {
    let (block, block_bytes) = block_layout(dtype)?;
    if row_len == 0 || row_len % block != 0 || values.len() % row_len != 0 {
        return None;
    }
    let row_bytes = row_len / block * block_bytes;
    let mut out = vec![0u8; values.len() / row_len * row_bytes];
    out.par_chunks_mut(row_bytes)
        .zip(values.par_chunks(row_len))
        .for_each(|(dst, row)| quantize_row(dtype, row, dst));
    Some(out)
}

/// One row into its blocks; `dst` has exactly the row's size in `dtype`.
fn quantize_row(dtype: GgmlDType, row: &[f32], dst: &mut [u8]) {
    let (block, block_bytes) = block_layout(dtype).expect("quantize_rows checked the type");
    let blocks = row
        .chunks_exact(block)
        .zip(dst.chunks_exact_mut(block_bytes));
    match dtype {
        GgmlDType::F32 => blocks.for_each(|(x, y)| y.copy_from_slice(&x[0].to_le_bytes())),
        GgmlDType::F16 => blocks.for_each(|(x, y)| y.copy_from_slice(&f16_bytes(x[0]))),
        GgmlDType::Q8_0 => blocks.for_each(|(x, y)| quantize_block_q8_0(x, y)),
        GgmlDType::Q4_1 => blocks.for_each(|(x, y)| quantize_block_q4_1(x, y)),
        GgmlDType::Q5_0 => blocks.for_each(|(x, y)| quantize_block_q5_0(x, y)),
        GgmlDType::Q4K => blocks.for_each(|(x, y)| quantize_row_q4_k(x, y)),
        GgmlDType::Q6K => blocks.for_each(|(x, y)| quantize_row_q6_k(x, y)),
        _ => unreachable!("block_layout admits only the types above"),
    }
}

/// `quantize_row_q8_0_ref` on one block: `d = amax / 127`, `q = roundf(x / d)` (ties away from 0).
fn quantize_block_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16_bytes(d));
    for (q, &v) in y[2..].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// `quantize_row_q4_1_ref` on one block: `d = (max - min) / 15`, `q = trunc((x - min) / d + 0.5)`.
fn quantize_block_q4_1(x: &[f32], y: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16_bytes(d));
    y[2..4].copy_from_slice(&f16_bytes(min));
    for j in 0..16 {
        // C: (int8_t)(x + 0.5f) truncates toward zero; the values are >= 0 here.
        let lo = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let hi = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = lo | (hi << 4);
    }
}

/// `quantize_row_q5_0_ref` on one block: `d = max / -16` (max = the value of largest magnitude),
/// `q = min(31, trunc(x / d + 16.5))`, the fifth bits packed into a u32.
fn quantize_block_q5_0(x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16_bytes(d));
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        y[6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.7, -8),
        ];
        for (x, want) in cases {
            assert_eq!(nearest_int(x), want, "nearest_int({x})");
        }
    }

    #[test]
    fn rejects_rows_that_are_not_whole_blocks() {
        assert!(quantize_rows(GgmlDType::Q8_0, &[0.0; 48], 48).is_none());
        assert!(quantize_rows(GgmlDType::Q4K, &[0.0; 576], 576).is_none());
        assert!(quantize_rows(GgmlDType::Q8_0, &[0.0; 64], 32).is_some());
    }
}
