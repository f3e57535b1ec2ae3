//! Completion-time CDF per system as a PNG (plotters, bitmap backend). Text needs a
//! TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core` if present, else the
//! plot is drawn without any text (axes, lines and the T_min marker only).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::report::Report;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const COLORS: [RGBColor; 4] = [
    RGBColor(0x99, 0x99, 0x99),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Register a system font as "sans-serif"; false if none could be loaded.
fn load_font() -> bool {
    for path in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process; leak one copy.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draw the CDF of completion times of every system that completed somewhere.
pub fn cdf(report: &Report, path: &Path) -> Result<()> {
    let text = load_font();
    let series: Vec<(&str, Vec<f64>, usize)> = report
        .systems
        .iter()
        .filter_map(|s| {
            let mut t: Vec<f64> = s.completion_seconds.iter().flatten().copied().collect();
            if t.is_empty() {
                return None;
            }
            t.sort_by(f64::total_cmp);
            Some((s.system.as_str(), t, s.completion_seconds.len()))
        })
        .collect();
    let x_max = series
        .iter()
        .filter_map(|(_, t, _)| t.last().copied())
        .fold(report.t_min_seconds, f64::max)
        * 1.05;

    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(
                format!(
                    "Scenario {}: completion-time CDF (N={}, F={} MiB)",
                    report.scenario,
                    report.nodes,
                    report.object_bytes >> 20
                ),
                ("sans-serif", 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(60);
    } else {
        builder.x_label_area_size(10).y_label_area_size(10);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..x_max, 0.0..1.02)
        .map_err(|e| anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since release")
            .y_desc("share of nodes complete")
            .label_style(("sans-serif", 15));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow!("{e}"))?;

    let t_min = report.t_min_seconds;
    let marker = chart
        .draw_series(LineSeries::new(
            [(t_min, 0.0), (t_min, 1.02)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        marker
            .label(format!("T_min = {t_min:.1} s"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    for (i, (name, times, n)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = vec![(0.0, 0.0)];
        for (k, &t) in times.iter().enumerate() {
            points.push((t, k as f64 / *n as f64));
            points.push((t, (k + 1) as f64 / *n as f64));
        }
        let drawn = chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(|e| anyhow!("{e}"))?;
        if text {
            drawn.label(name.to_string()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
