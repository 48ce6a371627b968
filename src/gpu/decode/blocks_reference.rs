//! The CPU twin of kernels/ggml_blocks.cuh: the same index arithmetic (4 weights of one 32-weight
//! block of a matrix, by block index from the matrix's first byte), so the kernels' reading of each
//! GGML layout is tested here, without a GPU, against Candle's dequantization (ggml's
//! dequantize_row_*).

use half::f16;

use super::{QuantType, BLOCK};

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// ggml's get_scale_min_k4: scale and min of sub-block j from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// Weight `i` of a dense row starting at `bytes[0]` (little-endian f32, f16 or bf16).
pub fn dense_weight(q: QuantType, bytes: &[u8], i: usize) -> f32 {
    match q {
        QuantType::F32 => f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]),
        QuantType::F16 => f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        QuantType::BF16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        _ => f32::NAN,
    }
}

/// Weights 4p .. 4p + 3 (p < 8) of 32-weight block `blk` of `base` (`w4_<q>` in the kernels).
pub fn w4(q: QuantType, base: &[u8], blk: usize, p: usize) -> [f32; 4] {
    let mut w = [0f32; 4];
    let nibble_shift = if p < 4 { 0 } else { 4 };
    match q {
        QuantType::Q4_0 | QuantType::Q4_1 => {
            let b = &base[blk * q.block_bytes()..];
            let (d, m, qs) = match q {
                QuantType::Q4_0 => (h(b, 0), -8.0 * h(b, 0), &b[2..]),
                _ => (h(b, 0), h(b, 2), &b[4..]),
            };
            for (i, w) in w.iter_mut().enumerate() {
                *w = d * ((qs[4 * (p & 3) + i] >> nibble_shift) & 15) as f32 + m;
            }
        }
        QuantType::Q5_0 | QuantType::Q5_1 => {
            let b = &base[blk * q.block_bytes()..];
            let (d, m, rest) = match q {
                QuantType::Q5_0 => (h(b, 0), -16.0 * h(b, 0), &b[2..]),
                _ => (h(b, 0), h(b, 2), &b[4..]),
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            for (i, w) in w.iter_mut().enumerate() {
                let j = 4 * p + i;
                let v = ((rest[4 + 4 * (p & 3) + i] >> nibble_shift) & 15) as u32
                    | ((qh >> j) & 1) << 4;
                *w = d * v as f32 + m;
            }
        }
        QuantType::Q8_0 => {
            let b = &base[blk * 34..];
            for (i, w) in w.iter_mut().enumerate() {
                *w = h(b, 0) * (b[2 + 4 * p + i] as i8) as f32;
            }
        }
        QuantType::Q4K | QuantType::Q5K => {
            let sb = if q == QuantType::Q4K { 144 } else { 176 };
            let b = &base[(blk >> 3) * sb..];
            let s = blk & 7;
            let (sc, m) = scale_min_k4(s, &b[4..16]);
            let (d, dm) = (h(b, 0) * sc, h(b, 2) * m);
            let qs_at = if q == QuantType::Q4K { 16 } else { 48 };
            for (i, w) in w.iter_mut().enumerate() {
                let l = 4 * p + i;
                let mut v = (b[qs_at + 32 * (s >> 1) + l] >> ((s & 1) * 4)) & 15;
                if q == QuantType::Q5K {
                    v |= ((b[16 + l] >> s) & 1) << 4;
                }
                *w = d * v as f32 - dm;
            }
        }
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => {
            let at = blk * q.block_bytes() + 4 * p * (q.block_bytes() / BLOCK);
            for (i, w) in w.iter_mut().enumerate() {
                *w = dense_weight(q, &base[at..], i);
            }
        }
        QuantType::Q6K => {
            let b = &base[(blk >> 3) * 210..];
            let (s, l0) = (blk & 7, 4 * p);
            let (n, t) = (s >> 2, s & 3);
            let scale = b[192 + 8 * n + 2 * t + (l0 >> 4)] as i8;
            let d = h(b, 208) * scale as f32;
            for (i, w) in w.iter_mut().enumerate() {
                let ql = b[64 * n + 32 * (t & 1) + l0 + i];
                let qh = b[128 + 32 * n + l0 + i];
                let v = ((ql >> ((t >> 1) * 4)) & 15) | (((qh >> (2 * t)) & 3) << 4);
                *w = d * (v as i32 - 32) as f32;
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::random_values;
    use crate::gpu::decode::reference::candle_dequantize;
    use crate::gpu::decode::QUANT_TYPES;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Every format, two rows of 512 weights quantized by Candle: the twin's reading of every
    /// block, part by part, equals Candle's dequantization (f32 rounding of d * scale aside).
    #[test]
    fn w4_reads_every_format_as_candle_dequantizes_it() {
        let (rows, k) = (2, 512);
        for (i, q) in QUANT_TYPES.into_iter().enumerate() {
            let v: Vec<f32> = random_values(rows * k, 40 + i as u64, 1.0)
                .into_iter()
                .map(|x| x as f32)
                .collect();
            let t = Tensor::from_vec(v, (rows, k), &Device::Cpu).expect("tensor");
            let qt = QTensor::quantize(&t, q.ggml()).expect("quantize");
            let bytes = qt.data().expect("bytes").to_vec();
            assert_eq!(bytes.len(), rows * q.row_bytes(k), "{q:?} row bytes");
            let want = candle_dequantize(q, &bytes, rows * k);
            for blk in 0..rows * k / 32 {
                for p in 0..8 {
                    let got = w4(q, &bytes, blk, p);
                    for (j, g) in got.iter().enumerate() {
                        let at = blk * 32 + 4 * p + j;
                        let err = (*g as f64 - want[at]).abs();
                        assert!(
                            err <= 1e-5 * want[at].abs().max(1.0),
                            "{q:?} weight {at}: {g} vs {}",
                            want[at]
                        );
                    }
                }
            }
        }
    }
}
