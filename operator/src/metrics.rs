//! Prometheus metrics of the operator: reconciles, errors by kind, reconcile duration, links by
//! phase, and whether this replica leads.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::time::Instant;

use crate::resource::{DeviceLink, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's kind (see `Error::metric_label`), never a free-form message.
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Every metric, registered once, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub links: Family<PhaseLabels, Gauge>,
    pub leader: Gauge,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("devicelink_operator");
        let metrics = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0]),
            links: Family::default(),
            leader: Gauge::default(),
            registry: Arc::new(Registry::default()),
        };
        registry.register("reconciles", "Reconciles run", metrics.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "links",
            "DeviceLinks by status phase",
            metrics.links.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            duration: self.duration.clone(),
        }
    }

    pub fn reconcile_failed(&self, error_kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error_kind.to_owned(),
            })
            .inc();
    }

    /// Sets the links-by-phase gauges from the controller's cache (called at each scrape, so
    /// deleted links drop out without bookkeeping). Links not yet reconciled count as Pending.
    pub fn count_links<'a>(&self, links: impl IntoIterator<Item = &'a DeviceLink>) {
        let mut counts = [0_i64; Phase::ALL.len()];
        for link in links {
            let phase = link
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            let index = Phase::ALL
                .iter()
                .position(|p| *p == phase)
                .expect("every phase is listed");
            counts[index] += 1;
        }
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            self.links
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str().to_owned(),
                })
                .set(count);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Records the reconcile's duration when dropped, whichever way the reconcile ended.
pub struct ReconcileTimer {
    start: Instant,
    duration: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::DeviceLinkStatus;

    #[test]
    fn links_are_counted_by_phase_and_every_phase_is_exported() {
        let metrics = Metrics::default();
        let mut active: DeviceLink = serde_yaml::from_str(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {name: a}\nspec: {device: {host: h, port: 22}, allowedSourceRanges: [203.0.113.0/24], ttl: 2h}\n",
        )
        .unwrap();
        let fresh = active.clone();
        active.status = Some(DeviceLinkStatus {
            phase: Some(Phase::Active),
            ..DeviceLinkStatus::default()
        });
        metrics.count_links([&active, &active.clone(), &fresh]);
        let text = metrics.encode();
        assert!(
            text.contains("devicelink_operator_links{phase=\"Active\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("devicelink_operator_links{phase=\"Pending\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("devicelink_operator_links{phase=\"Expired\"} 0"),
            "{text}"
        );
        drop(metrics.reconcile_started());
        metrics.reconcile_failed("kube");
        let text = metrics.encode();
        assert!(
            text.contains("devicelink_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("devicelink_operator_reconcile_errors_total{error=\"kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("devicelink_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
