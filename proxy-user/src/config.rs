//! Command-line flags turned into a validated [`Config`]. Pure: no sockets, no kernel. Every
//! error names the flag it is about and says what would be accepted. What a DeviceLink or a
//! links file can say too (addresses, ranges, durations, instants, limits, names) is checked by
//! `devicelink_spec`, so a value means the same and a mistake reads the same wherever it is
//! written; clap names the flag.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::{Parser, ValueEnum};
pub use devicelink_spec::DeviceAddress as DeviceAddr;
use devicelink_spec::SpecError;
use ipnet::IpNet;

use devicelink_spec::memory::{self as sizing, MemoryPlan, MemoryPlanError, MemoryRequest, Plane};

use crate::{
    acl::SourceAcl,
    link::{Link, SourceLimits},
    memory::{Budget, BudgetChoice},
    splice::{CarryMode, CarryPolicy},
};

/// TCP paths from allowed clients to devices, spliced in the kernel: one link given by flags,
/// or a set of links from a file (`--config`) changed while the proxy runs.
#[derive(Parser, Debug, Clone)]
#[command(name = "devicelink-proxy", version, about, long_about = None)]
pub struct Args {
    /// The links to carry, from a YAML (or JSON) file: `links: [{name, listen, device,
    /// allowedSourceRanges, expiresAt, maxConnections, idleTimeout, enabled}]`. Re-read when
    /// it changes (also when replaced by a rename) and on SIGHUP; a file that does not
    /// validate is refused whole and the running links stay as they were.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "device", "allow", "expires_at", "idle_timeout", "name", "max_connections_per_source", "connect_rate_per_source", "proxy_protocol"])]
    pub config: Option<PathBuf>,

    /// Serve the control API (links, sessions, events; closing a session) over HTTP on this
    /// Unix socket, created with mode 0600.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// One link: the address and port clients connect to.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen, required_unless_present = "config")]
    pub listen: Option<SocketAddr>,

    /// One link: the device, HOST:PORT (an IP address or a DNS name resolved at each
    /// connection).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_device, required_unless_present = "config")]
    pub device: Option<DeviceAddr>,

    /// One link: its name in metrics, logs and the control API (lowercase letters, digits and
    /// '-', at most 63).
    #[arg(long, value_name = "NAME", default_value = "link", value_parser = parse_name)]
    pub name: String,

    /// One link: source prefix allowed to connect (repeatable; IPv4 or IPv6; a bare address
    /// means that host). None means nobody gets in; `--allow 0.0.0.0/0 --allow ::/0` opens
    /// the link to everyone.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<IpNet>,

    /// One link: clients come through a load balancer that sends a PROXY protocol header (v1
    /// or v2) before anything else; the client it names is the one the ACL, the per-source
    /// limits and the audit line judge. A connection without a valid header within 5 s is
    /// refused; a LOCAL header (a health check) is closed. The XDP ACL lets such a link's port
    /// through (it sees only the balancer); the ACL is enforced at accept.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// Which data plane carries the bytes.
    #[arg(long, value_enum, default_value_t = DataPlaneChoice::Auto)]
    pub data_plane: DataPlaneChoice,

    /// Interface on which the XDP program drops disallowed sources (eBPF mode). Without it, the
    /// ACL is enforced at accept only.
    #[arg(long, value_name = "IFACE")]
    pub xdp_interface: Option<String>,

    /// Where on the interface the source ACL runs. `tc` (a TC ingress classifier) judges the
    /// kernel's skb as it is; `skb` (generic XDP) first copies every paged or cloned segment
    /// into one linear buffer (eight streams each way through the splice: 12.0 against 15.1
    /// Gbit/s on a veth); `native` (driver XDP) drops before the kernel allocates anything and
    /// suits real NICs, but on a veth cut spliced throughput by 4x.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Tc)]
    pub xdp_mode: XdpModeChoice,

    /// Serve Prometheus metrics at /metrics and probes at /healthz and /readyz on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// One link: close a connection that carried no byte either way for this long (e.g. 15m),
    /// or `never`. A forgotten session should not hold a slot and a path to the device for good.
    #[arg(long, value_name = "DURATION|never", default_value = "1h", value_parser = parse_idle_timeout)]
    pub idle_timeout: IdleTimeout,

    /// Connections carried at once (at most 4096); more are refused at once. With one link
    /// from flags, that link's limit; with `--config`, what all links carry together (each link
    /// has its own `maxConnections` too). Default: what fits `--memory-budget`, at most 1024.
    /// A limit whose worst case does not fit the budget is refused at start.
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_connections: Option<u32>,

    /// One link: connections one source may hold open at once (an IPv4 address, an IPv6 /64);
    /// more from it are refused. Default: a quarter of --max-connections, at least 1.
    #[arg(long, value_name = "N", value_parser = parse_max_connections_per_source)]
    pub max_connections_per_source: Option<u32>,

    /// One link: new connections one source may open per second, sustained (a burst of twice
    /// as many passes); 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = crate::link::fairness::DEFAULT_PER_SECOND)]
    pub connect_rate_per_source: u32,

    /// Give up connecting to the device after this long (digits and a unit: s, m, h, d).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// One link: its end (RFC 3339, e.g. 2026-11-25T10:00:00Z): the proxy stops accepting,
    /// closes every connection and exits at that instant.
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub expires_at: Option<SystemTime>,

    /// Send buffer forced on each spliced socket (bytes; K/M/G suffixes). Limits, not
    /// allocations: idle connections cost nothing. See the sweep in docs/benchmarks.md.
    /// Default 16M, smaller when the splice queue is shrunk to fit `--memory-budget`.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub splice_sndbuf: Option<u32>,

    /// Bytes one direction of a spliced connection may have inside the proxy (queued for the
    /// receiver and not yet acknowledged by it) before the sender is made to wait (bytes; K/M/G
    /// suffixes). The kernel's own splice queue has no bound: without this, a fast client
    /// uploading to a slow device would have the proxy buffer the whole upload. The sender is
    /// slowed from a quarter of this on; the rest is margin before bytes are held and copied.
    /// With `--data-plane auto`, a link's busy connections share twice this, each keeping at
    /// least a quarter of it. Default 64M, halved (down to 256K) until the connection limit fits
    /// `--memory-budget`.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub splice_max_queued: Option<u32>,

    /// eBPF splice: when a connection moves to user space: `measure` when a trial on the busy
    /// connection (and its link's other busy ones) shows the userspace copy carrying it faster
    /// (the kernel sends spliced bytes from the CPU that received them, which the sender may
    /// keep busy); it stays in the copy then, and comes back into the splice when not. `never`,
    /// or `always` (carried in user space with its sockets in the splice, at once and after
    /// every return, so each connection alternates between the two paths: for testing the
    /// move). Default: `measure` with `--data-plane auto` (the faster path for each connection),
    /// `never` with `--data-plane ebpf` (the splice only).
    #[arg(long, value_enum)]
    pub splice_carry: Option<CarryMode>,

    /// eBPF splice, `--splice-carry measure`: how long each path carries a busy connection in
    /// a trial (digits and a unit: us, ms, s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_fine_duration)]
    pub splice_carry_trial: Duration,

    /// eBPF splice: how long a link remembers that user space carried one of its connections
    /// faster (its other busy connections follow without a trial meanwhile); where sockets
    /// cannot leave the splice, also how long such a connection stays carried in user space
    /// before the kernel path is measured again, doubled each time user space wins again, up to
    /// 64 times this (digits and a unit: us, ms, s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_fine_duration)]
    pub splice_carry_for: Duration,

    /// Userspace copy: the receive and the send buffer fixed on each socket of a connection
    /// (bytes; the kernel keeps twice this), so that a client that stops reading holds at most
    /// that much. Default 1M, halved (down to 64K) until the connection limit fits
    /// `--memory-budget`.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub copy_socket_buffer: Option<u32>,

    /// Memory the connections may take at worst, every one with its buffers full, plus a fixed
    /// reserve for the process (bytes, K/M/G/T suffixes), or `auto`: the memory limit of the
    /// proxy's cgroup (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), or the machine's memory
    /// when it has none (logged). Queue sizes and the connection limit are sized from it.
    #[arg(long, value_name = "BYTES|auto", default_value = "auto", value_parser = crate::memory::parse_budget)]
    pub memory_budget: BudgetChoice,

    /// eBPF mode: ACK the device's data at once while the kernel splices a connection. Spliced
    /// bytes are never read, so TCP otherwise delays those ACKs, and a device sending frames
    /// (VNC, RDP) under BBR stalls tens of milliseconds on many of them. While the proxy runs,
    /// a host route to the device (copied from the route in use, plus `quickack 1`) in table
    /// 2010 and a rule `fwmark 0x2010 lookup 2010`; spliced device sockets carry that mark,
    /// ones user space reads do not. Needs CAP_NET_ADMIN (which eBPF mode has).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub device_quickack: Switch,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--idle-timeout`: a duration, or `never` (`None`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IdleTimeout(pub Option<Duration>);

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataPlaneChoice {
    /// eBPF splice when the kernel and privileges allow, else the userspace copy (logged); each
    /// connection is measured on both paths (`--splice-carry measure`).
    Auto,
    /// eBPF splice or fail at start.
    Ebpf,
    /// Userspace copy only.
    Userspace,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeChoice {
    /// TC ingress (tcx where the kernel has it, 6.6 and newer).
    Tc,
    /// Generic XDP.
    Skb,
    /// Driver XDP.
    Native,
}

impl XdpModeChoice {
    /// The flag's value for this mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Skb => "skb",
            Self::Native => "native",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the proxy needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub config_file: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub name: String,
    pub listen: Option<SocketAddr>,
    pub device: Option<DeviceAddr>,
    pub acl: SourceAcl,
    pub data_plane: DataPlaneChoice,
    pub xdp_interface: Option<String>,
    pub xdp_mode: XdpModeChoice,
    pub metrics: Option<SocketAddr>,
    pub idle_timeout: Option<Duration>,
    /// `--max-connections`, when given.
    pub max_connections: Option<u32>,
    /// `--max-connections-per-source`, when given.
    pub max_connections_per_source: Option<u32>,
    pub connect_rate_per_source: u32,
    pub connect_timeout: Duration,
    pub expires_at: Option<SystemTime>,
    pub splice_sndbuf: Option<u32>,
    pub splice_max_queued: Option<u32>,
    pub splice_carry: CarryPolicy,
    pub copy_socket_buffer: Option<u32>,
    pub memory_budget: BudgetChoice,
    pub device_quickack: bool,
    pub proxy_protocol: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--expires-at {given}: that instant has passed (now {now}); give a future RFC 3339 time, e.g. {example}"
    )]
    ExpiryInPast {
        given: String,
        now: String,
        example: String,
    },
    #[error(
        "--max-connections {connections} does not fit the memory budget of {budget} bytes (from {budget_source}) on the {plane}: {why}; give a larger --memory-budget (or memory limit), a smaller --max-connections, or {sizes}"
    )]
    MemoryOvercommitted {
        connections: u32,
        budget: u64,
        budget_source: String,
        plane: &'static str,
        sizes: &'static str,
        why: MemoryPlanError,
    },
}

impl Config {
    /// Validates what clap could not check alone, against `now`.
    pub fn from_args(args: Args, now: SystemTime) -> Result<Self, ConfigError> {
        if let Some(expires_at) = args.expires_at
            && expires_at <= now
        {
            return Err(ConfigError::ExpiryInPast {
                given: humantime::format_rfc3339_seconds(expires_at).to_string(),
                now: humantime::format_rfc3339_seconds(now).to_string(),
                example: humantime::format_rfc3339_seconds(now + Duration::from_secs(7200))
                    .to_string(),
            });
        }
        Ok(Self {
            config_file: args.config,
            control_socket: args.control_socket,
            name: args.name,
            listen: args.listen,
            device: args.device,
            acl: SourceAcl::new(args.allow),
            data_plane: args.data_plane,
            xdp_interface: args.xdp_interface,
            xdp_mode: args.xdp_mode,
            metrics: args.metrics,
            idle_timeout: args.idle_timeout.0,
            max_connections: args.max_connections,
            max_connections_per_source: args.max_connections_per_source,
            connect_rate_per_source: args.connect_rate_per_source,
            connect_timeout: args.connect_timeout,
            expires_at: args.expires_at,
            splice_sndbuf: args.splice_sndbuf,
            splice_max_queued: args.splice_max_queued,
            splice_carry: CarryPolicy {
                mode: args.splice_carry.unwrap_or(match args.data_plane {
                    DataPlaneChoice::Auto => CarryMode::Measure,
                    DataPlaneChoice::Ebpf | DataPlaneChoice::Userspace => CarryMode::Never,
                }),
                trial: args.splice_carry_trial,
                stay: args.splice_carry_for,
            },
            copy_socket_buffer: args.copy_socket_buffer,
            memory_budget: args.memory_budget,
            proxy_protocol: args.proxy_protocol,
            device_quickack: args.device_quickack == Switch::On,
        })
    }
}

/// The sizes and connection limit for each plane the proxy may run, fitted to one budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlans {
    pub budget: Budget,
    /// `None` with `--data-plane userspace`.
    pub splice: Option<MemoryPlan>,
    pub copy: MemoryPlan,
}

impl MemoryPlans {
    /// The plan of the plane that runs (`ebpf` or `userspace`).
    pub fn for_mode(&self, mode: &str) -> MemoryPlan {
        match (mode, self.splice) {
            ("ebpf", Some(splice)) => splice,
            _ => self.copy,
        }
    }
}

impl Config {
    /// Fits the connections to `budget` on each plane the proxy may run (pure: the budget was
    /// read already). Sizes and limits given by flag are kept or refused; defaulted ones fit.
    pub fn memory_plans(&self, budget: Budget) -> Result<MemoryPlans, ConfigError> {
        let request = |plane| MemoryRequest {
            budget: budget.bytes,
            reserve: sizing::RESERVE_BYTES,
            plane,
            max_connections: self.max_connections,
            queue: match plane {
                Plane::Splice => self.splice_max_queued.map(u64::from),
                Plane::Copy => None,
            },
            socket_buffer: match plane {
                Plane::Splice => self.splice_sndbuf.map(u64::from),
                Plane::Copy => self.copy_socket_buffer.map(u64::from),
            },
            behind_skb_xdp: self.xdp_interface.is_some() && self.xdp_mode == XdpModeChoice::Skb,
        };
        let fit = |plane, name, sizes| {
            sizing::plan(&request(plane)).map_err(|why| ConfigError::MemoryOvercommitted {
                connections: self.max_connections.unwrap_or(1),
                budget: budget.bytes,
                budget_source: budget.source.to_string(),
                plane: name,
                sizes,
                why,
            })
        };
        let splice = match self.data_plane {
            DataPlaneChoice::Userspace => None,
            DataPlaneChoice::Ebpf | DataPlaneChoice::Auto => Some(fit(
                Plane::Splice,
                "eBPF splice",
                "a smaller --splice-max-queued",
            )?),
        };
        let copy = fit(
            Plane::Copy,
            "userspace copy",
            "a smaller --copy-socket-buffer",
        )?;
        Ok(MemoryPlans {
            budget,
            splice,
            copy,
        })
    }

    /// The settings every link shares, sized by `plans`.
    pub fn process(&self, plans: &MemoryPlans) -> ProcessConfig {
        // Without a splice plan (the userspace copy only) the splice sizes are never used.
        let (queue, sndbuf) = plans.splice.map_or(
            (
                sizing::DEFAULT_SPLICE_MAX_QUEUED,
                sizing::DEFAULT_SPLICE_SNDBUF,
            ),
            |plan| (plan.queue, plan.socket_buffer),
        );
        let max_connections = plans
            .splice
            .map_or(plans.copy.max_connections, |plan| plan.max_connections);
        ProcessConfig {
            data_plane: self.data_plane,
            xdp_interface: self.xdp_interface.clone(),
            xdp_mode: self.xdp_mode,
            connect_timeout: self.connect_timeout,
            splice_sndbuf: u32::try_from(sndbuf).unwrap_or(u32::MAX),
            splice_max_queued: u32::try_from(queue).unwrap_or(u32::MAX),
            splice_carry: self.splice_carry,
            device_quickack: self.device_quickack,
            // One link's sockets, or as many as the kernel maps hold for a set of links.
            max_spliced_sockets: match self.config_file {
                Some(_) => devicelink_proxy_common::MAX_SPLICED_SOCKETS,
                None => {
                    (2 * max_connections + 64).min(devicelink_proxy_common::MAX_SPLICED_SOCKETS)
                }
            },
        }
    }

    /// The one link the flags describe (none with `--config`), with the connection limit of
    /// `plan` (the given one, or what fits the budget).
    pub fn single_link(&self, plan: &MemoryPlan) -> Option<Link> {
        let max_connections = plan.max_connections;
        Some(Link {
            name: self.name.clone(),
            listen: self.listen?,
            device: self.device.clone()?,
            acl: self.acl.clone(),
            expires_at: self.expires_at,
            max_connections,
            per_source: SourceLimits {
                max_open: self
                    .max_connections_per_source
                    .unwrap_or(SourceLimits::default_for(max_connections).max_open),
                per_second: self.connect_rate_per_source,
            },
            idle_timeout: self.idle_timeout,
            enabled: true,
            proxy_protocol: self.proxy_protocol,
        })
    }
}

/// The settings every link of the process shares: the data plane and its limits.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub data_plane: DataPlaneChoice,
    pub xdp_interface: Option<String>,
    pub xdp_mode: XdpModeChoice,
    pub connect_timeout: Duration,
    pub splice_sndbuf: u32,
    pub splice_max_queued: u32,
    pub splice_carry: CarryPolicy,
    pub device_quickack: bool,
    /// Capacity of the splice's socket map.
    pub max_spliced_sockets: u32,
}

// The splice map holds two sockets per connection: one link at the most connections the
// shared spec allows must fit in it.
const _: () = assert!(
    2 * devicelink_spec::MAX_CONNECTIONS <= devicelink_proxy_common::MAX_SPLICED_SOCKETS,
    "the splice map must hold MAX_CONNECTIONS connections"
);

/// A value checked by the shared spec, said without the field: clap prefixes the flag and
/// the value (`invalid value '10.0.0.0/33' for '--allow <CIDR>': ...`).
fn flag_value<T>(checked: Result<T, SpecError>) -> Result<T, String> {
    checked.map_err(|err| err.reason())
}

fn parse_idle_timeout(value: &str) -> Result<IdleTimeout, String> {
    if value == "never" {
        return Ok(IdleTimeout(None));
    }
    parse_duration(value).map(|idle| IdleTimeout(Some(idle)))
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    flag_value(devicelink_spec::parse_listen("--listen", value))
}

fn parse_device(value: &str) -> Result<DeviceAddr, String> {
    flag_value(devicelink_spec::parse_device_address("--device", value))
}

fn parse_name(value: &str) -> Result<String, String> {
    flag_value(devicelink_spec::validate_link_name("--name", value).map(|()| value.to_owned()))
}

/// A typed flag may give a bare address for that host; otherwise a range as a DeviceLink or
/// a links file writes it.
fn parse_cidr(value: &str) -> Result<IpNet, String> {
    flag_value(devicelink_spec::parse_source_host_or_range(
        "--allow", value,
    ))
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    flag_value(devicelink_spec::parse_duration("duration", value))
}

/// A short duration for the splice's timing flags: digits and a unit, `us`, `ms` or `s`.
fn parse_fine_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let fix = "give digits and a unit: us, ms or s (e.g. 2ms)";
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration; {fix}"))?;
    match unit {
        "us" => Ok(Duration::from_micros(count)),
        "ms" => Ok(Duration::from_millis(count)),
        "s" => Ok(Duration::from_secs(count)),
        _ => Err(format!("{value:?} has no known unit; {fix}")),
    }
}

fn parse_instant(value: &str) -> Result<SystemTime, String> {
    flag_value(devicelink_spec::parse_instant("--expires-at", value))
}

fn parse_max_connections(value: &str) -> Result<u32, String> {
    flag_value(devicelink_spec::parse_max_connections(
        "--max-connections",
        value,
    ))
}

fn parse_max_connections_per_source(value: &str) -> Result<u32, String> {
    flag_value(devicelink_spec::parse_max_connections(
        "--max-connections-per-source",
        value,
    ))
}

fn parse_bytes(value: &str) -> Result<u32, String> {
    let hint = "expected a size such as 8M, 512K or 4194304";
    let (digits, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, ""), |at| value.split_at(at));
    let base: u64 = digits.parse().map_err(|_| hint.to_string())?;
    let unit = unit.trim_end_matches(['i', 'B']);
    let multiplier: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(hint.into()),
    };
    let bytes = base
        .checked_mul(multiplier)
        .ok_or_else(|| hint.to_string())?;
    // The kernel doubles the value and caps it at INT_MAX.
    u32::try_from(bytes)
        .ok()
        .filter(|b| (4096..=1 << 30).contains(b))
        .ok_or_else(|| "give between 4K and 1G".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec![
            "devicelink-proxy",
            "--listen",
            "0.0.0.0:2222",
            "--device",
            "10.0.0.2:22",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    fn error_text(extra: &[&str]) -> String {
        parse(extra)
            .expect_err("these flags should be refused")
            .to_string()
    }

    #[test]
    fn defaults_are_secure_and_automatic() {
        let args = parse(&[]).unwrap();
        let config = Config::from_args(args, SystemTime::now()).unwrap();
        assert!(config.acl.is_empty(), "no --allow must mean nobody gets in");
        assert_eq!(config.data_plane, DataPlaneChoice::Auto);
        assert_eq!(config.xdp_mode, XdpModeChoice::Tc);
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.memory_budget, BudgetChoice::Auto);
        let plans = config.memory_plans(flag_budget(64 << 30)).unwrap();
        let process = config.process(&plans);
        assert_eq!(process.splice_sndbuf, 16 << 20);
        assert_eq!(process.splice_max_queued, 64 << 20);
        assert_eq!(plans.for_mode("userspace").max_connections, 1024);
    }

    #[test]
    fn the_copy_behind_skb_mode_xdp_gets_larger_buffers_by_default() {
        let plans_with = |extra: &[&str]| {
            let config = Config::from_args(parse(extra).unwrap(), SystemTime::now()).unwrap();
            config.memory_plans(flag_budget(64 << 30)).unwrap()
        };
        let skb = plans_with(&["--xdp-interface", "eth0", "--xdp-mode", "skb"]);
        assert_eq!(skb.copy.socket_buffer, 4 << 20);
        assert_eq!(skb.for_mode("userspace").max_connections, 1024);
        let native = plans_with(&["--xdp-interface", "eth0", "--xdp-mode", "native"]);
        assert_eq!(native.copy.socket_buffer, 1 << 20);
        let tc = plans_with(&["--xdp-interface", "eth0"]);
        assert_eq!(tc.copy.socket_buffer, 1 << 20, "TC copies nothing");
        assert_eq!(plans_with(&[]).copy.socket_buffer, 1 << 20, "no ACL hook");
        let given = plans_with(&[
            "--xdp-interface",
            "eth0",
            "--xdp-mode",
            "skb",
            "--copy-socket-buffer",
            "2M",
        ]);
        assert_eq!(given.copy.socket_buffer, 2 << 20, "a given size is kept");
    }

    fn flag_budget(bytes: u64) -> Budget {
        Budget {
            bytes,
            source: crate::memory::BudgetSource::Flag,
        }
    }

    #[test]
    fn a_small_budget_shrinks_defaulted_sizes_and_the_link_limit_fits() {
        let config = Config::from_args(parse(&[]).unwrap(), SystemTime::now()).unwrap();
        let plans = config.memory_plans(flag_budget(256 << 20)).unwrap();
        for mode in ["ebpf", "userspace"] {
            let plan = plans.for_mode(mode);
            assert!(plan.shrunk, "{mode}: the defaults do not fit 256 MiB");
            let link = config.single_link(&plan).unwrap();
            assert_eq!(link.max_connections, plan.max_connections);
            assert!(
                u64::from(link.max_connections) * plan.per_connection
                    + devicelink_spec::memory::RESERVE_BYTES
                    <= 256 << 20,
                "{mode}: the worst case fits the budget"
            );
            assert_eq!(link.per_source.max_open, (plan.max_connections / 4).max(1));
        }
    }

    #[test]
    fn a_limit_and_sizes_that_cannot_fit_the_budget_are_refused_naming_the_flags() {
        let args = parse(&[
            "--max-connections",
            "100",
            "--splice-max-queued",
            "64M",
            "--data-plane",
            "ebpf",
        ])
        .unwrap();
        let config = Config::from_args(args, SystemTime::now()).unwrap();
        let err = config
            .memory_plans(flag_budget(1 << 30))
            .unwrap_err()
            .to_string();
        for named in [
            "--max-connections 100",
            "memory budget of 1073741824 bytes (from --memory-budget)",
            "a larger --memory-budget",
            "--splice-max-queued",
            "100 connections x",
        ] {
            assert!(err.contains(named), "{named} missing from: {err}");
        }
        // The same limit with the queue left to its default shrinks the queue instead.
        let args = parse(&["--max-connections", "100", "--data-plane", "ebpf"]).unwrap();
        let config = Config::from_args(args, SystemTime::now()).unwrap();
        let plans = config.memory_plans(flag_budget(1 << 30)).unwrap();
        assert_eq!(plans.for_mode("ebpf").max_connections, 100);
        assert!(plans.for_mode("ebpf").queue < 64 << 20);
    }

    #[test]
    fn a_full_command_line_parses_into_its_limits_and_acl() {
        let args = parse(&[
            "--allow",
            "192.0.2.0/24",
            "--allow",
            "2001:db8::/32",
            "--data-plane",
            "ebpf",
            "--xdp-interface",
            "eth0",
            "--metrics",
            "127.0.0.1:9100",
            "--idle-timeout",
            "15m",
            "--max-connections",
            "64",
            "--connect-timeout",
            "5s",
            "--expires-at",
            "2099-11-25T10:00:00Z",
        ])
        .unwrap();
        let config = Config::from_args(args, SystemTime::now()).unwrap();
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(900)));
        assert_eq!(config.max_connections, Some(64));
        assert!(config.acl.allows("192.0.2.9".parse().unwrap()));
        assert!(config.acl.allows("2001:db8::1".parse().unwrap()));
        assert!(!config.acl.allows("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn malformed_cidr_names_the_flag() {
        let text = error_text(&["--allow", "10.0.0.0/33"]);
        assert!(text.contains("--allow"), "{text}");
        assert!(text.contains("prefix"), "{text}");
        let text = error_text(&["--allow", "10.1.2.3/8"]);
        assert!(text.contains("did you mean 10.0.0.0/8"), "{text}");
    }

    #[test]
    fn a_bare_address_is_a_host_prefix() {
        let args = parse(&["--allow", "203.0.113.7", "--allow", "2001:db8::7"]).unwrap();
        assert_eq!(
            args.allow,
            vec![
                "203.0.113.7/32".parse::<IpNet>().unwrap(),
                "2001:db8::7/128".parse::<IpNet>().unwrap()
            ]
        );
    }

    #[test]
    fn port_zero_names_the_flag() {
        let err = Args::try_parse_from(["p", "--listen", "0.0.0.0:0", "--device", "10.0.0.2:22"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--listen") && err.contains("port 0"), "{err}");
        let err = Args::try_parse_from(["p", "--listen", "0.0.0.0:1", "--device", "10.0.0.2:0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--device") && err.contains("port 0"), "{err}");
    }

    #[test]
    fn device_forms() {
        assert_eq!(
            parse_device("[fd00::2]:22").unwrap(),
            DeviceAddr {
                host: "fd00::2".into(),
                port: 22
            }
        );
        assert_eq!(
            parse_device("pump-17.plant:5900").unwrap(),
            DeviceAddr {
                host: "pump-17.plant".into(),
                port: 5900
            }
        );
        assert!(parse_device("fd00::2:22").unwrap_err().contains("brackets"));
        assert!(parse_device("10.0.0.2").is_err());
        assert!(parse_device("10.0.0.2:70000").is_err());
    }

    #[test]
    fn expiry_in_the_past_names_the_flag() {
        let args = parse(&["--expires-at", "2020-01-01T00:00:00Z"]).unwrap();
        let err = Config::from_args(args, SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--expires-at 2020-01-01T00:00:00Z"), "{err}");
        assert!(err.contains("has passed"), "{err}");
    }

    #[test]
    fn malformed_expiry_and_durations_name_the_flag() {
        let text = error_text(&["--expires-at", "tomorrow"]);
        assert!(text.contains("--expires-at"), "{text}");
        let text = error_text(&["--idle-timeout", "soon"]);
        assert!(text.contains("--idle-timeout"), "{text}");
        for zero in [["--idle-timeout", "0s"], ["--connect-timeout", "0m"]] {
            let text = error_text(&zero);
            assert!(text.contains(zero[0]) && text.contains("is zero"), "{text}");
        }
    }

    #[test]
    fn splice_timings_take_short_durations_and_name_the_flag_otherwise() {
        let args = parse(&["--splice-carry-trial", "250ms", "--splice-carry-for", "2s"]).unwrap();
        assert_eq!(args.splice_carry_trial, Duration::from_millis(250));
        assert_eq!(args.splice_carry_for, Duration::from_secs(2));
        for bad in ["soon", "10", "5m"] {
            let text = error_text(&["--splice-carry-trial", bad]);
            assert!(
                text.contains("--splice-carry-trial") && text.contains("us, ms or s"),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_are_what_a_devicelink_takes() {
        let args = parse(&["--idle-timeout", "1h30m", "--connect-timeout", "2s"]).unwrap();
        assert_eq!(
            args.idle_timeout,
            IdleTimeout(Some(Duration::from_secs(5400)))
        );
        assert_eq!(args.connect_timeout, Duration::from_secs(2));
        for other_grammar in ["500ms", "1 hour", "2hours", "1w"] {
            let text = error_text(&["--idle-timeout", other_grammar]);
            assert!(text.contains("write digits and a unit"), "{text}");
        }
    }

    #[test]
    fn a_flag_error_is_the_shared_error_with_the_flag_named() {
        let text = error_text(&["--allow", "10.1.2.3/8"]);
        let shared =
            devicelink_spec::parse_source_range("spec.allowedSourceRanges[0]", "10.1.2.3/8")
                .unwrap_err()
                .reason();
        assert!(
            text.contains(&format!("'--allow <CIDR>': {shared}")),
            "{text}"
        );
        let text = error_text(&["--allow", "::ffff:203.0.113.0/120"]);
        assert!(text.contains("203.0.113.0/24"), "{text}");
    }

    #[test]
    fn the_link_name_is_a_dns_label() {
        assert_eq!(
            parse(&["--name", "pump-17-ssh"]).unwrap().name,
            "pump-17-ssh"
        );
        let text = error_text(&["--name", "Pump_17"]);
        assert!(
            text.contains("--name") && text.contains("lowercase"),
            "{text}"
        );
    }

    #[test]
    fn idle_connections_close_after_an_hour_unless_told_otherwise() {
        let config = Config::from_args(parse(&[]).unwrap(), SystemTime::now()).unwrap();
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(3600)));
        let never = parse(&["--idle-timeout", "never"]).unwrap();
        let config = Config::from_args(never, SystemTime::now()).unwrap();
        assert_eq!(config.idle_timeout, None);
    }

    #[test]
    fn with_a_links_file_max_connections_caps_every_link_together() {
        let args = Args::try_parse_from([
            "p",
            "--config",
            "links.yaml",
            "--max-connections",
            "10",
            "--memory-budget",
            "1G",
        ])
        .unwrap();
        let config = Config::from_args(args, SystemTime::now()).unwrap();
        let plans = config.memory_plans(flag_budget(1 << 30)).unwrap();
        assert_eq!(plans.for_mode("ebpf").max_connections, 10);
        assert_eq!(plans.for_mode("userspace").max_connections, 10);
        assert!(
            Args::try_parse_from(["p", "--config", "links.yaml", "--proxy-protocol"]).is_err(),
            "a links file says per link whether a PROXY protocol header comes first"
        );
    }

    #[test]
    fn max_connections_bounds() {
        assert!(error_text(&["--max-connections", "0"]).contains("--max-connections"));
        assert!(error_text(&["--max-connections", "999999"]).contains("at most"));
        assert_eq!(
            parse(&["--max-connections", "4096"])
                .unwrap()
                .max_connections,
            Some(4096)
        );
        assert!(error_text(&["--max-connections", "4097"]).contains("at most 4096"));
        assert!(
            error_text(&["--max-connections-per-source", "0"])
                .contains("--max-connections-per-source")
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("8M"), Ok(8 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert!(parse_bytes("2G").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
