//! What the pages show, shaped for the templates: the frame around every page, a link as a row,
//! and numbers and durations as people read them.

use super::{guard::SignedIn, session::Flash};
use crate::model::{Event, Link, LinkState, Session};

/// The namespace the panel opens in when none is chosen.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Links expiring within this many seconds are marked.
pub const EXPIRING_SOON_SECS: u64 = 15 * 60;

/// The frame of every signed-in page: who is signed in, what they may do, the session's CSRF
/// token for its forms, and a message left by the last action.
pub struct Chrome {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    pub can_operate: bool,
    pub can_admin: bool,
    pub namespace: String,
    pub flash: Option<Flash>,
}

impl Chrome {
    pub fn new(signed_in: &SignedIn, namespace: &str, flash: Option<Flash>) -> Self {
        Self {
            user: signed_in.caller.name.clone(),
            role: signed_in.caller.role.as_str(),
            csrf: signed_in.csrf.clone(),
            can_operate: signed_in.can_operate(),
            can_admin: signed_in.can_admin(),
            namespace: namespace.to_owned(),
            flash,
        }
    }
}

/// A link as one row of the list.
pub struct LinkRow {
    pub name: String,
    pub href: String,
    pub device: String,
    pub state: &'static str,
    pub endpoint: String,
    /// RFC 3339, for the live countdown; empty when the link has no expiry running.
    pub expires_at: String,
    pub time_left: String,
    pub soon: bool,
    pub sessions: u64,
    pub bytes: String,
}

impl LinkRow {
    pub fn new(link: &Link) -> Self {
        let status = &link.status;
        let running = matches!(status.state, LinkState::Ready | LinkState::Pending);
        Self {
            name: link.name.clone(),
            href: link_href(&link.namespace, &link.name),
            device: format!("{}:{}", link.device.host, link.device.port),
            state: status.state.as_str(),
            endpoint: status.endpoint.clone().unwrap_or_else(|| "—".to_owned()),
            expires_at: if running {
                status.expires_at.clone().unwrap_or_default()
            } else {
                String::new()
            },
            time_left: time_left(link),
            soon: running && status.seconds_left.is_some_and(|s| s <= EXPIRING_SOON_SECS),
            sessions: status.active_sessions,
            bytes: bytes(status.bytes_to_device + status.bytes_from_device),
        }
    }
}

pub fn link_href(namespace: &str, name: &str) -> String {
    format!("/links/{namespace}/{name}")
}

/// "1h 02m", "45s", "expired", or "—" while no expiry runs.
pub fn time_left(link: &Link) -> String {
    match (link.status.state, link.status.seconds_left) {
        (LinkState::Expired, _) => "expired".to_owned(),
        (LinkState::Disabled, _) | (_, None) => "—".to_owned(),
        (_, Some(secs)) => duration(secs),
    }
}

pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// An open session as a row of the link page.
pub struct SessionRow {
    pub id: String,
    pub client: String,
    pub since: String,
    pub duration: String,
    pub to_device: String,
    pub from_device: String,
}

impl SessionRow {
    pub fn new(session: &Session) -> Self {
        let open_for = session.since.parse::<jiff::Timestamp>().ok().map(|since| {
            jiff::Timestamp::now()
                .duration_since(since)
                .as_secs()
                .max(0) as u64
        });
        Self {
            id: session.id.clone(),
            client: readable_client(&session.client),
            since: session.since.clone(),
            duration: open_for.map(duration).unwrap_or_default(),
            to_device: bytes(session.bytes_to_device),
            from_device: bytes(session.bytes_from_device),
        }
    }
}

/// An IPv4 client as people write it (`10.0.0.2:51234`), not IPv4-mapped IPv6.
pub fn readable_client(client: &str) -> String {
    match client.parse::<std::net::SocketAddr>() {
        Ok(addr) => std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string(),
        Err(_) => client.to_owned(),
    }
}

/// One entry of the link's timeline.
pub struct EventRow {
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub detail: String,
}

impl EventRow {
    pub fn new(event: &Event) -> Self {
        Self {
            at: event.at.clone(),
            kind: event.kind.replace('_', " "),
            actor: event.actor.clone(),
            detail: event.detail.clone().unwrap_or_default(),
        }
    }
}

/// A `datetime-local` value (`2026-12-04T18:30`, no zone) read as UTC, as the forms say; a full
/// RFC 3339 time passes as it is.
pub fn as_utc(value: &str) -> String {
    let value = value.trim();
    match value.len() {
        16 => format!("{value}:00Z"),
        19 => format!("{value}Z"),
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_byte_counts_read_the_way_people_say_them() {
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(125), "2m 05s");
        assert_eq!(duration(3720), "1h 02m");
        assert_eq!(duration(90_000), "1d 1h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn an_ipv4_client_reads_as_ipv4() {
        assert_eq!(
            readable_client("[::ffff:10.77.1.2]:56734"),
            "10.77.1.2:56734"
        );
        assert_eq!(readable_client("[2001:db8::1]:22"), "[2001:db8::1]:22");
    }

    #[test]
    fn a_form_time_without_a_zone_is_read_as_utc() {
        assert_eq!(as_utc("2026-12-04T18:30"), "2026-12-04T18:30:00Z");
        assert_eq!(as_utc("2026-12-04T18:30:15"), "2026-12-04T18:30:15Z");
        assert_eq!(
            as_utc("2026-12-04T18:30:00+01:00"),
            "2026-12-04T18:30:00+01:00"
        );
    }
}
