//! One link's page and its actions: connect commands, allowed sources (add my address, remove),
//! extend, enable and disable, open sessions (each closable), the timeline and the traffic chart.
//! Every action is a plain form post answered with a redirect back to the page.

use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    guard::SignedIn,
    render,
    session::Flash,
    state::PanelState,
    views::{self, Chrome, EventRow, SessionRow},
};
use crate::{
    api::{Peer, client_address},
    backend::EventQuery,
    caller::Role,
    model::{Event, Extend, Link, LinkPatch},
    problem::ApiError,
};

/// The timeline shows this many of the link's latest events.
const TIMELINE_LEN: usize = 50;

pub struct ConnectLine {
    pub label: &'static str,
    pub id: &'static str,
    pub command: String,
}

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    chrome: Option<Chrome>,
    link: Link,
    href: String,
    state: &'static str,
    device: String,
    endpoint: String,
    expires_at: String,
    time_left: String,
    soon: bool,
    bytes_to_device: String,
    bytes_from_device: String,
    connect: Vec<ConnectLine>,
    sessions: Vec<SessionRow>,
    sessions_error: Option<String>,
    events: Vec<EventRow>,
    last_seq: i64,
}

impl LinkPage {
    fn can_operate(&self) -> bool {
        self.chrome.as_ref().is_some_and(|c| c.can_operate)
    }

    fn can_admin(&self) -> bool {
        self.chrome.as_ref().is_some_and(|c| c.can_admin)
    }

    fn csrf(&self) -> &str {
        self.chrome.as_ref().map_or("", |c| c.csrf.as_str())
    }
}

pub async fn page(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let backend = &state.app.backend;
    let caller = &signed_in.caller;
    let link = match backend.get(caller, &namespace, &name).await {
        Ok(link) => link,
        Err(err) => return render::failure(&err),
    };
    let (sessions, sessions_error) = match backend.sessions(caller, &namespace, &name).await {
        Ok(list) => (list.items.iter().map(SessionRow::new).collect(), None),
        Err(err) => (Vec::new(), Some(err.to_problem().detail)),
    };
    let events = latest_events(&state, &signed_in, &namespace, &name).await;
    let last_seq = events.last().map_or(0, |e| e.seq);
    let row = views::LinkRow::new(&link);
    let connect = link
        .status
        .connect
        .as_ref()
        .map(|c| {
            vec![
                ConnectLine {
                    label: "SSH",
                    id: "connect-ssh",
                    command: c.ssh.clone(),
                },
                ConnectLine {
                    label: "VNC",
                    id: "connect-vnc",
                    command: c.vnc.clone(),
                },
                ConnectLine {
                    label: "RDP",
                    id: "connect-rdp",
                    command: c.rdp.clone(),
                },
            ]
        })
        .unwrap_or_default();
    let flash = state.sessions.take_flash(&signed_in.session_id);
    render::page(
        StatusCode::OK,
        &LinkPage {
            chrome: Some(Chrome::new(&signed_in, &namespace, flash)),
            href: row.href,
            state: row.state,
            device: row.device,
            endpoint: row.endpoint,
            expires_at: row.expires_at,
            time_left: row.time_left,
            soon: row.soon,
            bytes_to_device: views::bytes(link.status.bytes_to_device),
            bytes_from_device: views::bytes(link.status.bytes_from_device),
            connect,
            sessions,
            sessions_error,
            events: events.iter().rev().map(EventRow::new).collect(),
            last_seq,
            link,
        },
    )
}

/// The link's latest events, oldest first: the trail is read page by page from the start, since
/// the backend reads forwards only.
async fn latest_events(
    state: &PanelState,
    signed_in: &SignedIn,
    namespace: &str,
    name: &str,
) -> Vec<Event> {
    const PAGE: usize = 1000;
    let mut query = EventQuery {
        namespace: Some(namespace.to_owned()),
        link: Some(name.to_owned()),
        after: 0,
        limit: PAGE,
    };
    let mut latest: Vec<Event> = Vec::new();
    loop {
        let page = match state
            .app
            .backend
            .events(&signed_in.caller, query.clone())
            .await
        {
            Ok(list) => list.items,
            Err(err) => {
                tracing::warn!(%err, %namespace, link = %name, "panel: reading the link's events failed");
                break;
            }
        };
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            query.after = last.seq;
        }
        latest.extend(page);
        let keep_from = latest.len().saturating_sub(TIMELINE_LEN);
        latest.drain(..keep_from);
        if !full {
            break;
        }
    }
    latest
}

/// Back to the link's page with what happened (or why not) shown once.
fn done(
    state: &PanelState,
    signed_in: &SignedIn,
    namespace: &str,
    name: &str,
    outcome: Result<String, ApiError>,
) -> Response {
    let flash = match outcome {
        Ok(text) => Flash { error: false, text },
        Err(err) => {
            tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, refusal = %err, "panel action refused");
            let problem = err.to_problem();
            let text = match problem.fix {
                Some(fix) => format!("{} ({fix})", problem.detail),
                None => problem.detail,
            };
            Flash { error: true, text }
        }
    };
    state.sessions.set_flash(&signed_in.session_id, flash);
    Redirect::to(&views::link_href(namespace, name)).into_response()
}

pub async fn enable(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    set_enabled(state, signed_in, namespace, name, true).await
}

pub async fn disable(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    set_enabled(state, signed_in, namespace, name, false).await
}

async fn set_enabled(
    state: PanelState,
    signed_in: SignedIn,
    namespace: String,
    name: String,
    enabled: bool,
) -> Response {
    let verb = if enabled { "enable" } else { "disable" };
    let outcome = async {
        signed_in
            .caller
            .require(Role::Operator, &format!("{verb} links"))?;
        state
            .app
            .backend
            .set_enabled(&signed_in.caller, &namespace, &name, enabled, None)
            .await?;
        tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, "link {verb}d from the panel");
        Ok(format!("Link {verb}d."))
    }
    .await;
    done(&state, &signed_in, &namespace, &name, outcome)
}

#[derive(Deserialize)]
pub struct ExtendForm {
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

pub async fn extend(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
    Form(form): Form<ExtendForm>,
) -> Response {
    let outcome = async {
        signed_in.caller.require(Role::Operator, "extend links")?;
        let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let extend = Extend {
            by: nonempty(form.by),
            to: nonempty(form.to).map(|to| views::as_utc(&to)),
        };
        let link = state
            .app
            .backend
            .extend(&signed_in.caller, &namespace, &name, extend, None)
            .await?;
        tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, expires_at = ?link.expires_at, "link extended from the panel");
        Ok(format!(
            "Extended: the link now expires at {}.",
            link.status
                .expires_at
                .or(link.expires_at)
                .unwrap_or_default()
        ))
    }
    .await;
    done(&state, &signed_in, &namespace, &name, outcome)
}

pub async fn add_my_address(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Response {
    let outcome = async {
        signed_in.caller.require(Role::Admin, "edit links")?;
        let peer = peer.ok_or_else(|| {
            ApiError::from(crate::validate::FieldError::new(
                "allowMyAddress",
                "cannot be honoured: the console does not know the connection's address",
                "add your address as a range instead",
            ))
        })?;
        let mine = client_address(
            peer.ip().to_canonical(),
            &headers,
            &state.app.trusted_proxies,
        );
        let patch = LinkPatch {
            allow_my_address: true,
            ..LinkPatch::default()
        };
        state
            .app
            .backend
            .update(&signed_in.caller, &namespace, &name, patch, Some(mine), None)
            .await?;
        tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, address = %mine, "own address allowed from the panel");
        Ok(format!("Your address {mine} may now connect."))
    }
    .await;
    done(&state, &signed_in, &namespace, &name, outcome)
}

#[derive(Deserialize)]
pub struct SourceForm {
    #[serde(default)]
    range: String,
}

pub async fn remove_source(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
    Form(form): Form<SourceForm>,
) -> Response {
    let outcome = async {
        signed_in.caller.require(Role::Admin, "edit links")?;
        let backend = &state.app.backend;
        let link = backend.get(&signed_in.caller, &namespace, &name).await?;
        let kept: Vec<String> = link
            .allowed_source_ranges
            .iter()
            .filter(|r| **r != form.range)
            .cloned()
            .collect();
        if kept.len() == link.allowed_source_ranges.len() {
            return Err(ApiError::NotFound(format!(
                "allowed source {:?} of link {namespace}/{name}",
                form.range
            )));
        }
        let patch = LinkPatch {
            allowed_source_ranges: Some(kept),
            ..LinkPatch::default()
        };
        // Only over the ranges just read: a range added meanwhile is not dropped unseen.
        backend
            .update(
                &signed_in.caller,
                &namespace,
                &name,
                patch,
                None,
                Some(link.version),
            )
            .await?;
        tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, range = %form.range, "allowed source removed from the panel");
        Ok(format!("{} may no longer connect.", form.range))
    }
    .await;
    done(&state, &signed_in, &namespace, &name, outcome)
}

#[derive(Deserialize)]
pub struct SessionForm {
    #[serde(default)]
    id: String,
}

pub async fn close_session(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
    Form(form): Form<SessionForm>,
) -> Response {
    let outcome = async {
        signed_in.caller.require(Role::Operator, "close sessions")?;
        state
            .app
            .backend
            .close_session(&signed_in.caller, &namespace, &name, &form.id)
            .await?;
        tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, session = %form.id, "session closed from the panel");
        Ok("Session closed.".to_owned())
    }
    .await;
    done(&state, &signed_in, &namespace, &name, outcome)
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    confirm: Option<String>,
}

pub async fn delete(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let deleted = async {
        signed_in.caller.require(Role::Admin, "delete links")?;
        if form.confirm.is_none() {
            return Err(ApiError::from(crate::validate::FieldError::new(
                "confirm",
                "was not ticked, so the link was kept",
                "tick \"Yes, delete this link\" to delete it",
            )));
        }
        state
            .app
            .backend
            .delete(&signed_in.caller, &namespace, &name, None)
            .await?;
        tracing::info!(caller = %signed_in.caller.name, %namespace, link = %name, "link deleted from the panel");
        Ok(())
    }
    .await;
    match deleted {
        Ok(()) => {
            state.sessions.set_flash(
                &signed_in.session_id,
                Flash {
                    error: false,
                    text: format!("Link {name} deleted."),
                },
            );
            Redirect::to(&format!("/?namespace={namespace}")).into_response()
        }
        Err(err) => done(&state, &signed_in, &namespace, &name, Err(err)),
    }
}
