//! The links file: the set of links a proxy carries (`devicelink-proxy --config FILE`), written
//! by the operator and a console, read by the proxy. YAML, which JSON is too, with a
//! DeviceLink's own field names:
//!
//! ```yaml
//! links:
//!   - name: pump-17-ssh
//!     listen: "[::]:2222"
//!     device: "10.20.30.40:22"          # or a DNS name and a port
//!     allowedSourceRanges: ["203.0.113.0/24", "2001:db8::/32"]
//!     expiresAt: "2026-12-05T10:00:00Z" # optional
//!     maxConnections: 64                # optional
//!     maxConnectionsPerSource: 16       # optional
//!     connectRatePerSource: 10          # optional, 0 for no limit
//!     idleTimeout: 15m                  # optional
//!     enabled: true                     # optional, default true
//!     proxyProtocol: false              # optional: a PROXY protocol header comes first
//! ```
//!
//! A file is taken whole or not at all: the first problem refuses it, named by the link and
//! the field (`links[2] (pump-17-ssh).allowedSourceRanges[0]: ...`), so a half-valid file never
//! half-applies.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    DeviceAddress, SpecError, format_duration, format_instant, parse_device_address,
    parse_duration, parse_instant, parse_listen, parse_source_ranges, validate_connect_rate,
    validate_link_name, validate_max_connections,
};

/// The file as written. Values are as loosely typed as the format allows (addresses, ranges,
/// durations and instants as strings, limits as integers) so that a bad value is reported by
/// the checks that name the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksFile {
    pub links: Vec<LinkEntry>,
}

/// One link as written; [`LinkEntry::validate`] turns it into a [`LinkSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LinkEntry {
    #[serde(deserialize_with = "scalar::text")]
    pub name: String,
    #[serde(deserialize_with = "scalar::text")]
    pub listen: String,
    #[serde(deserialize_with = "scalar::text")]
    pub device: String,
    pub allowed_source_ranges: Vec<String>,
    #[serde(
        default,
        deserialize_with = "scalar::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_rate_per_source: Option<i64>,
    #[serde(
        default,
        deserialize_with = "scalar::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Clients come through a load balancer that sends a PROXY protocol header first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,
}

/// A link whose every field has been checked. Unset limits are left to the proxy's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// A DNS-1123 label, unique in the file.
    pub name: String,
    /// Its port is unique in the file.
    pub listen: SocketAddr,
    pub device: DeviceAddress,
    /// At least one.
    pub allowed_source_ranges: Vec<IpNet>,
    pub expires_at: Option<SystemTime>,
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    /// New connections per second from one source; `Some(0)` means no limit.
    pub connect_rate_per_source: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub enabled: bool,
    /// A PROXY protocol header (v1 or v2) comes first on every connection; the client it names
    /// is the one judged.
    pub proxy_protocol: bool,
}

impl LinkEntry {
    /// Checks every field; errors name `at.<field>` (e.g. `at` = `links[2] (pump-17-ssh)`).
    pub fn validate(&self, at: &str) -> Result<LinkSpec, SpecError> {
        let field = |name: &str| format!("{at}.{name}");
        validate_link_name(&field("name"), &self.name)?;
        let rate = self
            .connect_rate_per_source
            .map(|rate| validate_connect_rate(&field("connectRatePerSource"), rate))
            .transpose()?;
        Ok(LinkSpec {
            name: self.name.clone(),
            listen: parse_listen(&field("listen"), &self.listen)?,
            device: parse_device_address(&field("device"), &self.device)?,
            allowed_source_ranges: parse_source_ranges(
                &field("allowedSourceRanges"),
                &self.allowed_source_ranges,
            )?,
            expires_at: self
                .expires_at
                .as_deref()
                .map(|text| parse_instant(&field("expiresAt"), text))
                .transpose()?,
            max_connections: self
                .max_connections
                .map(|n| validate_max_connections(&field("maxConnections"), n))
                .transpose()?,
            max_connections_per_source: self
                .max_connections_per_source
                .map(|n| validate_max_connections(&field("maxConnectionsPerSource"), n))
                .transpose()?,
            connect_rate_per_source: rate,
            idle_timeout: self
                .idle_timeout
                .as_deref()
                .map(|text| parse_duration(&field("idleTimeout"), text))
                .transpose()?,
            enabled: self.enabled.unwrap_or(true),
            proxy_protocol: self.proxy_protocol.unwrap_or(false),
        })
    }
}

impl From<&LinkSpec> for LinkEntry {
    fn from(link: &LinkSpec) -> Self {
        Self {
            name: link.name.clone(),
            listen: link.listen.to_string(),
            device: link.device.to_string(),
            allowed_source_ranges: link
                .allowed_source_ranges
                .iter()
                .map(ToString::to_string)
                .collect(),
            expires_at: link.expires_at.map(format_instant),
            max_connections: link.max_connections.map(i64::from),
            max_connections_per_source: link.max_connections_per_source.map(i64::from),
            connect_rate_per_source: link.connect_rate_per_source.map(i64::from),
            idle_timeout: link.idle_timeout.map(format_duration),
            // Written only when it says something.
            enabled: (!link.enabled).then_some(false),
            proxy_protocol: link.proxy_protocol.then_some(true),
        }
    }
}

/// Reads a links file whole: every link checked, names and listen ports unique. The first
/// problem refuses the file, naming the link and the field.
pub fn parse_links_file(text: &str) -> Result<Vec<LinkSpec>, SpecError> {
    if text.trim().is_empty() {
        return Err(SpecError::new(
            "links file",
            "is empty",
            "write `links: []` to carry no links (an empty file is more likely a write cut short)",
        ));
    }
    let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(syntax_error)?;
    let file: LinksFile = serde_path_to_error::deserialize(document.clone())
        .map_err(|err| shape_error(&document, err))?;
    let mut links: Vec<LinkSpec> = Vec::with_capacity(file.links.len());
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut by_port: HashMap<u16, usize> = HashMap::new();
    for (index, entry) in file.links.iter().enumerate() {
        let at = link_label(index, Some(&entry.name));
        let link = entry.validate(&at)?;
        if let Some(&other) = by_name.get(&link.name) {
            return Err(SpecError::new(
                format!("{at}.name"),
                format!("{:?} is already the name of links[{other}]", link.name),
                "give each link its own name",
            ));
        }
        if let Some(&other) = by_port.get(&link.listen.port()) {
            return Err(SpecError::new(
                format!("{at}.listen"),
                format!(
                    "port {} is already the port of {}",
                    link.listen.port(),
                    link_label(other, Some(&links[other].name))
                ),
                "give each link its own port (a port is the process's, whatever the address)",
            ));
        }
        by_name.insert(link.name.clone(), index);
        by_port.insert(link.listen.port(), index);
        links.push(link);
    }
    Ok(links)
}

/// The text [`parse_links_file`] reads back as `links`: JSON (which is YAML too), so no value
/// depends on YAML's quoting rules.
pub fn render_links_file(links: &[LinkSpec]) -> String {
    let file = LinksFile {
        links: links.iter().map(LinkEntry::from).collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("strings and integers serialize");
    text.push('\n');
    text
}

/// `links[2] (pump-17-ssh)`, or `links[2]` for a link without a usable name.
fn link_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => format!("links[{index}] ({name})"),
        _ => format!("links[{index}]"),
    }
}

fn syntax_error(err: serde_yaml::Error) -> SpecError {
    let message = err.to_string();
    match err.location() {
        Some(at) => {
            let location = format!(" at line {} column {}", at.line(), at.column());
            SpecError::new(
                format!("line {}, column {}", at.line(), at.column()),
                message.replacen(&location, "", 1),
                "correct the YAML there (a JSON file is YAML too)",
            )
        }
        None => SpecError::new(
            "links file",
            message,
            "correct the YAML (a JSON file is YAML too)",
        ),
    }
}

/// A field of the wrong type, missing or unknown, named by its path with links labelled.
fn shape_error(
    document: &serde_yaml::Value,
    err: serde_path_to_error::Error<serde_yaml::Error>,
) -> SpecError {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    let mut segments = err.path().iter().peekable();
    if let (Some(Segment::Map { key }), Some(Segment::Seq { index })) =
        (segments.peek().cloned(), err.path().iter().nth(1))
        && key == "links"
    {
        let name = document["links"][*index]["name"].as_str();
        field = link_label(*index, name);
        segments.nth(1);
    }
    for segment in segments {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Enum { variant } => field.push_str(&format!("::{variant}")),
            Segment::Unknown => field.push_str(".?"),
        }
    }
    if field.is_empty() {
        field = "links file".to_owned();
    }
    let problem = err.inner().to_string();
    let fix = if problem.starts_with("unknown field") {
        "remove it or correct its spelling"
    } else if problem.starts_with("missing field") {
        "add it: every link has a name, listen, device and allowedSourceRanges"
    } else if problem.ends_with("expected i64") {
        "write a whole number, e.g. 64"
    } else if problem.ends_with("expected a boolean") {
        "write true or false"
    } else {
        "write the file as links: [{name: pump-17-ssh, listen: \"[::]:2222\", device: \"10.20.30.40:22\", allowedSourceRanges: [203.0.113.0/24]}]"
    };
    SpecError::new(field, problem, fix)
}

/// Fields checked as text also take a number or a boolean as the text it was written as
/// (`idleTimeout: 15`), so that the check of the value, not YAML's typing, says what is wrong.
mod scalar {
    use serde::{Deserializer, de};

    pub fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(Text)
    }

    pub fn optional_text<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        text(deserializer).map(Some)
    }

    struct Text;

    impl de::Visitor<'_> for Text {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
            Ok(value.to_string())
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
            Ok(value.to_string())
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
            Ok(value.to_string())
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<String, E> {
            Ok(value.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
links:
  - name: pump-17-ssh
    listen: "[::]:2222"
    device: "10.20.30.40:22"          # or host name and port
    allowedSourceRanges: ["203.0.113.0/24", "2001:db8::/32"]
    expiresAt: "2026-12-05T10:00:00Z" # optional
    maxConnections: 64                # optional
    idleTimeout: 15m                  # optional
    enabled: true                     # optional, default true
  - name: pump-17-vnc
    listen: 0.0.0.0:5900
    device: pump-17.plant-a.internal:5900
    allowedSourceRanges: [203.0.113.7/32]
    maxConnectionsPerSource: 2
    connectRatePerSource: 0
    enabled: false
"#;

    fn error_of(text: &str) -> String {
        parse_links_file(text)
            .expect_err("the file should be refused")
            .to_string()
    }

    /// One link in YAML flow form with `extra` fields, at `listen` port 2222.
    fn one_link(extra: &str) -> String {
        format!(
            "links: [{{name: pump-17-ssh, listen: '[::]:2222', device: '10.20.30.40:22', allowedSourceRanges: [203.0.113.0/24]{extra}}}]"
        )
    }

    #[test]
    fn the_documented_example_parses_with_every_field() {
        let links = parse_links_file(EXAMPLE).expect("the example is valid");
        assert_eq!(links.len(), 2);
        let ssh = &links[0];
        assert_eq!(ssh.name, "pump-17-ssh");
        assert_eq!(ssh.listen, "[::]:2222".parse().unwrap());
        assert_eq!(ssh.device.to_string(), "10.20.30.40:22");
        assert_eq!(ssh.allowed_source_ranges.len(), 2);
        assert_eq!(
            ssh.expires_at.map(format_instant).as_deref(),
            Some("2026-12-05T10:00:00Z")
        );
        assert_eq!(ssh.max_connections, Some(64));
        assert_eq!(ssh.idle_timeout, Some(Duration::from_secs(900)));
        assert!(ssh.enabled);
        let vnc = &links[1];
        assert_eq!(vnc.device.host, "pump-17.plant-a.internal");
        assert_eq!(
            (vnc.max_connections, vnc.max_connections_per_source),
            (None, Some(2))
        );
        assert_eq!(vnc.connect_rate_per_source, Some(0));
        assert_eq!((vnc.expires_at, vnc.idle_timeout), (None, None));
        assert!(!vnc.enabled);
    }

    #[test]
    fn proxy_protocol_is_off_unless_a_link_says_so_and_survives_a_render() {
        let links = parse_links_file(&one_link(", proxyProtocol: true")).unwrap();
        assert!(links[0].proxy_protocol);
        let text = render_links_file(&links);
        assert!(text.contains("\"proxyProtocol\": true"), "{text}");
        assert_eq!(parse_links_file(&text), Ok(links));
        let plain = parse_links_file(&one_link("")).unwrap();
        assert!(!plain[0].proxy_protocol);
        assert!(!render_links_file(&plain).contains("proxyProtocol"));
        let text = error_of(&one_link(", proxyProtocol: sometimes"));
        assert!(text.contains("proxyProtocol"), "{text}");
    }

    #[test]
    fn a_rendered_file_reads_back_identically() {
        let mut links = parse_links_file(EXAMPLE).unwrap();
        links[1].expires_at =
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_600_800_250));
        links[1].idle_timeout = Some(Duration::from_secs(93_784));
        let text = render_links_file(&links);
        assert_eq!(parse_links_file(&text), Ok(links.clone()), "{text}");
        assert!(text.starts_with("{\n  \"links\": ["), "JSON: {text}");
        assert_eq!(parse_links_file(&render_links_file(&[])), Ok(vec![]));
    }

    #[test]
    fn a_bad_value_is_named_by_link_and_field() {
        assert_eq!(
            error_of(&one_link("").replace("203.0.113.0/24", "203.0.113.9")),
            "links[0] (pump-17-ssh).allowedSourceRanges[0]: \"203.0.113.9\" is an address, not a CIDR block; write 203.0.113.9/32 to allow that one address"
        );
        for (extra, field) in [
            (", idleTimeout: 15", "idleTimeout: \"15\" is not a duration"),
            (", idleTimeout: 0s", "idleTimeout: \"0s\" is zero"),
            (
                ", expiresAt: tomorrow",
                "expiresAt: \"tomorrow\" is not an RFC 3339",
            ),
            (
                ", maxConnections: 0",
                "maxConnections: 0 is not a number of connections",
            ),
            (
                ", maxConnectionsPerSource: 5000",
                "maxConnectionsPerSource: 5000",
            ),
            (", connectRatePerSource: -1", "connectRatePerSource: -1"),
        ] {
            let text = error_of(&one_link(extra));
            assert!(
                text.starts_with(&format!("links[0] (pump-17-ssh).{field}")),
                "{extra}: {text}"
            );
        }
        let text = error_of(&one_link("").replace("'10.20.30.40:22'", "'10.20.30.40'"));
        assert!(
            text.starts_with("links[0] (pump-17-ssh).device: \"10.20.30.40\" has no port"),
            "{text}"
        );
        let text = error_of(&one_link("").replace("'[::]:2222'", "2222"));
        assert!(
            text.starts_with("links[0] (pump-17-ssh).listen: \"2222\" is not an ADDR:PORT"),
            "{text}"
        );
        let text = error_of(&one_link("").replace(
            "allowedSourceRanges: [203.0.113.0/24]",
            "allowedSourceRanges: []",
        ));
        assert!(text.contains("nobody could connect"), "{text}");
    }

    #[test]
    fn unknown_missing_and_mistyped_fields_are_named() {
        let text = error_of(&one_link(", maxConnectoins: 3"));
        assert!(
            text.starts_with("links[0] (pump-17-ssh).maxConnectoins: unknown field"),
            "{text}"
        );
        assert!(
            text.ends_with("remove it or correct its spelling"),
            "{text}"
        );
        let text =
            error_of("links: [{name: pump-17-ssh, listen: '[::]:2222', allowedSourceRanges: []}]");
        assert!(
            text.starts_with("links[0] (pump-17-ssh): missing field `device`"),
            "{text}"
        );
        let text = error_of(&one_link(", maxConnections: lots"));
        assert!(
            text.starts_with("links[0] (pump-17-ssh).maxConnections: invalid type"),
            "{text}"
        );
        assert!(text.ends_with("write a whole number, e.g. 64"), "{text}");
        let text = error_of(&one_link(", enabled: yes"));
        assert!(text.ends_with("write true or false"), "{text}");
        let text = error_of("linkz: []");
        assert!(text.starts_with("linkz: unknown field"), "{text}");
        let text = error_of("- a\n- b\n");
        assert!(text.starts_with("links file: invalid type"), "{text}");
    }

    #[test]
    fn yaml_syntax_errors_say_where() {
        let text = error_of("links: [ {name: x");
        assert!(
            text.starts_with("line 2, column 1: did not find expected"),
            "{text}"
        );
        let text = error_of("links:\n  - name: a\n    name: b\n");
        assert!(text.contains("duplicate entry with key \"name\""), "{text}");
        let text = error_of("   \n");
        assert!(
            text.contains("links: []"),
            "an empty file is refused, not read as no links: {text}"
        );
    }

    #[test]
    fn names_must_be_labels_and_unique() {
        let text = error_of(&one_link("").replace("pump-17-ssh", "Pump_17"));
        assert!(
            text.starts_with("links[0] (Pump_17).name: \"Pump_17\" is not a link name"),
            "{text}"
        );
        let two = r#"{"links": [
            {"name": "a", "listen": "[::]:2222", "device": "10.0.0.1:22", "allowedSourceRanges": ["203.0.113.0/24"]},
            {"name": "a", "listen": "[::]:2223", "device": "10.0.0.1:22", "allowedSourceRanges": ["203.0.113.0/24"]}]}"#;
        assert_eq!(
            error_of(two),
            "links[1] (a).name: \"a\" is already the name of links[0]; give each link its own name"
        );
    }

    #[test]
    fn two_links_may_not_share_a_port_whatever_the_address() {
        let two = r#"{"links": [
            {"name": "a", "listen": "127.0.0.1:2222", "device": "10.0.0.1:22", "allowedSourceRanges": ["203.0.113.0/24"]},
            {"name": "b", "listen": "[::1]:2222", "device": "10.0.0.1:22", "allowedSourceRanges": ["203.0.113.0/24"]}]}"#;
        let text = error_of(two);
        assert!(
            text.starts_with("links[1] (b).listen: port 2222 is already the port of links[0] (a)"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_set_of_links_is_a_valid_file() {
        assert_eq!(parse_links_file("links: []"), Ok(vec![]));
    }
}
