//! Choosing the next token from a row of logits.
//!
//! The chain and its maths follow llama.cpp's default sampler (`penalties -> top_k -> top_p -> min_p
//! -> temperature -> dist`), so the same flags mean the same thing in both:
//! - repetition penalty: for each distinct token among the last `repeat_last_n` of the history
//!   (prompt included), `l = l / r` if `l > 0` else `l * r` (HF's `RepetitionPenaltyLogitsProcessor`
//!   and llama.cpp agree);
//! - top-k: the k highest logits (ties broken by the lower token id);
//! - top-p: softmax over what is left, sorted descending; the shortest prefix whose cumulative
//!   probability reaches p;
//! - min-p: tokens with `p_i >= min_p * p_max`, i.e. `l_i >= l_max + ln(min_p)`;
//! - temperature: `l / T`, then a draw from `softmax(l / T)` with a seeded RNG.
//!
//! `temperature <= 0` is greedy: the argmax after the repetition penalty.
//! The log-probability reported with each token is `log_softmax(raw logits)[id]`, the model's own
//! distribution before any penalty or filter (what OpenAI-style APIs report).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// Sampling settings. `Default` is llama.cpp's defaults with a fixed seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` (or below) means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; `0` disables.
    pub top_k: usize,
    /// Nucleus sampling threshold in (0, 1]; `1` disables.
    pub top_p: f32,
    /// Keep tokens with probability at least `min_p` times the most likely one's; `0` disables.
    pub min_p: f32,
    /// Repetition penalty; `1` disables.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalty looks at; `None` for the whole history (HF's choice).
    pub repeat_last_n: Option<usize>,
    /// Seed of the sampling RNG: the same seed, model and prompt give the same text.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: Some(64),
            seed: 42,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: argmax, no penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Rejects values with no meaning (negative temperature is accepted as greedy).
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &str, reason: String| {
            Err(Error::InvalidOption {
                option: option.into(),
                reason,
            })
        };
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is not in [0, 1]", self.min_p));
        }
        if self.repeat_penalty.is_nan()
            || self.repeat_penalty <= 0.0
            || !self.repeat_penalty.is_finite()
        {
            return bad(
                "repeat_penalty",
                format!("{} must be a positive number", self.repeat_penalty),
            );
        }
        if !self.temperature.is_finite() {
            return bad(
                "temperature",
                format!("{} must be finite", self.temperature),
            );
        }
        Ok(())
    }

    /// Whether the chain reduces to an argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// The token chosen and its log-probability under the raw logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: f32,
}

/// A sampler: the settings and a seeded RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose RNG starts from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token. logits: [vocab] raw scores of the next position; history: every token
    /// so far (prompt and generated), for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<Sampled> {
        if logits.is_empty() {
            return Err(Error::InvalidRequest("no logits to sample from".into()));
        }
        let p = &self.params;
        let penalized;
        let scores: &[f32] = if p.repeat_penalty != 1.0 {
            let mut copy = logits.to_vec();
            apply_repeat_penalty(&mut copy, history, p.repeat_penalty, p.repeat_last_n);
            penalized = copy;
            &penalized
        } else {
            logits
        };
        let id = if p.is_greedy() {
            argmax(scores)
        } else {
            let kept = filter_candidates(scores, p.top_k, p.top_p, p.min_p);
            let weights = softmax_of(&kept, p.temperature);
            let r: f32 = self.rng.random();
            draw(&kept, &weights, r)
        };
        Ok(Sampled {
            id,
            logprob: log_softmax_at(logits, id as usize),
        })
    }
}

/// Divides positive and multiplies non-positive logits of every distinct token among the last
/// `last_n` of `history` by `penalty` (once per token, however often it occurs).
pub fn apply_repeat_penalty(
    logits: &mut [f32],
    history: &[u32],
    penalty: f32,
    last_n: Option<usize>,
) {
    let start = last_n.map_or(0, |n| history.len().saturating_sub(n));
    let mut seen = std::collections::HashSet::new();
    for &id in &history[start..] {
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        if seen.insert(id) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest value; the lowest index among ties. NaN never wins.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// The candidates left after top-k, top-p and min-p, as (id, logit) sorted by logit descending
/// (ties: lower id first). Always keeps at least the most likely token.
pub fn filter_candidates(logits: &[f32], top_k: usize, top_p: f32, min_p: f32) -> Vec<(u32, f32)> {
    let descending = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan() && **l > f32::NEG_INFINITY)
        .map(|(i, &l)| (i as u32, l))
        .collect();
    if candidates.is_empty() {
        return vec![(argmax(logits), 0.0)];
    }
    if top_k > 0 && top_k < candidates.len() {
        candidates.select_nth_unstable_by(top_k - 1, descending);
        candidates.truncate(top_k);
    }
    candidates.sort_unstable_by(descending);
    if top_p < 1.0 {
        let probs = softmax_of(&candidates, 1.0);
        let mut cumulative = 0.0f64;
        let mut keep = candidates.len();
        for (i, &prob) in probs.iter().enumerate() {
            cumulative += prob as f64;
            if cumulative >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep);
    }
    if min_p > 0.0 {
        let threshold = candidates[0].1 + min_p.ln();
        let keep = candidates
            .iter()
            .take_while(|(_, l)| *l >= threshold)
            .count()
            .max(1);
        candidates.truncate(keep);
    }
    candidates
}

/// softmax(l / temperature) over the candidates' logits (in their order).
fn softmax_of(candidates: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = candidates
        .iter()
        .map(|c| (((c.1 - max) / temperature) as f64).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The candidate where the cumulative probability first exceeds `r` in [0, 1).
fn draw(candidates: &[(u32, f32)], probs: &[f32], r: f32) -> u32 {
    let mut cumulative = 0.0f32;
    for (c, &p) in candidates.iter().zip(probs) {
        cumulative += p;
        if r < cumulative {
            return c.0;
        }
    }
    // Rounding left the sum just under r: the last candidate.
    candidates[candidates.len() - 1].0
}

/// log(softmax(logits))[index], in f64 for the sum.
pub fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    ((logits[index] - max) as f64 - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(c: &[(u32, f32)]) -> Vec<u32> {
        c.iter().map(|c| c.0).collect()
    }

    /// Logits whose softmax is exactly `probs` (up to rounding): l_i = ln p_i.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative() {
        let mut logits = vec![2.0, -1.0, 0.5, 3.0, 0.0];
        // Token 0 twice (penalized once), 1 once, 3 outside the window.
        apply_repeat_penalty(&mut logits, &[3, 0, 1, 0], 2.0, Some(3));
        assert_eq!(logits, vec![1.0, -2.0, 0.5, 3.0, 0.0]);
        let mut all = vec![2.0, -1.0, 0.5, 3.0, 0.0];
        apply_repeat_penalty(&mut all, &[3, 0, 1, 0, 4, 99], 1.5, None);
        assert_eq!(all, vec![2.0 / 1.5, -1.5, 0.5, 2.0, 0.0]);
    }

    #[test]
    fn top_k_keeps_the_k_largest_with_ties_by_id() {
        let logits = [0.1, 0.9, 0.5, 0.9, -1.0, 0.7];
        assert_eq!(ids(&filter_candidates(&logits, 3, 1.0, 0.0)), vec![1, 3, 5]);
        assert_eq!(ids(&filter_candidates(&logits, 1, 1.0, 0.0)), vec![1]);
        assert_eq!(filter_candidates(&logits, 0, 1.0, 0.0).len(), 6);
    }

    #[test]
    fn top_p_keeps_the_shortest_prefix_reaching_p() {
        // p = [0.5, 0.25, 0.15, 0.1]: cumulative 0.5, 0.75, 0.9, 1.0
        let logits = logits_of(&[0.15, 0.5, 0.1, 0.25]);
        assert_eq!(ids(&filter_candidates(&logits, 0, 0.45, 0.0)), vec![1]);
        assert_eq!(ids(&filter_candidates(&logits, 0, 0.6, 0.0)), vec![1, 3]);
        assert_eq!(ids(&filter_candidates(&logits, 0, 0.8, 0.0)), vec![1, 3, 0]);
        assert_eq!(
            ids(&filter_candidates(&logits, 0, 0.95, 0.0)),
            vec![1, 3, 0, 2]
        );
        // top-p after top-k renormalizes over the k kept: [0.5, 0.25] -> [2/3, 1/3].
        assert_eq!(ids(&filter_candidates(&logits, 2, 0.6, 0.0)), vec![1]);
        assert_eq!(ids(&filter_candidates(&logits, 2, 0.7, 0.0)), vec![1, 3]);
    }

    #[test]
    fn min_p_keeps_tokens_above_a_fraction_of_the_best() {
        // p_max = 0.5: min_p 0.25 keeps p >= 0.125 -> 0.5, 0.25, 0.15; min_p 0.5 keeps 0.5, 0.25.
        let logits = logits_of(&[0.15, 0.5, 0.1, 0.25]);
        assert_eq!(
            ids(&filter_candidates(&logits, 0, 1.0, 0.25)),
            vec![1, 3, 0]
        );
        assert_eq!(ids(&filter_candidates(&logits, 0, 1.0, 0.49)), vec![1, 3]);
        assert_eq!(ids(&filter_candidates(&logits, 0, 1.0, 0.9)), vec![1]);
    }

    #[test]
    fn greedy_is_argmax_after_penalty() {
        let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        let logits = [0.3, 2.0, 1.9, -0.5];
        assert_eq!(sampler.sample(&logits, &[1]).unwrap().id, 1);
        let mut penalized = Sampler::new(SamplingParams {
            repeat_penalty: 1.1,
            ..SamplingParams::greedy()
        })
        .unwrap();
        // 2.0 / 1.1 = 1.818 < 1.9
        assert_eq!(penalized.sample(&logits, &[1]).unwrap().id, 2);
    }

    #[test]
    fn logprob_is_log_softmax_of_raw_logits() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            let exact = l as f64 - z.ln();
            assert!((log_softmax_at(&logits, i) as f64 - exact).abs() < 1e-6);
        }
        let mut sampler = Sampler::new(SamplingParams {
            repeat_penalty: 3.0,
            ..SamplingParams::greedy()
        })
        .unwrap();
        let s = sampler.sample(&logits, &[2]).unwrap();
        assert_eq!(s.id, 1); // 3/3 = 1 < 2
        assert!((s.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplingParams::default()
        };
        let run = |params: &SamplingParams| -> Vec<u32> {
            let mut s = Sampler::new(params.clone()).unwrap();
            (0..40)
                .map(|_| s.sample(&logits, &[]).unwrap().id)
                .collect()
        };
        assert_eq!(run(&params), run(&params));
        let other = SamplingParams {
            seed: 8,
            ..params.clone()
        };
        assert_ne!(run(&params), run(&other));
    }

    #[test]
    fn samples_follow_the_tempered_filtered_distribution() {
        // Five tokens; top-k 4 drops id 4; temperature 0.5 squares the probabilities before renormalising.
        let probs = [0.4, 0.3, 0.2, 0.07, 0.03];
        let logits = logits_of(&probs);
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.5,
            top_k: 4,
            top_p: 1.0,
            min_p: 0.0,
            seed: 2024,
            ..SamplingParams::default()
        })
        .unwrap();
        let n = 40_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[sampler.sample(&logits, &[]).unwrap().id as usize] += 1;
        }
        let squared: Vec<f64> = probs[..4].iter().map(|p| p * p).collect();
        let total: f64 = squared.iter().sum();
        assert_eq!(counts[4], 0);
        for i in 0..4 {
            let expected = squared[i] / total;
            let observed = counts[i] as f64 / n as f64;
            // 5 standard errors of a binomial proportion: a correct sampler fails this with odds < 1e-6.
            let tolerance = 5.0 * (expected * (1.0 - expected) / n as f64).sqrt();
            assert!(
                (observed - expected).abs() < tolerance,
                "token {i}: observed {observed}, expected {expected}"
            );
        }
    }

    #[test]
    fn bad_settings_are_rejected() {
        for params in [
            SamplingParams {
                top_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..SamplingParams::default()
            },
        ] {
            assert!(Sampler::new(params).is_err());
        }
    }
}
