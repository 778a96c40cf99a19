//! `/api/v1/tokens`: admins create (the secret shown once), list and revoke the local backend's
//! API tokens. On Kubernetes callers present the cluster's own tokens, so there is nothing here
//! to manage and these routes answer 404 with where to look instead.

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{delete, get},
};
use rusqlite::Connection;

use super::{ApiJson, AppState};
use crate::{
    caller::{Caller, Role},
    model::{CreatedToken, Problem, Token, TokenCreate, TokenList},
    problem::ApiError,
    tokens::{self, TokenError, TokenInfo},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{name}", delete(revoke_token))
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::InvalidName(field) => field.into(),
            TokenError::Exists(name) => ApiError::AlreadyExists(format!("token {name:?}")),
            other => ApiError::internal(other),
        }
    }
}

impl From<TokenInfo> for Token {
    fn from(info: TokenInfo) -> Self {
        Self {
            name: info.name,
            role: info.role,
            created_at: info.created_at,
        }
    }
}

fn store(state: &AppState) -> Result<Arc<Mutex<Connection>>, ApiError> {
    state.tokens.clone().ok_or_else(|| {
        ApiError::NotFound(
            "API tokens on the Kubernetes backend (callers use Kubernetes tokens; manage them with the cluster's own tools)"
                .to_owned(),
        )
    })
}

/// Runs a token operation on the database off the async threads.
async fn with_store<T: Send + 'static>(
    state: &AppState,
    job: impl FnOnce(&Connection) -> Result<T, TokenError> + Send + 'static,
) -> Result<T, ApiError> {
    let conn = store(state)?;
    tokio::task::spawn_blocking(move || {
        let conn = conn
            .lock()
            .map_err(|_| ApiError::internal("database lock poisoned"))?;
        job(&conn).map_err(ApiError::from)
    })
    .await
    .map_err(ApiError::internal)?
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Role::Admin, "list tokens")?;
    let items = with_store(&state, tokens::list).await?;
    Ok(Json(TokenList {
        items: items.into_iter().map(Token::from).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = TokenCreate,
    responses((status = 201, body = CreatedToken), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<TokenCreate>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require(Role::Admin, "create tokens")?;
    let (name, role) = (request.name.clone(), request.role);
    let secret = with_store(&state, move |conn| tokens::create(conn, &name, role)).await?;
    let created = with_store(&state, tokens::list)
        .await?
        .into_iter()
        .find(|t| t.name == request.name)
        .map(|t| t.created_at)
        .unwrap_or_else(crate::clock::now_rfc3339);
    tracing::info!(caller = %caller.name, token = %request.name, role = %role, "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: Token {
                name: request.name,
                role,
                created_at: created,
            },
            secret,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length = 52)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin, "revoke tokens")?;
    // Revoking the token in hand would lock its holder out mid-session, perhaps as the last
    // admin: that is done from another admin's token, or on the host.
    if name == caller.name {
        return Err(ApiError::Unavailable {
            field: "name".to_owned(),
            problem: format!("{name:?} is the token this request is made with"),
            fix: "revoke it with another admin's token, or on the host with `devicelink-console token revoke`".to_owned(),
        });
    }
    let target = name.clone();
    if !with_store(&state, move |conn| tokens::revoke(conn, &target)).await? {
        return Err(ApiError::NotFound(format!("token {name:?}")));
    }
    tracing::info!(caller = %caller.name, token = %name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
