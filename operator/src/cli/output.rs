//! What the CLI prints, decided from DeviceLinks and the time. Pure.

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::resource::{DeviceLink, format_instant};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns and sentences, for people.
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

/// One link as scripts see it (`-o json|yaml`) and tables show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSummary {
    pub name: String,
    pub namespace: String,
    pub enabled: bool,
    pub phase: Option<String>,
    pub device: String,
    pub endpoint: Option<String>,
    pub allowed_source_ranges: Vec<String>,
    pub enabled_at: Option<String>,
    pub expires_at: Option<String>,
    /// Seconds left; negative once past.
    pub expires_in_seconds: Option<i64>,
    /// Connections the proxy carries now, when its metrics could be read.
    pub connections: Option<u64>,
    /// A ready-to-paste command for the link's protocol.
    pub connect: Option<String>,
    /// The Ready condition's message: why it is (not) ready.
    pub message: Option<String>,
}

pub fn summarize(link: &DeviceLink, now: Timestamp, connections: Option<u64>) -> LinkSummary {
    let status = link.status.clone().unwrap_or_default();
    let device = if link.spec.device.host.contains(':') {
        format!("[{}]:{}", link.spec.device.host, link.spec.device.port)
    } else {
        format!("{}:{}", link.spec.device.host, link.spec.device.port)
    };
    let expires_at = status.expires_at.as_ref().map(|t| t.0);
    LinkSummary {
        name: link.metadata.name.clone().unwrap_or_default(),
        namespace: link.metadata.namespace.clone().unwrap_or_default(),
        enabled: link.spec.enabled,
        phase: status.phase.map(|p| p.as_str().to_owned()),
        device,
        connect: status
            .endpoint
            .as_deref()
            .map(|endpoint| connect_command(endpoint, link.spec.device.port)),
        endpoint: status.endpoint.clone(),
        allowed_source_ranges: link.spec.allowed_source_ranges.clone(),
        enabled_at: status.enabled_at.as_ref().map(|t| format_instant(t.0)),
        expires_at: expires_at.map(format_instant),
        expires_in_seconds: expires_at.map(|at| at.as_second() - now.as_second()),
        connections,
        message: status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone()),
    }
}

/// Splits `ADDRESS:PORT` or `[IPv6]:PORT` into the bare address and the port.
fn split_endpoint(endpoint: &str) -> (String, String) {
    if let Some(rest) = endpoint.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
    {
        return (host.to_owned(), port.to_owned());
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.to_owned()),
        None => (endpoint.to_owned(), String::new()),
    }
}

/// A command to paste, by the device's protocol (known from its port).
pub fn connect_command(endpoint: &str, device_port: i64) -> String {
    let (host, port) = split_endpoint(endpoint);
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    match device_port {
        22 => format!("ssh -p {port} user@{host}"),
        // VNC displays :0.. listen on 5900..; viewers take HOST::PORT for a raw port.
        5900..=5999 => format!("vncviewer {bracketed}::{port}"),
        3389 => format!("xfreerdp /v:{bracketed}:{port}   (Windows: mstsc /v:{bracketed}:{port})"),
        _ => format!("nc {host} {port}"),
    }
}

/// Time left, as people read it: `1h59m`, `45s`, `expired`.
pub fn time_left(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s <= 0 => "expired".to_owned(),
        Some(s) => {
            let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
            match (d, h, m) {
                (0, 0, 0) => format!("{sec}s"),
                (0, 0, _) => format!("{m}m{sec:02}s"),
                (0, _, _) => format!("{h}h{m:02}m"),
                _ => format!("{d}d{h}h"),
            }
        }
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(text.join("   ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

pub fn list_table(links: &[LinkSummary]) -> String {
    if links.is_empty() {
        return "No DeviceLinks in this namespace. `devicelink open NAME --device HOST:PORT --for 2h --allow CIDR` creates one.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|link| {
            vec![
                link.name.clone(),
                link.device.clone(),
                or_dash(link.endpoint.as_deref()),
                or_dash(link.phase.as_deref()),
                time_left(link.expires_in_seconds),
                link.connections
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "DEVICE",
            "ENDPOINT",
            "PHASE",
            "EXPIRES IN",
            "CONNECTIONS",
        ],
        &rows,
    )
}

/// What `open` prints for people once the link is ready.
pub fn opened_text(link: &LinkSummary) -> String {
    format!(
        "Link {} is open: {} -> {}\nAllowed from: {}\nCloses at {} (in {})\n\nConnect with:\n  {}\n",
        link.name,
        or_dash(link.endpoint.as_deref()),
        link.device,
        link.allowed_source_ranges.join(", "),
        or_dash(link.expires_at.as_deref()),
        time_left(link.expires_in_seconds),
        or_dash(link.connect.as_deref()),
    )
}

/// One Kubernetes Event about a link.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    pub time: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// A condition as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// Everything `status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    #[serde(flatten)]
    pub link: LinkSummary,
    pub conditions: Vec<ConditionLine>,
    pub events: Vec<EventLine>,
}

pub fn status_text(report: &StatusReport) -> String {
    let link = &report.link;
    let mut out = format!(
        "Name:          {}\nNamespace:     {}\nPhase:         {}\nEnabled:       {}\nDevice:        {}\nEndpoint:      {}\nAllowed from:  {}\nEnabled at:    {}\nExpires at:    {} (in {})\nConnections:   {}\n",
        link.name,
        link.namespace,
        or_dash(link.phase.as_deref()),
        link.enabled,
        link.device,
        or_dash(link.endpoint.as_deref()),
        link.allowed_source_ranges.join(", "),
        or_dash(link.enabled_at.as_deref()),
        or_dash(link.expires_at.as_deref()),
        time_left(link.expires_in_seconds),
        link.connections
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
    );
    if let Some(connect) = &link.connect {
        out.push_str(&format!("Connect with:  {connect}\n"));
    }
    out.push_str("\nConditions:\n");
    if report.conditions.is_empty() {
        out.push_str("  (none yet: is the operator running?)\n");
    }
    for c in &report.conditions {
        out.push_str(&format!(
            "  {}={} {} ({}): {}\n",
            c.type_, c.status, c.reason, c.last_transition_time, c.message
        ));
    }
    out.push_str("\nEvents:\n");
    if report.events.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .events
            .iter()
            .map(|e| {
                vec![
                    e.time.clone(),
                    e.type_.clone(),
                    e.reason.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        for line in table(&["TIME", "TYPE", "REASON", "MESSAGE"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// Prints `value` as asked: the table text for people, JSON or YAML for scripts.
pub fn render<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table_text: impl FnOnce() -> String,
) -> String {
    match format {
        OutputFormat::Table => table_text(),
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(value).expect("summaries serialize");
            text.push('\n');
            text
        }
        OutputFormat::Yaml => crate::yaml::to_string(value).expect("summaries serialize"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_to_paste_commands_follow_the_devices_protocol() {
        assert_eq!(
            connect_command("198.51.100.7:2222", 22),
            "ssh -p 2222 user@198.51.100.7"
        );
        assert_eq!(
            connect_command("[2001:db8::7]:22", 22),
            "ssh -p 22 user@2001:db8::7"
        );
        assert_eq!(
            connect_command("198.51.100.7:15900", 5900),
            "vncviewer 198.51.100.7::15900"
        );
        assert_eq!(
            connect_command("lb.example.net:5901", 5901),
            "vncviewer lb.example.net::5901"
        );
        assert!(
            connect_command("198.51.100.7:3389", 3389).starts_with("xfreerdp /v:198.51.100.7:3389")
        );
        assert_eq!(
            connect_command("198.51.100.7:502", 502),
            "nc 198.51.100.7 502"
        );
    }

    #[test]
    fn time_left_reads_like_a_person_would_say_it() {
        assert_eq!(time_left(Some(7199)), "1h59m");
        assert_eq!(time_left(Some(125)), "2m05s");
        assert_eq!(time_left(Some(45)), "45s");
        assert_eq!(time_left(Some(90_000)), "1d1h");
        assert_eq!(time_left(Some(0)), "expired");
        assert_eq!(time_left(None), "-");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "PHASE"],
            &[
                vec!["a-long-name".into(), "Active".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME          PHASE\na-long-name   Active\nb             -\n"
        );
    }

    fn link(yaml_status: &str) -> DeviceLink {
        serde_yaml::from_str(&format!(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {{name: pump-17-ssh, namespace: plant-a}}\nspec:\n  device: {{host: 10.20.30.40, port: 22}}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n{yaml_status}"
        ))
        .unwrap()
    }

    #[test]
    fn summary_of_an_active_link_has_endpoint_time_left_and_command() {
        let link = link(
            "status:\n  phase: Active\n  endpoint: 198.51.100.7:22\n  enabledAt: '2026-11-25T08:00:00Z'\n  expiresAt: '2026-11-25T10:00:00Z'\n",
        );
        let summary = summarize(&link, "2026-11-25T08:30:00Z".parse().unwrap(), Some(2));
        assert_eq!(summary.phase.as_deref(), Some("Active"));
        assert_eq!(summary.expires_in_seconds, Some(5400));
        assert_eq!(
            summary.connect.as_deref(),
            Some("ssh -p 22 user@198.51.100.7")
        );
        let listed = list_table(std::slice::from_ref(&summary));
        assert!(
            listed.contains(
                "pump-17-ssh   10.20.30.40:22   198.51.100.7:22   Active   1h30m        2"
            ),
            "{listed}"
        );
        let opened = opened_text(&summary);
        assert!(opened.contains("ssh -p 22 user@198.51.100.7"), "{opened}");
        let json = render(OutputFormat::Json, &summary, String::new);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["endpoint"], "198.51.100.7:22");
        assert_eq!(value["expiresInSeconds"], 5400);
        let yaml = render(OutputFormat::Yaml, &summary, String::new);
        let reread: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(reread, value, "YAML and JSON say the same");
    }

    #[test]
    fn summary_of_a_new_link_shows_dashes_not_guesses() {
        let summary = summarize(&link(""), "2026-11-25T08:30:00Z".parse().unwrap(), None);
        let listed = list_table(&[summary]);
        assert!(
            listed.contains("pump-17-ssh   10.20.30.40:22   -          -       -            -"),
            "{listed}"
        );
    }

    #[test]
    fn empty_list_says_how_to_open_a_link() {
        assert!(list_table(&[]).contains("devicelink open"));
    }
}
