//! Samples -> medians and spread -> a Markdown table, a JSON file and a PNG chart. Pure except
//! for writing the files, so the arithmetic and the target verdicts are unit-tested.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde::Serialize;

/// What is measured, in the order the table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    ThroughputUp,
    ThroughputDown,
    ThroughputUp8,
    ThroughputBidir8,
    MachineCpuPerGib,
    ProxyCpuPerGib,
    LatencyP50,
    LatencyP99,
    SetupRate,
    IdleRss,
    IdlePss,
    VncFps1,
    VncFpsMany,
}

impl Measure {
    pub const ALL: [Measure; 13] = [
        Measure::ThroughputUp,
        Measure::ThroughputDown,
        Measure::ThroughputUp8,
        Measure::ThroughputBidir8,
        Measure::MachineCpuPerGib,
        Measure::ProxyCpuPerGib,
        Measure::LatencyP50,
        Measure::LatencyP99,
        Measure::SetupRate,
        Measure::IdleRss,
        Measure::IdlePss,
        Measure::VncFps1,
        Measure::VncFpsMany,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Measure::ThroughputUp => "throughput, 1 stream client->device (Gbit/s)",
            Measure::ThroughputDown => "throughput, 1 stream device->client (Gbit/s)",
            Measure::ThroughputUp8 => "throughput, 8 streams client->device (Gbit/s)",
            Measure::ThroughputBidir8 => {
                "throughput, 8 streams each way at once (Gbit/s, both ways summed)"
            }
            Measure::MachineCpuPerGib => "whole-machine CPU per GiB (s)",
            Measure::ProxyCpuPerGib => "proxy process CPU per GiB (s)",
            Measure::LatencyP50 => "64-byte round trip p50 (µs)",
            Measure::LatencyP99 => "64-byte round trip p99 (µs)",
            Measure::SetupRate => "connect + round trip + close (per s)",
            Measure::IdleRss => "RSS with idle connections (MiB, summed over its processes)",
            Measure::IdlePss => "PSS with idle connections (MiB, shared pages split)",
            Measure::VncFps1 => "VNC 1920x1080 raw frames/s, 1 viewer",
            Measure::VncFpsMany => "VNC 1920x1080 raw frames/s, all viewers summed",
        }
    }

    /// A short name for the chart's panels.
    pub fn short(self) -> &'static str {
        match self {
            Measure::ThroughputUp => "Gbit/s, 1 stream up",
            Measure::ThroughputDown => "Gbit/s, 1 stream down",
            Measure::ThroughputUp8 => "Gbit/s, 8 streams up",
            Measure::ThroughputBidir8 => "Gbit/s, 8 streams both ways",
            Measure::MachineCpuPerGib => "machine CPU s/GiB (lower better)",
            Measure::ProxyCpuPerGib => "proxy CPU s/GiB (lower better)",
            Measure::LatencyP50 => "RTT p50 µs (lower better)",
            Measure::LatencyP99 => "RTT p99 µs (lower better)",
            Measure::SetupRate => "connections/s",
            Measure::IdleRss => "RSS MiB, idle conns (lower better)",
            Measure::IdlePss => "PSS MiB, idle conns (lower better)",
            Measure::VncFps1 => "VNC frames/s, 1 viewer",
            Measure::VncFpsMany => "VNC frames/s, many viewers",
        }
    }

    fn decimals(self) -> usize {
        match self {
            Measure::ThroughputUp
            | Measure::ThroughputDown
            | Measure::ThroughputUp8
            | Measure::ThroughputBidir8 => 2,
            Measure::MachineCpuPerGib | Measure::ProxyCpuPerGib => 3,
            Measure::VncFps1 | Measure::VncFpsMany | Measure::IdlePss | Measure::IdleRss => 1,
            _ => 0,
        }
    }
}

/// One measured value of one repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: u32,
    /// A contender's label, or a variant of one (the send-buffer sweep).
    pub row: String,
    pub measure: Measure,
    pub value: f64,
}

/// Median and spread of one row's measure over the repetitions.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub row: String,
    pub measure: Measure,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, Measure), Vec<f64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.value.is_finite()) {
        groups
            .entry((s.row.clone(), s.measure))
            .or_default()
            .push(s.value);
    }
    groups
        .into_iter()
        .map(|((row, measure), mut values)| {
            values.sort_by(f64::total_cmp);
            Summary {
                row,
                measure,
                median: median(&values),
                min: values[0],
                max: values[values.len() - 1],
                samples: values.len(),
            }
        })
        .collect()
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn find<'a>(summaries: &'a [Summary], row: &str, measure: Measure) -> Option<&'a Summary> {
    summaries
        .iter()
        .find(|s| s.row == row && s.measure == measure)
}

/// One of the targets and how the run fared against it.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    /// devicelink's median divided by the peer's.
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

/// The targets, judged on medians: devicelink eBPF against HAProxy splice, and the
/// userspace fallback against socat ("on par": at least 0.95x).
pub fn verdicts(
    summaries: &[Summary],
    ebpf: &str,
    userspace: &str,
    haproxy: &str,
    socat: &str,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut judge =
        |target: String, ours: &str, peer: &str, measure: Measure, ok: &dyn Fn(f64) -> bool| {
            let ratio = match (
                find(summaries, ours, measure),
                find(summaries, peer, measure),
            ) {
                (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
                _ => None,
            };
            out.push(Verdict {
                target,
                ratio,
                met: ratio.map(ok),
            });
        };
    for measure in [
        Measure::ThroughputUp,
        Measure::ThroughputDown,
        Measure::ThroughputUp8,
    ] {
        judge(
            format!("eBPF {} >= 1.2x HAProxy", measure.short()),
            ebpf,
            haproxy,
            measure,
            &|r| r >= 1.2,
        );
    }
    judge(
        "eBPF whole-machine CPU/GiB <= 0.7x HAProxy".into(),
        ebpf,
        haproxy,
        Measure::MachineCpuPerGib,
        &|r| r <= 0.7,
    );
    judge(
        "eBPF p99 latency <= HAProxy".into(),
        ebpf,
        haproxy,
        Measure::LatencyP99,
        &|r| r <= 1.0,
    );
    judge(
        "eBPF setup rate >= HAProxy".into(),
        ebpf,
        haproxy,
        Measure::SetupRate,
        &|r| r >= 1.0,
    );
    for measure in [
        Measure::ThroughputUp,
        Measure::ThroughputDown,
        Measure::ThroughputUp8,
    ] {
        judge(
            format!("userspace {} on par with socat (>= 0.95x)", measure.short()),
            userspace,
            socat,
            measure,
            &|r| r >= 0.95,
        );
    }
    out
}

fn cell(summary: Option<&Summary>, measure: Measure) -> String {
    match summary {
        None => "–".into(),
        Some(s) => {
            let d = measure.decimals();
            if s.samples > 1 {
                format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = d)
            } else {
                format!("{:.d$}", s.median, d = d)
            }
        }
    }
}

/// The Markdown report: the main table (one column per contender), the send-buffer sweep,
/// the targets, and the machine it ran on.
pub fn markdown(
    rows: &[String],
    summaries: &[Summary],
    sweep_rows: &[String],
    verdicts: &[Verdict],
    machine: &str,
    notes: &[String],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}\n");
    let _ = writeln!(md, "Median (min–max) over the repetitions.\n");
    let _ = writeln!(md, "| measure | {} |", rows.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(rows.len()));
    for measure in Measure::ALL {
        if !rows.iter().any(|r| find(summaries, r, measure).is_some()) {
            continue;
        }
        let cells: Vec<String> = rows
            .iter()
            .map(|r| cell(find(summaries, r, measure), measure))
            .collect();
        let _ = writeln!(md, "| {} | {} |", measure.label(), cells.join(" | "));
    }
    if !sweep_rows.is_empty() {
        let _ = writeln!(md, "\ndevicelink eBPF `--splice-sndbuf` sweep (Gbit/s):\n");
        let _ = writeln!(md, "| --splice-sndbuf | 1 stream up | 1 stream down |");
        let _ = writeln!(md, "|---|---:|---:|");
        for row in sweep_rows {
            let up = cell(
                find(summaries, row, Measure::ThroughputUp),
                Measure::ThroughputUp,
            );
            let down = cell(
                find(summaries, row, Measure::ThroughputDown),
                Measure::ThroughputDown,
            );
            let _ = writeln!(md, "| {row} | {up} | {down} |");
        }
        if let Some(best) = best_sweep_row(summaries, sweep_rows) {
            let _ = writeln!(
                md,
                "\nBest (highest median of both directions summed): {best}"
            );
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(md, "\n| target | ratio | met |");
        let _ = writeln!(md, "|---|---:|---|");
        for v in verdicts {
            // Three decimals: 0.704x must not print as a 0.70x that seems to meet "<= 0.7x".
            let ratio = v.ratio.map_or("–".into(), |r| format!("{r:.3}x"));
            let met = match v.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {ratio} | {met} |", v.target);
        }
    }
    for note in notes {
        let _ = writeln!(md, "\n{note}");
    }
    md
}

/// The sweep's size with the highest summed median throughput.
pub fn best_sweep_row<'a>(summaries: &[Summary], sweep_rows: &'a [String]) -> Option<&'a String> {
    let total = |row: &String| {
        [Measure::ThroughputUp, Measure::ThroughputDown]
            .iter()
            .filter_map(|m| find(summaries, row, *m))
            .map(|s| s.median)
            .sum::<f64>()
    };
    sweep_rows
        .iter()
        .max_by(|a, b| total(a).total_cmp(&total(b)))
}

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

    fn sample(round: u32, row: &str, measure: Measure, value: f64) -> Sample {
        Sample {
            round,
            row: row.into(),
            measure,
            value,
        }
    }

    #[test]
    fn summaries_give_median_and_spread_per_row_and_measure() {
        let samples = vec![
            sample(0, "a", Measure::SetupRate, 3.0),
            sample(1, "a", Measure::SetupRate, 1.0),
            sample(2, "a", Measure::SetupRate, 2.0),
            sample(0, "a", Measure::LatencyP50, 10.0),
            sample(1, "a", Measure::LatencyP50, 20.0),
            sample(0, "b", Measure::SetupRate, f64::NAN),
        ];
        let s = summarize(&samples);
        let rate = find(&s, "a", Measure::SetupRate).unwrap();
        assert_eq!(
            (rate.median, rate.min, rate.max, rate.samples),
            (2.0, 1.0, 3.0, 3)
        );
        assert_eq!(find(&s, "a", Measure::LatencyP50).unwrap().median, 15.0);
        assert!(
            find(&s, "b", Measure::SetupRate).is_none(),
            "a failed measure (NaN) is left out, not averaged in"
        );
    }

    #[test]
    fn verdicts_compare_medians_in_the_right_direction() {
        let samples = vec![
            sample(0, "ebpf", Measure::ThroughputUp, 12.0),
            sample(0, "haproxy", Measure::ThroughputUp, 10.0),
            sample(0, "ebpf", Measure::LatencyP99, 90.0),
            sample(0, "haproxy", Measure::LatencyP99, 100.0),
            sample(0, "ebpf", Measure::MachineCpuPerGib, 0.8),
            sample(0, "haproxy", Measure::MachineCpuPerGib, 1.0),
        ];
        let v = verdicts(&summarize(&samples), "ebpf", "user", "haproxy", "socat");
        let met = |prefix: &str| v.iter().find(|v| v.target.starts_with(prefix)).unwrap().met;
        assert_eq!(
            met("eBPF Gbit/s, 1 stream up"),
            Some(true),
            "1.2x is enough"
        );
        assert_eq!(
            met("eBPF p99"),
            Some(true),
            "lower latency meets the target"
        );
        assert_eq!(
            met("eBPF whole-machine"),
            Some(false),
            "0.8x CPU is not <= 0.7x"
        );
        assert_eq!(met("eBPF setup"), None, "unmeasured is not judged");
    }

    #[test]
    fn markdown_shows_median_and_range_per_contender() {
        let samples = vec![
            sample(0, "direct", Measure::ThroughputUp, 9.0),
            sample(1, "direct", Measure::ThroughputUp, 10.0),
            sample(2, "direct", Measure::ThroughputUp, 11.0),
        ];
        let md = markdown(
            &["direct".into()],
            &summarize(&samples),
            &[],
            &[],
            "test machine",
            &[],
        );
        assert!(
            md.contains("| throughput, 1 stream client->device (Gbit/s) | 10.00 (9.00–11.00) |"),
            "{md}"
        );
        assert!(!md.contains("p99"), "unmeasured rows are left out:\n{md}");
    }

    #[test]
    fn best_sweep_row_sums_both_directions() {
        let samples = vec![
            sample(0, "4M", Measure::ThroughputUp, 5.0),
            sample(0, "4M", Measure::ThroughputDown, 5.0),
            sample(0, "8M", Measure::ThroughputUp, 4.0),
            sample(0, "8M", Measure::ThroughputDown, 7.0),
        ];
        let rows = vec!["4M".to_string(), "8M".to_string()];
        assert_eq!(best_sweep_row(&summarize(&samples), &rows), Some(&rows[1]));
    }

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
