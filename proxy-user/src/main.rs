//! `devicelink-proxy`: the command line around the proxy library: flags, logging, signals.

use std::{process::ExitCode, sync::Arc, time::SystemTime};

use anyhow::Context as _;
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use devicelink_proxy::{
    causes,
    config::{self, Args, Config, LogFormat},
    metrics::{self, Metrics},
    proxy::{self, DataPlane},
    route,
};

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    let config = match Config::from_args(args, SystemTime::now()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    // With the kernel carrying the bytes, the process only accepts, sets up and watches: one
    // thread does that fastest (no cross-thread wake-ups; measured as connection set-up rate).
    // Copying in user space is the one job where more workers pay.
    let runtime = if config.data_plane == config::DataPlaneChoice::Userspace {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{}", causes(&err));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Two descriptors per connection plus the listener: lift the soft limit to the hard one so
/// `--max-connections` is not capped by the default 1024.
fn raise_fd_limit() {
    // SAFETY: plain rlimit calls on a zeroed struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();

    // Bind before loading anything: a wrong address is the most common mistake and the cheapest
    // to report.
    let listener = proxy::bind(config.listen)?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(proxy::bind_listener("--metrics", addr, 128)?),
        None => None,
    };
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }

    let data_plane = DataPlane::choose(&config)?;
    let kernel = match &data_plane {
        DataPlane::Kernel { plane, .. } => Some(Arc::clone(plane)),
        DataPlane::Userspace => None,
    };
    metrics.set_data_plane(data_plane.mode(), kernel);
    // Held until the proxy stops: dropping a route removes it.
    let _quickack_routes = match &data_plane {
        DataPlane::Kernel { .. } if config.device_quickack => device_quickack_routes(&config).await,
        _ => Vec::new(),
    };

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = interrupt.recv() => info!("SIGINT received"),
        }
        on_signal.cancel();
    });

    if config.acl.is_empty() {
        warn!("no --allow given: every client is refused (add e.g. --allow 203.0.113.0/24)");
    }
    info!(
        listen = %config.listen,
        device = %config.device,
        allow = ?config.acl.prefixes().iter().map(ToString::to_string).collect::<Vec<_>>(),
        expires_at = ?config.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "devicelink-proxy accepting clients"
    );
    let stop = proxy::run(
        config,
        listener,
        data_plane.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    )
    .await;
    let [to_device, from_device] = metrics.bytes();
    info!(
        ?stop,
        to_device, from_device, "stopped; detaching kernel programs"
    );
    shutdown.cancel();
    // Dropping the last handle on the kernel plane detaches XDP and the verdict program.
    drop(data_plane);
    Ok(())
}

/// Quick-ACK host routes to each address the device has now (see `route`). A DNS name is
/// resolved once here; addresses it gains later get none. Failures are logged, not fatal: the
/// splice works without them, only slower for bursty devices.
async fn device_quickack_routes(config: &Config) -> Vec<route::QuickAckRoute> {
    let device = &config.device;
    // A resolver that does not answer must not hold up the start for longer than a connection
    // would wait for the device.
    let lookup = tokio::time::timeout(
        config.connect_timeout,
        tokio::net::lookup_host((device.host.as_str(), device.port)),
    );
    let addrs: Vec<std::net::IpAddr> = match lookup.await {
        Ok(Ok(addrs)) => addrs.map(|addr| addr.ip()).collect(),
        Ok(Err(err)) => {
            warn!(%device, %err, "cannot resolve the device now; no quick-ACK route added");
            return Vec::new();
        }
        Err(_) => {
            warn!(%device, "resolving the device timed out; no quick-ACK route added");
            return Vec::new();
        }
    };
    let mut routes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for addr in addrs {
        // A v4-mapped address is reached over IPv4.
        let addr = addr.to_canonical();
        if !seen.insert(addr) {
            continue;
        }
        match route::QuickAckRoute::add(addr) {
            Ok(Some(route)) => routes.push(route),
            Ok(None) => {}
            // A device on this host (loopback, say) is reached through the local table, which
            // a route of ours would not override; nothing to do.
            Err(err @ route::RouteError::NotUnicast(..)) => {
                info!(device = %addr, "no quick-ACK route: {err}")
            }
            Err(err) => warn!(
                device = %addr,
                "no quick-ACK route to the device ({err}); the splice delays its ACKs to the device, which slows bursty devices (VNC/RDP); --device-quickack off silences this"
            ),
        }
    }
    routes
}
