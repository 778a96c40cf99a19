//! The command line: global flags, the commands, and the parsing of each value into the
//! resource's own types, with an error that names the value and the fix.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use super::{error::EXIT_CODES_HELP, output::OutputFormat};
use crate::resource::{DataPlane, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "devicelink",
    version,
    about = "Open a source-restricted TCP link to a device in one command, and see what is open",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Namespace of the links (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true, env = "DEVICELINK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace where the operator runs the proxy pods (for connection counts).
    #[arg(long, global = true, env = "DEVICELINK_PROXY_NAMESPACE", default_value = crate::resource::DEFAULT_PROXY_NAMESPACE)]
    pub proxy_namespace: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or enable a link, wait until its endpoint is ready, and print how to connect.
    Open(OpenArgs),
    /// Close a link (disable it: the endpoint and proxy are removed).
    Close {
        name: String,
        /// How long to wait for the operator to confirm.
        #[arg(long, default_value = "2m", value_parser = parse_wait)]
        timeout: Duration,
    },
    /// Keep a link open longer: its expiry moves by this much (from now, if already expired).
    Extend {
        name: String,
        /// How much longer, e.g. 1h or 30m.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_lifetime)]
        by: Duration,
        /// How long to wait for the operator to confirm.
        #[arg(long, default_value = "2m", value_parser = parse_wait)]
        timeout: Duration,
    },
    /// List links: name, device, endpoint, phase, time left, connections.
    #[command(alias = "ls")]
    List,
    /// Show one link in detail: settings, conditions and recent events.
    Status { name: String },
}

#[derive(clap::Args, Debug, Clone)]
pub struct OpenArgs {
    /// Name of the link (lowercase letters, digits and '-').
    pub name: String,
    /// The device, as the cluster's pods reach it: HOST:PORT ([IPv6]:PORT).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_device)]
    pub device: (String, u16),
    /// Public port of the endpoint (default: the device's port).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// How long the link stays open from now (even if it was enabled before), e.g. 2h, 90m.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_lifetime)]
    pub duration: Duration,
    /// Source block allowed to connect (repeatable), e.g. 203.0.113.0/24.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<IpNet>,
    /// Also allow this machine's public address, asked of --my-ip-url (and printed).
    #[arg(long)]
    pub allow_my_ip: bool,
    /// Where --allow-my-ip asks for this machine's public address (answers the bare address).
    #[arg(
        long,
        env = "DEVICELINK_MY_IP_URL",
        default_value = "https://api.ipify.org"
    )]
    pub my_ip_url: String,
    /// How long to wait for the endpoint.
    #[arg(long, default_value = "5m", value_parser = parse_wait)]
    pub timeout: Duration,
    /// Close connections idle this long, e.g. 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    pub idle_timeout: Option<Duration>,
    /// Connections carried at once (at most what the proxy carries, 4096).
    #[arg(long, value_parser = parse_max_connections)]
    pub max_connections: Option<u32>,
    /// Data plane of the proxy: auto, ebpf or userspace.
    #[arg(long, value_parser = parse_data_plane)]
    pub data_plane: Option<DataPlane>,
}

fn parse_lifetime(value: &str) -> Result<Duration, String> {
    parse_duration("duration", value).map_err(|e| format!("{}; {}", e.problem, e.fix))
}

fn parse_wait(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e}; write e.g. 5m or 90s"))
}

fn parse_device(value: &str) -> Result<(String, u16), String> {
    let hint =
        "write HOST:PORT, e.g. 10.20.30.40:22, pump-17.plant.internal:22 or [2001:db8::7]:22";
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} has no port; {hint}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || (host.contains(':') && !value.starts_with('[')) {
        return Err(format!("{value:?} is ambiguous or has no host; {hint}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port from 1 to 65535; {hint}"))?;
    Ok((host.to_owned(), port))
}

fn parse_cidr(value: &str) -> Result<IpNet, String> {
    if let Ok(address) = value.parse::<std::net::IpAddr>() {
        let bits = if address.is_ipv4() { 32 } else { 128 };
        return Err(format!(
            "{value} is an address; write {value}/{bits} to allow just it"
        ));
    }
    let net: IpNet = value.parse().map_err(|_| {
        format!("{value:?} is not a CIDR block; write e.g. 203.0.113.0/24 or 2001:db8::/32")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{value} has bits set past its prefix; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_data_plane(value: &str) -> Result<DataPlane, String> {
    match value {
        "auto" => Ok(DataPlane::Auto),
        "ebpf" => Ok(DataPlane::Ebpf),
        "userspace" => Ok(DataPlane::Userspace),
        other => Err(format!(
            "{other:?} is not a data plane; use auto, ebpf or userspace"
        )),
    }
}

/// `--max-connections`, checked as the DeviceLink and the proxy check it.
fn parse_max_connections(value: &str) -> Result<u32, String> {
    devicelink_spec::parse_max_connections("--max-connections", value).map_err(|err| err.reason())
}
