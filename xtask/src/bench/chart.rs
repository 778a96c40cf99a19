//! The PNG chart (plotters): one bar panel per measure plus the send-buffer sweep, bars for
//! medians, whiskers for min–max, a legend of the contenders.

use std::path::Path;

use anyhow::Context as _;

use super::{
    measure::Measure,
    summary::{Summary, find},
};

/// Bar colours per contender column, shared by the chart's panels and legend.
const COLOURS: [(u8, u8, u8); 8] = [
    (120, 120, 120),
    (214, 96, 20),
    (240, 170, 60),
    (40, 90, 180),
    (60, 160, 90),
    (150, 80, 170),
    (200, 60, 60),
    (90, 180, 200),
];

/// One panel of the chart: bars with a colour index, and whether to print their names under
/// them (the send-buffer sweep) or leave that to the legend (the contenders).
struct Panel<'a> {
    caption: String,
    bars: Vec<(&'a str, Option<&'a Summary>, usize)>,
    named_bars: bool,
}

/// A grid of bar charts, one per measure (plus the send-buffer sweep): bars are medians,
/// whiskers min–max.
pub fn chart(
    path: &Path,
    rows: &[String],
    sweep_rows: &[String],
    summaries: &[Summary],
    title: &str,
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    register_font()?;
    let mut panels: Vec<Panel<'_>> = Measure::ALL
        .into_iter()
        .filter(|m| rows.iter().any(|r| find(summaries, r, *m).is_some()))
        .map(|m| Panel {
            caption: m.short().to_string(),
            bars: rows
                .iter()
                .enumerate()
                .map(|(i, r)| (r.as_str(), find(summaries, r, m), i))
                .collect(),
            named_bars: false,
        })
        .collect();
    for measure in [Measure::ThroughputUp, Measure::ThroughputDown] {
        if sweep_rows
            .iter()
            .any(|r| find(summaries, r, measure).is_some())
        {
            panels.push(Panel {
                caption: format!("eBPF sndbuf sweep, {}", measure.short()),
                bars: sweep_rows
                    .iter()
                    .map(|r| {
                        let size = r.rsplit(' ').next().unwrap_or(r);
                        (size, find(summaries, r, measure), 1)
                    })
                    .collect(),
                named_bars: true,
            });
        }
    }
    let columns = 4;
    let grid_rows = (panels.len() + 1).div_ceil(columns);
    let root = BitMapBackend::new(path, (1600, 360 * grid_rows as u32 + 50)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(50);
    header.draw(&Text::new(
        title.to_string(),
        (20, 12),
        ("sans-serif", 24).into_font(),
    ))?;
    let areas = body.split_evenly((grid_rows, columns));
    for (area, panel) in areas.iter().zip(&panels) {
        let top = panel
            .bars
            .iter()
            .filter_map(|(_, s, _)| s.map(|s| s.max))
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.caption, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(10)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..panel.bars.len() as f64, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_labels(6)
            // Small values (CPU seconds per GiB) need more than one decimal to be read.
            .y_label_formatter(&|v| {
                if top < 1.0 {
                    format!("{v:.3}")
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, (name, summary, colour)) in panel.bars.iter().enumerate() {
            let x = i as f64;
            let Some(s) = summary else { continue };
            let (r, g, b) = COLOURS[colour % COLOURS.len()];
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, s.median)],
                RGBColor(r, g, b).filled(),
            )))?;
            if panel.named_bars {
                // The bar's name inside its foot, drawn over it.
                chart.draw_series(std::iter::once(Text::new(
                    name.to_string(),
                    (x + 0.3, top * 0.1),
                    ("sans-serif", 16).into_font().color(&WHITE),
                )))?;
            }
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                x + 0.5,
                s.min,
                s.median,
                s.max,
                BLACK.stroke_width(2),
                12,
            )))?;
        }
    }
    if let Some(legend) = areas.get(panels.len()) {
        for (i, row) in rows.iter().enumerate() {
            let (r, g, b) = COLOURS[i % COLOURS.len()];
            let y = 40 + i as i32 * 34;
            legend.draw(&Rectangle::new(
                [(30, y), (60, y + 22)],
                RGBColor(r, g, b).filled(),
            ))?;
            legend.draw(&Text::new(
                row.clone(),
                (72, y + 2),
                ("sans-serif", 18).into_font(),
            ))?;
        }
        legend.draw(&Text::new(
            "bars: median; whiskers: min–max",
            (30, 40 + rows.len() as i32 * 34 + 10),
            ("sans-serif", 15).into_font(),
        ))?;
    }
    root.present().context("writing the chart")?;
    Ok(())
}

/// plotters' pure-Rust text rendering needs a font registered by hand; DejaVu Sans comes with
/// Debian's fonts-dejavu-core.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading {path} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    let _ = REGISTERED.set(());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{measure::sample, summary::summarize};

    #[test]
    fn chart_renders_a_png() {
        let samples = vec![
            sample(0, "direct", Measure::ThroughputUp, 9.0),
            sample(0, "socat", Measure::ThroughputUp, 3.0),
            sample(0, "socat", Measure::LatencyP99, 300.0),
            sample(0, "--splice-sndbuf 4M", Measure::ThroughputUp, 7.0),
        ];
        let path = std::env::temp_dir().join(format!("bench-chart-{}.png", std::process::id()));
        chart(
            &path,
            &["direct".into(), "socat".into()],
            &["--splice-sndbuf 4M".into()],
            &summarize(&samples),
            "test",
        )
        .unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_file(&path).unwrap();
        assert!(size > 1000, "a PNG with content, got {size} bytes");
    }
}
