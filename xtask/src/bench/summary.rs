//! Samples -> median and spread (min–max) per row and measure, failed measures left out.

use std::collections::BTreeMap;

use serde::Serialize;

use super::measure::{Measure, Sample};

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

/// The summary of `row`'s `measure`, if it was measured.
pub fn find<'a>(summaries: &'a [Summary], row: &str, measure: Measure) -> Option<&'a Summary> {
    summaries
        .iter()
        .find(|s| s.row == row && s.measure == measure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::sample;

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
}
