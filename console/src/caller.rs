//! Who is calling, and what their role lets them do.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Roles are ordered: each one may do everything the ones before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads links, sessions and events.
    Viewer,
    /// Also enables, disables and extends links and closes sessions.
    Operator,
    /// Also creates, edits and deletes links and manages tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!("{other:?} is not a role (viewer, operator, admin)")),
        }
    }
}

/// An authenticated caller. The bearer token is kept for backends that act with the caller's own
/// credentials (Kubernetes); the local backend only uses the name, for the audit trail.
#[derive(Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub bearer: String,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}
