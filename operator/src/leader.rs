//! Leader election through a `coordination.k8s.io/v1` Lease, so that two or more operator
//! replicas never reconcile at once: one leads, the others wait to take over.
//!
//! The protocol is client-go's: the leader renews `renewTime` well within
//! `leaseDurationSeconds`; a follower takes the Lease over once it has seen no change of the
//! Lease's record (holder, renewTime, ...) for that long, timed on its own clock from when it
//! observed the last change. It never compares the holder's timestamps with its own clock, so
//! clocks that disagree between nodes cannot make it take over a Lease being renewed. Every
//! write carries the `resourceVersion` it read, so when two replicas race the API server accepts
//! one and answers the other 409 Conflict. Every API call has a deadline. A leader that cannot
//! renew in time steps down (the binary exits, and Kubernetes restarts it as a follower).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

use crate::{Error, Result, clock::Clock, metrics::Metrics};

/// What to do with the Lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// There is no Lease yet: create it, held by us.
    Create,
    /// We hold it: move `renewTime` forward.
    Renew,
    /// Nobody holds it, or its holder has not renewed in time: take it.
    TakeOver,
    /// Someone else holds it and renews it: wait.
    Follow { holder: String },
}

/// Decides from the Lease (if any), who we are, and whether its record has gone unchanged for
/// its whole duration as we observed it (`lapsed`). Pure.
pub fn decide(lease: Option<&Lease>, identity: &str, lapsed: bool) -> LeaseAction {
    let Some(lease) = lease else {
        return LeaseAction::Create;
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if holder.is_empty() {
        return LeaseAction::TakeOver;
    }
    if holder == identity {
        return LeaseAction::Renew;
    }
    if lapsed {
        LeaseAction::TakeOver
    } else {
        LeaseAction::Follow { holder }
    }
}

/// The last record of the Lease this replica saw change, and when it saw it (its own clock).
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    record: LeaseSpec,
    at: Timestamp,
}

/// Whether the Lease's record has gone unchanged, as this replica observed it, for its
/// duration; records `spec` as observed at `now` when it changed.
fn observe(last: &mut Option<Observation>, spec: &LeaseSpec, now: Timestamp) -> bool {
    match last {
        Some(seen) if seen.record == *spec => {
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            seen.at
                .checked_add(duration)
                .is_ok_and(|lapses_at| lapses_at <= now)
        }
        _ => {
            *last = Some(Observation {
                record: spec.clone(),
                at: now,
            });
            false
        }
    }
}

/// One replica's side of the election.
#[derive(Clone)]
pub struct LeaderElection {
    leases: Api<Lease>,
    lease_name: String,
    identity: String,
    lease_duration: Duration,
    /// The deadline of each API call, so that a hung connection cannot outlast the Lease.
    pub call_timeout: Duration,
    pub clock: Clock,
    observed: Arc<Mutex<Option<Observation>>>,
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            lease_name: lease_name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
            call_timeout: (lease_duration / 3).max(Duration::from_secs(1)),
            clock: Clock::System,
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// `call`, failed if it has not answered within [`Self::call_timeout`].
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| Error::LeaseTimeout(self.call_timeout))
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: reads the Lease and creates, renews or takes it over when it should.
    /// True when this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let current = self
            .bounded(self.leases.get_opt(&self.lease_name))
            .await?
            .map_err(Error::Lease)?;
        let now = self.clock.now();
        let lapsed = current
            .as_ref()
            .and_then(|lease| lease.spec.as_ref())
            .is_some_and(|spec| {
                let mut observed = self
                    .observed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                observe(&mut observed, spec, now)
            });
        let action = decide(current.as_ref(), &self.identity, lapsed);
        let lease = match (&action, current) {
            (LeaseAction::Follow { .. }, _) => return Ok(false),
            (LeaseAction::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self
                    .bounded(self.leases.create(&PostParams::default(), &lease))
                    .await?
                {
                    Ok(_) => {
                        info!(identity = %self.identity, lease = %self.lease_name, "created the Lease: leading");
                        Ok(true)
                    }
                    Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                    Err(error) => Err(Error::Lease(error)),
                };
            }
            (LeaseAction::Renew, Some(mut lease)) => {
                let spec = lease.spec.take().unwrap_or_default();
                let acquired = spec.acquire_time.map_or(now, |t| t.0);
                lease.spec = Some(self.spec(acquired, now, spec.lease_transitions.unwrap_or(0)));
                lease
            }
            (LeaseAction::TakeOver, Some(mut lease)) => {
                let transitions = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0)
                    + 1;
                lease.spec = Some(self.spec(now, now, transitions));
                lease
            }
        };
        // `replace` sends the resourceVersion we read: a concurrent writer makes it a 409.
        match self
            .bounded(
                self.leases
                    .replace(&self.lease_name, &PostParams::default(), &lease),
            )
            .await?
        {
            Ok(_) => {
                if action == LeaseAction::TakeOver {
                    info!(identity = %self.identity, lease = %self.lease_name, "took over the Lease: leading");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(error) => Err(Error::Lease(error)),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up (when stopping), so that another replica takes over at once rather
    /// than after a whole lease duration. Does nothing if someone else holds it.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self
            .bounded(self.leases.get_opt(&self.lease_name))
            .await?
            .map_err(Error::Lease)?
        else {
            return Ok(());
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        match self
            .bounded(
                self.leases
                    .replace(&self.lease_name, &PostParams::default(), &lease),
            )
            .await?
        {
            Ok(_) => {
                info!(identity = %self.identity, lease = %self.lease_name, "released the Lease");
                Ok(())
            }
            // Someone wrote it since: it is not ours to release any more.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(()),
            Err(error) => Err(Error::Lease(error)),
        }
    }

    /// Waits until this replica leads, trying every `retry`.
    pub async fn acquire(&self, retry: Duration, metrics: &Metrics) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    metrics.leader.set(1);
                    return;
                }
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election: will retry"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews every `renew` while leading; returns once leadership is lost (another replica
    /// holds the Lease, or no renewal succeeded within the renew deadline, two thirds of the
    /// lease duration: stepping down before a follower may take over, not after).
    pub async fn hold(&self, renew: Duration, metrics: &Metrics) -> Error {
        let renew_deadline = self.lease_duration * 2 / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(renew).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    metrics.leader.set(0);
                    return Error::LostLeadership("another replica holds the Lease".to_owned());
                }
                Err(error) if last_renewed.elapsed() >= renew_deadline => {
                    metrics.leader.set(0);
                    return Error::LostLeadership(format!(
                        "could not renew the Lease within its renew deadline ({renew_deadline:?}): {error}"
                    ));
                }
                Err(error) => warn!(%error, "could not renew the Lease; still within its duration"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn no_lease_means_create_it() {
        assert_eq!(decide(None, "a", false), LeaseAction::Create);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let lease = lease("a", "2026-11-25T08:00:00Z", 15);
        assert_eq!(decide(Some(&lease), "a", true), LeaseAction::Renew);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let lease = lease("", "2026-11-25T08:00:00Z", 15);
        assert_eq!(decide(Some(&lease), "b", false), LeaseAction::TakeOver);
    }

    #[test]
    fn a_lease_lapses_only_after_its_duration_without_change_on_the_followers_own_clock() {
        // The holder's clock is an hour behind ours: its renewTime alone says nothing.
        let first = lease("a", "2026-11-25T07:00:00Z", 15).spec.unwrap();
        let mut seen = None;
        assert!(
            !observe(&mut seen, &first, at("2026-11-25T08:00:00Z")),
            "first sight"
        );
        assert!(!observe(&mut seen, &first, at("2026-11-25T08:00:14Z")));
        let renewed = lease("a", "2026-11-25T07:00:10Z", 15).spec.unwrap();
        assert!(
            !observe(&mut seen, &renewed, at("2026-11-25T08:00:15Z")),
            "renewed: the 15s start again from when we saw it"
        );
        assert!(!observe(&mut seen, &renewed, at("2026-11-25T08:00:29Z")));
        assert!(
            observe(&mut seen, &renewed, at("2026-11-25T08:00:30Z")),
            "unchanged for 15s of our own time"
        );
    }
}
