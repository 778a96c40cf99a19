//! A DeviceLink as the console shows it, and the spec a caller's create writes. Pure: the clock
//! is passed in. The DeviceLink has no description field, so the console keeps one in an
//! annotation; everything else is the resource's own field.

use std::{collections::BTreeMap, net::IpAddr};

use devicelink_operator::resource::{
    DataPlane, Device as DeviceSpec, DeviceLink, DeviceLinkSpec, Phase,
};
use jiff::Timestamp;
use kube::api::ObjectMeta;

use crate::{
    local::row::connect_commands,
    model::{Device, Link, LinkCreate, LinkState, LinkStatus},
    problem::ApiError,
    rules::{self, Lifetime},
    validate,
};

/// Where the console keeps a link's free-text description.
pub const DESCRIPTION_ANNOTATION: &str = "devicelink.io/description";

/// The console's state word for the operator's phase; no status yet is pending (or disabled).
pub fn state(link: &DeviceLink) -> LinkState {
    let phase = link.status.as_ref().and_then(|s| s.phase);
    match phase {
        Some(Phase::Active) => LinkState::Ready,
        Some(Phase::Disabled) => LinkState::Disabled,
        Some(Phase::Expired) => LinkState::Expired,
        Some(Phase::Failed) => LinkState::Failed,
        Some(Phase::Pending) => LinkState::Pending,
        None if !link.spec.enabled => LinkState::Disabled,
        None => LinkState::Pending,
    }
}

fn instant(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<Timestamp> {
    time.0.to_string().parse().ok()
}

/// The end the operator computed, or, before it has, the one the spec names.
pub fn expires_at(link: &DeviceLink) -> Option<Timestamp> {
    link.status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .and_then(instant)
        .or_else(|| {
            link.spec
                .expires_at
                .as_deref()
                .and_then(|at| at.parse().ok())
        })
}

/// The Ready condition's message: why a link failed or is pending.
fn ready_message(link: &DeviceLink) -> Option<String> {
    link.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status != "True")
            .map(|c| format!("{}: {}", c.reason, c.message))
    })
}

/// "host:port" split at the last colon, IPv6 brackets removed.
fn split_endpoint(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

pub fn to_link(link: &DeviceLink, now: Timestamp) -> Link {
    let meta = &link.metadata;
    let state = state(link);
    let expires_at = expires_at(link);
    let endpoint = link.status.as_ref().and_then(|s| s.endpoint.clone());
    let seconds_left = match state {
        LinkState::Disabled => None,
        _ => expires_at.map(|at| u64::try_from((at - now).get_seconds()).unwrap_or(0)),
    };
    let reason = match state {
        LinkState::Failed | LinkState::Pending => ready_message(link),
        LinkState::Expired => Some("its expiry time passed".to_owned()),
        _ => None,
    };
    let created_at = meta
        .creation_timestamp
        .as_ref()
        .and_then(instant)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    // The latest write any manager made; the creation when the server keeps no managed fields.
    let updated_at = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref().and_then(instant))
        .max()
        .unwrap_or(created_at);
    let port = link.spec.port.unwrap_or(link.spec.device.port);
    Link {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        device: Device {
            host: link.spec.device.host.clone(),
            port: link.spec.device.port,
        },
        port,
        allowed_source_ranges: link.spec.allowed_source_ranges.clone(),
        ttl: link.spec.ttl.clone(),
        expires_at: link.spec.expires_at.clone(),
        enabled: link.spec.enabled,
        max_connections: link.spec.max_connections,
        idle_timeout: link.spec.idle_timeout.clone(),
        description: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
            .cloned(),
        version: meta.resource_version.clone().unwrap_or_default(),
        created_at: created_at.to_string(),
        updated_at: updated_at.to_string(),
        status: LinkStatus {
            state,
            reason,
            connect: endpoint
                .as_deref()
                .and_then(split_endpoint)
                .map(|(host, port)| connect_commands(&host, port)),
            endpoint,
            expires_at: expires_at.map(|at| at.to_string()),
            seconds_left,
            expired_at: (state == LinkState::Expired)
                .then(|| expires_at.map(|at| at.to_string()))
                .flatten(),
            // The proxy pods' sessions are not reported through the resource.
            active_sessions: 0,
            bytes_to_device: 0,
            bytes_from_device: 0,
        },
    }
}

/// The DeviceLink a create writes, checked by the same rules as on the local backend.
pub fn new_device_link(
    namespace: &str,
    create: LinkCreate,
    my_address: Option<IpAddr>,
    now: Timestamp,
) -> Result<DeviceLink, ApiError> {
    validate::name("namespace", namespace)?;
    validate::name("name", &create.name)?;
    validate::host("device.host", &create.device.host)?;
    validate::port("device.port", create.device.port)?;
    if let Some(port) = create.port {
        validate::port("port", port)?;
    }
    let allowed_source_ranges = rules::ranges_with(
        "allowedSourceRanges",
        create.allowed_source_ranges,
        my_address,
    )?;
    let (ttl, expires_at) =
        match rules::lifetime(create.ttl.as_deref(), create.expires_at.as_deref(), now)? {
            Lifetime::Ttl(ttl) => (Some(validate::format_duration(ttl)), None),
            Lifetime::Until(at) => (None, Some(at.to_string())),
        };
    if let Some(n) = create.max_connections {
        validate::max_connections("maxConnections", n)?;
    }
    if let Some(idle) = &create.idle_timeout {
        validate::duration("idleTimeout", idle)?;
    }
    if let Some(description) = &create.description {
        validate::description("description", description)?;
    }
    let annotations = create
        .description
        .map(|d| BTreeMap::from([(DESCRIPTION_ANNOTATION.to_owned(), d)]));
    Ok(DeviceLink {
        metadata: ObjectMeta {
            name: Some(create.name),
            namespace: Some(namespace.to_owned()),
            annotations,
            ..ObjectMeta::default()
        },
        spec: DeviceLinkSpec {
            enabled: create.enabled,
            device: DeviceSpec {
                host: create.device.host,
                port: create.device.port,
            },
            port: create.port,
            allowed_source_ranges,
            ttl,
            expires_at,
            idle_timeout: create.idle_timeout,
            max_connections: create.max_connections,
            max_connections_per_source: None,
            connect_rate_per_source: None,
            data_plane: DataPlane::Auto,
            service: None,
        },
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(status: serde_json::Value) -> DeviceLink {
        serde_json::from_value(json!({
            "apiVersion": "devicelink.io/v1alpha1",
            "kind": "DeviceLink",
            "metadata": {"name": "pump-17-ssh", "namespace": "plant-a", "resourceVersion": "42",
                         "creationTimestamp": "2026-12-04T09:00:00Z",
                         "annotations": {DESCRIPTION_ANNOTATION: "pump 17"}},
            "spec": {"device": {"host": "10.20.30.40", "port": 22},
                     "allowedSourceRanges": ["203.0.113.0/24"], "ttl": "2h"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn an_active_link_is_ready_with_the_operators_endpoint_and_time_left() {
        let link = stored(json!({
            "phase": "Active", "endpoint": "198.51.100.7:22",
            "expiresAt": "2026-12-04T11:00:00Z",
        }));
        let shown = to_link(&link, "2026-12-04T10:00:00Z".parse().unwrap());
        assert_eq!(shown.status.state, LinkState::Ready);
        assert_eq!(shown.status.seconds_left, Some(3600));
        assert_eq!(shown.version, "42");
        assert_eq!(shown.port, 22);
        assert_eq!(shown.description.as_deref(), Some("pump 17"));
        assert_eq!(
            shown.status.connect.unwrap().ssh,
            "ssh -p 22 USER@198.51.100.7"
        );
    }

    #[test]
    fn a_failed_link_says_why_from_its_ready_condition() {
        let link = stored(json!({
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                            "message": "spec.device.host is empty",
                            "lastTransitionTime": "2026-12-04T09:00:00Z"}],
        }));
        let shown = to_link(&link, "2026-12-04T10:00:00Z".parse().unwrap());
        assert_eq!(shown.status.state, LinkState::Failed);
        assert_eq!(
            shown.status.reason.as_deref(),
            Some("InvalidSpec: spec.device.host is empty")
        );
        assert!(shown.status.connect.is_none());
    }
}
