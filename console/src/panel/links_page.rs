//! The list of links: name, device, state, endpoint, time left, sessions and bytes, filtered by
//! state, with the links about to expire marked.

use askama::Template;
use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;

use super::{
    guard::SignedIn,
    render,
    state::PanelState,
    views::{Chrome, DEFAULT_NAMESPACE, EXPIRING_SOON_SECS, LinkRow},
};
use crate::{
    api::links::MAX_PAGE,
    backend::ListQuery,
    model::{LinkList, LinkState},
    problem::ApiError,
    validate,
};

#[derive(Template)]
#[template(path = "links.html")]
struct LinksPage {
    chrome: Option<Chrome>,
    namespace: String,
    rows: Vec<LinkRow>,
    /// Each state for the filter, and whether it is the one chosen.
    states: Vec<(&'static str, bool)>,
    filtered: bool,
    soon_minutes: u64,
    /// More links exist than one page shows.
    more: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

impl ListParams {
    pub fn namespace(&self) -> String {
        self.namespace
            .as_deref()
            .map(str::trim)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned()
    }

    /// The state chosen in the filter; anything else (or nothing) shows every state.
    pub fn state(&self) -> Option<LinkState> {
        let wanted = self.state.as_deref()?;
        LinkState::ALL.into_iter().find(|s| s.as_str() == wanted)
    }
}

/// The links of a namespace, as the API lists them (one page of the most the API allows).
pub async fn fetch(
    state: &PanelState,
    signed_in: &SignedIn,
    params: &ListParams,
) -> Result<LinkList, ApiError> {
    let namespace = params.namespace();
    validate::name("namespace", &namespace)?;
    signed_in
        .caller
        .require(crate::caller::Role::Viewer, "list links")?;
    let query = ListQuery {
        state: params.state(),
        limit: MAX_PAGE,
        after: None,
    };
    state
        .app
        .backend
        .list(&signed_in.caller, &namespace, query)
        .await
}

pub async fn page(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Query(params): Query<ListParams>,
) -> Response {
    let list = match fetch(&state, &signed_in, &params).await {
        Ok(list) => list,
        Err(err) => return render::failure(&err),
    };
    let namespace = params.namespace();
    let chosen = params.state();
    let flash = state.sessions.take_flash(&signed_in.session_id);
    render::page(
        StatusCode::OK,
        &LinksPage {
            chrome: Some(Chrome::new(&signed_in, &namespace, flash)),
            rows: list.items.iter().map(LinkRow::new).collect(),
            states: LinkState::ALL
                .into_iter()
                .map(|s| (s.as_str(), Some(s) == chosen))
                .collect(),
            filtered: chosen.is_some(),
            more: list.continue_token.is_some(),
            namespace,
            soon_minutes: EXPIRING_SOON_SECS / 60,
        },
    )
}
