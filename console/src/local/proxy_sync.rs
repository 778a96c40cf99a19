//! Keeps the one local proxy in step with the database: renders the links file after every
//! change (and asks the proxy to reload it), polls what the proxy reports for the API's status,
//! records the proxy's events (sessions, expiry) in the audit trail, and supervises the proxy
//! process itself: started by the console, restarted when it dies, stopped on shutdown.

use std::{collections::HashMap, path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use tokio::{process::Command, sync::watch};

use super::LocalBackend;
use crate::proxy::{
    config_file::{render, write_atomically},
    control::{ControlError, ProxyControl, ProxyEvent},
};

const STATUS_POLL: Duration = Duration::from_secs(2);
const EVENTS_WAIT: Duration = Duration::from_secs(20);

/// Renders the file now and after every change until `stop` turns true.
pub async fn render_on_change(
    backend: LocalBackend,
    config: PathBuf,
    control: Arc<dyn ProxyControl>,
    mut stop: watch::Receiver<bool>,
) {
    let changed = backend.settings().changed.clone();
    let mut last = None;
    loop {
        match backend.all_rows().await {
            Ok(rows) => {
                let text = render(&rows);
                if last.as_ref() != Some(&text) {
                    match write_atomically(&config, &text) {
                        Ok(()) => {
                            tracing::info!(file = %config.display(), links = rows.iter().filter(|r| r.enabled).count(), "proxy links file written");
                            last = Some(text);
                            match control.reload().await {
                                Ok(generation) => {
                                    tracing::info!(generation, "proxy applied the links file")
                                }
                                Err(ControlError::ConfigRefused(why)) => {
                                    tracing::error!(%why, "proxy refused the links file")
                                }
                                // The proxy also re-reads the file when it changes.
                                Err(err) => tracing::debug!(%err, "proxy not told to reload"),
                            }
                        }
                        Err(err) => {
                            tracing::error!(file = %config.display(), %err, "writing the proxy links file failed")
                        }
                    }
                }
            }
            Err(err) => tracing::error!(%err, "reading links for the proxy failed"),
        }
        tokio::select! {
            _ = changed.notified() => {}
            // Expiry moves state with no write: a periodic pass keeps the file honest anyway.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Keeps the backend's view of the proxy fresh; empty while the proxy does not answer.
pub async fn poll_status(
    backend: LocalBackend,
    control: Arc<dyn ProxyControl>,
    mut stop: watch::Receiver<bool>,
) {
    let view = backend.settings().proxy_view.clone();
    loop {
        let fresh: HashMap<_, _> = match control.links().await {
            Ok(report) => {
                if let Some(error) = &report.config_error {
                    tracing::warn!(%error, "the proxy reports its links file invalid");
                }
                report
                    .links
                    .into_iter()
                    .map(|l| (l.name.clone(), l))
                    .collect()
            }
            Err(err) => {
                tracing::debug!(%err, "proxy status unavailable");
                HashMap::new()
            }
        };
        if let Ok(mut view) = view.write() {
            *view = fresh;
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_POLL) => {}
            _ = stop.changed() => return,
        }
    }
}

fn describe(event: &ProxyEvent) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(client) = &event.client {
        parts.push(format!("client {client}"));
    }
    if let (Some(to), Some(from)) = (event.bytes_to_device, event.bytes_from_device) {
        parts.push(format!("{to} bytes to the device, {from} from it"));
    }
    if let Some(reason) = &event.reason {
        parts.push(reason.clone());
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Copies the proxy's events into the audit trail.
pub async fn record_events(
    backend: LocalBackend,
    control: Arc<dyn ProxyControl>,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = 0;
    loop {
        let polled = tokio::select! {
            polled = control.events(after, EVENTS_WAIT) => polled,
            _ = stop.changed() => return,
        };
        match polled {
            Ok(report) => {
                if report.lost && after != 0 {
                    tracing::warn!(
                        after,
                        "some proxy events were lost (the proxy restarted or its ring overflowed)"
                    );
                }
                for event in &report.events {
                    let kind = event.kind.clone();
                    if let Err(err) = backend
                        .record_proxy_event(event.link.clone(), kind, describe(event))
                        .await
                    {
                        tracing::error!(%err, "recording a proxy event failed");
                    }
                }
                after = report.next;
            }
            Err(err) => {
                tracing::debug!(%err, "proxy events unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(STATUS_POLL) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// How to start the proxy.
#[derive(Debug, Clone)]
pub struct ProxyCommand {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub control_socket: PathBuf,
    pub data_plane: Option<String>,
    pub xdp_interface: Option<String>,
    pub metrics: Option<String>,
}

impl ProxyCommand {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config").arg(&self.config);
        cmd.arg("--control-socket").arg(&self.control_socket);
        if let Some(plane) = &self.data_plane {
            cmd.args(["--data-plane", plane]);
        }
        if let Some(interface) = &self.xdp_interface {
            cmd.args(["--xdp-interface", interface]);
        }
        if let Some(metrics) = &self.metrics {
            cmd.args(["--metrics", metrics]);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child being set up. A console
        // killed without a chance to stop its proxy (SIGKILL, a crash) takes the proxy with
        // it, so a restarted console's proxy finds its ports and control socket free. (The
        // signal follows the spawning thread: a runtime worker, which lives as long as the
        // console.)
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Runs the proxy until `stop`, restarting it with a growing pause (1 s to 30 s) when it exits.
pub async fn supervise(proxy: ProxyCommand, mut stop: watch::Receiver<bool>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let mut child = match proxy.command().spawn() {
            Ok(child) => child,
            Err(err) => {
                tracing::error!(binary = %proxy.binary.display(), %err, "starting the proxy failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        tracing::info!(pid = child.id(), "proxy started");
        tokio::select! {
            status = child.wait() => {
                tracing::error!(?status, "the proxy exited; restarting it");
                if started.elapsed() > Duration::from_secs(60) {
                    pause = Duration::from_secs(1);
                }
            }
            _ = stop.changed() => {
                terminate(&mut child).await;
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// SIGTERM, so the proxy closes its listeners and sessions cleanly; SIGKILL after 10 s.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill(2) with a pid we spawned and still hold (not yet reaped, so not reused)
        // touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    tracing::info!("proxy stopped");
}
