//! The Markdown report: the table of medians and spreads, the send-buffer sweep, the
//! performance goals met or not, and the notes.

use std::fmt::Write as _;

use super::{
    goals::Verdict,
    measure::Measure,
    summary::{Summary, find},
};

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
/// the performance goals, and the machine it ran on.
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
        let _ = writeln!(md, "\n| performance goal | ratio | met |");
        let _ = writeln!(md, "|---|---:|---|");
        for v in verdicts {
            // Three decimals: 0.704x must not print as a 0.70x that seems to meet "<= 0.7x".
            let ratio = v.ratio.map_or("–".into(), |r| format!("{r:.3}x"));
            let met = match v.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {ratio} | {met} |", v.goal);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{measure::sample, summary::summarize};

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
}
