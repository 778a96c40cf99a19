//! A link as the local database holds it, and how it shows through the API. Pure.

use std::time::Duration;

use jiff::Timestamp;

use crate::{
    model::{ConnectCommands, Device, Link, LinkState, LinkStatus},
    proxy::control::{LinkReport, ProxyLinkState},
    validate::format_duration,
};

#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    pub namespace: String,
    pub name: String,
    pub device_host: String,
    pub device_port: u16,
    pub port: u16,
    pub allowed_source_ranges: Vec<String>,
    pub ttl: Option<Duration>,
    pub expires_at: Option<Timestamp>,
    pub enabled: bool,
    pub max_connections: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub description: Option<String>,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub failure: Option<String>,
}

pub const COLUMNS: &str = "namespace, name, device_host, device_port, port, allowed_source_ranges, \
     ttl_seconds, expires_at, enabled, max_connections, idle_timeout_seconds, description, version, \
     created_at, updated_at, failure";

impl LinkRow {
    pub fn from_sql(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        fn instant(value: Option<String>) -> Option<Timestamp> {
            value.and_then(|v| v.parse().ok())
        }
        let ranges: String = row.get(5)?;
        Ok(Self {
            namespace: row.get(0)?,
            name: row.get(1)?,
            device_host: row.get(2)?,
            device_port: row.get(3)?,
            port: row.get(4)?,
            allowed_source_ranges: serde_json::from_str(&ranges).unwrap_or_default(),
            ttl: row.get::<_, Option<i64>>(6)?.map(seconds),
            expires_at: instant(row.get(7)?),
            enabled: row.get(8)?,
            max_connections: row.get(9)?,
            idle_timeout: row.get::<_, Option<i64>>(10)?.map(seconds),
            description: row.get(11)?,
            version: row.get(12)?,
            created_at: instant(row.get(13)?).unwrap_or(Timestamp::UNIX_EPOCH),
            updated_at: instant(row.get(14)?).unwrap_or(Timestamp::UNIX_EPOCH),
            failure: row.get(15)?,
        })
    }

    /// The state from the database and the clock alone.
    pub fn state(&self, now: Timestamp) -> LinkState {
        self.state_with(now, None)
    }

    /// The state, with what the proxy last reported about the link.
    pub fn state_with(&self, now: Timestamp, report: Option<&LinkReport>) -> LinkState {
        if !self.enabled {
            return LinkState::Disabled;
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return LinkState::Expired;
        }
        if self.failure.is_some() {
            return LinkState::Failed;
        }
        match report.map(|r| &r.state) {
            Some(ProxyLinkState::Active) => LinkState::Ready,
            Some(ProxyLinkState::Failed) => LinkState::Failed,
            Some(ProxyLinkState::Expired) => LinkState::Expired,
            // Not yet in the file the proxy applied, or the proxy is (re)starting.
            Some(ProxyLinkState::Disabled) | None => LinkState::Pending,
        }
    }

    pub fn to_link(&self, now: Timestamp, public_host: &str, report: Option<&LinkReport>) -> Link {
        let state = self.state_with(now, report);
        let endpoint = format!("{}:{}", bracket(public_host), self.port);
        let seconds_left = match state {
            LinkState::Disabled => None,
            _ => self
                .expires_at
                .map(|at| u64::try_from((at - now).get_seconds()).unwrap_or(0)),
        };
        let reason = match state {
            LinkState::Failed => self
                .failure
                .clone()
                .or_else(|| report.and_then(|r| r.error.clone())),
            LinkState::Expired => Some("its expiry time passed".to_owned()),
            _ => None,
        };
        Link {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            device: Device {
                host: self.device_host.clone(),
                port: self.device_port.into(),
            },
            port: self.port.into(),
            allowed_source_ranges: self.allowed_source_ranges.clone(),
            ttl: self.ttl.map(format_duration),
            expires_at: self.expires_at.map(|at| at.to_string()),
            enabled: self.enabled,
            max_connections: self.max_connections.map(i64::from),
            idle_timeout: self.idle_timeout.map(format_duration),
            description: self.description.clone(),
            version: self.version.to_string(),
            created_at: self.created_at.to_string(),
            updated_at: self.updated_at.to_string(),
            status: LinkStatus {
                state,
                reason,
                endpoint: Some(endpoint),
                expires_at: self.expires_at.map(|at| at.to_string()),
                seconds_left,
                expired_at: (state == LinkState::Expired)
                    .then(|| self.expires_at.map(|at| at.to_string()))
                    .flatten(),
                active_sessions: report.map_or(0, |r| r.active_sessions),
                bytes_to_device: report.map_or(0, |r| r.bytes_to_device),
                bytes_from_device: report.map_or(0, |r| r.bytes_from_device),
                connect: Some(connect_commands(public_host, self.port)),
            },
        }
    }
}

fn seconds(value: i64) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// Durations are stored as whole seconds; validation bounds them far below `i64::MAX`.
pub fn to_seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

pub fn connect_commands(public_host: &str, port: u16) -> ConnectCommands {
    let host = bracket(public_host);
    ConnectCommands {
        ssh: format!("ssh -p {port} USER@{public_host}"),
        vnc: format!("vncviewer {host}::{port}"),
        rdp: format!("xfreerdp /v:{host}:{port}"),
    }
}
