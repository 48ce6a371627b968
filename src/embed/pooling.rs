//! Pooling token states into one vector per text, as sentence-transformers' `Pooling` module does.
//!
//! With hidden states H: [b, s, h] and a 0/1 mask M: [b, s] (padding, and with `include_prompt: false`
//! the prompt's tokens, set to 0):
//! ```text
//! mean                 sum_t M_t H_t / max(sum_t M_t, 1e-9)
//! mean_sqrt_len_tokens sum_t M_t H_t / sqrt(max(sum_t M_t, 1e-9))
//! weightedmean         sum_t (t+1) M_t H_t / max(sum_t (t+1) M_t, 1e-9)
//! max                  max_t over tokens with M_t = 1
//! cls                  H at the first token with M_t = 1 (position 0 unless the prompt is excluded)
//! lasttoken            H at the last token with M_t = 1
//! ```
//! Several modes concatenate in the order above as sentence-transformers lists them
//! (cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;

use crate::error::io_error;
use crate::{Context, Error, Result};

/// One pooling strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first (CLS) token.
    Cls,
    /// Elementwise max over tokens.
    Max,
    /// Mean over tokens.
    Mean,
    /// Sum over tokens divided by sqrt(token count).
    MeanSqrtLen,
    /// Mean weighted by position (1, 2, ...).
    WeightedMean,
    /// The last token.
    LastToken,
}

impl PoolingMode {
    /// (legacy boolean key, new name) in sentence-transformers' concatenation order.
    const ALL: [(PoolingMode, &'static str, &'static str); 6] = [
        (PoolingMode::Cls, "pooling_mode_cls_token", "cls"),
        (PoolingMode::Max, "pooling_mode_max_tokens", "max"),
        (PoolingMode::Mean, "pooling_mode_mean_tokens", "mean"),
        (
            PoolingMode::MeanSqrtLen,
            "pooling_mode_mean_sqrt_len_tokens",
            "mean_sqrt_len_tokens",
        ),
        (
            PoolingMode::WeightedMean,
            "pooling_mode_weightedmean_tokens",
            "weightedmean",
        ),
        (
            PoolingMode::LastToken,
            "pooling_mode_lasttoken",
            "lasttoken",
        ),
    ];

    /// The sentence-transformers name (`mean`, `cls`, ...).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _, _)| *m == self)
            .map(|(_, _, n)| *n)
            .unwrap_or("mean")
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, _, n)| *n == name)
            .map(|(m, _, _)| *m)
    }
}

/// The pooling of a sentence-transformers model (`1_Pooling/config.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolingConfig {
    /// The modes, concatenated in this order.
    pub modes: Vec<PoolingMode>,
    /// Whether prompt tokens take part in the pooling (`include_prompt`, default true).
    pub include_prompt: bool,
}

impl Default for PoolingConfig {
    /// Mean pooling over every token: what sentence-transformers builds for a plain HF encoder.
    fn default() -> Self {
        Self {
            modes: vec![PoolingMode::Mean],
            include_prompt: true,
        }
    }
}

impl PoolingConfig {
    /// Reads a pooling config in either format sentence-transformers writes: the legacy booleans
    /// (`pooling_mode_mean_tokens: true`, ...) or v5+'s `pooling_mode: "mean" | [..]`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&value).map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn from_json(value: &Value) -> std::result::Result<Self, String> {
        let include_prompt = value
            .get("include_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut modes = Vec::new();
        match value.get("pooling_mode") {
            Some(Value::String(name)) => modes.push(parse_mode(name)?),
            Some(Value::Array(names)) => {
                for name in names {
                    let name = name
                        .as_str()
                        .ok_or_else(|| format!("pooling_mode entry {name} is not a string"))?;
                    modes.push(parse_mode(name)?);
                }
            }
            Some(other) => return Err(format!("pooling_mode {other} is not a string or list")),
            None => {
                for (mode, key, _) in PoolingMode::ALL {
                    if value.get(key).and_then(Value::as_bool).unwrap_or(false) {
                        modes.push(mode);
                    }
                }
            }
        }
        if modes.is_empty() {
            // sentence-transformers falls back to mean when no legacy flag is set.
            modes.push(PoolingMode::Mean);
        }
        Ok(Self {
            modes,
            include_prompt,
        })
    }

    /// Output width for hidden width `hidden`.
    pub fn output_dim(&self, hidden: usize) -> usize {
        self.modes.len() * hidden
    }

    /// hidden: [b, s, h]; `lengths[i]`: real tokens of row i (padding follows on the right);
    /// `prompt_tokens`: leading tokens to leave out when `include_prompt` is false.
    /// -> [b, modes * h] in f32.
    pub fn pool(&self, hidden: &Tensor, lengths: &[usize], prompt_tokens: usize) -> Result<Tensor> {
        let (b, s, h) = hidden
            .dims3()
            .context("pooling input [batch, seq, hidden]")?;
        let hidden = hidden.to_dtype(DType::F32).context("pooling in f32")?;
        let skip = if self.include_prompt {
            0
        } else {
            prompt_tokens
        };
        // 0/1 mask, row-major [b, s]; first/last pooled token per row.
        let mut mask = vec![0f32; b * s];
        let mut first = Vec::with_capacity(b);
        let mut last = Vec::with_capacity(b);
        for (row, &len) in lengths.iter().enumerate() {
            let len = len.min(s);
            for t in skip.min(len)..len {
                mask[row * s + t] = 1.0;
            }
            // Row with no pooled token: sentence-transformers' argmax gives 0 for cls and
            // falls back to the (masked, so zero) last position for lasttoken.
            let (f, l) = if skip < len {
                (skip, len - 1)
            } else {
                (0, s - 1)
            };
            first.push((row * s + f) as u32);
            last.push((row * s + l) as u32);
        }
        let device = hidden.device();
        let mask = Tensor::from_vec(mask, (b, s, 1), device).context("pooling mask")?;
        let mut parts = Vec::with_capacity(self.modes.len());
        for mode in &self.modes {
            let part = match mode {
                PoolingMode::Cls => gather_rows(&hidden, &first, device)?,
                PoolingMode::LastToken => {
                    let masked = hidden.broadcast_mul(&mask).context("lasttoken mask")?;
                    gather_rows(&masked, &last, device)?
                }
                PoolingMode::Max => {
                    // Masked positions pushed far below any activation: (M - 1) * 1e30.
                    let offset = ((&mask - 1.0).context("max mask")? * 1e30).context("max mask")?;
                    hidden
                        .broadcast_add(&offset)
                        .and_then(|x| x.max(1))
                        .context("max pooling")?
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let sum = hidden
                        .broadcast_mul(&mask)
                        .and_then(|x| x.sum(1))
                        .context("mean pooling sum")?;
                    let mut count = mask
                        .sum(1)
                        .and_then(|c| c.clamp(1e-9f32, f32::MAX))
                        .context("mean pooling count")?;
                    if *mode == PoolingMode::MeanSqrtLen {
                        count = count.sqrt().context("sqrt of count")?;
                    }
                    sum.broadcast_div(&count).context("mean pooling")?
                }
                PoolingMode::WeightedMean => {
                    let positions: Vec<f32> = (1..=s).map(|t| t as f32).collect();
                    let weights = Tensor::from_vec(positions, (1, s, 1), device)
                        .and_then(|w| w.broadcast_mul(&mask))
                        .context("position weights")?;
                    let sum = hidden
                        .broadcast_mul(&weights)
                        .and_then(|x| x.sum(1))
                        .context("weighted sum")?;
                    let total = weights
                        .sum(1)
                        .and_then(|c| c.clamp(1e-9f32, f32::MAX))
                        .context("weight total")?;
                    sum.broadcast_div(&total).context("weighted mean")?
                }
            };
            parts.push(part);
        }
        let pooled = Tensor::cat(&parts, D::Minus1).context("concatenating pooling modes")?;
        debug_assert_eq!(pooled.dims(), &[b, self.output_dim(h)]);
        Ok(pooled)
    }
}

fn parse_mode(name: &str) -> std::result::Result<PoolingMode, String> {
    PoolingMode::parse(name).ok_or_else(|| {
        let known: Vec<&str> = PoolingMode::ALL.iter().map(|(_, _, n)| *n).collect();
        format!(
            "unknown pooling mode `{name}` (known: {})",
            known.join(", ")
        )
    })
}

/// Rows `index` (flat b*s positions) of x: [b, s, h] -> [len(index), h].
fn gather_rows(x: &Tensor, index: &[u32], device: &Device) -> Result<Tensor> {
    let (b, s, h) = x.dims3().context("gather input")?;
    let index = Tensor::new(index, device).context("gather index")?;
    x.reshape((b * s, h))
        .and_then(|flat| flat.index_select(&index, 0))
        .context("gathering pooled token")
}

/// Scales each row to unit L2 norm: x / max(||x||, 1e-12), as torch's `F.normalize`.
/// x: [n, d] f32 -> [n, d].
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()
        .and_then(|s| s.sum_keepdim(D::Minus1))
        .and_then(|s| s.sqrt())
        .and_then(|n| n.clamp(1e-12f32, f32::MAX))
        .context("row norms")?;
    x.broadcast_div(&norm).context("normalizing rows")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Plain loops over [b, s, h] as the reference.
    fn reference(
        mode: PoolingMode,
        x: &[f32],
        s: usize,
        h: usize,
        len: usize,
        skip: usize,
        row: usize,
    ) -> Vec<f32> {
        let at = |t: usize, j: usize| x[(row * s + t) * h + j];
        let tokens: Vec<usize> = (skip.min(len)..len).collect();
        (0..h)
            .map(|j| match mode {
                PoolingMode::Cls => at(tokens[0], j),
                PoolingMode::LastToken => at(*tokens.last().unwrap(), j),
                PoolingMode::Max => tokens.iter().map(|&t| at(t, j)).fold(f32::MIN, f32::max),
                PoolingMode::Mean => {
                    tokens.iter().map(|&t| at(t, j)).sum::<f32>() / tokens.len() as f32
                }
                PoolingMode::MeanSqrtLen => {
                    tokens.iter().map(|&t| at(t, j)).sum::<f32>() / (tokens.len() as f32).sqrt()
                }
                PoolingMode::WeightedMean => {
                    let num: f32 = tokens.iter().map(|&t| (t + 1) as f32 * at(t, j)).sum();
                    let den: f32 = tokens.iter().map(|&t| (t + 1) as f32).sum();
                    num / den
                }
            })
            .collect()
    }

    #[test]
    fn every_mode_matches_loops_with_padding_and_prompt() {
        let (b, s, h) = (3, 7, 5);
        let x = seeded(b * s * h, 7);
        let lengths = [7, 4, 2];
        let hidden = Tensor::from_vec(x.clone(), (b, s, h), &Device::Cpu).unwrap();
        for (mode, _, _) in PoolingMode::ALL {
            for (include_prompt, prompt) in [(true, 0), (false, 1)] {
                let config = PoolingConfig {
                    modes: vec![mode],
                    include_prompt,
                };
                let got: Vec<Vec<f32>> = config
                    .pool(&hidden, &lengths, prompt)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                for row in 0..b {
                    let want = reference(mode, &x, s, h, lengths[row], prompt, row);
                    for j in 0..h {
                        assert!(
                            (got[row][j] - want[j]).abs() < 1e-5,
                            "{mode:?} prompt {prompt} row {row} col {j}: {} vs {}",
                            got[row][j],
                            want[j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reads_legacy_and_new_configs() {
        let legacy = serde_json::json!({"word_embedding_dimension": 384,
            "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false});
        let config = PoolingConfig::from_json(&legacy).unwrap();
        assert_eq!(config.modes, vec![PoolingMode::Cls, PoolingMode::Mean]);
        assert!(config.include_prompt);
        let new = serde_json::json!({"embedding_dimension": 8, "pooling_mode": ["max", "lasttoken"],
            "include_prompt": false});
        let config = PoolingConfig::from_json(&new).unwrap();
        assert_eq!(config.modes, vec![PoolingMode::Max, PoolingMode::LastToken]);
        assert!(!config.include_prompt);
        let none = serde_json::json!({"word_embedding_dimension": 8});
        assert_eq!(
            PoolingConfig::from_json(&none).unwrap(),
            PoolingConfig::default()
        );
        let bad = serde_json::json!({"pooling_mode": "median"});
        assert!(PoolingConfig::from_json(&bad)
            .unwrap_err()
            .contains("median"));
    }

    #[test]
    fn l2_normalize_gives_unit_rows() {
        let x = Tensor::from_vec(seeded(12, 3), (3, 4), &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = l2_normalize(&x).unwrap().to_vec2().unwrap();
        for row in y {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6);
        }
    }
}
