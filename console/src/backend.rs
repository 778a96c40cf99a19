//! The one interface both backends implement: links, their actions and their audit trail.
//! Handlers speak only to this; the local backend stores links in SQLite, the Kubernetes one
//! (with the caller's own credentials) in DeviceLink resources.

use std::{collections::BTreeMap, net::IpAddr};

use futures::future::BoxFuture;

use crate::{
    caller::Caller,
    model::{EventList, Extend, Link, LinkCreate, LinkList, LinkPatch, LinkState, SessionList},
    problem::ApiError,
};

pub type BackendResult<'a, T> = BoxFuture<'a, Result<T, ApiError>>;

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<LinkState>,
    pub limit: usize,
    /// The last name of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub namespace: Option<String>,
    pub link: Option<String>,
    pub after: i64,
    pub limit: usize,
}

/// Which version a write expects to replace: `None` means "whatever is there".
pub type Precondition = Option<String>;

pub trait Backend: Send + Sync + 'static {
    fn list(
        &self,
        caller: &Caller,
        namespace: &str,
        query: ListQuery,
    ) -> BackendResult<'_, LinkList>;
    fn get(&self, caller: &Caller, namespace: &str, name: &str) -> BackendResult<'_, Link>;
    /// `my_address` is the caller's address when they asked for it to be allowed.
    fn create(
        &self,
        caller: &Caller,
        namespace: &str,
        link: LinkCreate,
        my_address: Option<IpAddr>,
    ) -> BackendResult<'_, Link>;
    fn update(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        patch: LinkPatch,
        my_address: Option<IpAddr>,
        if_match: Precondition,
    ) -> BackendResult<'_, Link>;
    fn delete(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        if_match: Precondition,
    ) -> BackendResult<'_, ()>;
    fn set_enabled(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        enabled: bool,
        if_match: Precondition,
    ) -> BackendResult<'_, Link>;
    fn extend(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        extend: Extend,
        if_match: Precondition,
    ) -> BackendResult<'_, Link>;
    fn events(&self, caller: &Caller, query: EventQuery) -> BackendResult<'_, EventList>;
    /// The link's open sessions.
    fn sessions(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
    ) -> BackendResult<'_, SessionList>;
    /// Closes one of the link's sessions (404 when it is not one of them).
    fn close_session(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        id: &str,
    ) -> BackendResult<'_, ()>;
    /// Whether the backend can serve requests now (`/readyz`).
    fn ready(&self) -> BackendResult<'_, ()>;
    /// Links by state across namespaces, for `/metrics`.
    fn count_by_state(&self) -> BackendResult<'_, BTreeMap<LinkState, u64>>;
}
