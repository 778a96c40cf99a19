//! `/api/v1/namespaces/{namespace}/links`: list, get, create, update, delete, and the actions
//! enable, disable and extend. Every link response carries its version as an ETag.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiQuery, AppState, Peer, client_address, if_match};
use crate::{
    backend::ListQuery,
    caller::{Caller, Role},
    model::{Extend, Link, LinkCreate, LinkList, LinkPatch, LinkState, Problem, SessionList},
    problem::ApiError,
    validate::FieldError,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/namespaces/{namespace}/links",
            get(list_links).post(create_link),
        )
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}",
            get(get_link).patch(update_link).delete(delete_link),
        )
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}/enable",
            post(enable_link),
        )
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}/disable",
            post(disable_link),
        )
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}/extend",
            post(extend_link),
        )
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}/sessions",
            get(list_sessions),
        )
        .route(
            "/api/v1/namespaces/{namespace}/links/{name}/sessions/{id}",
            axum::routing::delete(close_session),
        )
}

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only links in this state.
    state: Option<LinkState>,
    /// Page size (1 to 1000, default 100).
    limit: Option<usize>,
    /// The `continue` value of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    continue_token: Option<String>,
}

fn with_etag(status: StatusCode, link: Link) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", link.version));
    let mut response = (status, Json(link)).into_response();
    if let Ok(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// The caller's address when they asked for it to be allowed.
fn my_address(
    wanted: bool,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Option<std::net::IpAddr>, ApiError> {
    if !wanted {
        return Ok(None);
    }
    let peer = peer.ok_or_else(|| {
        ApiError::from(FieldError::new(
            "allowMyAddress",
            "cannot be honoured: the console does not know the connection's address",
            "list your address in allowedSourceRanges instead",
        ))
    })?;
    Ok(Some(client_address(
        peer.ip().to_canonical(),
        headers,
        &state.trusted_proxies,
    )))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/links", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ListParams),
    responses((status = 200, body = LinkList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_links(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<LinkList>, ApiError> {
    caller.require(Role::Viewer, "list links")?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(FieldError::new(
            "limit",
            format!("{limit} is out of range"),
            format!("use 1 to {MAX_PAGE}, and `continue` for the next page"),
        )
        .into());
    }
    let query = ListQuery {
        state: params.state,
        limit,
        after: params.continue_token,
    };
    Ok(Json(state.backend.list(&caller, &namespace, query).await?))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/links/{name}", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52)),
    responses((status = 200, body = Link, headers(("ETag" = String))), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer, "read links")?;
    let link = state.backend.get(&caller, &namespace, &name).await?;
    Ok(with_etag(StatusCode::OK, link))
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/links", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52)),
    request_body = LinkCreate,
    responses((status = 201, body = Link, headers(("ETag" = String))), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_link(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LinkCreate>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin, "create links")?;
    let mine = my_address(body.allow_my_address, peer, &headers, &state)?;
    let link = state
        .backend
        .create(&caller, &namespace, body, mine)
        .await?;
    tracing::info!(caller = %caller.name, %namespace, link = %link.name, "link created");
    Ok(with_etag(StatusCode::CREATED, link))
}

#[utoipa::path(patch, path = "/api/v1/namespaces/{namespace}/links/{name}", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52),
        ("If-Match" = Option<String>, Header, description = "The version (ETag) the change applies to; 409 if the link has changed since")),
    request_body = LinkPatch,
    responses((status = 200, body = Link, headers(("ETag" = String))), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LinkPatch>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin, "edit links")?;
    let mine = my_address(body.allow_my_address, peer, &headers, &state)?;
    let link = state
        .backend
        .update(&caller, &namespace, &name, body, mine, if_match(&headers))
        .await?;
    tracing::info!(caller = %caller.name, %namespace, %name, "link updated");
    Ok(with_etag(StatusCode::OK, link))
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/links/{name}", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin, "delete links")?;
    state
        .backend
        .delete(&caller, &namespace, &name, if_match(&headers))
        .await?;
    tracing::info!(caller = %caller.name, %namespace, %name, "link deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/links/{name}/enable", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Link), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn enable_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "enable links")?;
    let link = state
        .backend
        .set_enabled(&caller, &namespace, &name, true, if_match(&headers))
        .await?;
    tracing::info!(caller = %caller.name, %namespace, %name, "link enabled");
    Ok(with_etag(StatusCode::OK, link))
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/links/{name}/disable", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Link), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn disable_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "disable links")?;
    let link = state
        .backend
        .set_enabled(&caller, &namespace, &name, false, if_match(&headers))
        .await?;
    tracing::info!(caller = %caller.name, %namespace, %name, "link disabled");
    Ok(with_etag(StatusCode::OK, link))
}

#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/links/{name}/extend", tag = "links",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("If-Match" = Option<String>, Header)),
    request_body = Extend,
    responses((status = 200, body = Link), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn extend_link(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Extend>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator, "extend links")?;
    let link = state
        .backend
        .extend(&caller, &namespace, &name, body, if_match(&headers))
        .await?;
    tracing::info!(caller = %caller.name, %namespace, %name, expires_at = ?link.expires_at, "link extended");
    Ok(with_etag(StatusCode::OK, link))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/links/{name}/sessions", tag = "sessions",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52)),
    responses((status = 200, body = SessionList), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<SessionList>, ApiError> {
    caller.require(Role::Viewer, "list sessions")?;
    Ok(Json(
        state.backend.sessions(&caller, &namespace, &name).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/links/{name}/sessions/{id}", tag = "sessions",
    params(("namespace" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52), ("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn close_session(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name, id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator, "close sessions")?;
    state
        .backend
        .close_session(&caller, &namespace, &name, &id)
        .await?;
    tracing::info!(caller = %caller.name, %namespace, %name, session = %id, "session closed");
    Ok(StatusCode::NO_CONTENT)
}
