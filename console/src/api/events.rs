//! The audit trail: `/api/v1/events` and `/api/v1/namespaces/{namespace}/links/{name}/events`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, header},
    response::{
        IntoResponse, Response,
        sse::{self, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiQuery, AppState};
use crate::{
    backend::EventQuery,
    caller::{Caller, Role},
    model::{EventList, Problem},
    problem::ApiError,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(all_events))
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}/events",
            get(link_events),
        )
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events after this sequence number.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

fn query(params: EventParams, namespace: Option<String>, link: Option<String>) -> EventQuery {
    EventQuery {
        namespace,
        link,
        after: params.after.unwrap_or(0).max(0),
        limit: params.limit.unwrap_or(100).clamp(1, 1000),
    }
}

/// How often a live stream looks for new events.
const LIVE_POLL: Duration = Duration::from_secs(1);

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"))
}

/// A reconnecting EventSource sends the last id it saw; the stream resumes after it.
fn resume_after(headers: &HeaderMap, query: &mut EventQuery) {
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        query.after = query.after.max(last);
    }
}

/// Server-Sent Events: each audit event as it is recorded, `id` its sequence number.
fn live(
    state: AppState,
    caller: Caller,
    query: EventQuery,
) -> impl Stream<Item = Result<sse::Event, Infallible>> {
    stream::unfold(query, move |mut query| {
        let (state, caller) = (state.clone(), caller.clone());
        async move {
            loop {
                match state.backend.events(&caller, query.clone()).await {
                    Ok(list) if !list.items.is_empty() => {
                        query.after = list.items.last().map_or(query.after, |e| e.seq);
                        return Some((stream::iter(list.items), query));
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "live event stream: reading events failed"),
                }
                tokio::time::sleep(LIVE_POLL).await;
            }
        }
    })
    .flatten()
    .map(|event| {
        Ok(sse::Event::default()
            .id(event.seq.to_string())
            .event(event.kind.clone())
            .json_data(&event)
            .unwrap_or_default())
    })
}

async fn answer(
    state: AppState,
    caller: Caller,
    headers: &HeaderMap,
    mut query: EventQuery,
) -> Result<Response, ApiError> {
    if wants_stream(headers) {
        resume_after(headers, &mut query);
        return Ok(Sse::new(live(state, caller, query))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    Ok(Json(state.backend.events(&caller, query).await?).into_response())
}

/// With `Accept: text/event-stream`, a live stream (Server-Sent Events) instead of one page.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventParams),
    responses((status = 200, body = EventList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn all_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read events")?;
    answer(state, caller, &headers, query(params, None, None)).await
}

/// With `Accept: text/event-stream`, a live stream (Server-Sent Events) instead of one page.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/links/{name}/events", tag = "events",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), EventParams),
    responses((status = 200, body = EventList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn link_events(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read events")?;
    let query = query(params, Some(namespace), Some(name));
    answer(state, caller, &headers, query).await
}
