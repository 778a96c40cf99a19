//! Who is signed in, and the checks every form post passes before any handler runs: the origin
//! is this console's own, and the form carries the session's CSRF token.

use axum::{
    body::{Body, to_bytes},
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};

use ipnet::IpNet;

use super::{
    render,
    session::{self, same_secret},
    state::PanelState,
};
use crate::caller::{Caller, Role};

/// Form bodies larger than this are refused; the panel's forms are small.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// A signed-in user: who they are (as the API sees them) and their session.
pub struct SignedIn {
    pub caller: Caller,
    pub session_id: String,
    pub csrf: String,
}

impl SignedIn {
    pub fn can_operate(&self) -> bool {
        self.caller.role >= Role::Operator
    }

    pub fn can_admin(&self) -> bool {
        self.caller.role >= Role::Admin
    }
}

/// Whether the browser reached the console over TLS (then cookies are marked Secure): served
/// with TLS here, or by a trusted reverse proxy that says so in `X-Forwarded-Proto`.
pub fn over_tls(request: &Request, trusted_proxies: &[IpNet]) -> bool {
    let extensions = request.extensions();
    if extensions
        .get::<ConnectInfo<crate::tls::TlsPeer>>()
        .is_some()
    {
        return true;
    }
    let from_trusted_proxy = extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|peer| {
            let ip = peer.0.ip().to_canonical();
            trusted_proxies.iter().any(|net| net.contains(&ip))
        });
    from_trusted_proxy
        && request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

impl FromRequestParts<PanelState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &PanelState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/sign-in").into_response();
        let id = session::id_from_cookies(&parts.headers).ok_or_else(to_sign_in)?;
        let panel_session = state.sessions.touch(&id).ok_or_else(to_sign_in)?;
        let found = state
            .app
            .authenticator
            .authenticate(panel_session.bearer.clone())
            .await
            .map_err(|err| render::failure(&err))?;
        let Some((name, role)) = found else {
            // The token was revoked since sign-in: so is the session.
            tracing::warn!("panel session ended: its token is unknown or was revoked");
            state.sessions.close(&id);
            return Err(to_sign_in());
        };
        Ok(Self {
            caller: Caller {
                name,
                role,
                bearer: panel_session.bearer,
            },
            session_id: id,
            csrf: panel_session.csrf,
        })
    }
}

/// Refuses a POST from another origin, and a signed-in POST without the session's CSRF token.
/// Every refusal is logged.
pub async fn check_form_post(
    State(state): State<PanelState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    if !same_origin(request.headers()) {
        tracing::warn!(%path, origin = ?request.headers().get(header::ORIGIN), "panel post refused: another origin");
        return render::refusal(
            StatusCode::FORBIDDEN,
            "This form was sent from another site; it was not carried out.",
        );
    }
    if path == "/sign-in" {
        return next.run(request).await;
    }
    let Some(panel_session) =
        session::id_from_cookies(request.headers()).and_then(|id| state.sessions.touch(&id))
    else {
        return Redirect::to("/sign-in").into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
        tracing::warn!(%path, "panel post refused: the form is too large");
        return render::refusal(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let sent = fields
        .iter()
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.as_str());
    if !sent.is_some_and(|sent| same_secret(sent, &panel_session.csrf)) {
        tracing::warn!(%path, csrf_sent = sent.is_some(), "panel post refused: missing or wrong CSRF token");
        return render::refusal(
            StatusCode::FORBIDDEN,
            "This form did not carry this session's security token, so it was not carried out. Reload the page and try again.",
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A post is same-origin when its `Origin` (if the browser sent one) names the `Host` it was
/// sent to, or the `X-Forwarded-Host` a reverse proxy in front passed on (a page on another
/// site cannot set that header on a form post).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some((_, origin_host)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return false;
    };
    [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| headers.get(name)?.to_str().ok())
        .any(|host| host == origin_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_from_another_origin_is_told_apart_from_one_from_here() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "console.example:8443".parse().unwrap());
        assert!(same_origin(&headers), "no Origin: a same-origin form");
        headers.insert(
            header::ORIGIN,
            "https://console.example:8443".parse().unwrap(),
        );
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        headers.insert("x-forwarded-host", "console.example".parse().unwrap());
        headers.insert(header::ORIGIN, "https://console.example".parse().unwrap());
        assert!(same_origin(&headers), "behind a reverse proxy");
    }
}
