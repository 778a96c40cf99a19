//! `devicelink-console`: serve the API, or manage API tokens.

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use devicelink_console::{
    api::{self, AppState, auth::LocalTokens},
    caller::Role,
    cluster::{KubeBackend, auth::KubeAuthenticator, clients::Clients},
    local::{
        LocalBackend, LocalSettings, db,
        proxy_sync::{self, ProxyCommand},
    },
    metrics::Metrics,
    panel,
    proxy::{
        config_file,
        control::{ProxyControl, UnixControlClient},
    },
    serve, tokens,
};
use ipnet::IpNet;

#[derive(Parser)]
#[command(version, about = "devicelink's Web API for links")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve(Box<ServeArgs>),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its digest is stored.
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long, env = "DEVICELINK_CONSOLE_DATA")]
        data: PathBuf,
    },
    /// List tokens: name, role, when created (never a secret).
    List {
        #[arg(long, env = "DEVICELINK_CONSOLE_DATA")]
        data: PathBuf,
    },
    /// Revoke a token: it stops working at its next request.
    Revoke {
        name: String,
        #[arg(long, env = "DEVICELINK_CONSOLE_DATA")]
        data: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum BackendKind {
    Local,
    Kubernetes,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory of the database and the proxy's config file (local backend).
    #[arg(
        long,
        env = "DEVICELINK_CONSOLE_DATA",
        required_if_eq("backend", "local")
    )]
    data: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value = "local")]
    backend: BackendKind,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP on a non-loopback address: tokens cross the network in clear.
    #[arg(long)]
    insecure_plain_http_on_any_address: bool,
    /// Ports given to links created without one, e.g. 20000-20999.
    #[arg(long, value_parser = parse_port_range)]
    port_range: Option<RangeInclusive<u16>>,
    /// Host name or address clients connect to, shown in endpoints and connect commands.
    #[arg(long, default_value = "localhost")]
    public_host: String,
    /// Peers (CIDR) whose X-Forwarded-For names the caller, for "allow my address".
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<IpNet>,
    /// The devicelink-proxy binary to supervise; by default the one beside this console's.
    #[arg(long)]
    proxy_binary: Option<PathBuf>,
    /// Passed to the proxy: auto, ebpf or userspace.
    #[arg(long)]
    data_plane: Option<String>,
    /// Passed to the proxy: the interface its XDP source filter attaches to.
    #[arg(long)]
    xdp_interface: Option<String>,
    /// Passed to the proxy as --metrics: where it serves its own metrics.
    #[arg(long)]
    proxy_metrics: Option<String>,
    /// Render the links file and talk to the control socket, but start no proxy (one runs
    /// under another supervisor).
    #[arg(long)]
    without_proxy: bool,
}

fn parse_port_range(value: &str) -> Result<RangeInclusive<u16>, String> {
    let (low, high) = value
        .split_once('-')
        .ok_or_else(|| format!("{value:?} is not a range; write LOW-HIGH, e.g. 20000-20999"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a port from 1 to 65535"))
    };
    let (low, high) = (parse(low)?, parse(high)?);
    if low > high {
        return Err(format!(
            "{value:?} runs backwards; write the lower port first"
        ));
    }
    Ok(low..=high)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries only what a script reads (a new token).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Token {
            command: TokenCommand::Create { name, role, data },
        } => {
            let conn = db::open(&data)?;
            let token = tokens::create(&conn, &name, role)?;
            eprintln!("token {name:?} (role {role}) created; it is shown only this once:");
            println!("{token}");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::List { data },
        } => {
            let conn = db::open(&data)?;
            for token in tokens::list(&conn)? {
                println!("{}\t{}\t{}", token.name, token.role, token.created_at);
            }
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { name, data },
        } => {
            let conn = db::open(&data)?;
            if !tokens::revoke(&conn, &name)? {
                anyhow::bail!("there is no token named {name:?}; `token list` shows them");
            }
            eprintln!("token {name:?} revoked");
            Ok(())
        }
        Command::Serve(args) => serve_api(*args).await,
    }
}

async fn serve_api(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(devicelink_console::tls::server_config(cert, key)?),
        _ => {
            serve::check_plain_http(args.listen, args.insecure_plain_http_on_any_address)?;
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    if args.backend == BackendKind::Kubernetes {
        let (app, backend) = cluster_app(&args).await?;
        tracing::info!(listen = %listener.local_addr()?, tls = tls.is_some(), backend, "console serving");
        return serve_until_signal(listener, tls, app).await;
    }
    let data = args
        .data
        .clone()
        .context("--data is required with --backend local")?;
    let conn = db::open(&data)?;
    let control: Arc<dyn ProxyControl> =
        Arc::new(UnixControlClient::new(data.join("proxy-control.sock")));
    let backend = LocalBackend::new(
        conn,
        LocalSettings {
            port_range: args.port_range,
            public_host: args.public_host,
            control: Some(control.clone()),
            ..LocalSettings::default()
        },
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let control_socket = data.join("proxy-control.sock");
    let config = data.join(config_file::CONFIG_FILE);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(proxy_sync::render_on_change(
        backend.clone(),
        config.clone(),
        control.clone(),
        stopped.clone(),
    ));
    tasks.spawn(proxy_sync::poll_status(
        backend.clone(),
        control.clone(),
        stopped.clone(),
    ));
    tasks.spawn(proxy_sync::record_events(
        backend.clone(),
        control.clone(),
        stopped.clone(),
    ));
    if !args.without_proxy {
        let binary = match args.proxy_binary {
            Some(binary) => binary,
            None => std::env::current_exe()
                .context("finding the console's own binary")?
                .with_file_name("devicelink-proxy"),
        };
        tasks.spawn(proxy_sync::supervise(
            ProxyCommand {
                binary,
                config,
                control_socket,
                data_plane: args.data_plane,
                xdp_interface: args.xdp_interface,
                metrics: args.proxy_metrics,
            },
            stopped.clone(),
        ));
    }
    let state = AppState {
        authenticator: Arc::new(LocalTokens(backend.connection())),
        tokens: Some(backend.connection()),
        backend: Arc::new(backend),
        metrics: Arc::new(Metrics::default()),
        trusted_proxies: Arc::new(args.trusted_proxies),
    };
    tracing::info!(listen = %listener.local_addr()?, tls = tls.is_some(), data = %data.display(), "console serving");
    let app = api::router(state.clone()).merge(panel::router(state));
    let served = serve_until_signal(listener, tls, app).await;
    // The API has drained: stop the proxy and the sync tasks.
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    served
}

/// The API over DeviceLinks, acting with each caller's own Kubernetes token. The cluster is
/// the one the console's own configuration names (in-cluster, or KUBECONFIG).
async fn cluster_app(args: &ServeArgs) -> anyhow::Result<(axum::Router, String)> {
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API server (in-cluster, or KUBECONFIG)")?;
    let server = config.cluster_url.to_string();
    let clients = Arc::new(Clients::new(config).context("building the Kubernetes client")?);
    let state = AppState {
        authenticator: Arc::new(KubeAuthenticator::new(clients.clone())),
        backend: Arc::new(KubeBackend::new(clients)),
        metrics: Arc::new(Metrics::default()),
        trusted_proxies: Arc::new(args.trusted_proxies.clone()),
        tokens: None,
    };
    let app = api::router(state.clone()).merge(panel::router(state));
    Ok((app, format!("kubernetes at {server}")))
}

async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    app: axum::Router,
) -> anyhow::Result<()> {
    match tls {
        Some(config) => {
            let listener = devicelink_console::tls::TlsListener::new(listener, config)?;
            serve::serve_tls(listener, app, shutdown_signal()).await?;
        }
        None => serve::serve_plain(listener, app, shutdown_signal()).await?,
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
