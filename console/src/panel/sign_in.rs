//! Signing in with an API token, and signing out. The token is checked with the API's own
//! authenticator and then kept in the server-side session; the browser holds only the session id.

use askama::Template;
use axum::{
    extract::{FromRequest, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    guard::{SignedIn, over_tls},
    render,
    session::{self, PanelSession},
    state::PanelState,
    views::Chrome,
};

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Option<Chrome>,
    error: Option<&'static str>,
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
}

pub async fn form(State(state): State<PanelState>, request: Request) -> Response {
    let signed_in = session::id_from_cookies(request.headers())
        .and_then(|id| state.sessions.touch(&id))
        .is_some();
    if signed_in {
        return Redirect::to("/").into_response();
    }
    render::page(
        StatusCode::OK,
        &SignInPage {
            chrome: None,
            error: None,
        },
    )
}

pub async fn sign_in(
    State(state): State<PanelState>,
    request: Request,
) -> Result<Response, Response> {
    let secure = over_tls(&request, &state.app.trusted_proxies);
    let axum::Form(form) = axum::Form::<SignInForm>::from_request(request, &())
        .await
        .map_err(IntoResponse::into_response)?;
    let refuse = |error| {
        render::page(
            StatusCode::UNAUTHORIZED,
            &SignInPage {
                chrome: None,
                error: Some(error),
            },
        )
    };
    let token = form.token.trim().to_owned();
    if token.is_empty() {
        return Err(refuse("Enter your API token."));
    }
    let found = state
        .app
        .authenticator
        .authenticate(token.clone())
        .await
        .map_err(|err| render::failure(&err))?;
    let Some((name, role)) = found else {
        tracing::warn!("panel sign-in refused: the token is unknown or was revoked");
        return Err(refuse(
            "That token is unknown or was revoked. Check it, or ask an admin for a new one.",
        ));
    };
    let id = PanelSession::new(token)
        .and_then(|s| state.sessions.open(s))
        .map_err(|err| render::failure(&crate::problem::ApiError::internal(err)))?;
    tracing::info!(caller = %name, %role, "panel sign-in");
    Ok((
        [(header::SET_COOKIE, session::cookie(&id, secure))],
        Redirect::to("/"),
    )
        .into_response())
}

pub async fn sign_out(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    request: Request,
) -> Response {
    state.sessions.close(&signed_in.session_id);
    tracing::info!(caller = %signed_in.caller.name, "panel sign-out");
    (
        [(
            header::SET_COOKIE,
            session::cleared_cookie(over_tls(&request, &state.app.trusted_proxies)),
        )],
        Redirect::to("/sign-in"),
    )
        .into_response()
}
