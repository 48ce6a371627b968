//! AVX2/FMA/F16C versions of the scalar functions in `super` (the reference); same block maths.

use std::arch::x86_64::*;

use super::{f16_at, ActBlock, WeightFormat, BLOCK, ROW_TILE, TOKEN_TILE};
use half::f16;

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// See `quantize_row_scalar`; identical results (same f32 operations, same rounding).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    let sign = _mm256_set1_ps(-0.0);
    for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let p = values.as_ptr();
        let mut v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let mut max = _mm256_andnot_ps(sign, v[0]);
        for lane in &v[1..] {
            max = _mm256_max_ps(max, _mm256_andnot_ps(sign, *lane));
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps(max, 1), _mm256_castps256_ps128(max));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm256_set1_ps(id);
        let mut ints = [_mm256_setzero_si256(); 4];
        for (int, lane) in ints.iter_mut().zip(v.iter_mut()) {
            *lane = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(*lane, mul),
            );
            *int = _mm256_cvtps_epi32(*lane);
        }
        let sum4 = _mm256_add_epi32(
            _mm256_add_epi32(ints[0], ints[1]),
            _mm256_add_epi32(ints[2], ints[3]),
        );
        let mut s = _mm_add_epi32(
            _mm256_extracti128_si256(sum4, 1),
            _mm256_castsi256_si128(sum4),
        );
        s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
        let sum = _mm_cvtsi128_si32(s);
        // i32 -> i8 with the packs' 128-bit lane interleave undone by a permute.
        let lo = _mm256_packs_epi32(ints[0], ints[1]);
        let hi = _mm256_packs_epi32(ints[2], ints[3]);
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(lo, hi),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, bytes);
        block.d = f16::from_f32(d).to_f32();
        block.s = f16::from_f32(d * sum as f32).to_f32();
    }
}

/// 32 unsigned nibbles of a Q4_1 block: low nibbles then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(qs as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Sum of u8 x i8 products in 8 i32 lanes, as f32. No overflow: |u*q| pairs <= 2*255*127.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(u: __m256i, q: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, q);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Tile of R weight rows x T tokens. `w` points at the first row, `a` at the first token.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const T: usize, const Q4: bool>(
    w: &[u8],
    row_bytes: usize,
    a: &[ActBlock],
    blocks: usize,
    out: &mut [[f32; TOKEN_TILE]; ROW_TILE],
) {
    let block_bytes = if Q4 { 20 } else { 34 };
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut offsets = [[0f32; T]; R];
    for b in 0..blocks {
        let mut qa = [_mm256_setzero_si256(); T];
        let mut da = [0f32; T];
        let mut sa = [0f32; T];
        for t in 0..T {
            let act = a.get_unchecked(t * blocks + b);
            qa[t] = _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i);
            da[t] = act.d;
            sa[t] = act.s;
        }
        for r in 0..R {
            let at = r * row_bytes + b * block_bytes;
            // The same block of the next row quad (the next work item, contiguous in memory):
            // one quad ahead is far enough to hide the memory latency at m = 1, where the
            // kernel otherwise stalls on every weight load. A prefetch never faults, so the
            // address may lie past the matrix (wrapping_add keeps the pointer maths defined).
            _mm_prefetch::<_MM_HINT_T0>(
                w.as_ptr().wrapping_add(at + ROW_TILE * row_bytes) as *const i8
            );
            let block = w.get_unchecked(at..at + block_bytes);
            let dw = f16_at(block, 0);
            if Q4 {
                let mw = f16_at(block, 2);
                let u = nibbles(block.as_ptr().add(4));
                for t in 0..T {
                    let p = dot_u8_i8(u, qa[t]);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da[t]), p, acc[r][t]);
                    offsets[r][t] += mw * sa[t];
                }
            } else {
                let v = _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i);
                // maddubs wants one unsigned operand: |v| x (q with v's sign).
                let abs_v = _mm256_sign_epi8(v, v);
                for t in 0..T {
                    let p = dot_u8_i8(abs_v, _mm256_sign_epi8(qa[t], v));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da[t]), p, acc[r][t]);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum(acc[r][t]) + offsets[r][t];
        }
    }
}

/// `tile::<4, 1, true>` (Q4_1, one token: decode) with the per-block scalar work vectorized:
/// the block's (dw, mw) pair is converted by one `vcvtph2ps` and multiplied by the token's
/// (d, s) pair in one `mulps`, giving dw * d for the FMA and mw * s for the offset sum, which
/// is kept in lane 1 of a vector. Same f32 operations in the same order as `tile`, so the
/// results are bit-identical; fewer instructions per block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q4_1_one_token(
    w: &[u8],
    row_bytes: usize,
    a: &[ActBlock],
    blocks: usize,
    out: &mut [[f32; TOKEN_TILE]; ROW_TILE],
) {
    const R: usize = ROW_TILE;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offsets = [_mm_setzero_ps(); R];
    let base = w.as_ptr();
    for b in 0..blocks {
        let act = a.get_unchecked(b);
        let qa = _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i);
        // [d, s, 0, 0]: ActBlock starts with d then s (repr(C)).
        let ds = _mm_castpd_ps(_mm_load_sd(act as *const ActBlock as *const f64));
        for (r, (acc, offset)) in acc.iter_mut().zip(offsets.iter_mut()).enumerate() {
            let at = r * row_bytes + b * 20;
            // See `tile`: the same block of the next row quad.
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(at + R * row_bytes) as *const i8);
            let block = base.add(at);
            // [dw, mw, 0, 0] from the block's two leading f16 values.
            let scales = _mm_cvtph_ps(_mm_cvtsi32_si128((block as *const i32).read_unaligned()));
            let prod = _mm_mul_ps(scales, ds);
            let p = dot_u8_i8(nibbles(block.add(4)), qa);
            *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), p, *acc);
            *offset = _mm_add_ps(*offset, prod);
        }
    }
    for r in 0..R {
        out[r][0] = hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(offsets[r]));
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_tile(
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    a: &[ActBlock],
    blocks: usize,
    tokens: usize,
    out: &mut [[f32; TOKEN_TILE]; ROW_TILE],
) {
    macro_rules! by_shape {
        ($q4:literal) => {
            match (rows, tokens) {
                (4, 3) => tile::<4, 3, $q4>(w, row_bytes, a, blocks, out),
                (4, 2) => tile::<4, 2, $q4>(w, row_bytes, a, blocks, out),
                (4, 1) if $q4 => tile_q4_1_one_token(w, row_bytes, a, blocks, out),
                (4, 1) => tile::<4, 1, $q4>(w, row_bytes, a, blocks, out),
                // Fewer than four rows only at the end of a matrix whose height is not a
                // multiple of 4: one row at a time.
                _ => {
                    let mut one = [[0f32; TOKEN_TILE]; ROW_TILE];
                    for r in 0..rows {
                        let row = &w[r * row_bytes..(r + 1) * row_bytes];
                        for t in 0..tokens {
                            tile::<1, 1, $q4>(row, row_bytes, &a[t * blocks..], blocks, &mut one);
                            out[r][t] = one[0][0];
                        }
                    }
                }
            }
        };
    }
    match format {
        WeightFormat::Q4_1 => by_shape!(true),
        WeightFormat::Q8_0 => by_shape!(false),
    }
}
