//! The `--config` file: the set of links, read and validated whole.

use std::path::Path;

use serde::Deserialize;

use crate::{acl::SourceAcl, config::DeviceAddr, link::Link};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksFile {
    links: Vec<LinkEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LinkEntry {
    name: String,
    listen: String,
    device: String,
    allowed_source_ranges: Vec<String>,
    expires_at: Option<String>,
    max_connections: Option<u32>,
    max_connections_per_source: Option<u32>,
    connect_rate_per_source: Option<u32>,
    idle_timeout: Option<String>,
    enabled: Option<bool>,
}

/// Reads and validates the links file at `path`; the error names the link and the field.
pub fn read(path: &Path) -> Result<Vec<Link>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    parse(&text).map_err(|err| format!("{}: {err}", path.display()))
}

pub fn parse(text: &str) -> Result<Vec<Link>, String> {
    let file: LinksFile = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
    let mut links = Vec::new();
    for (index, entry) in file.links.into_iter().enumerate() {
        let at = format!("links[{index}] ({})", entry.name);
        let listen = entry
            .listen
            .parse()
            .map_err(|_| format!("{at}.listen: expected ADDR:PORT"))?;
        let (host, port) = entry
            .device
            .rsplit_once(':')
            .ok_or_else(|| format!("{at}.device: expected HOST:PORT"))?;
        let device = DeviceAddr {
            host: host.trim_matches(['[', ']']).to_string(),
            port: port.parse().map_err(|_| format!("{at}.device: bad port"))?,
        };
        let mut ranges = Vec::new();
        for (i, range) in entry.allowed_source_ranges.iter().enumerate() {
            ranges.push(
                range
                    .parse()
                    .map_err(|_| format!("{at}.allowedSourceRanges[{i}]: not a CIDR"))?,
            );
        }
        let expires_at = match entry.expires_at {
            Some(at_text) => Some(
                humantime::parse_rfc3339(&at_text)
                    .map_err(|err| format!("{at}.expiresAt: {err}"))?,
            ),
            None => None,
        };
        let idle_timeout = match entry.idle_timeout.as_deref() {
            Some("never") => None,
            Some(text) => Some(
                humantime::parse_duration(text)
                    .map_err(|err| format!("{at}.idleTimeout: {err}"))?,
            ),
            None => Some(crate::link::DEFAULT_IDLE_TIMEOUT),
        };
        let max_connections = entry
            .max_connections
            .unwrap_or(crate::link::DEFAULT_MAX_CONNECTIONS);
        let default_share = crate::link::SourceLimits::default_for(max_connections);
        let per_source = crate::link::SourceLimits {
            max_open: entry
                .max_connections_per_source
                .unwrap_or(default_share.max_open),
            per_second: entry
                .connect_rate_per_source
                .unwrap_or(default_share.per_second),
        };
        links.push(Link {
            name: entry.name,
            listen,
            device,
            acl: SourceAcl::new(ranges),
            expires_at,
            max_connections,
            per_source,
            idle_timeout,
            enabled: entry.enabled.unwrap_or(true),
        });
    }
    let mut ports = std::collections::HashMap::new();
    for link in &links {
        if let Some(other) = ports.insert(link.listen.port(), &link.name) {
            return Err(format!(
                "{}.listen: port {} is already the port of link {other}",
                link.name,
                link.listen.port()
            ));
        }
    }
    Ok(links)
}
