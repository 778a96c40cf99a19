//! What the API server's refusals mean to the console's caller. Its 401 and 403 pass through
//! with the server's own words (they name the user and the missing permission), so Kubernetes
//! RBAC, not the console, is what a user reads when they may not do something.

use crate::{problem::ApiError, validate::FieldError};

/// The caller-facing error for a failed call about `what` (e.g. `link plant-a/pump-17`).
pub fn from_kube(err: kube::Error, what: &str) -> ApiError {
    match err {
        kube::Error::Api(status) => match status.code {
            401 => ApiError::Unauthenticated(
                "the Kubernetes API server does not accept the token (expired or unknown)",
            ),
            403 => ApiError::Forbidden(format!("Kubernetes RBAC: {}", status.message)),
            404 => ApiError::NotFound(what.to_owned()),
            409 if status.reason == "AlreadyExists" => ApiError::AlreadyExists(what.to_owned()),
            // A stale resourceVersion: the caller re-reads; the current one is fetched by the
            // backend, which knows how.
            409 => ApiError::Conflict {
                current: String::new(),
            },
            422 | 400 => FieldError::new(
                "spec",
                format!("was refused by the API server: {}", status.message),
                "correct the field the message names; the CRD's rules are those the console checks",
            )
            .into(),
            429 => ApiError::Kubernetes(format!(
                "the API server is throttling requests: {}",
                status.message
            )),
            code => ApiError::Kubernetes(format!("{code} {}: {}", status.reason, status.message)),
        },
        other => ApiError::Kubernetes(other.to_string()),
    }
}
