//! The CLI's argument handling, and its API conversations against kube's mock service
//! answering as the API server would (404 then 201, merge patches, lists, pod proxy).

use std::time::Duration;

use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use super::{Cli, CliError, Command, Exit, OutputFormat, Session, session::Progress};
use crate::clock::Clock;

const NOW: &str = "2026-11-25T09:00:00Z";

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("devicelink").chain(args.iter().copied()))
}

fn open_args(args: &[&str]) -> super::OpenArgs {
    match parse(args).expect("valid command line").command {
        Command::Open(open) => open,
        other => panic!("expected open, got {other:?}"),
    }
}

#[test]
fn open_parses_device_duration_and_sources() {
    let cli = parse(&[
        "-n",
        "plant-a",
        "-o",
        "json",
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
        "--allow",
        "2001:db8::/32",
        "--port",
        "2222",
    ])
    .unwrap();
    assert_eq!(cli.namespace.as_deref(), Some("plant-a"));
    assert_eq!(cli.output, OutputFormat::Json);
    let Command::Open(open) = cli.command else {
        panic!("open")
    };
    assert_eq!(open.device, ("10.20.30.40".to_owned(), 22));
    assert_eq!(open.duration, Duration::from_secs(7200));
    assert_eq!(open.allow.len(), 2);
    assert_eq!(open.port, Some(2222));
    assert_eq!(open.timeout, Duration::from_secs(300), "default --timeout");
    let v6 = open_args(&[
        "open",
        "x",
        "--device",
        "[2001:db8::7]:5900",
        "--for",
        "1h30m",
        "--allow-my-ip",
    ]);
    assert_eq!(v6.device, ("2001:db8::7".to_owned(), 5900));
    assert!(v6.allow_my_ip);
}

#[test]
fn bad_arguments_say_what_to_write_instead() {
    for (args, expected) in [
        (
            vec!["open", "x", "--device", "10.0.0.1", "--for", "2h"],
            "has no port",
        ),
        (
            vec!["open", "x", "--device", "2001:db8::7:22", "--for", "2h"],
            "[2001:db8::7]:22",
        ),
        (
            vec!["open", "x", "--device", "h:0", "--for", "2h"],
            "1 to 65535",
        ),
        (
            vec!["open", "x", "--device", "h:22", "--for", "two hours"],
            "e.g. 2h",
        ),
        (
            vec![
                "open",
                "x",
                "--device",
                "h:22",
                "--for",
                "2h",
                "--allow",
                "203.0.113.9",
            ],
            "203.0.113.9/32",
        ),
        (
            vec![
                "open",
                "x",
                "--device",
                "h:22",
                "--for",
                "2h",
                "--allow",
                "203.0.113.9/24",
            ],
            "203.0.113.0/24",
        ),
        (vec!["open", "x", "--device", "h:22"], "--for"),
        (vec!["extend", "x"], "--for"),
    ] {
        let error = parse(&args).expect_err("rejected").to_string();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

#[test]
fn exit_codes_are_stable() {
    assert_eq!(Exit::LinkFailed as u8, 3);
    assert_eq!(Exit::TimedOut as u8, 4);
    assert_eq!(Exit::NotFound as u8, 5);
    assert_eq!(Exit::NoCluster as u8, 6);
    assert_eq!(Exit::CrdMissing as u8, 7);
    assert_eq!(Exit::Forbidden as u8, 8);
}

/// One expected request and the API server's answer; the closure asserts on the request.
type Step = Box<dyn FnOnce(&Method, &str, &Value) -> (StatusCode, Value) + Send>;

fn step(f: impl FnOnce(&Method, &str, &Value) -> (StatusCode, Value) + Send + 'static) -> Step {
    Box::new(f)
}

/// A session over kube's mock service that answers `steps` in order, then refuses.
fn mock_session(steps: Vec<Step>) -> (Session, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        for step in steps {
            let (request, send) = handle
                .next_request()
                .await
                .expect("the CLI made every expected request");
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            let (code, reply) = step(&method, &uri, &body);
            let bytes = match reply {
                Value::String(text) => text.into_bytes(),
                other => serde_json::to_vec(&other).unwrap(),
            };
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(bytes))
                    .unwrap(),
            );
        }
    });
    let mut session = Session::new(Client::new(service, "plant-a"), "plant-a");
    session.poll_every = Duration::from_millis(5);
    session.clock = Clock::Fixed(NOW.parse().unwrap());
    (session, server)
}

async fn finished(server: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the CLI stopped before making every expected request")
        .expect("request assertions hold");
}

const LINK_PATH: &str = "/apis/devicelink.io/v1alpha1/namespaces/plant-a/devicelinks";

fn link(generation: i64, spec: Value, status: Value) -> Value {
    json!({
        "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink",
        "metadata": {"name": "pump-17-ssh", "namespace": "plant-a", "uid": "uid-17", "generation": generation, "resourceVersion": "7"},
        "spec": spec,
        "status": status,
    })
}

fn ssh_spec() -> Value {
    json!({"enabled": true, "device": {"host": "10.20.30.40", "port": 22}, "allowedSourceRanges": ["203.0.113.0/24"], "ttl": "2h"})
}

fn status(phase: &str, generation: i64, endpoint: Option<&str>, message: &str) -> Value {
    let mut status = json!({
        "phase": phase, "observedGeneration": generation, "openRequest": NOW,
        "enabledAt": "2026-11-25T08:00:00Z", "expiresAt": "2026-11-25T10:00:00Z",
        "conditions": [{"type": "Ready", "status": if phase == "Active" {"True"} else {"False"},
                        "reason": phase, "message": message, "lastTransitionTime": "2026-11-25T08:00:00Z"}],
    });
    if let Some(endpoint) = endpoint {
        status["endpoint"] = json!(endpoint);
    }
    status
}

fn not_found_object() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404,
               "message": "devicelinks.devicelink.io \"pump-17-ssh\" not found",
               "details": {"name": "pump-17-ssh", "group": "devicelink.io", "kind": "devicelinks"}}),
    )
}

fn get_link(reply: Value) -> Step {
    step(move |method, uri, _| {
        assert_eq!(
            (method, uri),
            (&Method::GET, format!("{LINK_PATH}/pump-17-ssh").as_str())
        );
        (StatusCode::OK, reply)
    })
}

fn pods_then_metrics(active: u64) -> Vec<Step> {
    vec![
        step(|method, uri, _| {
            assert_eq!(method, Method::GET);
            assert_eq!(
                uri,
                "/api/v1/namespaces/devicelink-proxies/pods?&labelSelector=devicelink.io%2Flink%3Dpump-17-ssh%2Cdevicelink.io%2Flink-namespace%3Dplant-a"
            );
            (
                StatusCode::OK,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                    {"metadata": {"name": "devicelink-pump-17-ssh-7d9f-abcde", "namespace": "plant-a"}, "status": {"phase": "Running"}}]}),
            )
        }),
        step(move |method, uri, _| {
            assert_eq!(method, Method::GET);
            assert_eq!(
                uri,
                "/api/v1/namespaces/devicelink-proxies/pods/devicelink-pump-17-ssh-7d9f-abcde:9100/proxy/metrics"
            );
            (
                StatusCode::OK,
                Value::String(format!(
                    "# TYPE devicelink_connections_active gauge\ndevicelink_connections_active {active}\n"
                )),
            )
        }),
    ]
}

#[tokio::test]
async fn open_creates_the_link_then_waits_for_the_endpoint_and_says_how_to_connect() {
    let mut steps = vec![
        step(|method, uri, _| {
            assert_eq!(
                (method, uri),
                (&Method::GET, format!("{LINK_PATH}/pump-17-ssh").as_str())
            );
            not_found_object()
        }),
        step(|method, uri, body| {
            assert_eq!(
                (method, uri),
                (&Method::POST, format!("{LINK_PATH}?").as_str()),
                "404 then create"
            );
            assert_eq!(
                body["spec"]["device"],
                json!({"host": "10.20.30.40", "port": 22})
            );
            assert_eq!(body["spec"]["ttl"], "2h");
            assert_eq!(
                body["spec"]["allowedSourceRanges"],
                json!(["203.0.113.0/24"])
            );
            assert_eq!(body["spec"]["enabled"], true);
            (
                StatusCode::CREATED,
                link(1, body["spec"].clone(), Value::Null),
            )
        }),
        get_link(link(1, ssh_spec(), Value::Null)),
        get_link(link(
            1,
            ssh_spec(),
            status(
                "Pending",
                1,
                None,
                "Service has no load balancer address yet",
            ),
        )),
        get_link(link(
            1,
            ssh_spec(),
            status("Active", 1, Some("198.51.100.7:22"), "open"),
        )),
    ];
    steps.extend(pods_then_metrics(1));
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
    ]);
    let summary = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect("opened");
    finished(server).await;
    assert_eq!(summary.endpoint.as_deref(), Some("198.51.100.7:22"));
    assert_eq!(
        summary.connect.as_deref(),
        Some("ssh -p 22 user@198.51.100.7")
    );
    assert_eq!(
        summary.connections,
        Some(1),
        "read from the proxy's metrics"
    );
    assert_eq!(summary.expires_in_seconds, Some(3600));
}

#[tokio::test]
async fn open_on_a_link_enabled_hours_ago_asks_for_a_fresh_start_and_waits_for_it() {
    // Expired since 10:00 (enabled at 08:00 for 2h); `open --for 2h` at 09:00+ must mean two
    // hours from now, not from 08:00.
    let mut expired_status = status("Expired", 2, None, "closed at 2026-11-25T10:00:00Z");
    expired_status["openRequest"] = json!("2026-11-25T08:00:00Z");
    let expired = link(2, ssh_spec(), expired_status.clone());
    let steps = vec![
        get_link(expired.clone()),
        step(|method, uri, body| {
            assert_eq!(
                (method, uri),
                (&Method::PATCH, format!("{LINK_PATH}/pump-17-ssh?").as_str())
            );
            assert_eq!(
                body["metadata"]["annotations"]["devicelink.io/open-request"], NOW,
                "the request the operator restarts the TTL for"
            );
            assert_eq!(body["spec"]["enabled"], true);
            assert_eq!(body["spec"]["ttl"], "2h");
            assert_eq!(
                body["spec"]["expiresAt"],
                Value::Null,
                "an absolute expiry is cleared (merge patch null)"
            );
            assert!(body["spec"].as_object().unwrap().contains_key("expiresAt"));
            (StatusCode::OK, link(2, ssh_spec(), expired_status)) // the patched object, as the API server answers
        }),
        // The operator has not acted on the request yet: the old Expired status is not the answer.
        get_link(expired),
        get_link(link(
            2,
            ssh_spec(),
            status("Active", 2, Some("198.51.100.7:22"), "open"),
        )),
        step(|_, uri, _| {
            assert!(uri.starts_with("/api/v1/namespaces/devicelink-proxies/pods?"));
            (
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "pods is forbidden"}),
            )
        }),
    ];
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
    ]);
    let summary = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect("reopened");
    finished(server).await;
    assert_eq!(summary.phase.as_deref(), Some("Active"));
    assert_eq!(
        summary.connections, None,
        "no permission to read pod metrics: unknown, not zero"
    );
}

#[tokio::test]
async fn open_of_a_link_the_operator_fails_exits_3_with_its_reason() {
    let steps = vec![
        step(|_, _, _| not_found_object()),
        step(|_, _, body| {
            (
                StatusCode::CREATED,
                link(1, body["spec"].clone(), Value::Null),
            )
        }),
        get_link(link(
            1,
            ssh_spec(),
            status(
                "Failed",
                1,
                None,
                "spec.device.host: \"bad host\" is neither an IP address nor a DNS name",
            ),
        )),
    ];
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "bad host:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
    ]);
    let error = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect_err("failed link");
    finished(server).await;
    assert_eq!(error.exit(), Exit::LinkFailed);
    assert!(error.to_string().contains("spec.device.host"), "{error}");
}

#[tokio::test]
async fn open_gives_up_after_the_timeout_with_the_last_reason() {
    let mut steps = vec![
        step(|_, _, _| not_found_object()),
        step(|_, _, body| {
            (
                StatusCode::CREATED,
                link(1, body["spec"].clone(), Value::Null),
            )
        }),
    ];
    for _ in 0..200 {
        steps.push(get_link(link(
            1,
            ssh_spec(),
            status(
                "Pending",
                1,
                None,
                "Service has no load balancer address yet",
            ),
        )));
    }
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
        "--timeout",
        "50ms",
    ]);
    let error = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect_err("timed out");
    server.abort();
    assert_eq!(error.exit(), Exit::TimedOut);
    assert!(
        error.to_string().contains("no load balancer address"),
        "{error}"
    );
    assert!(
        error.to_string().contains("devicelink status pump-17-ssh"),
        "says what to do: {error}"
    );
}

#[tokio::test]
async fn open_rejected_by_the_api_server_exits_3_with_its_message() {
    let steps = vec![
        step(|_, _, _| not_found_object()),
        step(|_, _, _| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                       "message": "DeviceLink.devicelink.io \"pump-17-ssh\" is invalid: spec.allowedSourceRanges: Invalid value: \"array\": every spec.allowedSourceRanges entry must be a CIDR"}),
            )
        }),
    ];
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
    ]);
    let error = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect_err("rejected");
    finished(server).await;
    assert_eq!(error.exit(), Exit::LinkFailed);
    assert!(error.to_string().contains("must be a CIDR"), "{error}");
}

#[tokio::test]
async fn open_without_any_allowed_source_refuses_before_calling_the_api() {
    let (session, server) = mock_session(vec![]);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
    ]);
    let error = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect_err("nobody allowed");
    finished(server).await;
    assert_eq!(error.exit(), Exit::Usage);
    assert!(error.to_string().contains("--allow-my-ip"), "{error}");
}

#[tokio::test]
async fn missing_crd_and_missing_link_and_rbac_are_told_apart() {
    let crd_missing = step(|_, _, _| {
        (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404,
                   "message": "the server could not find the requested resource", "details": {}}),
        )
    });
    let (session, server) = mock_session(vec![crd_missing]);
    let error = session.list().await.expect_err("no CRD");
    finished(server).await;
    assert_eq!(error.exit(), Exit::CrdMissing);
    assert!(
        error.to_string().contains("kubectl apply -k deploy/"),
        "{error}"
    );

    let (session, server) = mock_session(vec![step(|_, _, _| not_found_object())]);
    let error = session
        .close(
            "pump-17-ssh",
            Duration::from_secs(1),
            &mut Progress::new(false),
        )
        .await
        .expect_err("no such link");
    finished(server).await;
    assert_eq!(error.exit(), Exit::NotFound);
    assert!(
        error.to_string().contains("devicelink list -n plant-a"),
        "{error}"
    );

    let forbidden = step(|_, _, _| {
        (
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                   "message": "devicelinks.devicelink.io is forbidden: User \"alice\" cannot list resource \"devicelinks\""}),
        )
    });
    let (session, server) = mock_session(vec![forbidden]);
    let error = session.list().await.expect_err("forbidden");
    finished(server).await;
    assert_eq!(error.exit(), Exit::Forbidden);
    assert!(matches!(error, CliError::Forbidden(ref m) if m.contains("alice")));
}

#[tokio::test]
async fn close_disables_and_waits_for_the_operator() {
    let mut disabled = ssh_spec();
    disabled["enabled"] = json!(false);
    let steps = vec![
        step(|method, uri, body| {
            assert_eq!(
                (method, uri),
                (&Method::PATCH, format!("{LINK_PATH}/pump-17-ssh?").as_str())
            );
            assert_eq!(
                body,
                &json!({"spec": {"enabled": false}}),
                "only enabled changes"
            );
            (StatusCode::OK, link(2, ssh_spec(), Value::Null)) // the patched object, as the API server answers
        }),
        get_link(link(
            2,
            disabled.clone(),
            status("Active", 1, Some("198.51.100.7:22"), "open"),
        )),
        get_link(link(
            2,
            disabled,
            status("Disabled", 2, None, "spec.enabled is false"),
        )),
    ];
    let (session, server) = mock_session(steps);
    let summary = session
        .close(
            "pump-17-ssh",
            Duration::from_secs(1),
            &mut Progress::new(false),
        )
        .await
        .expect("closed");
    finished(server).await;
    assert_eq!(summary.phase.as_deref(), Some("Disabled"));
    assert_eq!(summary.endpoint, None);
}

#[tokio::test]
async fn extend_moves_the_expiry_by_stretching_the_ttl() {
    let mut stretched = ssh_spec();
    stretched["ttl"] = json!("3h");
    let mut later = status("Active", 2, Some("198.51.100.7:22"), "open");
    later["expiresAt"] = json!("2026-11-25T11:00:00Z");
    let steps = vec![
        get_link(link(
            1,
            ssh_spec(),
            status("Active", 1, Some("198.51.100.7:22"), "open"),
        )),
        step(|method, _, body| {
            assert_eq!(method, Method::PATCH);
            assert_eq!(
                body,
                &json!({"spec": {"ttl": "3h"}}),
                "enabled 08:00, was 10:00, +1h = 11:00 = 3h"
            );
            (StatusCode::OK, link(2, ssh_spec(), Value::Null)) // the patched object, as the API server answers
        }),
        get_link(link(2, stretched, later)),
    ];
    let (session, server) = mock_session(steps);
    let summary = session
        .extend(
            "pump-17-ssh",
            Duration::from_secs(3600),
            Duration::from_secs(1),
            &mut Progress::new(false),
        )
        .await
        .expect("extended");
    finished(server).await;
    assert_eq!(summary.expires_at.as_deref(), Some("2026-11-25T11:00:00Z"));
}

#[tokio::test]
async fn extend_of_an_absolute_expiry_moves_expires_at() {
    let mut spec = ssh_spec();
    spec.as_object_mut().unwrap().remove("ttl");
    spec["expiresAt"] = json!("2026-11-25T10:00:00Z");
    let mut moved = status("Active", 2, Some("198.51.100.7:22"), "open");
    moved["expiresAt"] = json!("2026-11-25T10:30:00Z");
    let steps = vec![
        get_link(link(
            1,
            spec.clone(),
            status("Active", 1, Some("198.51.100.7:22"), "open"),
        )),
        step(|_, _, body| {
            assert_eq!(
                body,
                &json!({"spec": {"expiresAt": "2026-11-25T10:30:00Z"}})
            );
            (StatusCode::OK, link(2, ssh_spec(), Value::Null)) // the patched object, as the API server answers
        }),
        get_link(link(2, spec, moved)),
    ];
    let (session, server) = mock_session(steps);
    session
        .extend(
            "pump-17-ssh",
            Duration::from_secs(1800),
            Duration::from_secs(1),
            &mut Progress::new(false),
        )
        .await
        .expect("extended");
    finished(server).await;
}

#[tokio::test]
async fn list_shows_every_link_with_connections_of_active_ones() {
    let mut closed = link(
        3,
        ssh_spec(),
        status("Disabled", 3, None, "spec.enabled is false"),
    );
    closed["metadata"]["name"] = json!("a-closed-one");
    closed["spec"]["enabled"] = json!(false);
    let active = link(
        1,
        ssh_spec(),
        status("Active", 1, Some("198.51.100.7:22"), "open"),
    );
    let mut steps = vec![step(move |method, uri, _| {
        assert_eq!(
            (method, uri),
            (&Method::GET, format!("{LINK_PATH}?").as_str())
        );
        (
            StatusCode::OK,
            json!({"apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLinkList", "metadata": {}, "items": [active, closed]}),
        )
    })];
    steps.extend(pods_then_metrics(3));
    let (session, server) = mock_session(steps);
    let links = session.list().await.expect("listed");
    finished(server).await;
    let table = super::output::list_table(&links);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("a-closed-one") && lines[1].contains("Disabled"),
        "sorted by name: {table}"
    );
    assert!(
        lines[2].contains("198.51.100.7:22")
            && lines[2].contains("1h00m")
            && lines[2].ends_with('3'),
        "{table}"
    );
}

#[tokio::test]
async fn status_shows_conditions_and_recent_events() {
    let steps = vec![
        get_link(link(
            1,
            ssh_spec(),
            status(
                "Pending",
                1,
                None,
                "Service has no load balancer address yet",
            ),
        )),
        step(|method, uri, _| {
            assert_eq!(method, Method::GET);
            assert_eq!(
                uri,
                "/api/v1/namespaces/plant-a/events?&fieldSelector=involvedObject.kind%3DDeviceLink%2CinvolvedObject.name%3Dpump-17-ssh"
            );
            (
                StatusCode::OK,
                json!({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": [
                    {"metadata": {"name": "e2", "namespace": "plant-a"}, "involvedObject": {}, "type": "Normal", "reason": "Closed",
                     "message": "disabled", "eventTime": "2026-11-25T08:30:00.000000Z"},
                    {"metadata": {"name": "e1", "namespace": "plant-a"}, "involvedObject": {}, "type": "Normal", "reason": "Opened",
                     "message": "open at 198.51.100.7:22", "eventTime": "2026-11-25T08:01:00.000000Z"},
                ]}),
            )
        }),
    ];
    let (session, server) = mock_session(steps);
    let report = session.status("pump-17-ssh").await.expect("status");
    finished(server).await;
    assert_eq!(
        report
            .events
            .iter()
            .map(|e| e.reason.as_str())
            .collect::<Vec<_>>(),
        ["Opened", "Closed"],
        "oldest first"
    );
    let text = super::output::status_text(&report);
    assert!(text.contains("Ready=False Pending"), "{text}");
    assert!(text.contains("no load balancer address"), "{text}");
    let json: Value = serde_json::from_str(&super::output::render(
        OutputFormat::Json,
        &report,
        String::new,
    ))
    .unwrap();
    assert_eq!(json["name"], "pump-17-ssh");
    assert_eq!(json["events"][1]["reason"], "Closed");
}

/// A one-shot HTTP server on loopback standing in for the what-is-my-address service.
async fn my_ip_service(answer: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0_u8; 1024];
        let _ = stream.read(&mut request).await.unwrap();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    format!("http://{address}/")
}

#[tokio::test]
async fn allow_my_ip_asks_the_named_service_and_adds_a_single_address_block() {
    let url = my_ip_service("198.51.100.23\n").await;
    let steps = vec![
        step(|_, _, _| not_found_object()),
        step(|_, _, body| {
            assert_eq!(
                body["spec"]["allowedSourceRanges"],
                json!(["198.51.100.23/32"])
            );
            (
                StatusCode::CREATED,
                link(1, body["spec"].clone(), Value::Null),
            )
        }),
        get_link(link(
            1,
            ssh_spec(),
            status("Active", 1, Some("198.51.100.7:22"), "open"),
        )),
        step(|_, _, _| {
            (
                StatusCode::OK,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
            )
        }),
    ];
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow-my-ip",
        "--my-ip-url",
        &url,
    ]);
    session
        .open(&args, &mut Progress::new(false))
        .await
        .expect("opened");
    finished(server).await;
}

#[tokio::test]
async fn allow_my_ip_never_guesses_when_the_answer_is_not_an_address() {
    let url = my_ip_service("<html>rate limited</html>").await;
    let error = super::my_ip::public_address(&url, Duration::from_secs(2))
        .await
        .expect_err("not an address");
    let text = error.to_string();
    assert!(
        text.contains(&url) && text.contains("pass --allow ADDRESS/32"),
        "{text}"
    );
    let unreachable = super::my_ip::public_address("http://127.0.0.1:9/", Duration::from_secs(2))
        .await
        .expect_err("nothing listens on the discard port");
    assert!(unreachable.to_string().contains("--allow"), "{unreachable}");
}

#[test]
fn active_connections_are_read_from_the_proxy_metrics() {
    let text = "# HELP devicelink_connections_active Connections being carried now.\n# TYPE devicelink_connections_active gauge\ndevicelink_connections_active 4\ndevicelink_connections_total{result=\"completed\"} 9\n";
    assert_eq!(super::session::active_connections(text), Some(4));
    assert_eq!(super::session::active_connections("nothing"), None);
}

#[tokio::test]
async fn open_stops_waiting_at_a_failure_condition_and_prints_its_reason() {
    let mut taken = status(
        "Failed",
        1,
        None,
        "Service devicelink-proxies/pump-17-ssh-8b7d191b already exists and it was written by kubectl-create",
    );
    taken["conditions"][0]["reason"] = json!("NameTaken");
    let steps = vec![
        step(|_, _, _| not_found_object()),
        step(|_, _, body| {
            (
                StatusCode::CREATED,
                link(1, body["spec"].clone(), Value::Null),
            )
        }),
        get_link(link(1, ssh_spec(), taken)),
    ];
    let (session, server) = mock_session(steps);
    let args = open_args(&[
        "open",
        "pump-17-ssh",
        "--device",
        "10.20.30.40:22",
        "--for",
        "2h",
        "--allow",
        "203.0.113.0/24",
    ]);
    let error = session
        .open(&args, &mut Progress::new(false))
        .await
        .expect_err("a failure ends the wait at once, not at the timeout");
    finished(server).await;
    assert_eq!(error.exit(), Exit::LinkFailed);
    let text = error.to_string();
    assert!(
        text.contains("NameTaken: Service devicelink-proxies/pump-17-ssh-8b7d191b already exists"),
        "{text}"
    );
}
