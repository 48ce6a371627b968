//! The f64 specification of each fused op: one forward (and one backward where the op has one) per
//! op, used by every check of every implementation of it: the CPU ops' unit tests and
//! `wick bench gpu-check` (`ops::check_suite`), the training kernels' references (`gpu::train`),
//! the decode and prefill kernels' references (`gpu::decode`) and the engine checks. Those keep
//! only their layout glue (gathering a head's rows, a position's table row, a causal prefix) and
//! call these for the maths, so an op's maths is written once (llm.c's "the CPU reference is the
//! specification").
//!
//! A leaf: plain f64 slices, nothing from the rest of the crate (tests/layering.rs enforces it),
//! so `gpu`, `ops` and everything above may import it.

pub mod cross_entropy;
pub mod lora_dropout;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

/// Seeded inputs, finite differences and a tolerance check for the references' own tests (the
/// crate's `check` helpers are above this leaf).
#[cfg(test)]
pub(crate) mod testing {
    use rand::{Rng, SeedableRng};

    /// `len` values uniform in (-scale, scale), seeded (the same stream as `check::random_values`).
    pub fn random_values(len: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// Fails unless max |a - b| <= tol * max |b|.
    pub fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err / scale <= tol, "{what}: rel err {:.3e}", err / scale);
    }

    pub fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Central finite differences of f at x, one coordinate at a time.
    pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let h = 1e-6;
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                xp[i] = x[i] + h;
                let up = f(&xp);
                xp[i] = x[i] - h;
                let down = f(&xp);
                xp[i] = x[i];
                (up - down) / (2.0 * h)
            })
            .collect()
    }
}
