//! Learning-rate schedules with linear warmup, as transformers' `get_{constant,linear,cosine}_schedule_with_warmup`:
//! the rate at optimizer step `s` (0-based: the first update uses `s = 0`) is `lr * factor(s)` with
//!
//! ```text
//! warmup (s < W):  s / max(1, W)
//! constant:        1
//! linear:          max(0, (T - s) / max(1, T - W))
//! cosine:          max(0, 0.5 * (1 + cos(pi * (s - W) / max(1, T - W))))
//! ```
//!
//! A schedule is a pure function of the step, so resuming needs only the step count.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl ScheduleKind {
    /// Parses `constant`, `linear` or `cosine`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(Error::InvalidOption {
                option: "--scheduler".into(),
                reason: format!("unknown schedule `{other}` (constant, linear or cosine)"),
            }),
        }
    }
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return self.lr * s / w.max(1.0);
        }
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (PI * progress).cos())).max(0.0)
            }
        };
        self.lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_formulas() {
        let s = |kind| Schedule {
            kind,
            lr: 1.0,
            warmup_steps: 2,
            total_steps: 10,
        };
        // Warmup: 0, 0.5, then the decay starts at 1.
        assert_eq!(s(ScheduleKind::Linear).lr_at(0), 0.0);
        assert_eq!(s(ScheduleKind::Linear).lr_at(1), 0.5);
        assert_eq!(s(ScheduleKind::Linear).lr_at(2), 1.0);
        assert_eq!(s(ScheduleKind::Linear).lr_at(6), 0.5);
        assert_eq!(s(ScheduleKind::Linear).lr_at(10), 0.0);
        assert!((s(ScheduleKind::Cosine).lr_at(6) - 0.5).abs() < 1e-12);
        assert!((s(ScheduleKind::Cosine).lr_at(4) - 0.5 * (1.0 + (PI / 4.0).cos())).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Constant).lr_at(9), 1.0);
    }
}
