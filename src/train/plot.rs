//! The loss curve as a PNG (plotters, bitmap backend): training loss per step, eval loss as points.
//! Text uses a 14 KB ASCII subset of DejaVu Sans shipped in `assets/fonts` (Bitstream Vera licence,
//! `assets/fonts/LICENSE-DejaVu.txt`), so the plot renders the same on machines without fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::metrics::MetricRecord;
use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: format!("drawing the loss curve: {e}"),
    }
}

/// Draws the training (and eval) loss of `records` into a 900x500 PNG at `path`.
/// Written to a temporary PNG beside `path`, then renamed over it.
pub fn write_loss_curve(path: &Path, records: &[MetricRecord]) -> Result<()> {
    let tmp = path.with_file_name(format!(".loss-curve.tmp-{}.png", std::process::id()));
    draw(&tmp, records)?;
    std::fs::rename(&tmp, path).map_err(crate::error::io_error(path))
}

fn draw(path: &Path, records: &[MetricRecord]) -> Result<()> {
    REGISTER.call_once(|| {
        // The font is compiled in; registering it cannot fail for a valid TTF.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            MetricRecord::Train { step, loss, .. } => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            MetricRecord::Eval { step, eval_loss } => Some((*step as f64, *eval_loss)),
            _ => None,
        })
        .collect();
    let all = train.iter().chain(&eval);
    let max_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        ((lo - pad).max(0.0), hi + pad)
    } else {
        (0.0, 1.0)
    };
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("wick LoRA training loss", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, lo..hi)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))
        .map_err(|e| plot_error(path, e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(eval.iter().map(|p| Circle::new(*p, 4, RED.filled())))
            .map_err(|e| plot_error(path, e))?
            .label("eval")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))?;
    Ok(())
}
