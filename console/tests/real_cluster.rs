//! The Kubernetes backend on a real cluster, run when `KUBECONFIG` points at one with the
//! DeviceLink CRD installed (deploy/crd.yaml); otherwise it prints a SKIPPED banner, never a
//! silent pass. It makes two service accounts in a namespace of its own, one bound to edit
//! DeviceLinks and one to read them, takes a token for each (TokenRequest), and drives the
//! console's API (in this process, acting as each caller) the way a person would: the editor
//! creates, extends, disables and deletes a link; the viewer reads it and is refused a change by
//! RBAC in the API server's words; the trail has the editor's name. With the operator running,
//! the link also turns ready with an endpoint.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode, header},
};
use devicelink_console::{
    api::{self, AppState},
    cluster::{KubeBackend, auth::KubeAuthenticator, clients::Clients},
    metrics::Metrics,
};
use http_body_util::BodyExt;
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use tower::ServiceExt;

const NAMESPACE: &str = "devicelink-console-e2e";

fn announce(message: &str) {
    let banner = "=".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{banner}\n{message}\n{banner}\n");
}

async fn reachable_cluster() -> Option<(kube::Config, Client)> {
    let skip = |why: String| {
        announce(&format!(
            "SKIPPED: the console's real-cluster suite NOT run: {why}.\n\
             Point KUBECONFIG at a cluster with deploy/crd.yaml applied to run it."
        ));
        None
    };
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(error) => return skip(format!("no kubeconfig ({error})")),
    };
    let client = match Client::try_from(config.clone()) {
        Ok(client) => client,
        Err(error) => return skip(format!("no client ({error})")),
    };
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Some((config, client)),
        Ok(Err(error)) => skip(format!("the cluster does not answer ({error})")),
        Err(_) => skip("the cluster did not answer within 10s".to_owned()),
    }
}

fn object<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a well-formed object")
}

/// A service account bound to a Role of `verbs` on DeviceLinks (and reading Events), and a
/// token for it.
async fn account(admin: &Client, name: &str, verbs: &[&str]) -> String {
    let pp = PostParams::default();
    let _ = Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create(&pp, &object(json!({"metadata": {"name": name}})))
        .await;
    let _ = Api::<Role>::namespaced(admin.clone(), NAMESPACE)
        .create(
            &pp,
            &object(json!({
                "metadata": {"name": name},
                "rules": [
                    {"apiGroups": ["devicelink.io"], "resources": ["devicelinks"], "verbs": verbs},
                    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
                ],
            })),
        )
        .await;
    let _ = Api::<RoleBinding>::namespaced(admin.clone(), NAMESPACE)
        .create(
            &pp,
            &object(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
            })),
        )
        .await;
    let request: TokenRequest = object(json!({"spec": {"expirationSeconds": 3600}}));
    let granted: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create_subresource("token", name, &pp, &request)
        .await
        .expect("a token for the service account");
    granted.status.expect("a token").token
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let mut request = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            request.body(Body::from(body.to_string())).unwrap()
        }
        None => request.body(Body::empty()).unwrap(),
    };
    request.extensions_mut().insert(ConnectInfo(
        "198.51.100.20:50000".parse::<SocketAddr>().unwrap(),
    ));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn people_drive_devicelinks_through_the_console_with_their_own_kubernetes_identity() {
    let Some((config, admin)) = reachable_cluster().await else {
        return;
    };
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let _ = namespaces
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": NAMESPACE}})),
        )
        .await;
    let editor = account(
        &admin,
        "link-editor",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    )
    .await;
    let viewer = account(&admin, "link-viewer", &["get", "list", "watch"]).await;

    let clients = Arc::new(Clients::new(config).unwrap());
    let app = api::router(AppState {
        authenticator: Arc::new(KubeAuthenticator::new(clients.clone())),
        backend: Arc::new(KubeBackend::new(clients)),
        metrics: Arc::new(Metrics::default()),
        trusted_proxies: Arc::new(vec![]),
        tokens: None,
    });
    let links = format!("/api/v1/namespaces/{NAMESPACE}/links");
    let link = format!("{links}/e2e-ssh");

    let (status, created) = call(
        &app,
        Method::POST,
        &links,
        &editor,
        Some(json!({
            "name": "e2e-ssh", "device": {"host": "10.96.0.10", "port": 22},
            "allowedSourceRanges": ["203.0.113.0/24"], "ttl": "10m",
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let (status, read) = call(&app, Method::GET, &link, &viewer, None).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    let (status, refused) = call(
        &app,
        Method::POST,
        &format!("{link}/disable"),
        &viewer,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or("")
            .contains("link-viewer"),
        "RBAC's refusal names the caller: {refused}"
    );

    let (status, extended) = call(
        &app,
        Method::POST,
        &format!("{link}/extend"),
        &editor,
        Some(json!({"by": "1h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{extended}");

    // With the operator installed the link opens; without it the phase stays empty (pending).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, shown) = call(&app, Method::GET, &link, &viewer, None).await;
        if shown["status"]["state"] == "ready" {
            assert!(shown["status"]["endpoint"].is_string(), "{shown}");
            break;
        }
        if Instant::now() > deadline {
            announce(
                "the link did not turn ready within 120 s: is the operator running with a load balancer?",
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let (status, disabled) = call(
        &app,
        Method::POST,
        &format!("{link}/disable"),
        &editor,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{disabled}");
    let (status, events) = call(&app, Method::GET, &format!("{link}/events"), &editor, None).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert!(
        events.to_string().contains("link-editor"),
        "the trail names the editor: {events}"
    );
    let (status, _) = call(&app, Method::DELETE, &link, &editor, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let _ = namespaces.delete(NAMESPACE, &DeleteParams::default()).await;
}
