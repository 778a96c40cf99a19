//! `devicelink-operator`: runs the controller, or prints the CRD, or renders a DeviceLink's
//! children offline. Thin: everything it does lives in the library.

use std::{io::Read, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use devicelink_operator::{
    controller::{self, Context},
    endpoints::{self, Health},
    leader::LeaderElection,
    metrics::Metrics,
    render::ProxyImage,
    resource::DEFAULT_PROXY_NAMESPACE,
};
use k8s_openapi::jiff::Timestamp;
use kube::{Client, runtime::events::Reporter};
use tokio::sync::watch;
use tracing::{error, info};

/// Default proxy image: the one built from deploy/proxy.Dockerfile at this version.
const DEFAULT_PROXY_IMAGE: &str = concat!("devicelink-proxy:", env!("CARGO_PKG_VERSION"));

#[derive(Parser, Debug)]
#[command(
    name = "devicelink-operator",
    version,
    about = "Reconciles DeviceLink resources into a LoadBalancer Service and a devicelink-proxy Deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct ProxyImageArgs {
    /// Image of the devicelink-proxy pods.
    #[arg(long, env = "DEVICELINK_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// imagePullPolicy of the proxy pods (Always, IfNotPresent, Never); the cluster's default when unset.
    #[arg(long, env = "DEVICELINK_PROXY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    proxy_image_pull_policy: Option<String>,
}

impl ProxyImageArgs {
    fn proxy_image(&self) -> ProxyImage {
        ProxyImage {
            image: self.proxy_image.clone(),
            pull_policy: self.proxy_image_pull_policy.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (with leader election, metrics and health endpoints).
    Run(RunArgs),
    /// Print the DeviceLink CustomResourceDefinition (what deploy/crd.yaml holds).
    Crd,
    /// Print, as YAML, the ConfigMap (the proxy's links file), Service and Deployment the
    /// operator would apply for a DeviceLink.
    Render {
        /// DeviceLink manifest (YAML); `-` reads standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
        /// Render as of this instant (RFC 3339) instead of now: for reproducible output.
        #[arg(long, value_name = "RFC3339")]
        now: Option<Timestamp>,
        #[command(flatten)]
        proxy: ProxyImageArgs,
        /// Namespace of the children, as the operator's --proxy-namespace.
        #[arg(long, default_value = DEFAULT_PROXY_NAMESPACE)]
        proxy_namespace: String,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    proxy: ProxyImageArgs,
    /// Namespace of every link's proxy pod and other children: the only one that needs the
    /// privileged Pod Security level (the links' namespaces stay restricted).
    #[arg(long, env = "DEVICELINK_PROXY_NAMESPACE", default_value = DEFAULT_PROXY_NAMESPACE)]
    proxy_namespace: String,
    /// Serve /healthz, /readyz and Prometheus /metrics here.
    #[arg(long, env = "DEVICELINK_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "devicelink-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "devicelink-operator")]
    lease_name: String,
    /// This replica's name in the Lease and in Events (the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a leader's Lease lasts without renewal before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Run without leader election: only when exactly one replica runs (e.g. on a laptop).
    #[arg(long)]
    no_leader_election: bool,
    /// Log format: json for clusters, text for people.
    #[arg(long, env = "DEVICELINK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing(&args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(args))
        }
        Command::Crd => {
            print!("{}", devicelink_operator::crd_yaml());
            Ok(())
        }
        Command::Render {
            file,
            now,
            proxy,
            proxy_namespace,
        } => {
            let manifest = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the DeviceLink from standard input")?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let yaml = devicelink_operator::render_manifest(
                &manifest,
                now.unwrap_or_else(Timestamp::now),
                &proxy.proxy_image(),
                &proxy_namespace,
            )
            .with_context(|| format!("{}", file.display()))?;
            print!("{yaml}");
            Ok(())
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn stop_requested() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context(
        "no Kubernetes API server configured: run in a cluster, or set KUBECONFIG / ~/.kube/config",
    )?;
    controller::ensure_crd_installed(&client).await?;

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("devicelink-operator-{}", std::process::id()));
    let metrics = Metrics::default();
    let health = Health::new(metrics.clone());
    let app = endpoints::router(health.clone());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding --http-addr {}", args.http_addr))?;
    info!(addr = %args.http_addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "HTTP endpoints stopped");
        }
    });
    health.set_ready();

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop_requested().await;
        info!("stop requested; finishing reconciles in flight");
        let _ = stop_tx.send(true);
    });

    let elector = (!args.no_leader_election).then(|| {
        LeaderElection::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            args.lease_duration,
        )
    });
    if let Some(elector) = &elector {
        info!(identity = %identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting to lead");
        tokio::select! {
            () = elector.acquire(Duration::from_secs(2), &metrics) => {}
            _ = stop_rx.wait_for(|stop| *stop) => return Ok(()),
        }
        info!(identity = %identity, "leading: starting the controller");
    } else {
        metrics.leader.set(1);
    }

    let reporter = Reporter {
        controller: "devicelink-operator".to_owned(),
        instance: Some(identity.clone()),
    };
    let mut ctx = Context::new(client, reporter, metrics.clone(), args.proxy.proxy_image());
    ctx.proxy_namespace = args.proxy_namespace.clone();
    let ctx = Arc::new(ctx);
    let mut stop_for_controller = stop_rx.clone();
    let (store, controller) = controller::controller(ctx, async move {
        let _ = stop_for_controller.wait_for(|stop| *stop).await;
    });
    health.set_links(store);

    match elector {
        None => controller.await,
        Some(elector) => {
            let renew_every = args.lease_duration / 3;
            tokio::select! {
                () = controller => {
                    if let Err(error) = elector.release().await {
                        tracing::warn!(%error, "could not release the Lease; another replica takes over when it lapses");
                    }
                }
                lost = elector.hold(renew_every, &metrics) => {
                    // Exiting is the only safe way to stop every reconcile at once; Kubernetes
                    // restarts the pod, which rejoins as a follower.
                    error!(error = %lost, "stepping down");
                    return Err(lost.into());
                }
            }
        }
    }
    info!("stopped");
    Ok(())
}
