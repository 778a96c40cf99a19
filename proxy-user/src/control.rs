//! The control API: HTTP with JSON bodies on a Unix socket (`--control-socket`), for the
//! program that manages this host's links (the console): the links and their states, the open
//! sessions (and closing one), the events, and reloading the configuration now. The socket is
//! created with mode 0600: whoever may open it may close sessions, so only the proxy's own
//! user (and root) may.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    dataplane::DataPlane,
    events::{EventLog, Page},
    kernel::KernelPlane,
    link::close_reason,
    metrics::Metrics,
    reload::ConfigFile,
    session::Sessions,
    table::{LinkState, LinkTable},
    xdp::XdpPlane,
};

/// Longest a reader may wait for events in one request.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most events in one page.
const PAGE: usize = 1000;

#[derive(Clone)]
pub struct Control {
    pub table: LinkTable,
    pub sessions: Arc<Sessions>,
    pub events: Arc<EventLog>,
    pub metrics: Arc<Metrics>,
    pub data_plane: DataPlane,
    pub xdp: Option<Arc<XdpPlane>>,
    pub config_file: Option<Arc<ConfigFile>>,
}

impl Control {
    fn plane(&self) -> Option<&KernelPlane> {
        match &self.data_plane {
            DataPlane::Kernel { plane, .. } => Some(plane),
            DataPlane::Userspace => None,
        }
    }
}

/// Binds the control socket at `path` (replacing a stale socket file a killed run left),
/// readable and writable by this user only.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "--control-socket {}: a file that is not a socket is in the way; remove it or choose another path",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| {
            format!(
                "--control-socket {}: removing the old socket",
                path.display()
            )
        })?;
    }
    // Created with the process's umask, then narrowed before anyone is served.
    let listener = UnixListener::bind(path)
        .with_context(|| format!("--control-socket {}: cannot bind", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("--control-socket {}: cannot set its mode", path.display()))?;
    Ok(listener)
}

/// Serves the control API until `shutdown`, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    control: Control,
    shutdown: CancellationToken,
) {
    info!(socket = %path.display(), "control API listening");
    let served = axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(err) = served {
        warn!(%err, "control API stopped");
    }
    let _ = std::fs::remove_file(&path);
}

pub fn router(control: Control) -> Router {
    Router::new()
        .route("/v1/links", get(links))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{id}", delete(close_session))
        .route("/v1/events", get(events))
        .route("/v1/reload", post(reload))
        .with_state(control)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinksBody {
    generation: u64,
    config_error: Option<String>,
    links: Vec<LinkBody>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkBody {
    name: String,
    state: &'static str,
    error: Option<String>,
    listen: String,
    expires_at: Option<String>,
    active_sessions: i64,
    bytes_to_device: u64,
    bytes_from_device: u64,
    xdp_drops: u64,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

async fn links(State(control): State<Control>) -> Json<LinksBody> {
    let status = control.table.status();
    let plane = control.plane();
    let open = control.sessions.list(None);
    let links = status
        .iter()
        .map(|link| {
            let stats = control.metrics.link_stats(&link.name);
            let mut bytes = stats.as_ref().map_or([0, 0], |stats| stats.bytes());
            for session in open.iter().filter(|s| *s.link == *link.name) {
                let live = session.live_kernel_bytes(plane);
                bytes[0] += live[0];
                bytes[1] += live[1];
            }
            let (state, error) = match &link.state {
                LinkState::Active => ("active", None),
                LinkState::Disabled => ("disabled", None),
                LinkState::Expired => ("expired", None),
                LinkState::Failed(why) => ("failed", Some(why.clone())),
            };
            LinkBody {
                name: link.name.clone(),
                state,
                error,
                listen: link.listen.to_string(),
                expires_at: link.expires_at.map(rfc3339),
                active_sessions: stats.as_ref().map_or(0, |stats| stats.active()),
                bytes_to_device: bytes[0],
                bytes_from_device: bytes[1],
                xdp_drops: match (&control.xdp, link.xdp_slot) {
                    (Some(xdp), Some(slot)) => xdp.drops(slot),
                    _ => 0,
                },
            }
        })
        .collect();
    Json(LinksBody {
        generation: control.metrics.config_generation(),
        config_error: control.metrics.config_refusal(),
        links,
    })
}

#[derive(Deserialize)]
struct SessionsQuery {
    link: Option<String>,
}

#[derive(Serialize)]
struct SessionsBody {
    sessions: Vec<SessionBody>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionBody {
    /// A string: JSON readers in some languages lose precision past 2^53.
    id: String,
    link: String,
    client: String,
    since: String,
    bytes_to_device: u64,
    bytes_from_device: u64,
    data_plane: Option<&'static str>,
}

async fn sessions(
    State(control): State<Control>,
    Query(query): Query<SessionsQuery>,
) -> Json<SessionsBody> {
    let plane = control.plane();
    let sessions = control
        .sessions
        .list(query.link.as_deref())
        .iter()
        .map(|session| {
            let [to_device, from_device] = session.bytes(plane);
            SessionBody {
                id: session.id.to_string(),
                link: session.link.to_string(),
                client: session.client.to_string(),
                since: humantime::format_rfc3339_millis(session.since).to_string(),
                bytes_to_device: to_device,
                bytes_from_device: from_device,
                data_plane: session.path(),
            }
        })
        .collect();
    Json(SessionsBody { sessions })
}

#[derive(Serialize)]
struct Problem {
    error: String,
}

fn problem(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(Problem {
            error: error.into(),
        }),
    )
        .into_response()
}

async fn close_session(State(control): State<Control>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(session) = id.parse().ok().and_then(|id| control.sessions.get(id)) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no open session {id} (GET /v1/sessions lists them)"),
        );
    };
    info!(link = %session.link, client = %session.client, id = session.id, "closing the session on request");
    session.close(close_reason::CLOSED_BY_REQUEST);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    /// Seconds to wait for a first event.
    #[serde(default)]
    wait: u64,
}

async fn events(State(control): State<Control>, Query(query): Query<EventsQuery>) -> Json<Page> {
    let wait = Duration::from_secs(query.wait).min(MAX_WAIT);
    Json(control.events.wait_after(query.after, PAGE, wait).await)
}

#[derive(Serialize)]
struct ReloadBody {
    generation: u64,
    failed: Vec<FailedLink>,
}

#[derive(Serialize)]
struct FailedLink {
    name: String,
    error: String,
}

async fn reload(State(control): State<Control>) -> Response {
    let Some(file) = &control.config_file else {
        return problem(
            StatusCode::CONFLICT,
            "this proxy carries one link from its flags; only a proxy started with --config reloads",
        );
    };
    match file.reload().await {
        Ok(report) => Json(ReloadBody {
            generation: control.metrics.config_generation(),
            failed: report
                .failed
                .into_iter()
                .map(|(name, error)| FailedLink { name, error })
                .collect(),
        })
        .into_response(),
        Err(why) => problem(StatusCode::UNPROCESSABLE_ENTITY, why),
    }
}
