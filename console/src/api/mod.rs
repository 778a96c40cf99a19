//! The HTTP API: one router per area merged here, shared state, and the extractors that turn a
//! request into a caller, a body or a query, refusing with problem details.

pub mod auth;
pub mod events;
pub mod links;
pub mod openapi;
pub mod ops;
pub mod tokens;

use std::{net::IpAddr, sync::Arc};

use axum::{
    Router,
    extract::{FromRequest, FromRequestParts, rejection::QueryRejection},
    http::{HeaderMap, header},
    middleware,
};
use ipnet::IpNet;
use tower_http::trace::TraceLayer;

use crate::{backend::Backend, metrics::Metrics, problem::ApiError};

#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub authenticator: Arc<dyn auth::Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// The local backend's token database, which admins manage over the API; `None` where
    /// callers present the cluster's own tokens.
    pub tokens: Option<Arc<std::sync::Mutex<rusqlite::Connection>>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(links::router())
        .merge(events::router())
        .merge(openapi::router())
        .merge(ops::router())
        .merge(tokens::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ops::record_request,
        ))
        .fallback(|| async { ApiError::NotFound("this path".to_owned()) })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A JSON body whose refusal is a problem document.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A query string whose refusal is a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.status(), &rejection.body_text())
    }
}

/// The connection's peer, when the server recorded it (not in tests that call the router directly).
pub struct Peer(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let plain = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0);
        let tls = || {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::tls::TlsPeer>>()
                .map(|info| info.0.0)
        };
        Ok(Self(plain.or_else(tls)))
    }
}

/// The version an `If-Match` header names (`"3"`, `W/"3"` or `*`), if any.
pub fn if_match(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    Some(value.trim_matches('"').to_owned())
}

/// The caller's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|hop| !is_trusted(hop))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "198.51.100.9, 10.0.0.2".parse().unwrap());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
