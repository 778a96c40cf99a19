//! The control panel at `/`: server-rendered pages over the same `Backend` the API uses, signed
//! in with an API token kept in a server-side session. Every action is a plain form post
//! (POST-redirect-GET); the one script only adds live updates, countdowns, copy buttons and the
//! traffic chart.

mod assets;
mod create_page;
mod guard;
mod link_page;
mod links_page;
mod live;
mod render;
mod session;
mod sign_in;
mod state;
mod tokens_page;
mod views;

use std::sync::Arc;

use axum::{
    Router, middleware,
    routing::{get, post},
};
use tower_http::trace::TraceLayer;

use crate::api::AppState;

pub use state::PanelState;

/// The panel's routes, to be merged with the API's router.
pub fn router(app: AppState) -> Router {
    let state = PanelState {
        app,
        sessions: Arc::new(session::Sessions::default()),
    };
    let link = "/links/{namespace}/{name}";
    Router::new()
        .route("/", get(links_page::page))
        .route("/sign-in", get(sign_in::form).post(sign_in::sign_in))
        .route("/sign-out", post(sign_in::sign_out))
        .route(
            "/links/new",
            get(create_page::form).post(create_page::create),
        )
        .route(link, get(link_page::page))
        .route(&format!("{link}/enable"), post(link_page::enable))
        .route(&format!("{link}/disable"), post(link_page::disable))
        .route(&format!("{link}/extend"), post(link_page::extend))
        .route(&format!("{link}/delete"), post(link_page::delete))
        .route(
            &format!("{link}/sources/add-mine"),
            post(link_page::add_my_address),
        )
        .route(
            &format!("{link}/sources/remove"),
            post(link_page::remove_source),
        )
        .route(
            &format!("{link}/sessions/close"),
            post(link_page::close_session),
        )
        .route("/tokens", get(tokens_page::page).post(tokens_page::create))
        .route("/tokens/revoke", post(tokens_page::revoke))
        .route("/panel/data/links", get(live::links))
        .route("/panel/data/links/{namespace}/{name}", get(live::link))
        .route("/panel/events/{namespace}/{name}", get(live::events))
        .route("/assets/panel.css", get(assets::css))
        .route("/assets/panel.js", get(assets::script))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_form_post,
        ))
        .layer(middleware::from_fn(assets::security_headers))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
