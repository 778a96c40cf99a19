//! The OpenAPI 3.1 document, generated from the handlers and wire types so it cannot drift, and
//! served as JSON at `/api/v1/openapi.json`.

use axum::{Json, Router, routing::get};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{AppState, events, links, tokens};
use crate::model;

#[derive(OpenApi)]
#[openapi(
    info(title = "devicelink console", description = "Links from the internet to devices on private networks: create, enable, extend, disable, audit."),
    paths(
        links::list_links, links::get_link, links::create_link, links::update_link,
        links::delete_link, links::enable_link, links::disable_link, links::extend_link,
        links::list_sessions, links::close_session,
        events::all_events, events::link_events,
        tokens::list_tokens, tokens::create_token, tokens::revoke_token,
    ),
    components(schemas(
        model::Link, model::LinkCreate, model::LinkPatch, model::LinkList, model::LinkStatus,
        model::LinkState, model::Device, model::ConnectCommands, model::Extend,
        model::Event, model::EventList, model::Problem, model::Session, model::SessionList,
        model::TokenCreate, model::Token, model::CreatedToken, model::TokenList, crate::caller::Role,
    )),
    modifiers(&BearerAuth),
    tags((name = "links"), (name = "sessions"), (name = "events"), (name = "tokens")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}
