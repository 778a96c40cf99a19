//! Admins manage the local backend's API tokens: list, create (the secret shown once), revoke.
//! On Kubernetes callers sign in with the cluster's own tokens, and the page says so.

use askama::Template;
use axum::{
    Form,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use rusqlite::Connection;
use serde::Deserialize;

use super::{
    guard::SignedIn,
    render,
    session::Flash,
    state::PanelState,
    views::{Chrome, DEFAULT_NAMESPACE},
};
use crate::{
    caller::Role,
    problem::ApiError,
    tokens::{self, TokenError, TokenInfo},
};

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Option<Chrome>,
    /// `None` on a backend whose tokens are not the console's.
    tokens: Option<Vec<TokenInfo>>,
    created: Option<(String, String)>,
    me: String,
}

/// Runs a token operation on the database off the async threads.
async fn with_store<T: Send + 'static>(
    state: &PanelState,
    job: impl FnOnce(&Connection) -> Result<T, TokenError> + Send + 'static,
) -> Result<Option<T>, ApiError> {
    let Some(conn) = state.app.tokens.clone() else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || {
        let conn = conn
            .lock()
            .map_err(|_| ApiError::internal("database lock poisoned"))?;
        job(&conn).map(Some).map_err(|err| match err {
            TokenError::InvalidName(field) => field.into(),
            TokenError::Exists(name) => ApiError::AlreadyExists(format!("token {name:?}")),
            other => ApiError::internal(other),
        })
    })
    .await
    .map_err(ApiError::internal)?
}

pub async fn page(State(state): State<PanelState>, signed_in: SignedIn) -> Response {
    if let Err(err) = signed_in.caller.require(Role::Admin, "list tokens") {
        return render::failure(&err);
    }
    let tokens = match with_store(&state, tokens::list).await {
        Ok(tokens) => tokens,
        Err(err) => return render::failure(&err),
    };
    let flash = state.sessions.take_flash(&signed_in.session_id);
    let created = state.sessions.take_created_token(&signed_in.session_id);
    let page = TokensPage {
        chrome: Some(Chrome::new(&signed_in, DEFAULT_NAMESPACE, flash)),
        tokens,
        created,
        me: signed_in.caller.name.clone(),
    };
    let mut response = render::page(StatusCode::OK, &page);
    // The page may hold a secret shown once: no copy of it stays in a cache.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

fn back(state: &PanelState, signed_in: &SignedIn, outcome: Result<String, ApiError>) -> Response {
    let flash = match outcome {
        Ok(text) => Flash { error: false, text },
        Err(err) => {
            tracing::info!(caller = %signed_in.caller.name, refusal = %err, "panel token action refused");
            let problem = err.to_problem();
            Flash {
                error: true,
                text: match problem.fix {
                    Some(fix) => format!("{} ({fix})", problem.detail),
                    None => problem.detail,
                },
            }
        }
    };
    state.sessions.set_flash(&signed_in.session_id, flash);
    Redirect::to("/tokens").into_response()
}

fn no_tokens_here() -> ApiError {
    ApiError::NotFound(
        "API tokens on this backend (callers sign in with the cluster's own tokens)".to_owned(),
    )
}

pub async fn create(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Form(form): Form<CreateForm>,
) -> Response {
    let outcome = async {
        signed_in.caller.require(Role::Admin, "create tokens")?;
        let role: Role = form.role.parse().map_err(|problem: String| {
            crate::validate::FieldError::new("role", problem, "choose viewer, operator or admin")
        })?;
        let name = form.name.trim().to_owned();
        let for_store = name.clone();
        let secret = with_store(&state, move |conn| tokens::create(conn, &for_store, role))
            .await?
            .ok_or_else(no_tokens_here)?;
        tracing::info!(caller = %signed_in.caller.name, token = %name, %role, "token created from the panel");
        state
            .sessions
            .set_created_token(&signed_in.session_id, name.clone(), secret);
        Ok(format!("Token {name} created with role {role}."))
    }
    .await;
    back(&state, &signed_in, outcome)
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    name: String,
}

pub async fn revoke(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Form(form): Form<RevokeForm>,
) -> Response {
    let outcome = async {
        signed_in.caller.require(Role::Admin, "revoke tokens")?;
        let name = form.name;
        // As over the API: the token in hand would lock its holder out, perhaps the last admin.
        if name == signed_in.caller.name {
            return Err(ApiError::Unavailable {
                field: "name".to_owned(),
                problem: format!("{name:?} is the token you are signed in with"),
                fix: "revoke it signed in with another admin's token, or on the host with `devicelink-console token revoke`".to_owned(),
            });
        }
        let target = name.clone();
        let revoked = with_store(&state, move |conn| tokens::revoke(conn, &target))
            .await?
            .ok_or_else(no_tokens_here)?;
        if !revoked {
            return Err(ApiError::NotFound(format!("token {name:?}")));
        }
        tracing::info!(caller = %signed_in.caller.name, token = %name, "token revoked from the panel");
        Ok(format!("Token {name} revoked."))
    }
    .await;
    back(&state, &signed_in, outcome)
}
