//! The local backend: links in a SQLite file on this host. Every write is one transaction under
//! the one connection's lock, checks the caller's expected version, bumps the version and records
//! an event, so nothing is half-applied and no update is lost.

pub mod db;
pub mod proxy_sync;
pub mod row;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::{
    backend::{Backend, BackendResult, EventQuery, ListQuery, Precondition},
    caller::Caller,
    clock,
    model::{Event, EventList, Extend, Link, LinkCreate, LinkList, LinkPatch, LinkState},
    model::{Session, SessionList},
    problem::ApiError,
    proxy::control::{LinkReport, ProxyControl},
    rules::{self, Lifetime, after, ranges_with},
    validate,
};
use row::{COLUMNS, LinkRow};

#[derive(Clone)]
pub struct LocalBackend {
    conn: Arc<Mutex<Connection>>,
    settings: Arc<LocalSettings>,
}

/// What the proxy last reported, by its link name (`namespace.name`).
pub type ProxyView = Arc<std::sync::RwLock<std::collections::HashMap<String, LinkReport>>>;

#[derive(Clone, Default)]
pub struct LocalSettings {
    /// Ports handed to links created without one; without a range they take the device's port.
    pub port_range: Option<RangeInclusive<u16>>,
    /// The host name or address clients connect to, shown in endpoints and connect commands.
    pub public_host: String,
    /// Filled by the proxy sync; empty without a proxy.
    pub proxy_view: ProxyView,
    /// Woken after every committed change, so the proxy's file is rendered again.
    pub changed: Arc<tokio::sync::Notify>,
    /// The proxy's control socket, for sessions.
    pub control: Option<Arc<dyn ProxyControl>>,
}

/// The link's state with what the proxy last reported about it.
fn state_of(row: &LinkRow, now: Timestamp, settings: &LocalSettings) -> LinkState {
    let name = crate::proxy::config_file::proxy_link_name(&row.namespace, &row.name);
    let view = settings.proxy_view.read().ok();
    row.state_with(now, view.as_ref().and_then(|v| v.get(&name)))
}

fn show(row: &LinkRow, now: Timestamp, settings: &LocalSettings) -> Link {
    let name = crate::proxy::config_file::proxy_link_name(&row.namespace, &row.name);
    let view = settings.proxy_view.read().ok();
    let report = view.as_ref().and_then(|v| v.get(&name));
    row.to_link(now, &settings.public_host, report)
}

impl LocalBackend {
    pub fn new(conn: Connection, settings: LocalSettings) -> Self {
        Self {
            conn: Arc::new(Mutex::new(conn)),
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> Arc<LocalSettings> {
        self.settings.clone()
    }

    /// Every link, for rendering the proxy's file.
    pub fn all_rows(&self) -> BackendResult<'_, Vec<LinkRow>> {
        self.run(|conn, _| {
            let mut statement = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM links ORDER BY namespace, name"
                ))
                .map_err(ApiError::internal)?;
            statement
                .query_map([], LinkRow::from_sql)
                .map_err(ApiError::internal)?
                .collect::<Result<_, _>>()
                .map_err(ApiError::internal)
        })
    }

    /// Records what the proxy reported about a link (`namespace.name`) in its audit trail.
    pub fn record_proxy_event(
        &self,
        proxy_link: String,
        kind: String,
        detail: Option<String>,
    ) -> BackendResult<'_, ()> {
        self.run(move |conn, _| {
            let (namespace, link) = proxy_link
                .split_once('.')
                .map(|(n, l)| (n.to_owned(), l.to_owned()))
                .unwrap_or_else(|| ("default".to_owned(), proxy_link.clone()));
            let tx = conn.transaction().map_err(ApiError::internal)?;
            record(
                &tx,
                clock::now(),
                &namespace,
                &link,
                &kind,
                "proxy",
                detail.as_deref(),
            )?;
            tx.commit().map_err(ApiError::internal)
        })
    }

    /// The shared connection, for token lookups.
    pub fn connection(&self) -> Arc<Mutex<Connection>> {
        self.conn.clone()
    }

    fn run<T, F>(&self, work: F) -> BackendResult<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &LocalSettings) -> Result<T, ApiError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let settings = self.settings.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn
                    .lock()
                    .map_err(|_| ApiError::internal("database lock poisoned"))?;
                work(&mut conn, &settings)
            })
            .await
            .map_err(ApiError::internal)?
        })
    }

    /// Runs `change` on the current row in one transaction: checks `if_match`, writes the result
    /// with the next version, records `events`.
    fn modify<F>(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        if_match: Precondition,
        change: F,
    ) -> BackendResult<'_, Link>
    where
        F: FnOnce(&mut LinkRow, Timestamp) -> Result<Vec<(&'static str, Option<String>)>, ApiError>
            + Send
            + 'static,
    {
        let (actor, namespace, name) = (caller.name.clone(), namespace.to_owned(), name.to_owned());
        self.run(move |conn, settings| {
            let tx = conn.transaction().map_err(ApiError::internal)?;
            let mut row = load(&tx, &namespace, &name)?;
            check_precondition(&row, if_match.as_deref())?;
            let now = clock::now();
            let events = change(&mut row, now)?;
            row.version += 1;
            row.updated_at = now;
            store(&tx, &row, settings)?;
            for (kind, detail) in events {
                record(&tx, now, &namespace, &name, kind, &actor, detail.as_deref())?;
            }
            tx.commit().map_err(ApiError::internal)?;
            settings.changed.notify_one();
            Ok(show(&row, now, settings))
        })
    }
}

fn check_precondition(row: &LinkRow, if_match: Option<&str>) -> Result<(), ApiError> {
    match if_match {
        None | Some("*") => Ok(()),
        Some(expected) if expected == row.version.to_string() => Ok(()),
        Some(_) => Err(ApiError::Conflict {
            current: row.version.to_string(),
        }),
    }
}

fn load(tx: &Transaction<'_>, namespace: &str, name: &str) -> Result<LinkRow, ApiError> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM links WHERE namespace = ?1 AND name = ?2"),
        params![namespace, name],
        LinkRow::from_sql,
    )
    .optional()
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::NotFound(format!("link {namespace}/{name}")))
}

fn store(tx: &Transaction<'_>, row: &LinkRow, _settings: &LocalSettings) -> Result<(), ApiError> {
    tx.execute(
        "UPDATE links SET allowed_source_ranges = ?3, ttl_seconds = ?4, expires_at = ?5, enabled = ?6,
             max_connections = ?7, idle_timeout_seconds = ?8, description = ?9, version = ?10,
             updated_at = ?11, failure = ?12
         WHERE namespace = ?1 AND name = ?2",
        params![
            row.namespace,
            row.name,
            serde_json::to_string(&row.allowed_source_ranges).map_err(ApiError::internal)?,
            row.ttl.map(row::to_seconds),
            row.expires_at.map(|at| at.to_string()),
            row.enabled,
            row.max_connections,
            row.idle_timeout.map(row::to_seconds),
            row.description,
            row.version,
            row.updated_at.to_string(),
            row.failure,
        ],
    )
    .map_err(ApiError::internal)?;
    Ok(())
}

fn record(
    tx: &Transaction<'_>,
    at: Timestamp,
    namespace: &str,
    link: &str,
    kind: &str,
    actor: &str,
    detail: Option<&str>,
) -> Result<(), ApiError> {
    tx.execute(
        "INSERT INTO events (at, namespace, link, kind, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![at.to_string(), namespace, link, kind, actor, detail],
    )
    .map_err(ApiError::internal)?;
    Ok(())
}

fn allocate_port(tx: &Transaction<'_>, range: &RangeInclusive<u16>) -> Result<u16, ApiError> {
    let mut taken = tx
        .prepare("SELECT port FROM links WHERE port BETWEEN ?1 AND ?2 ORDER BY port")
        .map_err(ApiError::internal)?;
    let used: std::collections::BTreeSet<u16> = taken
        .query_map(params![range.start(), range.end()], |row| row.get(0))
        .map_err(ApiError::internal)?
        .collect::<Result<_, _>>()
        .map_err(ApiError::internal)?;
    range
        .clone()
        .find(|port| !used.contains(port))
        .ok_or_else(|| ApiError::Unavailable {
            field: "port".to_owned(),
            problem: format!(
                "is left out and every port of the console's range {}-{} is taken",
                range.start(),
                range.end()
            ),
            fix: "give a port, delete unused links, or widen --port-range".to_owned(),
        })
}

fn port_taken(port: u16) -> ApiError {
    ApiError::Unavailable {
        field: "port".to_owned(),
        problem: format!("{port} is used by another link on this host"),
        fix: "choose another port, or leave it out to be given a free one".to_owned(),
    }
}

impl Backend for LocalBackend {
    fn list(
        &self,
        _caller: &Caller,
        namespace: &str,
        query: ListQuery,
    ) -> BackendResult<'_, LinkList> {
        let namespace = namespace.to_owned();
        self.run(move |conn, settings| {
            let now = clock::now();
            let mut statement = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM links WHERE namespace = ?1 AND name > ?2 ORDER BY name"
                ))
                .map_err(ApiError::internal)?;
            let rows = statement
                .query_map(
                    params![namespace, query.after.unwrap_or_default()],
                    LinkRow::from_sql,
                )
                .map_err(ApiError::internal)?;
            let mut items = Vec::new();
            let mut more = false;
            for row in rows {
                let row = row.map_err(ApiError::internal)?;
                if query
                    .state
                    .is_some_and(|state| state_of(&row, now, settings) != state)
                {
                    continue;
                }
                if items.len() == query.limit {
                    more = true;
                    break;
                }
                items.push(show(&row, now, settings));
            }
            let continue_token = more
                .then(|| items.last().map(|l: &Link| l.name.clone()))
                .flatten();
            Ok(LinkList {
                items,
                continue_token,
            })
        })
    }

    fn get(&self, _caller: &Caller, namespace: &str, name: &str) -> BackendResult<'_, Link> {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        self.run(move |conn, settings| {
            let tx = conn.transaction().map_err(ApiError::internal)?;
            let row = load(&tx, &namespace, &name)?;
            Ok(show(&row, clock::now(), settings))
        })
    }

    fn create(
        &self,
        caller: &Caller,
        namespace: &str,
        link: LinkCreate,
        my_address: Option<IpAddr>,
    ) -> BackendResult<'_, Link> {
        let (actor, namespace) = (caller.name.clone(), namespace.to_owned());
        self.run(move |conn, settings| {
            let now = clock::now();
            validate::name("namespace", &namespace)?;
            validate::name("name", &link.name)?;
            let device_host = validate::host("device.host", &link.device.host)?;
            let device_port = validate::port("device.port", link.device.port)?;
            let port = link.port.map(|p| validate::port("port", p)).transpose()?;
            let allowed_source_ranges =
                ranges_with("allowedSourceRanges", link.allowed_source_ranges, my_address)?;
            let (ttl, expires_at) =
                match rules::lifetime(link.ttl.as_deref(), link.expires_at.as_deref(), now)? {
                    Lifetime::Ttl(ttl) => (Some(ttl), link.enabled.then(|| after(now, ttl)).transpose()?),
                    Lifetime::Until(at) => (None, Some(at)),
                };
            let max_connections = link
                .max_connections
                .map(|n| validate::max_connections("maxConnections", n))
                .transpose()?;
            let idle_timeout = link
                .idle_timeout
                .as_deref()
                .map(|d| validate::duration("idleTimeout", d))
                .transpose()?;
            if let Some(description) = &link.description {
                validate::description("description", description)?;
            }

            let tx = conn.transaction().map_err(ApiError::internal)?;
            tx.execute(
                "INSERT INTO namespaces (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![namespace, now.to_string()],
            )
            .map_err(ApiError::internal)?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM links WHERE namespace = ?1 AND name = ?2)",
                    params![namespace, link.name],
                    |row| row.get(0),
                )
                .map_err(ApiError::internal)?;
            if exists {
                return Err(ApiError::AlreadyExists(format!("link {namespace}/{}", link.name)));
            }
            let port = match (port, &settings.port_range) {
                (Some(port), _) => port,
                (None, Some(range)) => allocate_port(&tx, range)?,
                (None, None) => device_port,
            };
            let row = LinkRow {
                namespace: namespace.clone(),
                name: link.name.clone(),
                device_host,
                device_port,
                port,
                allowed_source_ranges,
                ttl,
                expires_at,
                enabled: link.enabled,
                max_connections,
                idle_timeout,
                description: link.description,
                version: 1,
                created_at: now,
                updated_at: now,
                failure: None,
            };
            let inserted = tx.execute(
                "INSERT INTO links (namespace, name, device_host, device_port, port, allowed_source_ranges,
                     ttl_seconds, expires_at, enabled, max_connections, idle_timeout_seconds, description,
                     version, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    row.namespace,
                    row.name,
                    row.device_host,
                    row.device_port,
                    row.port,
                    serde_json::to_string(&row.allowed_source_ranges).map_err(ApiError::internal)?,
                    row.ttl.map(row::to_seconds),
                    row.expires_at.map(|at| at.to_string()),
                    row.enabled,
                    row.max_connections,
                    row.idle_timeout.map(row::to_seconds),
                    row.description,
                    row.version,
                    now.to_string(),
                    now.to_string(),
                ],
            );
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(port_taken(port));
                }
                Err(e) => return Err(ApiError::internal(e)),
            }
            record(&tx, now, &namespace, &row.name, "created", &actor, None)?;
            tx.commit().map_err(ApiError::internal)?;
            settings.changed.notify_one();
            Ok(show(&row, now, settings))
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
        self.modify(caller, namespace, name, if_match, move |row, now| {
            let mut events = Vec::new();
            if let Some(ranges) = rules::changed_ranges(
                patch.allowed_source_ranges,
                &row.allowed_source_ranges,
                my_address,
            )? {
                events.push(("acl_changed", Some(ranges.join(","))));
                row.allowed_source_ranges = ranges;
            }
            match rules::changed_lifetime(patch.ttl.as_deref(), patch.expires_at.as_deref(), now)? {
                Some(Lifetime::Ttl(ttl)) => {
                    row.ttl = Some(ttl);
                    if row.enabled {
                        row.expires_at = Some(after(now, ttl)?);
                    }
                }
                Some(Lifetime::Until(at)) => {
                    row.ttl = None;
                    row.expires_at = Some(at);
                }
                None => {}
            }
            if let Some(max) = patch.max_connections {
                row.max_connections = max
                    .map(|n| validate::max_connections("maxConnections", n))
                    .transpose()?;
            }
            if let Some(idle) = patch.idle_timeout {
                row.idle_timeout = idle
                    .as_deref()
                    .map(|d| validate::duration("idleTimeout", d))
                    .transpose()?;
            }
            if let Some(description) = patch.description {
                if let Some(text) = &description {
                    validate::description("description", text)?;
                }
                row.description = description;
            }
            events.push(("updated", None));
            Ok(events)
        })
    }

    fn delete(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        if_match: Precondition,
    ) -> BackendResult<'_, ()> {
        let (actor, namespace, name) = (caller.name.clone(), namespace.to_owned(), name.to_owned());
        self.run(move |conn, settings| {
            let tx = conn.transaction().map_err(ApiError::internal)?;
            let row = load(&tx, &namespace, &name)?;
            check_precondition(&row, if_match.as_deref())?;
            tx.execute(
                "DELETE FROM links WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
            )
            .map_err(ApiError::internal)?;
            record(
                &tx,
                clock::now(),
                &namespace,
                &name,
                "deleted",
                &actor,
                None,
            )?;
            tx.commit().map_err(ApiError::internal)?;
            settings.changed.notify_one();
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
        self.modify(caller, namespace, name, if_match, move |row, now| {
            if !enabled {
                row.enabled = false;
                return Ok(vec![("disabled", None)]);
            }
            // Enabling restarts a ttl; a fixed expiry must still lie ahead.
            match row.ttl {
                Some(ttl) => row.expires_at = Some(after(now, ttl)?),
                None => rules::end_still_ahead(row.expires_at, now)?,
            }
            row.enabled = true;
            row.failure = None;
            Ok(vec![(
                "enabled",
                row.expires_at.map(|at| format!("until {at}")),
            )])
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
        self.modify(caller, namespace, name, if_match, move |row, now| {
            let until = rules::extended_until(&extend, row.expires_at, now)?;
            row.expires_at = Some(until);
            Ok(vec![("extended", Some(format!("until {until}")))])
        })
    }

    fn events(&self, _caller: &Caller, query: EventQuery) -> BackendResult<'_, EventList> {
        self.run(move |conn, _| {
            let mut statement = conn
                .prepare(
                    "SELECT seq, at, namespace, link, kind, actor, detail FROM events
                     WHERE seq > ?1 AND (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR link = ?3)
                     ORDER BY seq LIMIT ?4",
                )
                .map_err(ApiError::internal)?;
            let items = statement
                .query_map(
                    params![query.after, query.namespace, query.link, query.limit as i64],
                    |row| {
                        Ok(Event {
                            seq: row.get(0)?,
                            at: row.get(1)?,
                            namespace: row.get(2)?,
                            link: row.get(3)?,
                            kind: row.get(4)?,
                            actor: row.get(5)?,
                            detail: row.get(6)?,
                        })
                    },
                )
                .map_err(ApiError::internal)?
                .collect::<Result<_, _>>()
                .map_err(ApiError::internal)?;
            Ok(EventList { items })
        })
    }

    fn sessions(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
    ) -> BackendResult<'_, SessionList> {
        let (caller, namespace, name) = (caller.clone(), namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            self.get(&caller, &namespace, &name).await?;
            let control = self.settings.control.clone().ok_or_else(|| {
                ApiError::ProxyUnavailable("this console runs without a proxy".to_owned())
            })?;
            let proxy_name = crate::proxy::config_file::proxy_link_name(&namespace, &name);
            let report = control
                .sessions(Some(proxy_name.clone()))
                .await
                .map_err(|e| ApiError::ProxyUnavailable(e.to_string()))?;
            Ok(SessionList {
                items: report
                    .sessions
                    .into_iter()
                    .filter(|s| s.link == proxy_name)
                    .map(|s| Session {
                        id: s.id,
                        client: s.client,
                        since: s.since,
                        bytes_to_device: s.bytes_to_device,
                        bytes_from_device: s.bytes_from_device,
                        data_plane: s.data_plane,
                    })
                    .collect(),
            })
        })
    }

    fn close_session(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        id: &str,
    ) -> BackendResult<'_, ()> {
        let (caller, namespace, name, id) = (
            caller.clone(),
            namespace.to_owned(),
            name.to_owned(),
            id.to_owned(),
        );
        Box::pin(async move {
            let open = self.sessions(&caller, &namespace, &name).await?;
            let Some(session) = open.items.into_iter().find(|s| s.id == id) else {
                return Err(ApiError::NotFound(format!(
                    "session {id} of link {namespace}/{name}"
                )));
            };
            let control = self.settings.control.clone().ok_or_else(|| {
                ApiError::ProxyUnavailable("this console runs without a proxy".to_owned())
            })?;
            let closed = control
                .close_session(id.clone())
                .await
                .map_err(|e| ApiError::ProxyUnavailable(e.to_string()))?;
            if !closed {
                return Err(ApiError::NotFound(format!(
                    "session {id} of link {namespace}/{name}"
                )));
            }
            let (actor, detail) = (caller.name.clone(), format!("client {}", session.client));
            self.run(move |conn, _| {
                let tx = conn.transaction().map_err(ApiError::internal)?;
                record(
                    &tx,
                    clock::now(),
                    &namespace,
                    &name,
                    "session_closed_by_user",
                    &actor,
                    Some(&detail),
                )?;
                tx.commit().map_err(ApiError::internal)
            })
            .await
        })
    }

    fn ready(&self) -> BackendResult<'_, ()> {
        self.run(|conn, _| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(ApiError::internal)
        })
    }

    fn count_by_state(&self) -> BackendResult<'_, BTreeMap<LinkState, u64>> {
        self.run(|conn, settings| {
            let now = clock::now();
            let mut counts: BTreeMap<LinkState, u64> =
                LinkState::ALL.iter().map(|s| (*s, 0)).collect();
            let mut statement = conn
                .prepare(&format!("SELECT {COLUMNS} FROM links"))
                .map_err(ApiError::internal)?;
            for row in statement
                .query_map([], LinkRow::from_sql)
                .map_err(ApiError::internal)?
            {
                *counts
                    .entry(state_of(&row.map_err(ApiError::internal)?, now, settings))
                    .or_default() += 1;
            }
            Ok(counts)
        })
    }
}
