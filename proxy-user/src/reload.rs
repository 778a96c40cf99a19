//! The `--config` file kept in force: read at start, then again whenever it changes and on
//! SIGHUP. A file that does not validate is refused whole: the running links stay as they were,
//! and the refusal shows in the log, the metrics, `/readyz` and the control API.
//!
//! Changes are found by looking at the file's identity and times a few times a second rather
//! than through inotify: a ConfigMap volume swaps a symlink to a new directory, editors replace
//! the file by a rename, and a plain `stat` of the path sees all of these the same way, at the
//! cost of one syscall per look.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    events::{Event, EventKind, EventLog},
    links_file,
    metrics::Metrics,
    table::{ApplyReport, LinkTable},
};

/// How often the file is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// The links file and what applies it.
pub struct ConfigFile {
    path: PathBuf,
    table: LinkTable,
    metrics: Arc<Metrics>,
    events: Arc<EventLog>,
    /// One reload at a time (a change, SIGHUP and the control API may ask at once).
    reloading: Mutex<()>,
    /// `maxConnections` of a link that leaves it out (see `links_file::read`).
    default_max_connections: u32,
}

/// The file's identity and times: a change to any of them means the file may have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

impl ConfigFile {
    pub fn new(
        path: PathBuf,
        table: LinkTable,
        metrics: Arc<Metrics>,
        events: Arc<EventLog>,
        default_max_connections: u32,
    ) -> Self {
        Self {
            path,
            table,
            metrics,
            events,
            reloading: Mutex::new(()),
            default_max_connections,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and applies the file. `Err` is why it was refused (nothing applied).
    pub async fn reload(&self) -> Result<ApplyReport, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let links = match links_file::read(&self.path, self.default_max_connections) {
            Ok(links) => links,
            Err(why) => {
                warn!(
                    file = %self.path.display(),
                    "configuration refused, the running links stay as they were: {why}"
                );
                self.metrics.config_refused(&why);
                self.events
                    .push(Event::new(EventKind::ConfigRefused, "").reason(&why));
                return Err(why);
            }
        };
        let count = links.len();
        let report = self
            .table
            .apply(links)
            .await
            .map_err(|err| err.to_string())?;
        self.metrics.config_applied();
        info!(
            file = %self.path.display(),
            links = count,
            started = report.started.len(),
            changed = report.changed.len(),
            stopped = report.stopped.len(),
            failed = report.failed.len(),
            "configuration applied"
        );
        self.events
            .push(Event::new(EventKind::ConfigApplied, "").reason(format!(
                "{count} links: {} started, {} changed, {} stopped, {} failed",
                report.started.len(),
                report.changed.len(),
                report.stopped.len(),
                report.failed.len()
            )));
        Ok(report)
    }

    /// Reloads whenever the file changes or SIGHUP arrives, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut hangup = signal(SignalKind::hangup())?;
        let mut seen = fingerprint(&self.path);
        let mut ticker = tokio::time::interval(LOOK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = hangup.recv() => {
                    info!(file = %self.path.display(), "SIGHUP: reading the configuration again");
                    seen = fingerprint(&self.path);
                    let _ = self.reload().await;
                }
                _ = ticker.tick() => {
                    let now = fingerprint(&self.path);
                    if now == seen {
                        continue;
                    }
                    // Let a writer that is not atomic finish (truncate, then write) before
                    // reading: wait until two looks agree.
                    let mut settled = now;
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let again = fingerprint(&self.path);
                        if again == settled {
                            break;
                        }
                        settled = again;
                    }
                    seen = settled;
                    if seen.is_none() {
                        warn!(file = %self.path.display(), "the configuration file is gone; the running links stay as they were");
                        continue;
                    }
                    let _ = self.reload().await;
                }
            }
        }
    }
}
