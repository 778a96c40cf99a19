//! The `DeviceLink` custom resource: its wire types (which generate the CRD schema) and the
//! validation that turns a spec into a [`ValidLink`]. Pure: no I/O, no clock of its own. The
//! values the proxy reads too (device, ranges, durations, instants, limits) are checked by
//! `devicelink_spec`, the proxy's own checks, so that what validates here runs there.
//!
//! Fields arrive as loosely typed as the schema allows (ports as integers, ranges, durations and
//! instants as strings) so that a bad value still deserializes and can be reported in the
//! object's status, naming the field and the fix, instead of breaking the watch.

use std::{collections::BTreeMap, fmt, time::Duration};

pub use devicelink_spec::{DeviceAddress as DeviceAddr, format_duration, parse_duration};
use devicelink_spec::{
    MAX_CONNECT_RATE, MAX_CONNECTIONS, parse_instant, parse_source_ranges, validate_connect_rate,
    validate_device, validate_max_connections, validate_port,
};
use ipnet::IpNet;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every devicelink resource.
pub const GROUP: &str = "devicelink.io";

/// Annotation by which `devicelink open` asks for the link to be (re)opened now: whenever its
/// value differs from `status.openRequest`, the TTL restarts at the operator's present, so
/// `--for 2h` means two hours from the command, even on a link enabled hours before.
pub const OPEN_REQUEST_ANNOTATION: &str = "devicelink.io/open-request";

/// Child objects live in the proxies' namespace, where links of every namespace meet: each is
/// named `<link>-<8 hex digits of its namespace>`, so that two namespaces' links of the same
/// name never share one.
pub const CHILD_NAME_SUFFIX_LEN: usize = 1 + 8;

/// Where the proxy pods and every link's children live unless the operator is told otherwise:
/// the one namespace allowed the proxy's capabilities.
pub const DEFAULT_PROXY_NAMESPACE: &str = "devicelink-proxies";

/// A Service name is a DNS-1035 label of at most 63 characters; with room for the namespace's
/// digits (and as many as the name had with its former `devicelink-` prefix), a link's name may
/// use 52.
pub const MAX_LINK_NAME_LEN: usize = 52;

/// A duration of the proxy's grammar (digits and s, m, h, d, summed) that the proxy accepts:
/// more than zero and at most devicelink_spec's `MAX_DURATION` (36500d, checked by a test), so
/// that the API server refuses what the proxy would.
pub const DURATION_IN_RANGE: &str = "self.findAll('[0-9]+[smhd]').map(p, int(p.substring(0, p.size() - 1)) * (p.endsWith('d') ? 86400 : (p.endsWith('h') ? 3600 : (p.endsWith('m') ? 60 : 1)))).sum() > 0 && self.findAll('[0-9]+[smhd]').map(p, int(p.substring(0, p.size() - 1)) * (p.endsWith('d') ? 86400 : (p.endsWith('h') ? 3600 : (p.endsWith('m') ? 60 : 1)))).sum() <= 3153600000";

/// An on-demand, source-restricted TCP path from the internet to one device on a private network.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "devicelink.io",
    version = "v1alpha1",
    kind = "DeviceLink",
    plural = "devicelinks",
    shortname = "dl",
    namespaced,
    status = "DeviceLinkStatus",
    derive = "PartialEq",
    doc = "An on-demand, source-restricted TCP path from the internet to one device on a private network.",
    printcolumn(name = "Device", type_ = "string", json_path = ".spec.device.host"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.device.port"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiresAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 52 && !self.metadata.name.contains('.') && self.metadata.name.matches('^[a-z]')")
        .message("metadata.name must start with a letter, have no '.', and be at most 52 characters (children are named <name>-<8 hex digits>, a DNS-1035 label)")
)]
#[x_kube(
    validation = Rule::new("has(self.ttl) != has(self.expiresAt)")
        .message("set exactly one of spec.ttl (e.g. 2h) or spec.expiresAt (e.g. 2026-11-25T10:00:00Z)")
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLinkSpec {
    /// Whether the link is open. Setting it back to true after false restarts the TTL, as does
    /// a new value of the annotation devicelink.io/open-request (what `devicelink open` sets).
    #[serde(default = "enabled_by_default")]
    #[schemars(default = "enabled_by_default")]
    pub enabled: bool,

    /// The device on the private network that the link leads to.
    pub device: Device,

    /// Port of the public endpoint; defaults to the device's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,

    /// Source address blocks (IPv4 or IPv6 CIDR) allowed to connect; at least one.
    // Bounded lengths keep the CEL rule's estimated cost within the API server's budget.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r))").message("every spec.allowedSourceRanges entry must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32"))]
    pub allowed_source_ranges: Vec<String>,

    /// How long the link stays open, counted from when it was last enabled (e.g. 2h, 90m, 1h30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[smhd])+$"), length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_IN_RANGE).message("spec.ttl must be a positive duration of at most 36500d, e.g. 2h"))]
    pub ttl: Option<String>,

    /// When the link closes (RFC 3339, e.g. 2026-11-25T10:00:00Z).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,

    /// Close a connection that carried no byte either way for this long (e.g. 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[smhd])+$"), length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_IN_RANGE).message("spec.idleTimeout must be a positive duration of at most 36500d, e.g. 15m"))]
    pub idle_timeout: Option<String>,

    /// Connections carried at once; more are refused. The proxy's default (1024) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CONNECTIONS))]
    pub max_connections: Option<i64>,

    /// Connections one source (an IPv4 address, an IPv6 /64) may hold open at once; more from
    /// it are refused. A quarter of maxConnections (at least 1) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CONNECTIONS))]
    pub max_connections_per_source: Option<i64>,

    /// New connections a second one source may open (a burst of twice as many passes); 0 for
    /// no limit. 10 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_CONNECT_RATE))]
    pub connect_rate_per_source: Option<i64>,

    /// Which data plane carries the bytes: eBPF splice when possible (`auto`), only eBPF, or
    /// only the userspace copy.
    #[serde(default)]
    pub data_plane: DataPlane,

    /// How the public endpoint's load balancer is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOptions>,
}

/// The link's LoadBalancer Service, as the cluster's load balancer needs it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOptions {
    /// Annotations for the load balancer implementation (e.g. an internal or a proxying load
    /// balancer), put on the Service as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub annotations: BTreeMap<String, String>,
    /// spec.loadBalancerClass of the Service: which load balancer implementation serves it.
    /// Kubernetes does not let it change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub load_balancer_class: Option<String>,
    /// The load balancer speaks the PROXY protocol (v1 or v2) to the proxy, which then reads
    /// each client's address from it (`proxyProtocol` in its links file). Needed behind a proxying load
    /// balancer, whose connections otherwise all come from its own addresses;
    /// externalTrafficPolicy Local keeps client addresses only behind pass-through ones. Never
    /// set it for a load balancer that does not send the header: every connection would be
    /// refused.
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// Where the device listens, as seen from the cluster's pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct Device {
    /// IP address or DNS name of the device.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the device.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i64,
}

/// Which data plane the proxy uses.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataPlane {
    /// eBPF splice when the kernel and privileges allow, else the userspace copy.
    #[default]
    Auto,
    /// eBPF splice, or the proxy fails at start.
    Ebpf,
    /// Userspace copy only.
    Userspace,
}

impl DataPlane {
    /// The value of the proxy's `--data-plane` flag.
    pub fn as_flag(self) -> &'static str {
        match self {
            DataPlane::Auto => "auto",
            DataPlane::Ebpf => "ebpf",
            DataPlane::Userspace => "userspace",
        }
    }
}

/// What the operator last saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLinkStatus {
    /// Pending, Active, Disabled, Expired or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// ADDRESS:PORT to connect to, once the load balancer reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When the link was last enabled; a TTL counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_at: Option<Time>,
    /// When the link closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The `devicelink.io/open-request` annotation the TTL was last restarted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_request: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether the endpoint accepts connections, with the reason (Active,
    /// WaitingForLoadBalancer, WaitingForProxy, Disabled, Expired, InvalidSpec, NameTaken,
    /// ApplyRefused, PolicyDenied, ProxyPodsRefused, ProxyRolloutStalled, ProxyCrashLooping,
    /// ProxyImagePullFailed, ProxyCannotStart, ProxyUnschedulable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where a link is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Children applied; waiting for the load balancer's address or the proxy's readiness.
    Pending,
    /// Endpoint assigned and the proxy ready.
    Active,
    /// `spec.enabled` is false; no children.
    Disabled,
    /// The TTL or `expiresAt` has passed; no children.
    Expired,
    /// The link cannot serve until something is changed: an invalid spec (no children), a
    /// child's name taken by another object, a child refused by the API server, proxy pods
    /// refused or crash-looping. The Ready condition's reason and message say what and how.
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Pending,
        Phase::Active,
        Phase::Disabled,
        Phase::Expired,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Active => "Active",
            Phase::Disabled => "Disabled",
            Phase::Expired => "Expired",
            Phase::Failed => "Failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spec that cannot be carried out: which field, what is wrong, and what to write instead.
pub type InvalidSpec = devicelink_spec::SpecError;

/// How a link's end is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Counted from when the link was last enabled.
    Ttl(Duration),
    /// An absolute instant.
    Until(Timestamp),
}

impl Lifetime {
    /// The instant the link closes, given when it was (last) enabled.
    pub fn expires_at(self, enabled_at: Timestamp) -> Timestamp {
        match self {
            Lifetime::Ttl(ttl) => enabled_at.checked_add(ttl).unwrap_or(Timestamp::MAX),
            Lifetime::Until(at) => at,
        }
    }
}

/// A DeviceLink whose every field has been checked; all decisions are made from this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidLink {
    pub name: String,
    pub namespace: String,
    /// Where the children are applied: the operator's proxies' namespace, or the link's own
    /// (what [`DeviceLink::validate`] fills in, for rendering a file offline).
    pub children_namespace: String,
    pub uid: Option<String>,
    pub enabled: bool,
    pub device: DeviceAddr,
    /// Port of the public endpoint.
    pub port: u16,
    pub allowed_source_ranges: Vec<IpNet>,
    pub lifetime: Lifetime,
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    pub connect_rate_per_source: Option<u32>,
    pub data_plane: DataPlane,
    pub service: ServiceOptions,
}

impl ValidLink {
    /// Name of the link's children.
    pub fn child_name(&self) -> String {
        child_name(&self.namespace, &self.name)
    }
}

/// Name of the children of link `link_name` in `namespace`: unique in the proxies' namespace.
pub fn child_name(namespace: &str, link_name: &str) -> String {
    let hash = namespace
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{link_name}-{:08x}", hash >> 32)
}

impl DeviceLink {
    /// Checks every field; the first problem found is returned, naming the field and the fix.
    pub fn validate(&self) -> Result<ValidLink, InvalidSpec> {
        let name = self.name_any();
        validate_name(&name)?;
        let namespace = self.namespace().unwrap_or_else(|| "default".to_owned());
        let spec = &self.spec;

        let device = validate_device("spec.device", &spec.device.host, spec.device.port)?;
        let port = match spec.port {
            Some(port) => validate_port("spec.port", port)?,
            None => device.port,
        };
        let allowed_source_ranges =
            parse_source_ranges("spec.allowedSourceRanges", &spec.allowed_source_ranges)?;

        let lifetime = match (&spec.ttl, &spec.expires_at) {
            (Some(ttl), None) => Lifetime::Ttl(parse_duration("spec.ttl", ttl)?),
            (None, Some(at)) => Lifetime::Until(parse_timestamp("spec.expiresAt", at)?),
            (Some(_), Some(_)) => {
                return Err(InvalidSpec::new(
                    "spec.ttl/spec.expiresAt",
                    "both are set",
                    "keep only one: ttl (e.g. 2h, counted from when the link was enabled) or expiresAt (an RFC 3339 instant)",
                ));
            }
            (None, None) => {
                return Err(InvalidSpec::new(
                    "spec.ttl/spec.expiresAt",
                    "neither is set, and a link never stays open forever",
                    "set ttl (e.g. 2h) or expiresAt (e.g. 2026-11-25T10:00:00Z)",
                ));
            }
        };

        let idle_timeout = spec
            .idle_timeout
            .as_deref()
            .map(|value| parse_duration("spec.idleTimeout", value))
            .transpose()?;
        let max_connections = spec
            .max_connections
            .map(|value| validate_max_connections("spec.maxConnections", value))
            .transpose()?;
        let max_connections_per_source = spec
            .max_connections_per_source
            .map(|value| validate_max_connections("spec.maxConnectionsPerSource", value))
            .transpose()?;
        let connect_rate_per_source = spec
            .connect_rate_per_source
            .map(|value| validate_connect_rate("spec.connectRatePerSource", value))
            .transpose()?;

        Ok(ValidLink {
            name,
            children_namespace: namespace.clone(),
            namespace,
            uid: self.uid(),
            enabled: spec.enabled,
            device,
            port,
            allowed_source_ranges,
            lifetime,
            idle_timeout,
            max_connections,
            max_connections_per_source,
            connect_rate_per_source,
            data_plane: spec.data_plane,
            service: spec.service.clone().unwrap_or_default(),
        })
    }
}

fn validate_name(name: &str) -> Result<(), InvalidSpec> {
    let label_ok = name.len() <= MAX_LINK_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if label_ok {
        Ok(())
    } else {
        Err(InvalidSpec::new(
            "metadata.name",
            format!(
                "{name:?} cannot name the link's Service ({})",
                child_name("NAMESPACE", name)
            ),
            format!(
                "use at most {MAX_LINK_NAME_LEN} lowercase letters, digits and '-', starting with a letter, e.g. pump-17-ssh"
            ),
        ))
    }
}

/// An RFC 3339 instant as the proxy reads it, on the operator's clock type. The last day of
/// year 9999 is past jiff's range (it keeps room for any offset): such an instant becomes the
/// latest one jiff has, as a TTL too long for the clock does in [`Lifetime::expires_at`].
fn parse_timestamp(field: &str, value: &str) -> Result<Timestamp, InvalidSpec> {
    let at = parse_instant(field, value)?;
    Ok(Timestamp::try_from(at).unwrap_or(Timestamp::MAX))
}

/// RFC 3339 in UTC to the second, as the proxy's `--expires-at` and kubectl show it.
pub fn format_instant(at: Timestamp) -> String {
    let to_the_second = Timestamp::from_second(at.as_second()).unwrap_or(at);
    devicelink_spec::format_instant(to_the_second.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(spec_yaml: &str) -> DeviceLink {
        let yaml = format!(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {{name: pump-17-ssh, namespace: plant-a}}\nspec:\n{spec_yaml}"
        );
        serde_yaml::from_str(&yaml)
            .unwrap_or_else(|e| panic!("test YAML should parse: {e}\n{yaml}"))
    }

    const GOOD: &str = "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24, 2001:db8::/32]\n  ttl: 2h\n";

    fn error_of(spec_yaml: &str) -> InvalidSpec {
        link(spec_yaml)
            .validate()
            .expect_err("spec should be rejected")
    }

    fn fnv(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    #[test]
    fn a_minimal_link_is_valid_with_defaults_filled_in() {
        let valid = link(GOOD).validate().expect("the minimal link is valid");
        assert!(valid.enabled, "enabled defaults to true");
        assert_eq!(valid.port, 22, "port defaults to device.port");
        assert_eq!(valid.device.to_string(), "10.20.30.40:22");
        assert_eq!(valid.lifetime, Lifetime::Ttl(Duration::from_secs(7200)));
        assert_eq!(valid.data_plane, DataPlane::Auto);
        assert_eq!(valid.allowed_source_ranges.len(), 2);
        assert_eq!(
            valid.child_name(),
            format!("pump-17-ssh-{:08x}", fnv("plant-a") >> 32),
            "the link's name, then its namespace's digits"
        );
        assert!(child_name("plant-a", &"a".repeat(MAX_LINK_NAME_LEN)).len() <= 63);
        assert_ne!(child_name("plant-a", "x"), child_name("plant-b", "x"));
    }

    #[test]
    fn every_optional_field_is_carried_through() {
        let valid = link(
            "  enabled: false\n  device: {host: '2001:db8::7', port: 3389}\n  port: 13389\n  allowedSourceRanges: [198.51.100.0/24]\n  expiresAt: '2026-11-25T10:00:00Z'\n  idleTimeout: 15m\n  maxConnections: 16\n  dataPlane: userspace\n",
        )
        .validate()
        .expect("valid");
        assert!(!valid.enabled);
        assert_eq!(
            valid.device.to_string(),
            "[2001:db8::7]:3389",
            "IPv6 hosts are bracketed for --device"
        );
        assert_eq!(valid.port, 13389);
        assert_eq!(
            valid.lifetime,
            Lifetime::Until("2026-11-25T10:00:00Z".parse().unwrap())
        );
        assert_eq!(valid.idle_timeout, Some(Duration::from_secs(900)));
        assert_eq!(valid.max_connections, Some(16));
        assert_eq!(valid.data_plane, DataPlane::Userspace);
    }

    #[test]
    fn bad_cidr_names_its_index_and_shows_the_form() {
        let err = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24, 10.0.0.300/24]\n  ttl: 2h\n",
        );
        assert_eq!(err.field, "spec.allowedSourceRanges[1]");
        assert!(
            err.to_string().contains("203.0.113.0/24"),
            "the fix shows a valid CIDR: {err}"
        );
    }

    #[test]
    fn bare_address_is_rejected_with_the_slash_32_it_needs() {
        let err = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.9]\n  ttl: 2h\n",
        );
        assert_eq!(err.field, "spec.allowedSourceRanges[0]");
        assert!(err.fix.contains("203.0.113.9/32"), "{err}");
    }

    #[test]
    fn host_bits_past_the_prefix_are_rejected_with_the_network_suggested() {
        let err = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.7/24]\n  ttl: 2h\n",
        );
        assert!(err.fix.contains("203.0.113.0/24"), "{err}");
    }

    #[test]
    fn empty_source_ranges_are_rejected() {
        let err = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: []\n  ttl: 2h\n",
        );
        assert_eq!(err.field, "spec.allowedSourceRanges");
    }

    #[test]
    fn ports_outside_1_to_65535_are_rejected_naming_the_field() {
        for (yaml, field) in [
            (
                "  device: {host: 10.20.30.40, port: 0}\n",
                "spec.device.port",
            ),
            (
                "  device: {host: 10.20.30.40, port: 70000}\n",
                "spec.device.port",
            ),
            (
                "  device: {host: 10.20.30.40, port: 22}\n  port: -1\n",
                "spec.port",
            ),
            (
                "  device: {host: 10.20.30.40, port: 22}\n  port: 65536\n",
                "spec.port",
            ),
        ] {
            let err = error_of(&format!(
                "{yaml}  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n"
            ));
            assert_eq!(err.field, field, "{yaml}");
            assert!(err.fix.contains("1 to 65535"), "{err}");
        }
    }

    #[test]
    fn exactly_one_of_ttl_and_expires_at_is_required() {
        let both = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n  expiresAt: '2026-11-25T10:00:00Z'\n",
        );
        assert_eq!(both.field, "spec.ttl/spec.expiresAt");
        assert!(both.problem.contains("both"), "{both}");
        let neither = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n",
        );
        assert!(neither.problem.contains("neither"), "{neither}");
    }

    #[test]
    fn malformed_durations_and_instants_name_their_field() {
        let ttl = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: two hours\n",
        );
        assert_eq!(ttl.field, "spec.ttl");
        let zero = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 0m\n",
        );
        assert_eq!(zero.field, "spec.ttl");
        let at = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  expiresAt: tomorrow\n",
        );
        assert_eq!(at.field, "spec.expiresAt");
        let idle = error_of(&format!("{GOOD}  idleTimeout: 15\n"));
        assert_eq!(idle.field, "spec.idleTimeout");
    }

    #[test]
    fn device_host_with_a_port_in_it_says_where_the_port_goes() {
        let err = error_of(
            "  device: {host: '10.20.30.40:22', port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n",
        );
        assert_eq!(err.field, "spec.device.host");
        assert!(err.problem.contains("spec.device.port"), "{err}");
    }

    #[test]
    fn names_too_long_for_the_child_service_are_rejected() {
        let mut long = link(GOOD);
        long.metadata.name = Some("a".repeat(MAX_LINK_NAME_LEN + 1));
        assert_eq!(long.validate().unwrap_err().field, "metadata.name");
        long.metadata.name = Some("a".repeat(MAX_LINK_NAME_LEN));
        assert!(long.validate().is_ok(), "a name of exactly the limit fits");
        long.metadata.name = Some("pump.17".into());
        assert_eq!(long.validate().unwrap_err().field, "metadata.name");
    }

    #[test]
    fn the_crds_duration_rule_bounds_at_the_proxys_maximum() {
        assert!(
            DURATION_IN_RANGE.ends_with(&format!("<= {}", devicelink_spec::MAX_DURATION.as_secs()))
        );
    }

    #[test]
    fn durations_parse_and_format_round_trip() {
        for (text, seconds) in [
            ("2h", 7200),
            ("90m", 5400),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("45s", 45),
        ] {
            let parsed = parse_duration("f", text).unwrap();
            assert_eq!(parsed.as_secs(), seconds, "{text}");
            assert_eq!(
                parse_duration("f", &format_duration(parsed)).unwrap(),
                parsed
            );
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        for bad in ["", "h", "2", "2x", "-2h", "2 h"] {
            assert!(
                parse_duration("f", bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn per_source_limits_name_their_field() {
        let err = error_of(&format!("{GOOD}  maxConnectionsPerSource: 0\n"));
        assert_eq!(err.field, "spec.maxConnectionsPerSource");
        let err = error_of(&format!("{GOOD}  connectRatePerSource: -3\n"));
        assert_eq!(err.field, "spec.connectRatePerSource");
        let valid = link(&format!(
            "{GOOD}  maxConnectionsPerSource: 4\n  connectRatePerSource: 0\n"
        ))
        .validate()
        .unwrap();
        assert_eq!(valid.max_connections_per_source, Some(4));
        assert_eq!(valid.connect_rate_per_source, Some(0));
    }

    #[test]
    fn max_connections_is_bounded_by_what_the_proxy_carries() {
        let most = link(&format!("{GOOD}  maxConnections: {MAX_CONNECTIONS}\n"))
            .validate()
            .expect("the proxy's limit itself is valid");
        assert_eq!(most.max_connections, Some(MAX_CONNECTIONS));
        for value in [0, i64::from(MAX_CONNECTIONS) + 1, 1_000_000] {
            let err = error_of(&format!("{GOOD}  maxConnections: {value}\n"));
            assert_eq!(err.field, "spec.maxConnections");
            assert!(err.fix.contains("at most 4096"), "{err}");
        }
    }

    #[test]
    fn an_ipv4_mapped_range_is_refused_with_its_ipv4_form() {
        let err = error_of(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: ['::ffff:203.0.113.0/120']\n  ttl: 2h\n",
        );
        assert_eq!(err.field, "spec.allowedSourceRanges[0]");
        assert!(err.fix.contains("203.0.113.0/24"), "{err}");
    }

    #[test]
    fn expires_at_may_carry_an_offset() {
        let valid = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  expiresAt: '2026-11-25T12:00:00+02:00'\n",
        )
        .validate()
        .expect("an RFC 3339 offset is valid");
        assert_eq!(
            valid.lifetime,
            Lifetime::Until("2026-11-25T10:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn a_device_host_that_looks_like_a_bad_ipv4_address_is_refused() {
        let err = error_of(
            "  device: {host: 10.20.30.300, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n",
        );
        assert_eq!(err.field, "spec.device.host");
    }

    #[test]
    fn instants_are_shown_to_the_second() {
        let at: Timestamp = "2026-11-25T10:00:00.75Z".parse().unwrap();
        assert_eq!(format_instant(at), "2026-11-25T10:00:00Z");
    }

    #[test]
    fn ttl_counts_from_enabled_at_and_expires_at_is_absolute() {
        let enabled: Timestamp = "2026-11-25T08:00:00Z".parse().unwrap();
        assert_eq!(
            format_instant(Lifetime::Ttl(Duration::from_secs(7200)).expires_at(enabled)),
            "2026-11-25T10:00:00Z"
        );
        let until: Timestamp = "2026-11-26T00:00:00Z".parse().unwrap();
        assert_eq!(Lifetime::Until(until).expires_at(enabled), until);
    }
}
