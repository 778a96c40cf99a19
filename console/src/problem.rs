//! One error type for the API: each kind maps to a status and an RFC 9457 problem document.

use axum::{
    extract::rejection::JsonRejection,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{model::Problem, validate::FieldError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidField(#[from] FieldError),
    #[error("request: {detail}")]
    BadBody {
        status: StatusCode,
        field: Option<String>,
        detail: String,
    },
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("version conflict, now {current}")]
    Conflict { current: String },
    #[error("If-Match required")]
    PreconditionRequired,
    #[error("{field}: {problem}")]
    Unavailable {
        field: String,
        problem: String,
        fix: String,
    },
    #[error("the proxy is unavailable: {0}")]
    ProxyUnavailable(String),
    #[error("the Kubernetes API server: {0}")]
    Kubernetes(String),
    #[error("not available on this backend: {0}")]
    NotSupported(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadBody { status, .. } => *status,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::AlreadyExists(_) | Self::Conflict { .. } | Self::Unavailable { .. } => {
                StatusCode::CONFLICT
            }
            Self::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            Self::ProxyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Kubernetes(_) => StatusCode::BAD_GATEWAY,
            Self::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn to_problem(&self) -> Problem {
        let status = self.status().as_u16();
        let (slug, title, detail, field, fix, current_version) = match self {
            Self::InvalidField(e) => (
                "invalid-field",
                "A field is invalid",
                format!("{} {}", e.field, e.problem),
                Some(e.field.clone()),
                Some(e.fix.clone()),
                None,
            ),
            Self::BadBody { field, detail, .. } => (
                "bad-request",
                "The request does not fit the API",
                detail.clone(),
                field.clone(),
                Some("send JSON with the fields the OpenAPI document at /api/v1/openapi.json lists".to_owned()),
                None,
            ),
            Self::Unauthenticated(why) => (
                "unauthenticated",
                "Authentication required",
                (*why).to_owned(),
                None,
                Some("send Authorization: Bearer <token> (devicelink-console token create)".to_owned()),
                None,
            ),
            Self::Forbidden(why) => ("forbidden", "Not allowed", why.clone(), None, None, None),
            Self::NotFound(what) => ("not-found", "Not found", format!("{what} does not exist"), None, None, None),
            Self::AlreadyExists(what) => (
                "already-exists",
                "Already exists",
                format!("{what} already exists"),
                Some("name".to_owned()),
                Some("choose another name, or update the existing one".to_owned()),
                None,
            ),
            Self::Conflict { current } => (
                "version-conflict",
                "The link changed since you read it",
                format!("If-Match did not match; the link's version is now {current}"),
                None,
                Some("read the link again, reapply your change, and send its new version as If-Match".to_owned()),
                Some(current.clone()),
            ),
            Self::PreconditionRequired => (
                "precondition-required",
                "If-Match required",
                "this change needs the version you read, so it cannot overwrite a change you have not seen".to_owned(),
                None,
                Some("send If-Match: <the link's ETag>".to_owned()),
                None,
            ),
            Self::Unavailable { field, problem, fix } => (
                "unavailable",
                "The request conflicts with another link",
                format!("{field} {problem}"),
                Some(field.clone()),
                Some(fix.clone()),
                None,
            ),
            Self::ProxyUnavailable(why) => (
                "proxy-unavailable",
                "The proxy does not answer",
                why.clone(),
                None,
                Some("retry shortly; the console restarts the proxy when it dies".to_owned()),
                None,
            ),
            Self::Kubernetes(why) => (
                "kubernetes-unavailable",
                "The Kubernetes API server did not answer",
                why.clone(),
                None,
                Some("retry shortly; if it persists, the console's log and the API server's health say why".to_owned()),
                None,
            ),
            Self::NotSupported(why) => (
                "not-supported",
                "Not available on this backend",
                why.clone(),
                None,
                None,
                None,
            ),
            // The cause goes to the log, not to the caller.
            Self::Internal(_) => (
                "internal",
                "Internal error",
                "the console failed to complete the request; its log says why".to_owned(),
                None,
                None,
                None,
            ),
        };
        Problem {
            problem_type: format!("https://devicelink.io/problems/{slug}"),
            title: title.to_owned(),
            status,
            detail,
            field,
            fix,
            current_version,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::bad_request(rejection.status(), &rejection.body_text())
    }
}

impl ApiError {
    /// A refusal of axum's extractors, keeping their status (400 syntax, 415 media type, 422
    /// wrong shape) and lifting out the field path serde names before the first ": ".
    pub fn bad_request(status: StatusCode, text: &str) -> Self {
        let reason = text
            .split_once("target type: ")
            .map_or(text, |(_, why)| why);
        let field = reason
            .split_once(": ")
            .map(|(path, _)| path)
            .filter(|path| !path.is_empty() && !path.contains(' '))
            .map(str::to_owned);
        Self::BadBody {
            status,
            field,
            detail: text.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(%cause, "request failed"),
            Self::Kubernetes(cause) => tracing::error!(%cause, "request failed"),
            Self::Unauthenticated(_) | Self::Forbidden(_) => {
                tracing::warn!(refusal = %self, "request refused")
            }
            _ => tracing::debug!(refusal = %self, "request refused"),
        }
        let status = self.status();
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"devicelink\""),
            );
        }
        if let Self::Conflict { current } = &self
            && let Ok(etag) = HeaderValue::from_str(&format!("\"{current}\""))
        {
            headers.insert(header::ETAG, etag);
        }
        response
    }
}
