//! `devicelink-proxy`: the command line around the proxy library: flags, logging, signals.

use std::{process::ExitCode, sync::Arc, time::SystemTime};

use anyhow::Context as _;
use clap::Parser as _;
use devicelink_spec::memory::MemoryPlan;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use devicelink_proxy::{
    causes,
    config::{self, Args, Config, LogFormat, MemoryPlans},
    control::{self, Control},
    dataplane::{self, DataPlane},
    events::EventLog,
    link::{Carrier, Link},
    links_file, listen,
    memory::{Budget, BudgetSource},
    metrics::{self, Metrics},
    reload::ConfigFile,
    session::Sessions,
    table::{LinkState, LinkTable},
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
    // What the connections may take is settled before anything starts: a limit that cannot
    // fit the memory budget is the same mistake as a bad flag.
    let plans = match config.memory_plans(Budget::resolve(config.memory_budget)) {
        Ok(plans) => plans,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    // The links file is checked before anything starts: a file that does not validate is the
    // same mistake as a bad flag. One link from flags is made once the data plane is chosen:
    // its connection limit is that plane's.
    let links = match &config.config_file {
        // Read here to check it; the links are taken from it again once the limit is known.
        Some(path) => {
            match links_file::read(path, devicelink_spec::memory::DEFAULT_MAX_CONNECTIONS) {
                Ok(links) => Some(links),
                Err(err) => {
                    eprintln!("error: --config {err}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
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
    match runtime.block_on(run(config, plans, links)) {
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

/// One line saying what the connections may take and why: the budget and where it came from,
/// the worst case per connection, the limit, and the sizes (said when shrunk to fit).
fn log_memory_plan(plans: &MemoryPlans, plan: &MemoryPlan, mode: &str) {
    let budget = &plans.budget;
    if budget.source == BudgetSource::NoLimit {
        // Said, not warned: an unlimited process is a choice of whoever runs it.
        info!(
            memory_budget_bytes = budget.bytes,
            "no memory limit on the proxy's cgroup: sizing connections for a budget of {} bytes; give --memory-budget (or a container memory limit) to size them for this machine",
            budget.bytes
        );
    }
    let sizes = if mode == "ebpf" {
        format!(
            "--splice-max-queued {} and --splice-sndbuf {}",
            plan.queue, plan.socket_buffer
        )
    } else {
        format!("--copy-socket-buffer {}", plan.socket_buffer)
    };
    let how = if plan.shrunk {
        "defaulted sizes shrunk to fit"
    } else {
        "sizes as given or defaulted"
    };
    info!(
        memory_budget_bytes = budget.bytes,
        per_connection_worst_case_bytes = plan.per_connection,
        max_connections = plan.max_connections,
        "memory budget {} bytes (from {}): at most {} connections of {} bytes each at worst, plus {} reserved; {how}: {sizes}",
        budget.bytes,
        budget.source,
        plan.max_connections,
        plan.per_connection,
        devicelink_spec::memory::RESERVE_BYTES,
    );
}

async fn run(config: Config, plans: MemoryPlans, links: Option<Vec<Link>>) -> anyhow::Result<()> {
    raise_fd_limit();
    let metrics = Arc::new(Metrics::default());
    let sessions = Arc::new(Sessions::default());
    let events = Arc::new(EventLog::default());
    metrics.set_sessions(Arc::clone(&sessions));
    let shutdown = CancellationToken::new();

    // Bind before loading anything: a wrong address is the most common mistake and the cheapest
    // to report.
    if let Some(addr) = config.metrics {
        let listener = listen::bind_listener("--metrics", addr, 128)?;
        tokio::spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    let control_listener = match &config.control_socket {
        Some(path) => Some((control::bind(path)?, path.clone())),
        None => None,
    };

    let process = config.process(&plans);
    let data_plane = DataPlane::choose(&process)?;
    let plan = plans.for_mode(data_plane.mode());
    log_memory_plan(&plans, &plan, data_plane.mode());
    metrics.set_memory(plans.budget.bytes, &plan);
    let links = links.unwrap_or_else(|| config.single_link(&plan).into_iter().collect());
    let xdp = dataplane::choose_xdp(&process)?;
    if let Some(advice) = dataplane::skb_xdp_copy_advice(
        &data_plane,
        xdp.is_some(),
        process.xdp_mode,
        plans.copy.socket_buffer,
    ) {
        warn!("{advice}");
    }
    let kernel = match &data_plane {
        DataPlane::Kernel { plane, .. } => Some(Arc::clone(plane)),
        DataPlane::Userspace => None,
    };
    metrics.set_data_plane(data_plane.mode(), kernel, xdp.clone());
    let carrier = Arc::new(Carrier {
        data_plane: data_plane.clone(),
        xdp: xdp.clone(),
        metrics: Arc::clone(&metrics),
        sessions: Arc::clone(&sessions),
        events: Arc::clone(&events),
        connect_timeout: process.connect_timeout,
        splice_sndbuf: process.splice_sndbuf,
        splice_max_queued: process.splice_max_queued,
        splice_carry: process.splice_carry,
        copy_socket_buffer: u32::try_from(plans.copy.socket_buffer).unwrap_or(u32::MAX),
        max_connections: plan.max_connections,
        spliced_device_mark: (process.device_quickack
            && matches!(data_plane, DataPlane::Kernel { .. }))
        .then_some(devicelink_proxy::route::QUICKACK_MARK),
    });
    let table = LinkTable::spawn(carrier);

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

    let config_file = match &config.config_file {
        Some(path) => {
            let file = Arc::new(ConfigFile::new(
                path.clone(),
                table.clone(),
                Arc::clone(&metrics),
                Arc::clone(&events),
                plan.max_connections
                    .min(devicelink_spec::memory::DEFAULT_MAX_CONNECTIONS),
            ));
            // Checked at start already; read again so that the watch starts from what applied.
            file.reload()
                .await
                .map_err(|why| anyhow::anyhow!("--config {why}"))?;
            tokio::spawn(Arc::clone(&file).watch(shutdown.clone()));
            Some(file)
        }
        None => {
            if config.acl.is_empty() {
                warn!(
                    "no --allow given: every client is refused (add e.g. --allow 203.0.113.0/24)"
                );
            }
            info!(
                listen = ?config.listen,
                device = ?config.device.as_ref().map(ToString::to_string),
                allow = ?config.acl.prefixes().iter().map(ToString::to_string).collect::<Vec<_>>(),
                expires_at = ?config.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "devicelink-proxy accepting clients"
            );
            let report = table.apply(links).await?;
            metrics.config_applied();
            if let Some((_, why)) = report.failed.into_iter().next() {
                table.shutdown().await;
                anyhow::bail!("{why}");
            }
            None
        }
    };
    if let Some((listener, path)) = control_listener {
        let control = Control {
            table: table.clone(),
            sessions: Arc::clone(&sessions),
            events: Arc::clone(&events),
            metrics: Arc::clone(&metrics),
            data_plane: data_plane.clone(),
            xdp: xdp.clone(),
            config_file: config_file.clone(),
        };
        tokio::spawn(control::serve(listener, path, control, shutdown.clone()));
    }
    metrics.set_ready(true);

    // One link from flags ends the process when it expires; a set of links from a file runs
    // until stopped (an expired link waits there for a new expiry).
    let expired = async {
        if config_file.is_some() {
            return std::future::pending().await;
        }
        let mut status = table.watch();
        loop {
            if status
                .borrow_and_update()
                .iter()
                .any(|link| link.state == LinkState::Expired)
            {
                return;
            }
            if status.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let open = || sessions.list(None).len();
    tokio::select! {
        () = expired => info!(open = open(), "link expired: stopped accepting, closing every connection"),
        () = shutdown.cancelled() => info!(open = open(), "shutting down: stopped accepting, closing every connection"),
    }
    metrics.set_ready(false);
    table.shutdown().await;
    let [to_device, from_device] = metrics.bytes();
    info!(to_device, from_device, "stopped; detaching kernel programs");
    shutdown.cancel();
    // Dropping the last handles on the planes detaches XDP and the verdict program.
    drop(data_plane);
    drop(xdp);
    Ok(())
}
