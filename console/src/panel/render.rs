//! Turning pages into responses, and the few pages every route may answer with: a refusal and a
//! failure of the backend.

use askama::Template;
use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

use crate::problem::ApiError;

/// A page that says why nothing was done.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Option<super::views::Chrome>,
    status: u16,
    title: &'a str,
    detail: &'a str,
    fix: Option<&'a str>,
}

/// Renders a page, or says the page could not be rendered.
pub fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(%err, "rendering a panel page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

pub fn refusal(status: StatusCode, detail: &str) -> Response {
    page(
        status,
        &ErrorPage {
            chrome: None,
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Refused"),
            detail,
            fix: None,
        },
    )
}

/// The backend's refusal or failure as a page, with the API's own words (the cause of an
/// internal error goes to the log only).
pub fn failure(err: &ApiError) -> Response {
    if matches!(err, ApiError::Internal(_) | ApiError::Kubernetes(_)) {
        tracing::error!(%err, "panel request failed");
    } else {
        tracing::info!(refusal = %err, "panel request refused");
    }
    let problem = err.to_problem();
    page(
        err.status(),
        &ErrorPage {
            chrome: None,
            status: problem.status,
            title: &problem.title,
            detail: &problem.detail,
            fix: problem.fix.as_deref(),
        },
    )
}
