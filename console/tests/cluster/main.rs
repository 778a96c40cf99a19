//! The Kubernetes backend against an API server that answers as the real one does (over real
//! HTTP on loopback): each caller's own token reaches the API server, RBAC's refusals reach the
//! caller in its own words, versions and conflicts are the server's, and the audit trail is
//! the DeviceLink's Events.

mod apiserver;
#[path = "../common/mod.rs"]
mod common;

use std::{net::SocketAddr, sync::Arc};

use apiserver::{ApiServer, Grant, User};
use axum::{
    Router,
    http::{Method, StatusCode},
};
use common::router::call;
use devicelink_console::{
    api::{self, AppState},
    cluster::{KubeBackend, auth::KubeAuthenticator, clients::Clients},
    metrics::Metrics,
};
use serde_json::{Value, json};

const ALICE: &str = "token-of-alice";
const BOB: &str = "token-of-bob";
const CONSOLE_SA: &str = "token-of-the-console";
const LINKS: &str = "/api/v1/namespaces/plant-a/links";

/// alice edits links in plant-a; bob only reads them; the console's own account may only
/// record Events.
async fn cluster() -> (ApiServer, Router) {
    let server = ApiServer::start(vec![
        (
            ALICE,
            User {
                name: "alice@example.com",
                grants: vec![
                    Grant {
                        namespace: "plant-a",
                        resource: "devicelinks",
                        verbs: &["*"],
                    },
                    Grant {
                        namespace: "plant-a",
                        resource: "events",
                        verbs: &["list"],
                    },
                ],
            },
        ),
        (
            BOB,
            User {
                name: "bob@example.com",
                grants: vec![Grant {
                    namespace: "plant-a",
                    resource: "devicelinks",
                    verbs: &["get", "list"],
                }],
            },
        ),
        (
            CONSOLE_SA,
            User {
                name: "system:serviceaccount:devicelink-system:devicelink-console",
                grants: vec![Grant {
                    namespace: "*",
                    resource: "events",
                    verbs: &["create"],
                }],
            },
        ),
    ])
    .await;
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.auth_info.token = Some(CONSOLE_SA.to_owned().into());
    let clients = Arc::new(Clients::new(config).unwrap());
    let state = AppState {
        authenticator: Arc::new(KubeAuthenticator::new(clients.clone())),
        backend: Arc::new(KubeBackend::new(clients)),
        metrics: Arc::new(Metrics::default()),
        trusted_proxies: Arc::new(vec![]),
        tokens: None,
    };
    (server, api::router(state))
}

fn pump() -> Value {
    json!({
        "name": "pump-17-ssh",
        "device": {"host": "10.20.30.40", "port": 22},
        "allowedSourceRanges": ["203.0.113.0/24"],
        "allowMyAddress": true,
        "ttl": "2h",
        "description": "pump 17, north field",
    })
}

#[tokio::test]
async fn a_link_created_through_the_console_is_a_devicelink_written_as_the_caller() {
    let (server, app) = cluster().await;
    let created = call(&app, Method::POST, LINKS, Some(ALICE), Some(pump()), &[]).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["status"]["state"], "pending");

    // The resource carries the DeviceLink's own fields; "allow my address" added the caller's.
    let stored = server.link("plant-a", "pump-17-ssh").unwrap();
    assert_eq!(
        stored["spec"]["device"],
        json!({"host": "10.20.30.40", "port": 22})
    );
    assert_eq!(
        stored["spec"]["allowedSourceRanges"],
        json!(["203.0.113.0/24", "10.0.0.1/32"])
    );
    assert_eq!(stored["spec"]["ttl"], "2h");
    assert_eq!(
        stored["metadata"]["annotations"]["devicelink.io/description"],
        "pump 17, north field"
    );

    // The API server saw alice create it; the console's own account never touched a DeviceLink.
    let calls = server.calls();
    assert!(calls.iter().any(|c| c.user == "alice@example.com"
        && c.verb == "create"
        && c.resource == "devicelinks"));
    assert!(
        calls
            .iter()
            .filter(|c| c.resource == "devicelinks")
            .all(|c| !c.user.starts_with("system:serviceaccount")),
        "{calls:?}"
    );

    // The trail: an Event on the DeviceLink naming alice, read back with her own rights.
    let events = call(
        &app,
        Method::GET,
        &format!("{LINKS}/pump-17-ssh/events"),
        Some(ALICE),
        None,
        &[],
    )
    .await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.text);
    assert_eq!(events.body["items"][0]["kind"], "created");
    assert_eq!(events.body["items"][0]["actor"], "alice@example.com");
    let recorded = server.events();
    assert_eq!(recorded[0]["involvedObject"]["kind"], "DeviceLink");
    assert_eq!(recorded[0]["reason"], "Created");

    // The operator reports it open: the console shows ready, the endpoint and what to paste.
    server.set_status(
        "plant-a",
        "pump-17-ssh",
        json!({"phase": "Active", "endpoint": "192.0.2.10:22",
               "expiresAt": "2099-01-01T00:00:00Z"}),
    );
    let shown = call(
        &app,
        Method::GET,
        &format!("{LINKS}/pump-17-ssh"),
        Some(BOB),
        None,
        &[],
    )
    .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    assert_eq!(shown.body["status"]["state"], "ready");
    assert_eq!(shown.body["status"]["endpoint"], "192.0.2.10:22");
    assert_eq!(
        shown.body["status"]["connect"]["ssh"],
        "ssh -p 22 USER@192.0.2.10"
    );
    assert_eq!(shown.body["description"], "pump 17, north field");

    // A second link of the same name is the API server's AlreadyExists.
    let again = call(&app, Method::POST, LINKS, Some(ALICE), Some(pump()), &[]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
}

#[tokio::test]
async fn rbac_decides_and_its_refusal_reaches_the_caller_naming_them() {
    let (server, app) = cluster().await;
    call(&app, Method::POST, LINKS, Some(ALICE), Some(pump()), &[]).await;
    let link = format!("{LINKS}/pump-17-ssh");

    // bob may read ...
    let list = call(&app, Method::GET, LINKS, Some(BOB), None, &[]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["items"][0]["name"], "pump-17-ssh");
    // ... but not change, and the API server's words say who and what.
    for (method, uri, body) in [
        (Method::POST, format!("{link}/disable"), None),
        (
            Method::POST,
            format!("{link}/extend"),
            Some(json!({"by": "1h"})),
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(json!({"description": "x"})),
        ),
        (Method::DELETE, link.clone(), None),
        (
            Method::POST,
            LINKS.to_owned(),
            Some(
                json!({"name": "other", "device": {"host": "10.0.0.1", "port": 22}, "allowedSourceRanges": ["203.0.113.0/24"], "ttl": "1h"}),
            ),
        ),
    ] {
        let refused = call(&app, method.clone(), &uri, Some(BOB), body, &[]).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            refused.text
        );
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(
            detail.contains("User \"bob@example.com\" cannot"),
            "{detail}"
        );
    }
    // alice's rights end at her namespace.
    let elsewhere = call(
        &app,
        Method::GET,
        "/api/v1/namespaces/plant-b/links",
        Some(ALICE),
        None,
        &[],
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::FORBIDDEN);
    assert!(
        elsewhere.text.contains("in the namespace \\\"plant-b\\\""),
        "{}",
        elsewhere.text
    );

    // A token the API server does not know is 401, before any DeviceLink call is made.
    let before = server.calls().len();
    let stranger = call(&app, Method::GET, LINKS, Some("forged"), None, &[]).await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.calls().len(), before);
    let nobody = call(&app, Method::GET, LINKS, None, None, &[]).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);

    // Nothing bob tried changed the link.
    let stored = server.link("plant-a", "pump-17-ssh").unwrap();
    assert_eq!(stored["spec"]["enabled"], true);
    assert_eq!(stored["spec"]["ttl"], "2h");
}

#[tokio::test]
async fn a_write_over_a_change_not_seen_is_409_with_the_current_version_and_changes_nothing() {
    let (server, app) = cluster().await;
    let created = call(&app, Method::POST, LINKS, Some(ALICE), Some(pump()), &[]).await;
    let read = created.etag.clone().unwrap();
    let link = format!("{LINKS}/pump-17-ssh");

    // Someone else (kubectl, the operator) writes after alice read.
    let now = server.edit_spec("plant-a", "pump-17-ssh", |spec| {
        spec["allowedSourceRanges"] = json!(["192.0.2.0/24"]);
    });
    let stale = call(
        &app,
        Method::PATCH,
        &link,
        Some(ALICE),
        Some(json!({"allowedSourceRanges": ["203.0.113.0/24"]})),
        &[("if-match", &read)],
    )
    .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text);
    assert_eq!(stale.body["currentVersion"], now.as_str());
    assert_eq!(
        server.link("plant-a", "pump-17-ssh").unwrap()["spec"]["allowedSourceRanges"],
        json!(["192.0.2.0/24"])
    );
    let stale_delete = call(
        &app,
        Method::DELETE,
        &link,
        Some(ALICE),
        None,
        &[("if-match", &read)],
    )
    .await;
    assert_eq!(stale_delete.status, StatusCode::CONFLICT);
    assert!(server.link("plant-a", "pump-17-ssh").is_some());

    // With the version now current, the write goes through and the server's version moves.
    let current = format!("\"{now}\"");
    let fresh = call(
        &app,
        Method::PATCH,
        &link,
        Some(ALICE),
        Some(json!({"allowedSourceRanges": ["203.0.113.0/24", "192.0.2.0/24"]})),
        &[("if-match", &current)],
    )
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.text);
    assert_ne!(fresh.body["version"], now.as_str());
    let deleted = call(&app, Method::DELETE, &link, Some(ALICE), None, &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let gone = call(&app, Method::GET, &link, Some(ALICE), None, &[]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn extend_disable_and_enable_write_the_spec_the_operator_acts_on_and_leave_events() {
    let (server, app) = cluster().await;
    call(&app, Method::POST, LINKS, Some(ALICE), Some(pump()), &[]).await;
    let link = format!("{LINKS}/pump-17-ssh");
    // The operator opened it at 10:00 with the 2h ttl.
    server.set_status(
        "plant-a",
        "pump-17-ssh",
        json!({"phase": "Active", "endpoint": "192.0.2.10:22",
               "enabledAt": "2099-01-01T10:00:00Z", "expiresAt": "2099-01-01T12:00:00Z"}),
    );

    // Extending by 1h counts from the operator's end, and the instant replaces the ttl.
    let extended = call(
        &app,
        Method::POST,
        &format!("{link}/extend"),
        Some(ALICE),
        Some(json!({"by": "1h"})),
        &[],
    )
    .await;
    assert_eq!(extended.status, StatusCode::OK, "{}", extended.text);
    let spec = server.link("plant-a", "pump-17-ssh").unwrap()["spec"].clone();
    assert_eq!(spec["expiresAt"], "2099-01-01T13:00:00Z");
    assert!(spec.get("ttl").is_none(), "{spec}");

    // A bad duration names the field; the link is unchanged.
    let bad = call(
        &app,
        Method::POST,
        &format!("{link}/extend"),
        Some(ALICE),
        Some(json!({"by": "soon"})),
        &[],
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(bad.body["field"], "by");
    assert_eq!(server.link("plant-a", "pump-17-ssh").unwrap()["spec"], spec);

    let disabled = call(
        &app,
        Method::POST,
        &format!("{link}/disable"),
        Some(ALICE),
        None,
        &[],
    )
    .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert_eq!(
        server.link("plant-a", "pump-17-ssh").unwrap()["spec"]["enabled"],
        false
    );
    let enabled = call(
        &app,
        Method::POST,
        &format!("{link}/enable"),
        Some(ALICE),
        None,
        &[],
    )
    .await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.text);
    assert_eq!(
        server.link("plant-a", "pump-17-ssh").unwrap()["spec"]["enabled"],
        true
    );

    let events = call(
        &app,
        Method::GET,
        &format!("{link}/events"),
        Some(ALICE),
        None,
        &[],
    )
    .await;
    let kinds: Vec<&str> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "extended", "disabled", "enabled"]);
    assert!(
        events.body["items"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("2099-01-01T13:00:00Z")
    );
}

#[tokio::test]
async fn sessions_say_where_they_are_and_probes_answer() {
    let (_server, app) = cluster().await;
    call(&app, Method::POST, LINKS, Some(ALICE), Some(pump()), &[]).await;
    let sessions = call(
        &app,
        Method::GET,
        &format!("{LINKS}/pump-17-ssh/sessions"),
        Some(ALICE),
        None,
        &[],
    )
    .await;
    assert_eq!(
        sessions.status,
        StatusCode::NOT_IMPLEMENTED,
        "{}",
        sessions.text
    );
    assert!(sessions.text.contains("proxy pod"), "{}", sessions.text);
    let ready = call(&app, Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    let tokens = call(&app, Method::GET, "/api/v1/tokens", Some(ALICE), None, &[]).await;
    assert_eq!(tokens.status, StatusCode::NOT_FOUND, "{}", tokens.text);
}

/// One HTTP request to the console binary on loopback: `(status, JSON body or Null)`.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let authorization = format!("Bearer {token}");
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = body.map(Value::to_string);
    match devicelink_testbed::http::request(addr, method, path, &headers, body.as_deref()) {
        Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_binary_serves_the_cluster_its_kubeconfig_names() {
    let (server, _) = cluster().await;
    let dir = std::env::temp_dir().join(format!("devicelink-console-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: console, user: {{token: {CONSOLE_SA}}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: console}}}}]\n",
            server.url()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_devicelink-console"))
        .args([
            "serve",
            "--backend",
            "kubernetes",
            "--listen",
            &addr.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .spawn()
        .unwrap();
    let up = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while http(addr, "GET", "/readyz", "", None).0 != 200 {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        true
    })
    .await
    .unwrap();
    assert!(
        up,
        "the console did not become ready against the API server"
    );
    let (status, body) =
        tokio::task::spawn_blocking(move || http(addr, "POST", LINKS, ALICE, Some(&pump())))
            .await
            .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 201, "{body}");
    assert!(server.link("plant-a", "pump-17-ssh").is_some());
    assert!(
        server
            .calls()
            .iter()
            .any(|c| c.user == "alice@example.com" && c.verb == "create")
    );
}
