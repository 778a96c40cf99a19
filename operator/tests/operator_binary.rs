//! The `devicelink-operator run` binary against a fake API server on loopback: it refuses to
//! start without the CRD, and otherwise takes the Lease, serves its endpoints, and on SIGTERM
//! stops and releases the Lease.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct FakeApi {
    crd_installed: bool,
    lease: Arc<Mutex<Option<Value>>>,
    lease_writes: Arc<Mutex<Vec<Value>>>,
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn not_found(message: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": message, "details": {}}),
    )
}

async fn answer(State(api): State<FakeApi>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let watching = request
        .uri()
        .query()
        .unwrap_or_default()
        .contains("watch=true");
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let lease_path =
        "/apis/coordination.k8s.io/v1/namespaces/devicelink-system/leases/devicelink-operator";
    let list_kind = match path.as_str() {
        "/apis/devicelink.io/v1alpha1/devicelinks" if !api.crd_installed => {
            return not_found("the server could not find the requested resource");
        }
        "/apis/devicelink.io/v1alpha1/devicelinks" => Some("DeviceLinkList"),
        "/api/v1/services" => Some("ServiceList"),
        "/apis/apps/v1/deployments" => Some("DeploymentList"),
        _ => None,
    };
    if let Some(kind) = list_kind {
        if watching {
            // A watch that stays open with nothing to report.
            return Response::new(Body::from_stream(futures::stream::pending::<
                Result<Bytes, std::io::Error>,
            >()));
        }
        return json_response(
            StatusCode::OK,
            json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}),
        );
    }
    let mut lease = api.lease.lock().unwrap();
    match (method, path.as_str()) {
        (Method::GET, p) if p == lease_path => match lease.clone() {
            Some(current) => json_response(StatusCode::OK, current),
            None => not_found("leases.coordination.k8s.io \"devicelink-operator\" not found"),
        },
        (Method::POST, "/apis/coordination.k8s.io/v1/namespaces/devicelink-system/leases") => {
            let mut created: Value = serde_json::from_slice(&body).unwrap();
            created["metadata"]["resourceVersion"] = json!("10");
            api.lease_writes.lock().unwrap().push(created.clone());
            *lease = Some(created.clone());
            json_response(StatusCode::CREATED, created)
        }
        (Method::PUT, p) if p == lease_path => {
            let mut replaced: Value = serde_json::from_slice(&body).unwrap();
            let version: u64 = replaced["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            replaced["metadata"]["resourceVersion"] = json!((version + 1).to_string());
            api.lease_writes.lock().unwrap().push(replaced.clone());
            *lease = Some(replaced.clone());
            json_response(StatusCode::OK, replaced)
        }
        (method, path) => json_response(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "message": format!("fake API: no {method} {path}")}),
        ),
    }
}

/// Serves `api` on a loopback port; returns a kubeconfig pointing at it.
async fn serve(api: FakeApi) -> std::path::PathBuf {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new().fallback(answer).with_state(api);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-api-{}", address.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{server: 'http://{address}'}}\n  name: fake\ncontexts:\n- context: {{cluster: fake, user: u, namespace: default}}\n  name: fake\ncurrent-context: fake\nusers:\n- name: u\n  user: {{token: t}}\n"
        ),
    )
    .unwrap();
    kubeconfig
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn operator(kubeconfig: &std::path::Path, http: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_devicelink-operator"));
    command
        .args([
            "run",
            "--http-addr",
            &http.to_string(),
            "--identity",
            "replica-test",
            "--lease-namespace",
            "devicelink-system",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn refuses_to_start_without_the_crd_and_says_how_to_install_it() {
    let kubeconfig = serve(FakeApi::default()).await;
    let output =
        tokio::task::spawn_blocking(move || operator(&kubeconfig, free_port()).output().unwrap())
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("kubectl apply -f deploy/crd.yaml"),
        "{stderr}"
    );
}

async fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

#[tokio::test]
async fn leads_serves_its_endpoints_and_releases_the_lease_on_sigterm() {
    let api = FakeApi {
        crd_installed: true,
        ..FakeApi::default()
    };
    let kubeconfig = serve(api.clone()).await;
    let http = free_port();
    let mut child = operator(&kubeconfig, http).spawn().unwrap();

    let start = Instant::now();
    let metrics = loop {
        if let Some(text) = http_get(http, "/metrics").await
            && text.contains("devicelink_operator_leader 1")
            // The links gauge appears once the controller (started right after winning) runs.
            && text.contains("devicelink_operator_links{")
        {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the operator did not come up leading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("devicelink_operator_links{phase=\"Active\"} 0"),
        "{metrics}"
    );
    assert!(
        http_get(http, "/healthz")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(http, "/readyz")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let holder = api.lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"].clone();
    assert_eq!(
        holder, "replica-test",
        "created the Lease after its GET found none (404 then 201)"
    );

    // SIGTERM, as Kubernetes stops a pod.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
    .expect("the operator stops within 10s of SIGTERM");
    assert!(
        exited.success(),
        "a requested stop is a clean exit: {exited:?}"
    );
    let released = api.lease.lock().unwrap().clone().unwrap();
    assert!(
        released["spec"]["holderIdentity"].is_null(),
        "the Lease is released: {released}"
    );
}
