//! The API's wire types: a link as callers write it, as the console shows it, and the rest of the
//! `/api/v1` vocabulary. Field names are the DeviceLink resource's own, so one script drives both
//! backends. These types also generate the OpenAPI document.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Where the device listens, as the proxy reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// IP address or DNS name of the device.
    #[schema(min_length = 1, max_length = 253, example = "10.20.30.40")]
    pub host: String,
    /// TCP port of the device.
    #[schema(minimum = 1, maximum = 65535, example = 22)]
    pub port: i64,
}

/// A new link.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkCreate {
    /// DNS-1035 label: lowercase letters, digits and '-', starting with a letter.
    #[schema(
        min_length = 1,
        max_length = 52,
        pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        example = "pump-17-ssh"
    )]
    pub name: String,
    pub device: Device,
    /// Public port; taken from the console's port range (or the device's port) when left out.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    /// Source blocks (CIDR) allowed to connect.
    #[serde(default)]
    #[schema(example = json!(["203.0.113.0/24"]))]
    pub allowed_source_ranges: Vec<String>,
    /// Add the caller's own address (as a /32 or /128) to the allowed ranges.
    #[serde(default)]
    pub allow_my_address: bool,
    /// How long the link stays open from when it is enabled, e.g. 2h. Exactly one of ttl and expiresAt.
    #[serde(default)]
    #[schema(pattern = "^([0-9]+[smhd])+$", example = "2h")]
    pub ttl: Option<String>,
    /// When the link closes (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[serde(default = "enabled_by_default")]
    #[schema(default = true)]
    pub enabled: bool,
    /// Connections carried at once; the proxy's default when left out.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_connections: Option<i64>,
    /// Close a connection idle this long, e.g. 15m.
    #[serde(default)]
    #[schema(pattern = "^([0-9]+[smhd])+$")]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// A change to a link: fields left out stay as they are; `null` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkPatch {
    #[serde(default)]
    pub allowed_source_ranges: Option<Vec<String>>,
    #[serde(default)]
    pub allow_my_address: bool,
    /// Setting ttl replaces expiresAt and the other way round.
    #[serde(default)]
    #[schema(pattern = "^([0-9]+[smhd])+$")]
    pub ttl: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000)]
    pub max_connections: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^([0-9]+[smhd])+$")]
    pub idle_timeout: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
}

/// Tells "present and null" (clear it) from "absent" (keep it): absent stays `None` by `default`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `{"by": "1h"}` pushes the expiry later by a duration; `{"to": "..."}` sets it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    #[serde(default)]
    #[schema(pattern = "^([0-9]+[smhd])+$", example = "1h")]
    pub by: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Enabled, not yet carried by the proxy.
    Pending,
    /// The proxy listens and admits connections.
    Ready,
    Disabled,
    Expired,
    /// The proxy could not open the link; `reason` says why.
    Failed,
}

impl LinkState {
    pub const ALL: [LinkState; 5] = [
        Self::Pending,
        Self::Ready,
        Self::Disabled,
        Self::Expired,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }
}

/// Ready-to-paste commands for the common remote-access tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ConnectCommands {
    pub ssh: String,
    pub vnc: String,
    pub rdp: String,
}

/// What the link is doing now (read-only).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub state: LinkState,
    /// Why the link failed or expired.
    pub reason: Option<String>,
    /// Host and port to connect to.
    pub endpoint: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Seconds until expiry; 0 once expired, null while disabled.
    pub seconds_left: Option<u64>,
    #[schema(format = DateTime)]
    pub expired_at: Option<String>,
    pub active_sessions: u64,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    pub connect: Option<ConnectCommands>,
}

/// A link as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub namespace: String,
    pub name: String,
    pub device: Device,
    pub port: i64,
    pub allowed_source_ranges: Vec<String>,
    pub ttl: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub enabled: bool,
    pub max_connections: Option<i64>,
    pub idle_timeout: Option<String>,
    pub description: Option<String>,
    /// Changes with every write; send it back as `If-Match` to update only what you read.
    pub version: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub status: LinkStatus,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkList {
    pub items: Vec<Link>,
    /// Pass as `continue` to get the next page; absent on the last one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// One entry of a link's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: i64,
    #[schema(format = DateTime)]
    pub at: String,
    pub namespace: String,
    pub link: String,
    /// created, updated, enabled, disabled, extended, deleted, expired, acl_changed, session_opened, session_closed, ...
    pub kind: String,
    /// The token's name that did it, or `proxy` for what the data plane reported.
    pub actor: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<Event>,
}

/// RFC 9457 problem details, with the field that is wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// On a conflict: the link's version now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
}

/// An open connection through a link.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Opaque; pass it back to close the session.
    pub id: String,
    /// The client's address and port.
    pub client: String,
    #[schema(format = DateTime)]
    pub since: String,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// `kernel` (eBPF splice) or `userspace`.
    pub data_plane: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<Session>,
}

/// A new API token (local backend).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Who or what the token is for; lowercase letters, digits and '-'.
    #[schema(
        min_length = 1,
        max_length = 52,
        pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        example = "ci-bot"
    )]
    pub name: String,
    pub role: crate::caller::Role,
}

/// An API token as listed; its secret is never shown again.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub name: String,
    pub role: crate::caller::Role,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A token just created: `token` is its secret, shown only in this response.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    #[serde(rename = "token")]
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<Token>,
}
