//! What a link should be right now, and the status that says so. Pure: the controller feeds in
//! the object, the clock and what the API server reported, and carries out the answer.

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::resource::{
    DeviceLink, DeviceLinkStatus, InvalidSpec, OPEN_REQUEST_ANNOTATION, Phase, ValidLink,
    format_instant,
};

/// The decision for one link at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    /// Apply the children; the link closes at `expires_at`.
    Open {
        link: Box<ValidLink>,
        enabled_at: Timestamp,
        expires_at: Timestamp,
    },
    /// Remove the children: disabled by the user.
    Disabled { enabled_at: Option<Timestamp> },
    /// Remove the children: the TTL or `expiresAt` has passed.
    Expired {
        enabled_at: Timestamp,
        expires_at: Timestamp,
    },
    /// Remove the children: the spec cannot be carried out.
    Invalid(InvalidSpec),
}

/// Decides from the spec, the previous status and the clock.
///
/// A TTL counts from `status.enabledAt`, which is set when the link goes from disabled (or
/// never enabled) to enabled, or is asked to open again by a new
/// [`OPEN_REQUEST_ANNOTATION`]: so re-enabling or re-opening restarts the TTL, and anything
/// else (an ACL change, an operator restart) keeps it.
pub fn decide(link: &DeviceLink, now: Timestamp) -> Desired {
    let valid = match link.validate() {
        Ok(valid) => valid,
        Err(invalid) => return Desired::Invalid(invalid),
    };
    let previous = link.status.as_ref();
    let previous_enabled_at = previous.and_then(|s| s.enabled_at.as_ref()).map(|t| t.0);
    if !valid.enabled {
        return Desired::Disabled {
            enabled_at: previous_enabled_at,
        };
    }
    let was_disabled = previous.and_then(|s| s.phase) == Some(Phase::Disabled);
    let open_requested = open_request(link)
        .is_some_and(|request| previous.and_then(|s| s.open_request.as_deref()) != Some(request));
    let enabled_at = match previous_enabled_at {
        Some(at) if !was_disabled && !open_requested => at,
        _ => now,
    };
    let expires_at = valid.lifetime.expires_at(enabled_at);
    if now >= expires_at {
        Desired::Expired {
            enabled_at,
            expires_at,
        }
    } else {
        Desired::Open {
            link: Box::new(valid),
            enabled_at,
            expires_at,
        }
    }
}

/// Something the user can act on that keeps an open link from serving: the `Ready`
/// condition's reason and message (naming the object and the fix), and a Warning event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The link's open request (the annotation `devicelink open` sets), if any.
pub fn open_request(link: &DeviceLink) -> Option<&str> {
    link.metadata
        .annotations
        .as_ref()?
        .get(OPEN_REQUEST_ANNOTATION)
        .map(String::as_str)
}

/// What the API server said about the applied children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// ADDRESS:PORT from the Service's load balancer ingress, once there is one.
    pub endpoint: Option<String>,
    /// Whether the current proxy pods (of the Deployment's current generation) are available:
    /// an old pod still serving, with the old settings, does not count.
    pub proxy_ready: bool,
    /// Why the link cannot serve, when the user has something to fix.
    pub problem: Option<Problem>,
}

impl Observed {
    pub fn from_children(service: &Service, deployment: &Deployment) -> Self {
        Self {
            endpoint: endpoint_of(service),
            proxy_ready: rollout_complete(deployment),
            problem: deployment_problem(deployment),
        }
    }

    /// The link could not be carried out at all (a name taken, a refusal, the policy).
    pub fn blocked(problem: Problem) -> Self {
        Self {
            problem: Some(problem),
            ..Self::default()
        }
    }
}

/// Whether the Deployment's rollout is done, as `kubectl rollout status` judges it: the
/// controller has seen the current generation, every replica runs the current template and
/// those are available, with no old pod left over.
pub fn rollout_complete(deployment: &Deployment) -> bool {
    let Some(status) = deployment.status.as_ref() else {
        return false;
    };
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let generation = deployment.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= generation
        && updated >= wanted
        && status.replicas.unwrap_or(0) <= updated
        && status.available_replicas.unwrap_or(0) >= updated
}

/// A Deployment condition the user must act on: pods refused (admission, quota) or a rollout
/// that stopped making progress.
pub fn deployment_problem(deployment: &Deployment) -> Option<Problem> {
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let namespace = deployment.metadata.namespace.as_deref().unwrap_or_default();
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find_map(|c| {
        let message = c.message.as_deref().unwrap_or_default();
        match (c.type_.as_str(), c.status.as_str()) {
            ("ReplicaFailure", "True") => Some(Problem::new(
                "ProxyPodsRefused",
                format!(
                    "the proxy pods of Deployment {namespace}/{name} cannot be created: {message} (a quota, a LimitRange or the namespace's pod security level; kubectl -n {namespace} describe replicasets -l devicelink.io/link)"
                ),
            )),
            ("Progressing", "False") => Some(Problem::new(
                "ProxyRolloutStalled",
                format!(
                    "Deployment {namespace}/{name} stopped progressing ({}): {message}; see kubectl -n {namespace} describe deployment {name}",
                    c.reason.as_deref().unwrap_or("no reason given")
                ),
            )),
            _ => None,
        }
    })
}

/// Waiting reasons of a proxy container that will not clear by themselves.
const STUCK_WAITING: [(&str, &str); 6] = [
    ("CrashLoopBackOff", "ProxyCrashLooping"),
    ("ImagePullBackOff", "ProxyImagePullFailed"),
    ("ErrImagePull", "ProxyImagePullFailed"),
    ("InvalidImageName", "ProxyImagePullFailed"),
    ("CreateContainerConfigError", "ProxyCannotStart"),
    ("CreateContainerError", "ProxyCannotStart"),
];

/// A proxy pod whose container is stuck (crash-looping, its image not pulled): the reason and
/// the last words of the container, so the user sees why without reading logs first.
pub fn pod_problem(pods: &[Pod]) -> Option<Problem> {
    pods.iter()
        .find_map(container_problem)
        .or_else(|| pods.iter().find_map(unschedulable))
}

/// A proxy pod no node can take (not enough CPU or memory, a taint, a node selector), as the
/// scheduler said.
fn unschedulable(pod: &Pod) -> Option<Problem> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (condition.reason.as_deref() == Some("Unschedulable")).then(|| {
        Problem::new(
            "ProxyUnschedulable",
            format!(
                "proxy pod {namespace}/{name} cannot be scheduled: {}; see kubectl -n {namespace} describe pod {name}",
                condition.message.as_deref().unwrap_or("no node fits it")
            ),
        )
    })
}

/// A proxy container stuck waiting (see [`STUCK_WAITING`]).
fn container_problem(pod: &Pod) -> Option<Problem> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let waiting_reason = waiting.reason.as_deref()?;
        let (_, reason) = STUCK_WAITING.iter().find(|(w, _)| *w == waiting_reason)?;
        let last_words = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                let said = t
                    .message
                    .as_deref()
                    .or(t.reason.as_deref())
                    .unwrap_or_default()
                    .trim();
                format!("; it last exited with code {}: {said}", t.exit_code)
            })
            .unwrap_or_default();
        let detail = waiting.message.as_deref().unwrap_or_default();
        Some(Problem::new(
            reason,
            format!(
                "proxy pod {namespace}/{name} is {waiting_reason} {detail}{last_words}; see kubectl -n {namespace} logs {name} --previous"
            ).replace("  ", " ").replace(" ;", ";"),
        ))
    })
}

/// The first load balancer ingress address with the Service's port, IPv6 bracketed.
pub fn endpoint_of(service: &Service) -> Option<String> {
    let port = service.spec.as_ref()?.ports.as_ref()?.first()?.port;
    let ingress = service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress.iter().find_map(|entry| {
        let address = entry
            .ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .or(entry.hostname.as_deref().filter(|h| !h.is_empty()))?;
        Some(if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        })
    })
}

/// The status that describes `desired` (with `observed` for an open link).
pub fn status_for(
    link: &DeviceLink,
    desired: &Desired,
    observed: &Observed,
    now: Timestamp,
) -> DeviceLinkStatus {
    // Where the children are, for the messages that send the user to them.
    let (child_namespace, child) = match desired {
        Desired::Open { link: valid, .. } => (valid.children_namespace.clone(), valid.child_name()),
        _ => (String::new(), String::new()),
    };
    let (phase, endpoint, enabled_at, expires_at, ready, reason, message) = match desired {
        Desired::Open {
            enabled_at,
            expires_at,
            ..
        } => {
            let until = format_instant(*expires_at);
            if let Some(problem) = &observed.problem {
                return with_condition(
                    link,
                    now,
                    DeviceLinkStatus {
                        phase: Some(Phase::Failed),
                        endpoint: observed.endpoint.clone(),
                        enabled_at: Some(Time(*enabled_at)),
                        expires_at: Some(Time(*expires_at)),
                        ..DeviceLinkStatus::default()
                    },
                    false,
                    problem.reason,
                    problem.message.clone(),
                );
            }
            match (&observed.endpoint, observed.proxy_ready) {
                (Some(endpoint), true) => (
                    Phase::Active,
                    Some(endpoint.clone()),
                    Some(*enabled_at),
                    Some(*expires_at),
                    true,
                    "Active",
                    format!("open at {endpoint} until {until}"),
                ),
                (None, _) => (
                    Phase::Pending,
                    None,
                    Some(*enabled_at),
                    Some(*expires_at),
                    false,
                    "WaitingForLoadBalancer",
                    format!(
                        "Service {child_namespace}/{child} has no load balancer address yet; if this lasts, check that the cluster has a load balancer implementation (kubectl -n {child_namespace} describe service {child})"
                    ),
                ),
                (Some(endpoint), false) => (
                    Phase::Pending,
                    Some(endpoint.clone()),
                    Some(*enabled_at),
                    Some(*expires_at),
                    false,
                    "WaitingForProxy",
                    format!(
                        "endpoint {endpoint} assigned, proxy not ready yet; if this lasts, see kubectl -n {child_namespace} logs deployment/{child}"
                    ),
                ),
            }
        }
        Desired::Disabled { enabled_at } => (
            Phase::Disabled,
            None,
            *enabled_at,
            None,
            false,
            "Disabled",
            "spec.enabled is false; set it to true to open the link (the TTL restarts)".to_owned(),
        ),
        Desired::Expired {
            enabled_at,
            expires_at,
        } => (
            Phase::Expired,
            None,
            Some(*enabled_at),
            Some(*expires_at),
            false,
            "Expired",
            format!(
                "closed at {}; to reopen, disable and re-enable it (restarts spec.ttl) or move spec.expiresAt later",
                format_instant(*expires_at)
            ),
        ),
        Desired::Invalid(invalid) => {
            let previous = link.status.as_ref();
            (
                Phase::Failed,
                None,
                previous.and_then(|s| s.enabled_at.as_ref()).map(|t| t.0),
                None,
                false,
                "InvalidSpec",
                invalid.to_string(),
            )
        }
    };
    let mut status = with_condition(
        link,
        now,
        DeviceLinkStatus {
            phase: Some(phase),
            endpoint,
            enabled_at: enabled_at.map(Time),
            expires_at: expires_at.map(Time),
            ..DeviceLinkStatus::default()
        },
        ready,
        reason,
        message,
    );
    if matches!(desired, Desired::Invalid(_)) {
        // An invalid link did not act on a request: it is honoured once the spec is fixed.
        status.open_request = link.status.as_ref().and_then(|s| s.open_request.clone());
    }
    status
}

/// `status` with its generation and its one `Ready` condition filled in.
fn with_condition(
    link: &DeviceLink,
    now: Timestamp,
    status: DeviceLinkStatus,
    ready: bool,
    reason: &str,
    message: String,
) -> DeviceLinkStatus {
    let generation = link.metadata.generation;
    let previous_request = link.status.as_ref().and_then(|s| s.open_request.clone());
    let open_request = open_request(link).map(str::to_owned).or(previous_request);
    let ready_status = if ready { "True" } else { "False" };
    let previous_ready = link
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    // The transition time moves only when the condition's status does, as Kubernetes expects.
    let last_transition_time = match previous_ready {
        Some(previous) if previous.status == ready_status => previous.last_transition_time.clone(),
        _ => Time(now),
    };
    DeviceLinkStatus {
        observed_generation: generation,
        open_request,
        conditions: vec![Condition {
            type_: "Ready".to_owned(),
            status: ready_status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            observed_generation: generation,
        }],
        ..status
    }
}

/// A Kubernetes Event worth publishing for a change of phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub reason: String,
    pub warning: bool,
    pub note: String,
}

/// The `Ready` condition's reason of a status, if any.
pub fn ready_reason(status: Option<&DeviceLinkStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

/// Events for opened, closed, expired and failed: once per change, not once per reconcile. A
/// failure is reported again when its reason changes (a crash loop after a refused apply).
pub fn transition(
    previous: Option<&DeviceLinkStatus>,
    status: &DeviceLinkStatus,
) -> Option<Transition> {
    let phase = status.phase?;
    let previous_phase = previous.and_then(|s| s.phase);
    let same_reason = ready_reason(previous) == ready_reason(Some(status));
    if previous_phase == Some(phase) && (phase != Phase::Failed || same_reason) {
        return None;
    }
    let condition = status.conditions.iter().find(|c| c.type_ == "Ready");
    let message = condition.map(|c| c.message.clone()).unwrap_or_default();
    match phase {
        Phase::Active => Some(Transition {
            reason: "Opened".to_owned(),
            warning: false,
            note: message,
        }),
        Phase::Disabled if matches!(previous_phase, Some(Phase::Active | Phase::Pending)) => {
            Some(Transition {
                reason: "Closed".to_owned(),
                warning: false,
                note: "disabled: endpoint and proxy removed".to_owned(),
            })
        }
        Phase::Expired => Some(Transition {
            reason: "Expired".to_owned(),
            warning: false,
            note: message,
        }),
        // The event's reason is the condition's (NameTaken, PolicyDenied, ProxyCrashLooping...),
        // so `kubectl get events` says what went wrong without opening the link.
        Phase::Failed => Some(Transition {
            reason: condition
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| "Failed".to_owned()),
            warning: true,
            note: message,
        }),
        Phase::Pending | Phase::Disabled => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn link(spec: &str, status: Option<DeviceLinkStatus>) -> DeviceLink {
        let yaml = format!(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {{name: pump-17-ssh, namespace: plant-a, generation: 3}}\nspec:\n  device: {{host: 10.20.30.40, port: 22}}\n  allowedSourceRanges: [203.0.113.0/24]\n{spec}"
        );
        let mut link: DeviceLink = serde_yaml::from_str(&yaml).expect("test YAML");
        link.status = status;
        link
    }

    fn status(phase: Phase, enabled_at: &str) -> DeviceLinkStatus {
        DeviceLinkStatus {
            phase: Some(phase),
            enabled_at: Some(Time(at(enabled_at))),
            ..DeviceLinkStatus::default()
        }
    }

    #[test]
    fn new_link_opens_now_and_expires_a_ttl_later() {
        let now = at("2026-11-25T08:00:00Z");
        match decide(&link("  ttl: 2h\n", None), now) {
            Desired::Open {
                enabled_at,
                expires_at,
                ..
            } => {
                assert_eq!(enabled_at, now);
                assert_eq!(expires_at, at("2026-11-25T10:00:00Z"));
            }
            other => panic!("expected Open, got {other:?}"),
        }
    }

    #[test]
    fn ttl_keeps_counting_from_the_recorded_enable_across_reconciles() {
        let link = link(
            "  ttl: 2h\n",
            Some(status(Phase::Active, "2026-11-25T08:00:00Z")),
        );
        match decide(&link, at("2026-11-25T09:59:59Z")) {
            Desired::Open { expires_at, .. } => assert_eq!(expires_at, at("2026-11-25T10:00:00Z")),
            other => panic!("expected Open, got {other:?}"),
        }
    }

    #[test]
    fn expiry_is_exactly_at_the_instant() {
        let link = link(
            "  ttl: 2h\n",
            Some(status(Phase::Active, "2026-11-25T08:00:00Z")),
        );
        let expiry = at("2026-11-25T10:00:00Z");
        assert!(
            matches!(decide(&link, expiry), Desired::Expired { expires_at, .. } if expires_at == expiry)
        );
        let just_before = expiry.checked_sub(Duration::from_millis(1)).unwrap();
        assert!(matches!(decide(&link, just_before), Desired::Open { .. }));
    }

    #[test]
    fn re_enabling_restarts_the_ttl() {
        let link = link(
            "  ttl: 2h\n",
            Some(status(Phase::Disabled, "2026-11-25T08:00:00Z")),
        );
        let now = at("2026-11-25T12:00:00Z");
        match decide(&link, now) {
            Desired::Open {
                enabled_at,
                expires_at,
                ..
            } => {
                assert_eq!(enabled_at, now, "a re-enabled link counts from now");
                assert_eq!(expires_at, at("2026-11-25T14:00:00Z"));
            }
            other => panic!("expected Open, got {other:?}"),
        }
    }

    fn requested(mut link: DeviceLink, request: &str) -> DeviceLink {
        link.metadata.annotations = Some(
            [(OPEN_REQUEST_ANNOTATION.to_owned(), request.to_owned())]
                .into_iter()
                .collect(),
        );
        link
    }

    #[test]
    fn an_open_request_on_a_link_enabled_hours_ago_restarts_the_ttl_from_now() {
        let mut enabled = status(Phase::Active, "2026-11-25T08:00:00Z");
        enabled.open_request = Some("2026-11-25T08:00:00Z".into());
        let now = at("2026-11-25T09:30:00Z");
        let asked = requested(
            link("  ttl: 2h\n", Some(enabled.clone())),
            "2026-11-25T09:29:59Z",
        );
        match decide(&asked, now) {
            Desired::Open {
                enabled_at,
                expires_at,
                ..
            } => {
                assert_eq!(enabled_at, now, "counted from the request, not from 08:00");
                assert_eq!(expires_at, at("2026-11-25T11:30:00Z"));
            }
            other => panic!("expected Open, got {other:?}"),
        }
        let seen = requested(link("  ttl: 2h\n", Some(enabled)), "2026-11-25T08:00:00Z");
        assert!(
            matches!(decide(&seen, now), Desired::Open { enabled_at, .. } if enabled_at == at("2026-11-25T08:00:00Z")),
            "a request already acted on does not restart it again"
        );
    }

    #[test]
    fn an_open_request_reopens_an_expired_link_at_once() {
        let link = requested(
            link(
                "  ttl: 2h\n",
                Some(status(Phase::Expired, "2026-11-25T08:00:00Z")),
            ),
            "2026-11-25T12:00:00Z",
        );
        let now = at("2026-11-25T12:00:01Z");
        let desired = decide(&link, now);
        assert!(
            matches!(desired, Desired::Open { expires_at, .. } if expires_at == at("2026-11-25T14:00:01Z"))
        );
        let status = status_for(&link, &desired, &Observed::default(), now);
        assert_eq!(
            status.open_request.as_deref(),
            Some("2026-11-25T12:00:00Z"),
            "recorded, so the next reconcile keeps the new start"
        );
    }

    #[test]
    fn expired_link_stays_expired_until_reenabled_or_extended() {
        let expired = link(
            "  ttl: 2h\n",
            Some(status(Phase::Expired, "2026-11-25T08:00:00Z")),
        );
        assert!(matches!(
            decide(&expired, at("2026-11-25T12:00:00Z")),
            Desired::Expired { .. }
        ));
        let extended = link(
            "  ttl: 5h\n",
            Some(status(Phase::Expired, "2026-11-25T08:00:00Z")),
        );
        assert!(
            matches!(
                decide(&extended, at("2026-11-25T12:00:00Z")),
                Desired::Open { .. }
            ),
            "a longer TTL reopens"
        );
    }

    #[test]
    fn disabled_link_keeps_its_enable_time_for_the_record() {
        let link = link(
            "  ttl: 2h\n  enabled: false\n",
            Some(status(Phase::Active, "2026-11-25T08:00:00Z")),
        );
        assert_eq!(
            decide(&link, at("2026-11-25T09:00:00Z")),
            Desired::Disabled {
                enabled_at: Some(at("2026-11-25T08:00:00Z"))
            }
        );
    }

    #[test]
    fn absolute_expiry_in_the_past_is_expired_at_once() {
        let link = link("  expiresAt: '2026-11-25T07:00:00Z'\n", None);
        assert!(matches!(
            decide(&link, at("2026-11-25T08:00:00Z")),
            Desired::Expired { .. }
        ));
    }

    fn service_with_ingress(ip: Option<&str>, hostname: Option<&str>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 22,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: ip.map(Into::into),
                        hostname: hostname.map(Into::into),
                        ..LoadBalancerIngress::default()
                    }]),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    #[test]
    fn endpoint_comes_from_the_load_balancer_ip_or_hostname() {
        assert_eq!(
            endpoint_of(&service_with_ingress(Some("198.51.100.7"), None)).as_deref(),
            Some("198.51.100.7:22")
        );
        assert_eq!(
            endpoint_of(&service_with_ingress(Some("2001:db8::7"), None)).as_deref(),
            Some("[2001:db8::7]:22")
        );
        assert_eq!(
            endpoint_of(&service_with_ingress(None, Some("lb-1.example.net"))).as_deref(),
            Some("lb-1.example.net:22")
        );
        assert_eq!(
            endpoint_of(&Service::default()),
            None,
            "no status yet, no endpoint"
        );
    }

    #[test]
    fn open_link_is_pending_until_endpoint_and_ready_proxy_then_active() {
        let now = at("2026-11-25T08:00:00Z");
        let link = link("  ttl: 2h\n", None);
        let desired = decide(&link, now);
        let waiting = status_for(&link, &desired, &Observed::default(), now);
        assert_eq!(waiting.phase, Some(Phase::Pending));
        assert_eq!(waiting.conditions[0].reason, "WaitingForLoadBalancer");
        assert_eq!(waiting.observed_generation, Some(3));
        let observed = Observed {
            endpoint: Some("198.51.100.7:22".into()),
            proxy_ready: true,
            problem: None,
        };
        let active = status_for(&link, &desired, &observed, now);
        assert_eq!(active.phase, Some(Phase::Active));
        assert_eq!(active.endpoint.as_deref(), Some("198.51.100.7:22"));
        assert_eq!(active.conditions[0].status, "True");
        assert_eq!(active.expires_at, Some(Time(at("2026-11-25T10:00:00Z"))));
    }

    #[test]
    fn invalid_spec_fails_with_the_field_in_the_condition() {
        let now = at("2026-11-25T08:00:00Z");
        let link = link("", None);
        let desired = decide(&link, now);
        let status = status_for(&link, &desired, &Observed::default(), now);
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.conditions[0].reason, "InvalidSpec");
        assert!(
            status.conditions[0]
                .message
                .contains("spec.ttl/spec.expiresAt"),
            "{:?}",
            status.conditions[0]
        );
    }

    #[test]
    fn condition_transition_time_only_moves_when_status_changes() {
        let t0 = at("2026-11-25T08:00:00Z");
        let t1 = at("2026-11-25T08:05:00Z");
        let mut link = link("  ttl: 2h\n", None);
        let first = status_for(&link, &decide(&link, t0), &Observed::default(), t0);
        link.status = Some(first.clone());
        let second = status_for(&link, &decide(&link, t1), &Observed::default(), t1);
        assert_eq!(
            second.conditions[0].last_transition_time,
            Time(t0),
            "still False: time kept"
        );
        assert_eq!(
            second, first,
            "nothing changed, so the status is identical (and not re-patched)"
        );
    }

    fn phase(phase: Phase, reason: &str) -> DeviceLinkStatus {
        DeviceLinkStatus {
            phase: Some(phase),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: reason.into(),
                message: format!("{reason} message"),
                last_transition_time: Time(at("2026-11-25T08:00:00Z")),
                observed_generation: None,
            }],
            ..DeviceLinkStatus::default()
        }
    }

    #[test]
    fn events_fire_once_per_phase_change() {
        let active = phase(Phase::Active, "Active");
        let pending = phase(Phase::Pending, "WaitingForProxy");
        let reason = |previous: Option<&DeviceLinkStatus>, status: &DeviceLinkStatus| {
            transition(previous, status).map(|t| t.reason)
        };
        assert_eq!(reason(Some(&pending), &active).as_deref(), Some("Opened"));
        assert_eq!(
            transition(Some(&active), &active),
            None,
            "no event when nothing changed"
        );
        let disabled = phase(Phase::Disabled, "Disabled");
        assert_eq!(reason(Some(&active), &disabled).as_deref(), Some("Closed"));
        assert_eq!(
            transition(None, &disabled),
            None,
            "created disabled: nothing was closed"
        );
        let expired = phase(Phase::Expired, "Expired");
        assert_eq!(reason(Some(&active), &expired).as_deref(), Some("Expired"));
        let failed = phase(Phase::Failed, "InvalidSpec");
        let event = transition(None, &failed).expect("failure event");
        assert!(event.warning);
        assert_eq!(event.reason, "InvalidSpec", "the event names the failure");
    }

    #[test]
    fn a_failure_with_a_new_reason_is_reported_again_and_a_repeat_is_not() {
        let refused = phase(Phase::Failed, "ApplyRefused");
        let crashing = phase(Phase::Failed, "ProxyCrashLooping");
        assert_eq!(transition(Some(&refused), &refused), None);
        assert_eq!(
            transition(Some(&refused), &crashing)
                .map(|t| t.reason)
                .as_deref(),
            Some("ProxyCrashLooping")
        );
    }

    fn deployment(status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "devicelink-pump-17-ssh", "namespace": "plant-a", "generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_is_complete_only_when_the_current_pods_are_available() {
        assert!(rollout_complete(&deployment(serde_json::json!({
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}))));
        assert!(
            !rollout_complete(&deployment(serde_json::json!({
                "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}))),
            "the Deployment controller has not seen the new template yet"
        );
        assert!(
            !rollout_complete(&deployment(serde_json::json!({
                "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}))),
            "an old pod, with the old settings, is still there (and may be the one available)"
        );
        assert!(
            !rollout_complete(&deployment(serde_json::json!({
                "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1}))),
            "the new pod is not available yet"
        );
    }

    #[test]
    fn refused_pods_and_a_stalled_rollout_are_problems_naming_the_deployment() {
        let refused = deployment(
            serde_json::json!({"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"devicelink-pump-17-ssh-7d9f-x\" is forbidden: violates PodSecurity \"restricted:latest\""}]}),
        );
        let problem = deployment_problem(&refused).expect("refused pods");
        assert_eq!(problem.reason, "ProxyPodsRefused");
        assert!(
            problem.message.contains("plant-a/devicelink-pump-17-ssh")
                && problem.message.contains("PodSecurity"),
            "{problem:?}"
        );
        let stalled = deployment(
            serde_json::json!({"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet has timed out progressing."}]}),
        );
        assert_eq!(
            deployment_problem(&stalled).unwrap().reason,
            "ProxyRolloutStalled"
        );
    }

    #[test]
    fn a_crash_looping_proxy_is_a_problem_with_its_last_words() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "devicelink-pump-17-ssh-7d9f-x", "namespace": "plant-a"},
            "status": {"containerStatuses": [{"name": "proxy", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "--data-plane ebpf: the kernel refused the XDP program"}}}]},
        }))
        .unwrap();
        let problem = pod_problem(&[pod]).expect("crash loop");
        assert_eq!(problem.reason, "ProxyCrashLooping");
        assert!(
            problem.message.contains("code 1") && problem.message.contains("XDP program"),
            "{problem:?}"
        );
        assert_eq!(pod_problem(&[]), None);
    }

    #[test]
    fn a_proxy_pod_no_node_can_take_is_a_problem_with_the_schedulers_words() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pump-17-ssh-8b7d191b-7d9f-x", "namespace": "devicelink-proxies"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory."}]},
        }))
        .unwrap();
        let problem = pod_problem(&[pod]).expect("unschedulable");
        assert_eq!(problem.reason, "ProxyUnschedulable");
        assert!(
            problem.message.contains("3 Insufficient memory"),
            "{problem:?}"
        );
    }
}
