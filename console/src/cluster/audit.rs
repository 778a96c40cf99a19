//! A link's audit trail on the cluster is its Kubernetes Events. The console records each
//! change a caller makes as an Event on the DeviceLink (with its own identity, since tenants
//! seldom may create Events, naming the caller in an annotation), beside the operator's own
//! (opened, expired, failed); reading them is done with the caller's credentials.

use std::collections::BTreeMap;

use devicelink_operator::resource::DeviceLink;
use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use kube::{
    Client, Resource, ResourceExt,
    api::{Api, ListParams, ObjectMeta, PostParams},
};
use ring::rand::{SecureRandom, SystemRandom};

use super::errors::from_kube;
use crate::{backend::EventQuery, model::Event, problem::ApiError};

/// The component the console's Events name as their source.
pub const COMPONENT: &str = "devicelink-console";
/// Who made the change an Event records.
pub const ACTOR_ANNOTATION: &str = "devicelink.io/actor";

/// The Event reason for each of the console's event kinds, and back.
const REASONS: &[(&str, &str)] = &[
    ("created", "Created"),
    ("updated", "Updated"),
    ("acl_changed", "AclChanged"),
    ("enabled", "Enabled"),
    ("disabled", "Disabled"),
    ("extended", "Extended"),
    ("deleted", "Deleted"),
    ("expired", "Expired"),
];

fn reason_of(kind: &str) -> String {
    REASONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or_else(|| kind.to_owned(), |(_, r)| (*r).to_owned())
}

/// `Extended` -> `extended`, `AclChanged` -> `acl_changed`, an operator's `ProxyFailed` ->
/// `proxy_failed`.
fn kind_of(reason: &str) -> String {
    if let Some((kind, _)) = REASONS.iter().find(|(_, r)| *r == reason) {
        return (*kind).to_owned();
    }
    let mut kind = String::new();
    for (i, c) in reason.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            kind.push('_');
        }
        kind.push(c.to_ascii_lowercase());
    }
    kind
}

fn event_name(link: &str) -> String {
    let mut suffix = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut suffix);
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{link}.{hex}")
}

/// Records what `actor` did to the link. A failure to record is logged, not returned: the
/// change itself is done, and the API server's audit log has it regardless.
pub async fn record(
    own: Client,
    link: &DeviceLink,
    kind: &str,
    actor: &str,
    detail: Option<String>,
) {
    let namespace = link.namespace().unwrap_or_default();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let event = KubeEvent {
        metadata: ObjectMeta {
            name: Some(event_name(&link.name_any())),
            namespace: Some(namespace.clone()),
            annotations: Some(BTreeMap::from([(
                ACTOR_ANNOTATION.to_owned(),
                actor.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(DeviceLink::api_version(&()).into_owned()),
            kind: Some(DeviceLink::kind(&()).into_owned()),
            name: Some(link.name_any()),
            namespace: Some(namespace.clone()),
            uid: link.uid(),
            resource_version: link.resource_version(),
            ..ObjectReference::default()
        },
        reason: Some(reason_of(kind)),
        message: Some(match &detail {
            Some(detail) => format!("{kind} by {actor}: {detail}"),
            None => format!("{kind} by {actor}"),
        }),
        type_: Some("Normal".to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(COMPONENT.to_owned()),
        ..KubeEvent::default()
    };
    if let Err(err) = Api::<KubeEvent>::namespaced(own, &namespace)
        .create(&PostParams::default(), &event)
        .await
    {
        tracing::warn!(%err, link = %link.name_any(), %namespace, kind, actor, "could not record the Event");
    }
}

/// The console's view of one Kubernetes Event about a DeviceLink.
fn to_event(event: &KubeEvent) -> Event {
    let at = event
        .last_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| event.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| event.first_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| {
            event
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        })
        .unwrap_or_default();
    let actor = event
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACTOR_ANNOTATION))
        .cloned()
        .or_else(|| event.reporting_component.clone().filter(|c| !c.is_empty()))
        .or_else(|| event.source.as_ref().and_then(|s| s.component.clone()))
        .unwrap_or_else(|| "kubernetes".to_owned());
    Event {
        // An Event's resourceVersion is the store's revision: it orders Events cluster-wide.
        seq: event
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        at,
        namespace: event.involved_object.namespace.clone().unwrap_or_default(),
        link: event.involved_object.name.clone().unwrap_or_default(),
        kind: kind_of(event.reason.as_deref().unwrap_or("")),
        actor,
        detail: event.message.clone(),
    }
}

/// The DeviceLinks' Events the caller may read, oldest first.
pub async fn list(caller: Client, query: &EventQuery) -> Result<Vec<Event>, ApiError> {
    let api: Api<KubeEvent> = match &query.namespace {
        Some(namespace) => Api::namespaced(caller, namespace),
        None => Api::all(caller),
    };
    let mut selector = "involvedObject.kind=DeviceLink".to_owned();
    if let Some(link) = &query.link {
        selector.push_str(&format!(",involvedObject.name={link}"));
    }
    let what = match (&query.namespace, &query.link) {
        (Some(ns), Some(link)) => format!("events of link {ns}/{link}"),
        _ => "events".to_owned(),
    };
    let events = api
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|e| from_kube(e, &what))?;
    let mut items: Vec<Event> = events
        .items
        .iter()
        .map(to_event)
        .filter(|e| e.seq > query.after)
        .collect();
    items.sort_by_key(|e| e.seq);
    items.truncate(query.limit);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_kinds_map_both_ways_and_unknown_reasons_become_snake_case() {
        for (kind, reason) in REASONS {
            assert_eq!(reason_of(kind), *reason);
            assert_eq!(kind_of(reason), *kind);
        }
        assert_eq!(kind_of("ProxyCrashLooping"), "proxy_crash_looping");
    }
}
