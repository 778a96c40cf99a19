//! Bearer-token authentication and the role check every handler makes.

use std::sync::{Arc, Mutex};

use axum::{extract::FromRequestParts, http::request::Parts};
use futures::future::BoxFuture;
use rusqlite::Connection;

use super::AppState;
use crate::{
    caller::{Caller, Role},
    problem::ApiError,
    tokens,
};

/// Resolves a bearer token to a name and a role.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        token: String,
    ) -> BoxFuture<'_, Result<Option<(String, Role)>, ApiError>>;
}

/// Tokens stored (hashed) in the local database.
pub struct LocalTokens(pub Arc<Mutex<Connection>>);

impl Authenticator for LocalTokens {
    fn authenticate(
        &self,
        token: String,
    ) -> BoxFuture<'_, Result<Option<(String, Role)>, ApiError>> {
        let conn = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = conn
                    .lock()
                    .map_err(|_| ApiError::internal("database lock poisoned"))?;
                tokens::lookup(&conn, &token).map_err(ApiError::internal)
            })
            .await
            .map_err(ApiError::internal)?
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated("no Authorization header"))?;
        let bearer = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated(
                "Authorization is not a Bearer token",
            ))?
            .to_owned();
        let (name, role) = state
            .authenticator
            .authenticate(bearer.clone())
            .await?
            .ok_or(ApiError::Unauthenticated(
                "the token is unknown or was revoked",
            ))?;
        Ok(Caller { name, role, bearer })
    }
}

impl Caller {
    /// Refuses unless the caller's role is at least `needed`.
    pub fn require(&self, needed: Role, action: &str) -> Result<(), ApiError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{} has role {} and may not {action}; that needs role {needed}",
                self.name, self.role
            )))
        }
    }
}
