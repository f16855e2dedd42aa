//! `--plot FILE.svg|FILE.png`: a histogram of the scores with the quantiles marked, drawn with
//! plotters. Text uses the DejaVu Sans font embedded in the binary, so a plot looks the same on
//! every machine and needs no system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use skyscore_core::DistributionSummary;

/// Pixels (PNG) or user units (SVG): readable on a laptop screen without zooming.
pub const PLOT_SIZE: (u32, u32) = (1200, 720);

/// Quantiles drawn as lines (all nine crowd the picture; these are the ones thresholds come from).
const MARKED: [u8; 7] = [1, 10, 25, 50, 75, 90, 99];

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is a valid TrueType font"));
    });
}

/// What a histogram counts: the values on its x axis, and how their quantile labels are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Scores,
    /// Tokens per row (`--plot-lengths`).
    Tokens,
}

/// Writes the histogram of `summary` to `path` (`.svg` or `.png`) under `title`.
pub fn write_histogram(path: &Path, summary: &DistributionSummary, title: &str, measure: Measure) -> Result<()> {
    register_font();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "svg" => draw_histogram(SVGBackend::new(path, PLOT_SIZE).into_drawing_area(), summary, title, measure),
        "png" => draw_histogram(BitMapBackend::new(path, PLOT_SIZE).into_drawing_area(), summary, title, measure),
        _ => bail!("{}: --plot writes .svg or .png files", path.display()),
    }
    .with_context(|| format!("drawing {}", path.display()))
}

/// Checks up front that a plot can be written there (the run is long; the plot comes last).
pub fn check_plot_path(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "svg" && ext != "png" {
        bail!("{}: --plot writes .svg or .png files", path.display());
    }
    crate::io::check_writable(path)
}

fn draw_histogram<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    s: &DistributionSummary,
    title: &str,
    measure: Measure,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(error)?;
    let h = &s.histogram;
    let (x0, x1) = match (h.edges.first(), h.edges.last()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        _ => (s.min - 0.5, s.max + 0.5),
    };
    let top = h.counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.18;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(24)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, 0.0..top)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc(match measure {
            Measure::Scores => "score",
            Measure::Tokens => "tokens per row (before truncation)",
        })
        .y_desc("rows")
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 16))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(error)?;
    let bar = RGBColor(66, 110, 180);
    chart
        .draw_series(
            h.counts
                .iter()
                .enumerate()
                .map(|(i, &c)| Rectangle::new([(h.edges[i], 0.0), (h.edges[i + 1], c as f64)], bar.mix(0.85).filled())),
        )
        .map_err(error)?;
    let line = RGBColor(200, 60, 40);
    for (k, p) in MARKED.iter().enumerate() {
        let Some(v) = s.quantiles.get(*p) else { continue };
        chart.draw_series(LineSeries::new([(v, 0.0), (v, top * 0.9)], line.stroke_width(2))).map_err(error)?;
        // Labels alternate between two heights so neighbouring quantiles stay readable.
        let y = if k % 2 == 0 { top * 0.97 } else { top * 0.92 };
        let label = match measure {
            Measure::Scores => format!("p{p} {v:.2}"),
            Measure::Tokens => format!("p{p} {v:.0}"),
        };
        chart.draw_series(std::iter::once(Text::new(label, (v, y), ("sans-serif", 15).into_font()))).map_err(error)?;
    }
    root.present().map_err(error)?;
    Ok(())
}
