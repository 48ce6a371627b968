//! Micro-benchmark of wick's quantized CPU matmul at decode shape (m = 1) for SmolLM2-135M's
//! projections, against a plain streaming read of the same bytes on the same threads (the memory
//! bound). Ratios within one process, so it can run on a loaded machine.
//!
//! `cargo run --release --example qmm_microbench`

use std::time::Instant;

use wick::ops::quant_matmul_cpu::{matmul, WeightFormat};

fn weight(format: WeightFormat, n: usize, k: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = Vec::with_capacity(n * k / 32 * format.block_bytes());
    for _ in 0..n * k / 32 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // f16 scale ~0.01 and offset ~-0.05, then random quants.
        bytes.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if format == WeightFormat::Q4_1 {
            bytes.extend_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
        let quants = if format == WeightFormat::Q4_1 { 16 } else { 32 };
        for i in 0..quants {
            bytes.push((state >> (i % 8 * 8)) as u8 & 0x7F);
        }
    }
    bytes
}

/// Median seconds of `reps` runs of f.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn main() -> wick::Result<()> {
    let shapes = [
        ("q/o 576x576 Q4_1", WeightFormat::Q4_1, 576, 576),
        ("k/v 192x576 Q4_1", WeightFormat::Q4_1, 192, 576),
        ("gate/up 1536x576 Q4_1", WeightFormat::Q4_1, 1536, 576),
        ("down 576x1536 Q4_1", WeightFormat::Q4_1, 576, 1536),
        ("head 49152x576 Q8_0", WeightFormat::Q8_0, 49152, 576),
    ];
    let pool = candle_core::utils::barrier_pool();
    for (name, format, n, k) in shapes {
        // Several copies so that small matrices come from memory as in a real step (30 layers).
        let copies = (64 << 20) / (n * k / 32 * format.block_bytes()) + 1;
        let ws: Vec<Vec<u8>> = (0..copies.min(64)).map(|_| weight(format, n, k)).collect();
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut out = vec![0f32; n];
        let mut which = 0;
        let reps = 200.min(20 * ws.len()).max(15);
        let kernel = time(reps, || {
            which = (which + 1) % ws.len();
            matmul(format, &x, 1, k, &ws[which], n, &mut out).expect("matmul");
        });
        let mut which = 0;
        let stream = time(reps, || {
            which = (which + 1) % ws.len();
            let w = &ws[which];
            let sums = std::sync::Mutex::new(0u64);
            let lines = w.len() / 64;
            pool.execute_chunked(lines, |r| {
                let mut s = 0u64;
                for line in r {
                    let p = w[line * 64..].as_ptr() as *const u64;
                    // SAFETY: line * 64 + 64 <= w.len().
                    unsafe { s = s.wrapping_add(p.read_unaligned() ^ p.add(4).read_unaligned()) };
                }
                *sums.lock().expect("lock") += s;
            });
            std::hint::black_box(sums.into_inner().expect("lock"));
        });
        let bytes = ws[0].len() as f64;
        println!(
            "{name:24} kernel {:8.1} us ({:5.1} GB/s)  stream-read {:8.1} us ({:5.1} GB/s)  kernel/read {:.2}",
            kernel * 1e6,
            bytes / kernel / 1e9,
            stream * 1e6,
            bytes / stream / 1e9,
            kernel / stream
        );
    }
    Ok(())
}
