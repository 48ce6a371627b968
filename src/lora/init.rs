//! Initialising A [r, in] and B [out, r] as PEFT does.
//!
//! PEFT's default (`init_lora_weights=True`) is `nn.init.kaiming_uniform_(A, a=sqrt(5))` and B = 0.
//! Kaiming-uniform draws from U(-bound, bound) with
//! `bound = gain * sqrt(3 / fan_in)`, `gain = sqrt(2 / (1 + a^2))`; with a = sqrt(5), gain = sqrt(1/3)
//! and so `bound = 1 / sqrt(fan_in)`, fan_in = in (A's second dimension).
//! "gaussian" is `nn.init.normal_(A, std=1/r)`, B = 0. `false` leaves both as `nn.Linear` initialises
//! them (the same Kaiming-uniform for A, and for B with fan_in = r), a non-zero adapter.
//!
//! Every layer draws from its own ChaCha8 stream seeded by (seed, module path), so the init does not
//! depend on the order layers are visited in, and a seed gives the same adapter on every machine.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use super::config::{InitLoraWeights, LoraConfig};
use crate::{Context, Error, Result};

/// A stable 64-bit hash (FNV-1a) of a string: Rust's default hasher is randomised per process.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in s.as_bytes() {
        h ^= *byte as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A random stream for one purpose (`tag`) derived from the run's seed.
pub fn derived_rng(seed: u64, tag: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ stable_hash(tag).rotate_left(17))
}

fn uniform(rng: &mut impl Rng, n: usize, bound: f64) -> Result<Vec<f32>> {
    let dist = Uniform::new_inclusive(-bound as f32, bound as f32)
        .map_err(|e| Error::InvalidRequest(format!("lora init: bad uniform bound {bound}: {e}")))?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}

/// Initial (A [r, in], B [out, r]) for the module at `path`, as f32 tensors on `device`.
pub fn init_lora_pair(
    config: &LoraConfig,
    path: &str,
    in_features: usize,
    out_features: usize,
    seed: u64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let r = config.r;
    let mut rng = derived_rng(seed, path);
    let kaiming_bound = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let (a, b) = match &config.init_lora_weights {
        InitLoraWeights::Bool(true) => (
            uniform(&mut rng, r * in_features, kaiming_bound(in_features))?,
            vec![0f32; out_features * r],
        ),
        InitLoraWeights::Bool(false) => (
            uniform(&mut rng, r * in_features, kaiming_bound(in_features))?,
            uniform(&mut rng, out_features * r, kaiming_bound(r))?,
        ),
        InitLoraWeights::Named(name) if name == "gaussian" => {
            let normal = Normal::new(0f32, 1.0 / r as f32)
                .map_err(|e| Error::InvalidRequest(format!("lora init: bad normal std: {e}")))?;
            (
                (0..r * in_features)
                    .map(|_| normal.sample(&mut rng))
                    .collect(),
                vec![0f32; out_features * r],
            )
        }
        InitLoraWeights::Named(name) => {
            return Err(Error::InvalidOption {
                option: "init_lora_weights".into(),
                reason: format!("`{name}` is not supported (true, false or \"gaussian\")"),
            })
        }
    };
    let a = Tensor::from_vec(a, (r, in_features), device).context(format!("lora_A of {path}"))?;
    let b = Tensor::from_vec(b, (out_features, r), device).context(format!("lora_B of {path}"))?;
    Ok((a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_bound_and_zero_b() {
        let config = LoraConfig {
            r: 8,
            ..Default::default()
        };
        let (a, b) = init_lora_pair(&config, "m.q_proj", 400, 30, 7, &Device::Cpu).unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / 20.0; // 1/sqrt(400)
        assert!(a.iter().all(|x| x.abs() <= bound));
        // Uniform on [-bound, bound]: the variance is bound^2 / 3 (3200 draws: within 10%).
        let var = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64;
        let expected = (bound as f64).powi(2) / 3.0;
        assert!((var / expected - 1.0).abs() < 0.1, "{var} vs {expected}");
        assert!(b
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| *x == 0.0));
        // Same seed and path: same A; another path: another A.
        let (a2, _) = init_lora_pair(&config, "m.q_proj", 400, 30, 7, &Device::Cpu).unwrap();
        assert_eq!(a, a2.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let (a3, _) = init_lora_pair(&config, "m.k_proj", 400, 30, 7, &Device::Cpu).unwrap();
        assert_ne!(a, a3.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn gaussian_std_is_one_over_r() {
        let config = LoraConfig {
            r: 4,
            init_lora_weights: InitLoraWeights::Named("gaussian".into()),
            ..Default::default()
        };
        let (a, _) = init_lora_pair(&config, "x", 2000, 3, 1, &Device::Cpu).unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let std = (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!((std - 0.25).abs() < 0.01, "{std}");
    }
}
