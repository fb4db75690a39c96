//! The simulator's latency picture: a histogram of send-to-delivery latency beside the latency
//! at each percentile, written as a PNG.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (plotters' `ab_glyph` backend and the
//! `dejavu` crate), so the plot renders the same on a machine without any system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// What the plot shows besides the histogram itself.
pub struct LatencyPlot<'a> {
    /// Title line (the run's parameters).
    pub title: &'a str,
    /// Second line (counters, throughput).
    pub subtitle: &'a str,
    /// Latency in microseconds.
    pub histogram: &'a Histogram<u64>,
}

const FONT: &str = "sans-serif";

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both styles plotters may ask for map to the same embedded face.
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if register_font(FONT, style, dejavu::sans::regular()).is_err() {
                unreachable!("the embedded DejaVu Sans is a valid font");
            }
        }
    });
}

/// Draws `plot` into a 1200×700 PNG at `path`.
pub fn write_png(path: &Path, plot: &LatencyPlot<'_>) -> Result<()> {
    fonts();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    let h = plot.histogram;
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (head, body) = root.split_vertically(70);
    head.draw_text(plot.title, &(FONT, 22).into_text_style(&head), (20, 10)).map_err(|e| err(&e))?;
    head.draw_text(plot.subtitle, &(FONT, 16).into_text_style(&head), (20, 42)).map_err(|e| err(&e))?;
    if h.is_empty() {
        body.draw_text("no deliveries recorded", &(FONT, 20).into_text_style(&body), (40, 40)).map_err(|e| err(&e))?;
        return root.present().map_err(|e| err(&e));
    }
    let (left, right) = body.split_horizontally(640);
    let ms = |us: u64| us as f64 / 1000.0;

    // Left: histogram up to p99.9 (the tail beyond is in the percentile panel and the max).
    let upper_us = (h.value_at_quantile(0.999) as f64 * 1.05).max(h.min() as f64 + 1.0) as u64 + 1;
    const BINS: u64 = 60;
    let width = (upper_us / BINS).max(1);
    let mut counts = vec![0u64; BINS as usize + 1];
    for v in h.iter_recorded() {
        let bin = (v.value_iterated_to() / width).min(BINS) as usize;
        counts[bin] += v.count_at_value();
    }
    let top = counts[..BINS as usize].iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .caption("delivery latency (up to p99.9)", (FONT, 18))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..ms(width * BINS), 0u64..top + top / 3 + 1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("messages")
        .label_style((FONT, 13))
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(counts[..BINS as usize].iter().enumerate().map(|(i, &n)| {
            let lo = ms(i as u64 * width);
            Rectangle::new([(lo, 0), (lo + ms(width), n)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| err(&e))?;
    for (name, q, color) in [("p50", 0.5, GREEN), ("p99", 0.99, RED), ("p99.9", 0.999, MAGENTA)] {
        let x = ms(h.value_at_quantile(q));
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(x, 0), (x, top)], color.stroke_width(2))))
            .map_err(|e| err(&e))?
            .label(format!("{name} {x:.1} ms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(|e| err(&e))?;

    // Right: latency by percentile, x in "nines" (1 = 90 %, 2 = 99 %, ...).
    let nines = |q: f64| -(1.0 - q).max(1e-6).log10();
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| (nines(v.quantile_iterated_to()), ms(v.value_iterated_to())))
        .filter(|(x, _)| x.is_finite())
        .collect();
    let x_max = nines((1.0 - 1.0 / h.len() as f64).clamp(0.99, 0.99999)).ceil();
    let y_max = ms(h.max()) * 1.1 + 0.001;
    let mut chart = ChartBuilder::on(&right)
        .margin(15)
        .margin_right(40)
        .caption("latency by percentile", (FONT, 18))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .label_style((FONT, 13))
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            // 0 → 0 %, 1 → 90 %, 2 → 99 %, 3 → 99.9 %, ...
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let decimals = (x.round() as usize).saturating_sub(2);
            format!("{p:.decimals$}%")
        })
        .draw()
        .map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
