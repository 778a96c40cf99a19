//! What the page script reads for live updates, same-origin and authenticated by the session
//! cookie (the API token never reaches the page): links and sessions as the API shapes them, and
//! a link's audit events as Server-Sent Events.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{self, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};

use super::{guard::SignedIn, links_page, state::PanelState};
use crate::{
    backend::EventQuery,
    caller::Caller,
    model::{Link, Session},
};

pub async fn links(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Query(params): Query<links_page::ListParams>,
) -> Response {
    match links_page::fetch(&state, &signed_in, &params).await {
        Ok(list) => Json(list).into_response(),
        Err(err) => err.into_response(),
    }
}

#[derive(Serialize)]
pub struct LinkSnapshot {
    link: Link,
    /// `None` when the proxy did not answer.
    sessions: Option<Vec<Session>>,
}

pub async fn link(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let backend = &state.app.backend;
    let link = match backend.get(&signed_in.caller, &namespace, &name).await {
        Ok(link) => link,
        Err(err) => return err.into_response(),
    };
    let sessions = backend
        .sessions(&signed_in.caller, &namespace, &name)
        .await
        .ok()
        .map(|list| list.items);
    Json(LinkSnapshot { link, sessions }).into_response()
}

#[derive(Deserialize)]
pub struct EventParams {
    #[serde(default)]
    after: i64,
}

/// How often the stream looks for new events.
const POLL: Duration = Duration::from_secs(1);

pub async fn events(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
) -> Response {
    // A reconnecting EventSource resumes after the last id it saw.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let query = EventQuery {
        namespace: Some(namespace),
        link: Some(name),
        after: params.after.max(resumed).max(0),
        limit: 100,
    };
    Sse::new(stream_events(
        state,
        signed_in.caller,
        signed_in.session_id,
        query,
    ))
    .keep_alive(KeepAlive::default())
    .into_response()
}

/// The link's events as they are recorded, until the session is signed out or forgotten.
fn stream_events(
    state: PanelState,
    caller: Caller,
    session_id: String,
    query: EventQuery,
) -> impl Stream<Item = Result<sse::Event, Infallible>> {
    stream::unfold(query, move |mut query| {
        let (state, caller, session_id) = (state.clone(), caller.clone(), session_id.clone());
        async move {
            loop {
                if !state.sessions.alive(&session_id) {
                    return None;
                }
                match state.app.backend.events(&caller, query.clone()).await {
                    Ok(list) if !list.items.is_empty() => {
                        query.after = list.items.last().map_or(query.after, |e| e.seq);
                        return Some((stream::iter(list.items), query));
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "panel event stream: reading events failed"),
                }
                tokio::time::sleep(POLL).await;
            }
        }
    })
    .flatten()
    .map(|event| {
        Ok(sse::Event::default()
            .id(event.seq.to_string())
            .json_data(&event)
            .unwrap_or_default())
    })
}
