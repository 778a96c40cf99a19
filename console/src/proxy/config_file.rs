//! The multi-link proxy's config file, rendered from the database's enabled links, and written
//! atomically (a temporary file renamed over the old one) so the proxy never reads half of it.

use std::{io::Write as _, path::Path};

use serde::Serialize;

use crate::local::row::LinkRow;
use crate::validate::format_duration;

pub const CONFIG_FILE: &str = "proxy-links.json";

#[derive(Serialize)]
struct LinksFile {
    links: Vec<FileLink>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileLink {
    name: String,
    listen: String,
    device: String,
    allowed_source_ranges: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    enabled: bool,
}

/// The proxy's name for a link: unique on this host across namespaces.
pub fn proxy_link_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// The file's contents for these links; disabled ones are left out (their listeners close).
/// Expired ones stay in: the proxy enforces the expiry and reports it.
pub fn render(links: &[LinkRow]) -> String {
    let file = LinksFile {
        links: links
            .iter()
            .filter(|link| link.enabled)
            .map(|link| FileLink {
                name: proxy_link_name(&link.namespace, &link.name),
                listen: format!("[::]:{}", link.port),
                device: match link.device_host.contains(':') {
                    true => format!("[{}]:{}", link.device_host, link.device_port),
                    false => format!("{}:{}", link.device_host, link.device_port),
                },
                allowed_source_ranges: link.allowed_source_ranges.clone(),
                expires_at: link.expires_at.map(|at| at.to_string()),
                max_connections: link.max_connections,
                idle_timeout: link.idle_timeout.map(format_duration),
                enabled: true,
            })
            .collect(),
    };
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
}

/// Replaces `path` with `contents` in one rename, after the bytes are on disk.
pub fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("links")
    ));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    // The rename itself survives a crash once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(name: &str, enabled: bool) -> LinkRow {
        LinkRow {
            namespace: "plant-a".into(),
            name: name.into(),
            device_host: "10.20.30.40".into(),
            device_port: 22,
            port: 20001,
            allowed_source_ranges: vec!["203.0.113.0/24".into()],
            ttl: Some(Duration::from_secs(7200)),
            expires_at: Some("2026-11-25T10:00:00Z".parse().unwrap()),
            enabled,
            max_connections: Some(4),
            idle_timeout: Some(Duration::from_secs(900)),
            description: None,
            version: 1,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            failure: None,
        }
    }

    #[test]
    fn enabled_links_render_in_the_proxys_file_format_and_disabled_ones_are_left_out() {
        let text = render(&[row("pump-17-ssh", true), row("off", false)]);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"links": [{
                "name": "plant-a.pump-17-ssh",
                "listen": "[::]:20001",
                "device": "10.20.30.40:22",
                "allowedSourceRanges": ["203.0.113.0/24"],
                "expiresAt": "2026-11-25T10:00:00Z",
                "maxConnections": 4,
                "idleTimeout": "15m",
                "enabled": true
            }]})
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole() {
        let dir =
            std::env::temp_dir().join(format!("devicelink-console-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONFIG_FILE);
        write_atomically(&path, "{\"links\":[]}\n").unwrap();
        write_atomically(&path, "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
