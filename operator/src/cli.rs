//! The `devicelink` command (also `kubectl devicelink`): open a link in one command, close or
//! extend it, and see what is open. It only reads and writes DeviceLinks (and, for connection
//! counts, the proxy pods' metrics through the API server); the operator does the rest.

pub mod my_ip;
pub mod output;
pub mod session;
#[cfg(test)]
mod tests;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

pub use session::Session;

use crate::resource::{DataPlane, parse_duration};

/// Exit codes that scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Anything not listed below.
    Error = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// The link is Failed (invalid spec) or the API server rejected it.
    LinkFailed = 3,
    /// The link did not become ready (or closed) within --timeout.
    TimedOut = 4,
    /// No DeviceLink of that name in the namespace.
    NotFound = 5,
    /// No cluster reachable with the kubeconfig.
    NoCluster = 6,
    /// The DeviceLink CRD is not installed in the cluster.
    CrdMissing = 7,
    /// RBAC does not allow the request.
    Forbidden = 8,
}

const EXIT_CODES_HELP: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 link failed or rejected, 4 timed out, \
5 no such link, 6 no cluster reachable, 7 DeviceLink CRD not installed, 8 forbidden by RBAC.";

/// Everything that can go wrong, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach a Kubernetes cluster: {0}\n  check your kubeconfig and context (kubectl cluster-info), or pass --kubeconfig/--context"
    )]
    NoCluster(String),
    #[error(
        "the DeviceLink CRD is not installed in this cluster\n  install it (and the operator): kubectl apply -k deploy/   (see the README)"
    )]
    CrdMissing,
    #[error(
        "no DeviceLink {name:?} in namespace {namespace}\n  `devicelink list -n {namespace}` shows what exists; `devicelink open` creates one"
    )]
    NotFound { name: String, namespace: String },
    #[error(
        "not allowed: {0}\n  ask your cluster admin for access to devicelinks.devicelink.io in this namespace"
    )]
    Forbidden(String),
    #[error("link {name} failed: {message}")]
    LinkFailed { name: String, message: String },
    #[error("the API server rejected link {name}: {message}")]
    Rejected { name: String, message: String },
    #[error(
        "link {name} was not {goal} within {timeout}: {last}\n  `devicelink status {name}` shows its conditions and events; raise --timeout to wait longer"
    )]
    TimedOut {
        name: String,
        goal: &'static str,
        timeout: String,
        last: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::NoCluster(_) => Exit::NoCluster,
            CliError::CrdMissing => Exit::CrdMissing,
            CliError::NotFound { .. } => Exit::NotFound,
            CliError::Forbidden(_) => Exit::Forbidden,
            CliError::LinkFailed { .. } | CliError::Rejected { .. } => Exit::LinkFailed,
            CliError::TimedOut { .. } => Exit::TimedOut,
            CliError::Usage(_) => Exit::Usage,
            CliError::Other(_) => Exit::Error,
        }
    }

    /// Translates an API error about link `name` into what the user should do.
    pub fn from_kube(error: kube::Error, name: &str, namespace: &str) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 404 => {
                // A missing object names itself in the details; a missing resource type does not.
                let names_object = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
                if names_object {
                    CliError::NotFound {
                        name: name.to_owned(),
                        namespace: namespace.to_owned(),
                    }
                } else {
                    CliError::CrdMissing
                }
            }
            kube::Error::Api(status) if status.code == 403 => CliError::Forbidden(status.message),
            kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                CliError::Rejected {
                    name: name.to_owned(),
                    message: status.message,
                }
            }
            kube::Error::Api(status) => {
                CliError::Other(format!("Kubernetes API: {}", status.message))
            }
            kube::Error::HyperError(error) => CliError::NoCluster(error.to_string()),
            kube::Error::Service(error) => CliError::NoCluster(error.to_string()),
            other => CliError::Other(other.to_string()),
        }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns and sentences, for people.
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

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
    /// How long the link stays open, e.g. 2h, 90m, 1h30m.
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
    /// Connections carried at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
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

/// A client from the kubeconfig (or in-cluster), and the namespace to use.
async fn connect(cli: &Cli) -> Result<(Client, String, String), CliError> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config: Result<kube::Config, String> = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| CliError::NoCluster(format!("reading {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string()),
        (None, None) => kube::Config::infer().await.map_err(|e| e.to_string()),
    };
    let config = config.map_err(CliError::NoCluster)?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| CliError::NoCluster(e.to_string()))?;
    Ok((client, namespace, url))
}

/// Runs the parsed command; what it prints goes to stdout, progress and errors to stderr.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    let (client, namespace, url) = connect(&cli).await?;
    let session = Session::new(client, &namespace);
    let spinner = cli.output == OutputFormat::Table && std::io::stderr().is_terminal();
    session
        .execute(&cli.command, cli.output, spinner)
        .await
        .map_err(|error| match error {
            CliError::NoCluster(why) => CliError::NoCluster(format!("{url}: {why}")),
            other => other,
        })
}

/// Entry point of both binaries.
pub fn main() -> ExitCode {
    // Invoked as a kubectl plugin, say so in usage and help.
    let invoked_as_plugin = std::env::args()
        .next()
        .is_some_and(|arg0| arg0.ends_with("kubectl-devicelink"));
    let mut command = <Cli as clap::CommandFactory>::command();
    if invoked_as_plugin {
        command = command.bin_name("kubectl devicelink");
    }
    let matches = match command.try_get_matches() {
        Ok(matches) => matches,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                Exit::Usage as u8
            } else {
                0
            });
        }
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("devicelink: cannot start: {error}");
            return ExitCode::from(Exit::Error as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("devicelink: {error}");
            ExitCode::from(error.exit() as u8)
        }
    }
}
