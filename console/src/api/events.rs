//! The audit trail: `/api/v1/events` and `/api/v1/namespaces/{namespace}/links/{name}/events`.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
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

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventParams),
    responses((status = 200, body = EventList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn all_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<EventList>, ApiError> {
    caller.require(Role::Viewer, "read events")?;
    Ok(Json(
        state
            .backend
            .events(&caller, query(params, None, None))
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/links/{name}/events", tag = "events",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), EventParams),
    responses((status = 200, body = EventList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn link_events(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<EventList>, ApiError> {
    caller.require(Role::Viewer, "read events")?;
    let query = query(params, Some(namespace), Some(name));
    Ok(Json(state.backend.events(&caller, query).await?))
}
