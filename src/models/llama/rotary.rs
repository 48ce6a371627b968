//! RoPE for the decoder: the inverse frequencies (with llama3 scaling) and the cos/sin tables for
//! every position, with the attention scale folded into the queries' copy.

use candle_core::{DType, Device, Tensor};

use crate::formats::config::{DecoderConfig, Llama3RopeScaling};
use crate::{Context, Result};

/// Precomputed RoPE tables for every position of the context, in the compute dtype.
#[derive(Debug, Clone)]
pub(super) struct RotaryTables {
    /// cos, sin: [positions, head_dim / 2], for keys.
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    /// The same times 1/sqrt(head_dim), for queries (folds the attention scale into rope).
    pub(super) cos_q: Tensor,
    pub(super) sin_q: Tensor,
}

/// RoPE inverse frequencies `theta^(-2i/d)`, with llama3 scaling when the config asks for it.
/// Computed in f32 the way HF transformers does, so positions agree bit for bit as far as possible.
pub fn rope_inverse_frequencies(cfg: &DecoderConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let inv: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect();
    match &cfg.rope_scaling {
        None => inv,
        Some(scaling) => inv.iter().map(|&f| llama3_scale(f, scaling)).collect(),
    }
}

/// Llama 3.x frequency scaling (HF `_compute_llama3_parameters`): low frequencies (long wavelengths)
/// divided by `factor`, high frequencies kept, a linear blend between the two cut-offs.
fn llama3_scale(inv_freq: f32, s: &Llama3RopeScaling) -> f32 {
    let old_context = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_context / s.low_freq_factor as f32;
    let high_freq_wavelen = old_context / s.high_freq_factor as f32;
    let factor = s.factor as f32;
    let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
    if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else if wavelen < high_freq_wavelen {
        inv_freq
    } else {
        let smooth = (old_context / wavelen - s.low_freq_factor as f32)
            / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

impl RotaryTables {
    pub(super) fn new(cfg: &DecoderConfig, dtype: DType, device: &Device) -> Result<Self> {
        let inv = rope_inverse_frequencies(cfg);
        let half = inv.len();
        let positions = cfg.max_position_embeddings;
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let scaled = |v: &[f32]| v.iter().map(|x| x * scale).collect::<Vec<f32>>();
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Tensor::from_vec(v, (positions, half), device)
                .and_then(|t| t.to_dtype(dtype))
                .context("building rope tables")
        };
        Ok(Self {
            cos_q: table(scaled(&cos))?,
            sin_q: table(scaled(&sin))?,
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }
}

/// The rope tables narrowed to the positions of one forward call.
pub(super) struct PositionTables {
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    pub(super) cos_q: Tensor,
    pub(super) sin_q: Tensor,
}
