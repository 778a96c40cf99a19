//! The Kubernetes backend: links are DeviceLink resources, a namespace is a tenant, and every
//! call is made with the caller's own bearer token, so RBAC decides what each user may do and
//! the API server's audit log names them. The console's own identity only records Events and
//! checks that the API server answers; it needs no rights over DeviceLinks.

pub mod audit;
pub mod auth;
pub mod clients;
pub mod convert;
pub mod errors;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use devicelink_operator::resource::DeviceLink;
use jiff::Timestamp;
use kube::{
    Client, ResourceExt,
    api::{Api, DeleteParams, ListParams, PostParams, Preconditions},
};

use crate::{
    backend::{Backend, BackendResult, EventQuery, ListQuery, Precondition},
    caller::Caller,
    clock,
    model::{EventList, Extend, Link, LinkCreate, LinkList, LinkPatch, LinkState, SessionList},
    problem::ApiError,
    rules::{self, Lifetime, after},
    validate,
};
use clients::Clients;
use convert::DESCRIPTION_ANNOTATION;
use errors::from_kube;

#[derive(Clone)]
pub struct KubeBackend {
    clients: Arc<Clients>,
}

/// What a change did, for the audit trail: (kind, detail).
type Changes = Vec<(&'static str, Option<String>)>;

impl KubeBackend {
    pub fn new(clients: Arc<Clients>) -> Self {
        Self { clients }
    }

    fn links(&self, caller: &Caller, namespace: &str) -> Result<Api<DeviceLink>, ApiError> {
        validate::name("namespace", namespace)?;
        Ok(Api::namespaced(
            self.clients.for_token(&caller.bearer)?,
            namespace,
        ))
    }

    fn caller_client(&self, caller: &Caller) -> Result<Client, ApiError> {
        self.clients.for_token(&caller.bearer)
    }

    async fn read(
        api: &Api<DeviceLink>,
        namespace: &str,
        name: &str,
    ) -> Result<DeviceLink, ApiError> {
        api.get(name)
            .await
            .map_err(|e| from_kube(e, &format!("link {namespace}/{name}")))
    }

    /// Read, check the caller's expected version, change, and replace with the version read:
    /// a write in between makes the API server answer 409, which the caller sees with the
    /// version now current. Nothing is half-applied: the spec is one object, written at once.
    async fn modify(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        if_match: Precondition,
        change: impl FnOnce(&mut DeviceLink, Timestamp) -> Result<Changes, ApiError>,
    ) -> Result<Link, ApiError> {
        let api = self.links(caller, namespace)?;
        let what = format!("link {namespace}/{name}");
        let mut link = Self::read(&api, namespace, name).await?;
        let current = link.resource_version().unwrap_or_default();
        if let Some(expected) = if_match.as_deref()
            && expected != "*"
            && expected != current
        {
            return Err(ApiError::Conflict { current });
        }
        let now = clock::now();
        let changes = change(&mut link, now)?;
        // The server fills status and managed fields itself.
        link.status = None;
        link.metadata.managed_fields = None;
        let written = match api.replace(name, &PostParams::default(), &link).await {
            Ok(written) => written,
            Err(err) => {
                return Err(match from_kube(err, &what) {
                    ApiError::Conflict { .. } => ApiError::Conflict {
                        current: Self::read(&api, namespace, name)
                            .await?
                            .resource_version()
                            .unwrap_or_default(),
                    },
                    other => other,
                });
            }
        };
        for (kind, detail) in changes {
            audit::record(self.clients.own(), &written, kind, &caller.name, detail).await;
        }
        tracing::debug!(caller = %caller.name, %namespace, %name, version = ?written.resource_version(), "DeviceLink replaced");
        Ok(convert::to_link(&written, now))
    }
}

fn parse_instant(value: Option<&str>) -> Option<Timestamp> {
    value.and_then(|v| v.parse().ok())
}

impl Backend for KubeBackend {
    fn list(
        &self,
        caller: &Caller,
        namespace: &str,
        query: ListQuery,
    ) -> BackendResult<'_, LinkList> {
        let api = self.links(caller, namespace);
        let namespace = namespace.to_owned();
        Box::pin(async move {
            let api = api?;
            let now = clock::now();
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| from_kube(e, &format!("links in namespace {namespace}")))?;
            let mut links: Vec<DeviceLink> = list
                .items
                .into_iter()
                .filter(|l| query.state.is_none_or(|s| convert::state(l) == s))
                .filter(|l| query.after.as_ref().is_none_or(|a| l.name_any() > *a))
                .collect();
            links.sort_by_key(|l| l.name_any());
            let more = links.len() > query.limit;
            links.truncate(query.limit);
            Ok(LinkList {
                continue_token: more.then(|| links.last().map(|l| l.name_any())).flatten(),
                items: links.iter().map(|l| convert::to_link(l, now)).collect(),
            })
        })
    }

    fn get(&self, caller: &Caller, namespace: &str, name: &str) -> BackendResult<'_, Link> {
        let api = self.links(caller, namespace);
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            let link = Self::read(&api?, &namespace, &name).await?;
            Ok(convert::to_link(&link, clock::now()))
        })
    }

    fn create(
        &self,
        caller: &Caller,
        namespace: &str,
        link: LinkCreate,
        my_address: Option<IpAddr>,
    ) -> BackendResult<'_, Link> {
        let api = self.links(caller, namespace);
        let (namespace, caller) = (namespace.to_owned(), caller.clone());
        Box::pin(async move {
            let api = api?;
            let now = clock::now();
            let name = link.name.clone();
            let device_link = convert::new_device_link(&namespace, link, my_address, now)?;
            let created = api
                .create(&PostParams::default(), &device_link)
                .await
                .map_err(|e| from_kube(e, &format!("link {namespace}/{name}")))?;
            audit::record(self.clients.own(), &created, "created", &caller.name, None).await;
            tracing::debug!(caller = %caller.name, %namespace, %name, "DeviceLink created");
            Ok(convert::to_link(&created, now))
        })
    }

    fn update(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        patch: LinkPatch,
        my_address: Option<IpAddr>,
        if_match: Precondition,
    ) -> BackendResult<'_, Link> {
        let (caller, namespace, name) = (caller.clone(), namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            self.modify(&caller, &namespace, &name, if_match, move |link, now| {
                let spec = &mut link.spec;
                let mut changes = Changes::new();
                if let Some(ranges) = rules::changed_ranges(
                    patch.allowed_source_ranges,
                    &spec.allowed_source_ranges,
                    my_address,
                )? {
                    changes.push(("acl_changed", Some(ranges.join(","))));
                    spec.allowed_source_ranges = ranges;
                }
                match rules::changed_lifetime(
                    patch.ttl.as_deref(),
                    patch.expires_at.as_deref(),
                    now,
                )? {
                    // A new ttl on an open link counts from now, as on the local backend; the
                    // operator counts a spec ttl from when the link was enabled, so an open
                    // link gets the instant instead.
                    Some(Lifetime::Ttl(ttl)) if spec.enabled => {
                        spec.expires_at = Some(after(now, ttl)?.to_string());
                        spec.ttl = None;
                    }
                    Some(Lifetime::Ttl(ttl)) => {
                        spec.ttl = Some(validate::format_duration(ttl));
                        spec.expires_at = None;
                    }
                    Some(Lifetime::Until(at)) => {
                        spec.expires_at = Some(at.to_string());
                        spec.ttl = None;
                    }
                    None => {}
                }
                if let Some(max) = patch.max_connections {
                    if let Some(n) = max {
                        validate::max_connections("maxConnections", n)?;
                    }
                    spec.max_connections = max;
                }
                if let Some(idle) = patch.idle_timeout {
                    if let Some(d) = &idle {
                        validate::duration("idleTimeout", d)?;
                    }
                    spec.idle_timeout = idle;
                }
                if let Some(description) = patch.description {
                    let annotations = link.metadata.annotations.get_or_insert_with(BTreeMap::new);
                    match description {
                        Some(text) => {
                            validate::description("description", &text)?;
                            annotations.insert(DESCRIPTION_ANNOTATION.to_owned(), text);
                        }
                        None => {
                            annotations.remove(DESCRIPTION_ANNOTATION);
                        }
                    }
                }
                changes.push(("updated", None));
                Ok(changes)
            })
            .await
        })
    }

    fn delete(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        if_match: Precondition,
    ) -> BackendResult<'_, ()> {
        let api = self.links(caller, namespace);
        let (caller, namespace, name) = (caller.clone(), namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            let api = api?;
            let what = format!("link {namespace}/{name}");
            let link = Self::read(&api, &namespace, &name).await?;
            let current = link.resource_version().unwrap_or_default();
            let expected = if_match.filter(|v| v != "*");
            if let Some(expected) = &expected
                && *expected != current
            {
                return Err(ApiError::Conflict { current });
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: expected,
                    uid: link.uid(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(err) => {
                    return Err(match from_kube(err, &what) {
                        ApiError::Conflict { .. } => ApiError::Conflict {
                            current: Self::read(&api, &namespace, &name)
                                .await?
                                .resource_version()
                                .unwrap_or_default(),
                        },
                        other => other,
                    });
                }
            }
            audit::record(self.clients.own(), &link, "deleted", &caller.name, None).await;
            tracing::debug!(caller = %caller.name, %namespace, %name, "DeviceLink deleted");
            Ok(())
        })
    }

    fn set_enabled(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        enabled: bool,
        if_match: Precondition,
    ) -> BackendResult<'_, Link> {
        let (caller, namespace, name) = (caller.clone(), namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            self.modify(&caller, &namespace, &name, if_match, move |link, now| {
                if !enabled {
                    link.spec.enabled = false;
                    return Ok(vec![("disabled", None)]);
                }
                // The operator restarts a ttl when the link is enabled again; a fixed expiry
                // must still lie ahead.
                rules::end_still_ahead(parse_instant(link.spec.expires_at.as_deref()), now)?;
                link.spec.enabled = true;
                let until = link.spec.expires_at.clone().or_else(|| {
                    link.spec
                        .ttl
                        .as_deref()
                        .and_then(|t| validate::duration("ttl", t).ok())
                        .and_then(|ttl| after(now, ttl).ok())
                        .map(|at| at.to_string())
                });
                Ok(vec![("enabled", until.map(|at| format!("until {at}")))])
            })
            .await
        })
    }

    fn extend(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        extend: Extend,
        if_match: Precondition,
    ) -> BackendResult<'_, Link> {
        let (caller, namespace, name) = (caller.clone(), namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            self.modify(&caller, &namespace, &name, if_match, move |link, now| {
                let until = rules::extended_until(&extend, convert::expires_at(link), now)?;
                // The CRD takes exactly one of ttl and expiresAt: the instant replaces the ttl.
                link.spec.expires_at = Some(until.to_string());
                link.spec.ttl = None;
                Ok(vec![("extended", Some(format!("until {until}")))])
            })
            .await
        })
    }

    fn events(&self, caller: &Caller, query: EventQuery) -> BackendResult<'_, EventList> {
        let client = self.caller_client(caller);
        Box::pin(async move {
            if let Some(namespace) = &query.namespace {
                validate::name("namespace", namespace)?;
            }
            Ok(EventList {
                items: audit::list(client?, &query).await?,
            })
        })
    }

    fn sessions(
        &self,
        _caller: &Caller,
        _namespace: &str,
        _name: &str,
    ) -> BackendResult<'_, SessionList> {
        Box::pin(async { Err(sessions_not_reachable()) })
    }

    fn close_session(
        &self,
        _caller: &Caller,
        _namespace: &str,
        _name: &str,
        _id: &str,
    ) -> BackendResult<'_, ()> {
        Box::pin(async { Err(sessions_not_reachable()) })
    }

    fn ready(&self) -> BackendResult<'_, ()> {
        Box::pin(async move {
            self.clients
                .own()
                .apiserver_version()
                .await
                .map(|_| ())
                .map_err(|e| ApiError::Kubernetes(e.to_string()))
        })
    }

    /// The console's own identity may not list DeviceLinks, so it counts none.
    fn count_by_state(&self) -> BackendResult<'_, BTreeMap<LinkState, u64>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }
}

fn sessions_not_reachable() -> ApiError {
    ApiError::NotSupported(
        "a link's sessions on Kubernetes are held by its proxy pod, which the console does not reach; the proxy pod's log has one line per connection (kubectl logs -n devicelink-proxies -l devicelink.io/link=NAME,devicelink.io/link-namespace=NAMESPACE)".to_owned(),
    )
}
