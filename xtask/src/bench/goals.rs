//! devicelink's published performance goals, each a ratio of medians against the peer users
//! would pick instead, and whether a run met them.

use serde::Serialize;

use super::{
    measure::Measure,
    summary::{Summary, find},
};

/// One performance goal and how the run fared against it.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub goal: String,
    /// devicelink's median divided by the peer's.
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

/// The names of the rows the goals compare.
pub struct Rows<'a> {
    /// What users get by default (`--data-plane auto`).
    pub auto: &'a str,
    pub ebpf: &'a str,
    pub userspace: &'a str,
    pub haproxy: &'a str,
    pub socat: &'a str,
}

/// The performance goals, judged on medians: devicelink eBPF against HAProxy splice, the
/// userspace fallback against socat ("on par": at least 0.95x), and the default never the
/// slower of devicelink's own planes.
pub fn judge(summaries: &[Summary], rows: &Rows<'_>) -> Vec<Verdict> {
    let Rows {
        auto,
        ebpf,
        userspace,
        haproxy,
        socat,
    } = *rows;
    let mut out = Vec::new();
    let mut judge =
        |goal: String, ours: &str, peer: &str, measure: Measure, ok: &dyn Fn(f64) -> bool| {
            let ratio = match (
                find(summaries, ours, measure),
                find(summaries, peer, measure),
            ) {
                (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
                _ => None,
            };
            out.push(Verdict {
                goal,
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
    // The default data plane: never the slower choice on a workload users run.
    for measure in [
        Measure::VncFps1,
        Measure::VncFpsMany,
        Measure::ThroughputBidir8,
    ] {
        judge(
            format!("auto {} >= 0.9x userspace", measure.short()),
            auto,
            userspace,
            measure,
            &|r| r >= 0.9,
        );
    }
    for measure in [Measure::ThroughputUp, Measure::ThroughputDown] {
        judge(
            format!("auto {} >= 1.2x userspace", measure.short()),
            auto,
            userspace,
            measure,
            &|r| r >= 1.2,
        );
    }
    judge(
        "auto p99 latency <= userspace".into(),
        auto,
        userspace,
        Measure::LatencyP99,
        &|r| r <= 1.0,
    );
    judge(
        "auto proxy CPU/GiB <= 0.5x userspace".into(),
        auto,
        userspace,
        Measure::ProxyCpuPerGib,
        &|r| r <= 0.5,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{measure::sample, summary::summarize};

    #[test]
    fn goals_compare_medians_in_the_right_direction() {
        let samples = vec![
            sample(0, "ebpf", Measure::ThroughputUp, 12.0),
            sample(0, "haproxy", Measure::ThroughputUp, 10.0),
            sample(0, "ebpf", Measure::LatencyP99, 90.0),
            sample(0, "haproxy", Measure::LatencyP99, 100.0),
            sample(0, "ebpf", Measure::MachineCpuPerGib, 0.8),
            sample(0, "haproxy", Measure::MachineCpuPerGib, 1.0),
        ];
        let rows = Rows {
            auto: "auto",
            ebpf: "ebpf",
            userspace: "user",
            haproxy: "haproxy",
            socat: "socat",
        };
        let v = judge(&summarize(&samples), &rows);
        let met = |prefix: &str| v.iter().find(|v| v.goal.starts_with(prefix)).unwrap().met;
        assert_eq!(
            met("eBPF Gbit/s, 1 stream up"),
            Some(true),
            "1.2x is enough"
        );
        assert_eq!(met("eBPF p99"), Some(true), "lower latency meets the goal");
        assert_eq!(
            met("eBPF whole-machine"),
            Some(false),
            "0.8x CPU is not <= 0.7x"
        );
        assert_eq!(met("eBPF setup"), None, "unmeasured is not judged");
    }
}
