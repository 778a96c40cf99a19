//! A Kubernetes API server for tests, over real HTTP on loopback, answering as the real one
//! does for what the console uses: bearer-token authentication (401 `Status`), RBAC per user,
//! verb and namespace (403 `Status` in the API server's words), DeviceLinks with
//! resourceVersions (409 on a stale write or an existing name, preconditions on delete), core
//! Events with field selectors, SelfSubjectReview and `/version`. It records who made each
//! call, so a test can show the console acted as the caller.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

const GROUP: &str = "devicelink.io";
const RESOURCE: &str = "devicelinks";

/// What a user may do: verbs on a resource in a namespace (`*` for every namespace).
#[derive(Clone, Debug)]
pub struct Grant {
    pub namespace: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: &'static str,
    pub grants: Vec<Grant>,
}

/// One call the server answered: who made it, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
}

#[derive(Default)]
struct Store {
    revision: u64,
    links: BTreeMap<(String, String), Value>,
    events: Vec<Value>,
    calls: Vec<Call>,
}

#[derive(Clone)]
pub struct ApiServer {
    users: Arc<HashMap<String, User>>,
    store: Arc<Mutex<Store>>,
    pub addr: SocketAddr,
}

fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "details": details, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap()
        .to_string()
}

impl ApiServer {
    /// Serves on a free loopback port until the test's runtime ends.
    pub async fn start(users: Vec<(&'static str, User)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            users: Arc::new(
                users
                    .into_iter()
                    .map(|(token, user)| (token.to_owned(), user))
                    .collect(),
            ),
            store: Arc::default(),
            addr: listener.local_addr().unwrap(),
        };
        let app = Router::new()
            .route("/version", get(version))
            .route(
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                post(self_subject_review),
            )
            .route(
                "/apis/devicelink.io/v1alpha1/namespaces/{ns}/devicelinks",
                get(list_links).post(create_link),
            )
            .route(
                "/apis/devicelink.io/v1alpha1/namespaces/{ns}/devicelinks/{name}",
                get(get_link).put(replace_link).delete(delete_link),
            )
            .route(
                "/api/v1/namespaces/{ns}/events",
                get(list_events_in).post(create_event),
            )
            .route("/api/v1/events", get(list_events_all))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.store.lock().unwrap().calls.clone()
    }

    /// The stored DeviceLink, as `kubectl get -o json` would show it.
    pub fn link(&self, namespace: &str, name: &str) -> Option<Value> {
        let store = self.store.lock().unwrap();
        store
            .links
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Writes the status subresource, as the operator would; returns the new resourceVersion.
    pub fn set_status(&self, namespace: &str, name: &str, status: Value) -> String {
        let mut store = self.store.lock().unwrap();
        store.revision += 1;
        let revision = store.revision.to_string();
        let link = store
            .links
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .expect("a stored link");
        link["status"] = status;
        link["metadata"]["resourceVersion"] = json!(revision);
        revision
    }

    /// Another client's write to the spec; returns the new resourceVersion.
    pub fn edit_spec(&self, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut store = self.store.lock().unwrap();
        store.revision += 1;
        let revision = store.revision.to_string();
        let link = store
            .links
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .expect("a stored link");
        edit(&mut link["spec"]);
        link["metadata"]["resourceVersion"] = json!(revision);
        revision
    }

    pub fn events(&self) -> Vec<Value> {
        self.store.lock().unwrap().events.clone()
    }

    /// Authenticates and authorises one call, recording it; the refusal is the API server's.
    fn authorize(
        &self,
        headers: &HeaderMap,
        verb: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<User, Box<Response>> {
        let user = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| self.users.get(token))
            .cloned()
            .ok_or_else(|| {
                Box::new(status(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Unauthorized".to_owned(),
                    json!({}),
                ))
            })?;
        self.store.lock().unwrap().calls.push(Call {
            user: user.name.to_owned(),
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
        });
        let allowed = user.grants.iter().any(|g| {
            (g.namespace == "*" || g.namespace == namespace)
                && g.resource == resource
                && (g.verbs.contains(&verb) || g.verbs.contains(&"*"))
        });
        if allowed {
            return Ok(user);
        }
        let (group, qualified) = if resource == RESOURCE {
            (GROUP, format!("{RESOURCE}.{GROUP}"))
        } else {
            ("", resource.to_owned())
        };
        let object = match name {
            Some(name) => format!("{qualified} \"{name}\""),
            None => qualified,
        };
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        Err(Box::new(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{object} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}",
                user.name
            ),
            json!({"name": name.unwrap_or(""), "group": group, "kind": resource}),
        )))
    }
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64",
    }))
}

async fn self_subject_review(State(server): State<ApiServer>, headers: HeaderMap) -> Response {
    // Every authenticated user may review themselves (system:basic-user).
    let user = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| server.users.get(token))
    {
        Some(user) => user.clone(),
        None => {
            return status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized".to_owned(),
                json!({}),
            );
        }
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "status": {"userInfo": {"username": user.name, "groups": ["system:authenticated"]}},
        })),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{RESOURCE}.{GROUP} \"{name}\" not found"),
        json!({"name": name, "group": GROUP, "kind": RESOURCE}),
    )
}

fn conflict(name: &str, message: String) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        message,
        json!({"name": name, "group": GROUP, "kind": RESOURCE}),
    )
}

async fn list_links(
    State(server): State<ApiServer>,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "list", RESOURCE, &ns, None) {
        return *refused;
    }
    let store = server.store.lock().unwrap();
    let items: Vec<Value> = store
        .links
        .iter()
        .filter(|((n, _), _)| *n == ns)
        .map(|(_, v)| v.clone())
        .collect();
    Json(json!({
        "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLinkList",
        "metadata": {"resourceVersion": store.revision.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn get_link(
    State(server): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "get", RESOURCE, &ns, Some(&name)) {
        return *refused;
    }
    match server.link(&ns, &name) {
        Some(link) => Json(link).into_response(),
        None => not_found(&name),
    }
}

async fn create_link(
    State(server): State<ApiServer>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut link: Value = serde_json::from_slice(&body).unwrap();
    let name = link["metadata"]["name"].as_str().unwrap_or("").to_owned();
    if let Err(refused) = server.authorize(&headers, "create", RESOURCE, &ns, Some(&name)) {
        return *refused;
    }
    let mut store = server.store.lock().unwrap();
    let key = (ns.clone(), name.clone());
    if store.links.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{RESOURCE}.{GROUP} \"{name}\" already exists"),
            json!({"name": name, "group": GROUP, "kind": RESOURCE}),
        );
    }
    store.revision += 1;
    let metadata = &mut link["metadata"];
    metadata["namespace"] = json!(ns);
    metadata["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", store.revision));
    metadata["resourceVersion"] = json!(store.revision.to_string());
    metadata["generation"] = json!(1);
    metadata["creationTimestamp"] = json!(now());
    // The status subresource: a create's status is dropped.
    link.as_object_mut().unwrap().remove("status");
    store.links.insert(key, link.clone());
    (StatusCode::CREATED, Json(link)).into_response()
}

async fn replace_link(
    State(server): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "update", RESOURCE, &ns, Some(&name)) {
        return *refused;
    }
    let mut link: Value = serde_json::from_slice(&body).unwrap();
    let mut store = server.store.lock().unwrap();
    let key = (ns.clone(), name.clone());
    let Some(stored) = store.links.get(&key).cloned() else {
        return not_found(&name);
    };
    if link["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
        return conflict(
            &name,
            format!(
                "Operation cannot be fulfilled on {RESOURCE}.{GROUP} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    store.revision += 1;
    let generation = stored["metadata"]["generation"].as_i64().unwrap_or(1)
        + i64::from(link["spec"] != stored["spec"]);
    for kept in ["uid", "creationTimestamp", "namespace"] {
        link["metadata"][kept] = stored["metadata"][kept].clone();
    }
    link["metadata"]["generation"] = json!(generation);
    link["metadata"]["resourceVersion"] = json!(store.revision.to_string());
    // The status subresource: the main resource's writes keep the stored status.
    match stored.get("status") {
        Some(status) => link["status"] = status.clone(),
        None => {
            link.as_object_mut().unwrap().remove("status");
        }
    }
    store.links.insert(key, link.clone());
    Json(link).into_response()
}

async fn delete_link(
    State(server): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "delete", RESOURCE, &ns, Some(&name)) {
        return *refused;
    }
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut store = server.store.lock().unwrap();
    let key = (ns.clone(), name.clone());
    let Some(stored) = store.links.get(&key).cloned() else {
        return not_found(&name);
    };
    let wanted = &options["preconditions"]["resourceVersion"];
    if let Some(wanted) = wanted.as_str()
        && Some(wanted) != stored["metadata"]["resourceVersion"].as_str()
    {
        return conflict(
            &name,
            format!(
                "Precondition failed: ResourceVersion in precondition: {wanted}, ResourceVersion in object meta: {}",
                stored["metadata"]["resourceVersion"].as_str().unwrap_or("")
            ),
        );
    }
    store.revision += 1;
    store.links.remove(&key);
    Json(stored).into_response()
}

async fn create_event(
    State(server): State<ApiServer>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "create", "events", &ns, None) {
        return *refused;
    }
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    let mut store = server.store.lock().unwrap();
    store.revision += 1;
    event["metadata"]["resourceVersion"] = json!(store.revision.to_string());
    event["metadata"]["namespace"] = json!(ns);
    store.events.push(event.clone());
    (StatusCode::CREATED, Json(event)).into_response()
}

fn selected(event: &Value, selector: Option<&String>) -> bool {
    selector.is_none_or(|selector| {
        selector.split(',').all(|term| match term.split_once('=') {
            Some((field, wanted)) => {
                let path = field.strip_prefix("involvedObject.").unwrap_or(field);
                event["involvedObject"][path].as_str() == Some(wanted)
            }
            None => true,
        })
    })
}

fn event_list(server: &ApiServer, ns: Option<&str>, query: &HashMap<String, String>) -> Response {
    let store = server.store.lock().unwrap();
    let items: Vec<Value> = store
        .events
        .iter()
        .filter(|e| ns.is_none_or(|ns| e["metadata"]["namespace"] == ns))
        .filter(|e| selected(e, query.get("fieldSelector")))
        .cloned()
        .collect();
    Json(json!({
        "apiVersion": "v1", "kind": "EventList",
        "metadata": {"resourceVersion": store.revision.to_string()}, "items": items,
    }))
    .into_response()
}

async fn list_events_in(
    State(server): State<ApiServer>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "list", "events", &ns, None) {
        return *refused;
    }
    event_list(&server, Some(&ns), &query)
}

async fn list_events_all(
    State(server): State<ApiServer>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = server.authorize(&headers, "list", "events", "", None) {
        return *refused;
    }
    event_list(&server, None, &query)
}
