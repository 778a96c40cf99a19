//! The API end to end over a real SQLite file, calling the router directly (no socket).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use devicelink_console::proxy::control::{
    ControlResult, EventsReport, LinksReport, ProxyControl, SessionReport, SessionsReport,
};
use devicelink_console::{
    api::{self, AppState, auth::LocalTokens},
    caller::Role,
    local::{LocalBackend, LocalSettings, db},
    metrics::Metrics,
    tokens,
};
use serde_json::{Value, json};

mod common;
use common::router::call;
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Console {
    app: Router,
    viewer: String,
    operator: String,
    admin: String,
    dir: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn console_with(port_range: Option<std::ops::RangeInclusive<u16>>) -> Console {
    console_full(port_range, None)
}

fn console_full(
    port_range: Option<std::ops::RangeInclusive<u16>>,
    control: Option<Arc<dyn ProxyControl>>,
) -> Console {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "devicelink-console-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let conn = db::open(&dir).unwrap();
    let viewer = tokens::create(&conn, "vera", Role::Viewer).unwrap();
    let operator = tokens::create(&conn, "otto", Role::Operator).unwrap();
    let admin = tokens::create(&conn, "ada", Role::Admin).unwrap();
    let backend = LocalBackend::new(
        conn,
        LocalSettings {
            port_range,
            public_host: "links.example.net".to_owned(),
            control,
            ..LocalSettings::default()
        },
    );
    let backend_tokens = backend.connection();
    let state = AppState {
        authenticator: Arc::new(LocalTokens(backend.connection())),
        backend: Arc::new(backend),
        metrics: Arc::new(Metrics::default()),
        trusted_proxies: Arc::new(vec!["10.0.0.0/8".parse().unwrap()]),
        tokens: Some(backend_tokens),
    };
    Console {
        app: api::router(state),
        viewer,
        operator,
        admin,
        dir,
    }
}

fn console() -> Console {
    console_with(Some(20000..=29999))
}

fn pump(name: &str) -> Value {
    json!({
        "name": name,
        "device": {"host": "10.20.30.40", "port": 22},
        "allowedSourceRanges": ["203.0.113.0/24"],
        "ttl": "2h",
        "description": "pump 17, plant A"
    })
}

const LINKS: &str = "/api/v1/namespaces/plant-a/links";

#[tokio::test]
async fn a_created_link_reads_back_with_its_version_as_etag_and_connect_commands() {
    let c = console();
    let created = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.etag.as_deref(), Some("\"1\""));
    assert_eq!(
        created.body["port"], 20000,
        "the first free port of the range"
    );
    assert_eq!(created.body["status"]["state"], "pending");
    assert_eq!(
        created.body["status"]["endpoint"],
        "links.example.net:20000"
    );
    assert_eq!(
        created.body["status"]["connect"]["ssh"],
        "ssh -p 20000 USER@links.example.net"
    );
    let left = created.body["status"]["secondsLeft"].as_u64().unwrap();
    assert!((7190..=7200).contains(&left), "{left}");

    let read = call(
        &c.app,
        Method::GET,
        &format!("{LINKS}/pump-17-ssh"),
        Some(&c.viewer),
        None,
        &[],
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.etag.as_deref(), Some("\"1\""));
    assert_eq!(
        read.body["device"],
        json!({"host": "10.20.30.40", "port": 22})
    );

    let again = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.body["type"],
        "https://devicelink.io/problems/already-exists"
    );
}

#[tokio::test]
async fn a_bad_field_is_refused_as_problem_details_naming_the_field_and_the_fix() {
    let c = console();
    let mut link = pump("pump-1");
    link["allowedSourceRanges"] = json!(["203.0.113.0/24", "198.51.100.7"]);
    let refused = call(&c.app, Method::POST, LINKS, Some(&c.admin), Some(link), &[]).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert_eq!(
        refused.content_type.as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(refused.body["field"], "allowedSourceRanges[1]");
    assert_eq!(refused.body["status"], 422);
    assert!(
        refused.body["fix"]
            .as_str()
            .unwrap()
            .contains("198.51.100.7/32")
    );

    let mut both = pump("pump-2");
    both["expiresAt"] = json!("2099-01-01T00:00:00Z");
    let refused = call(&c.app, Method::POST, LINKS, Some(&c.admin), Some(both), &[]).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["field"], "ttl");

    let not_json = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(json!({"name": 5})),
        &[],
    )
    .await;
    assert_eq!(
        not_json.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        not_json.text
    );
    assert_eq!(
        not_json.content_type.as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(not_json.body["field"], "name");

    let mut bad_port = pump("pump-3");
    bad_port["device"]["port"] = json!(70000);
    let refused = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(bad_port),
        &[],
    )
    .await;
    assert_eq!(refused.body["field"], "device.port");
}

#[tokio::test]
async fn a_stale_if_match_gets_409_with_the_current_version_and_changes_nothing() {
    let c = console();
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    let uri = format!("{LINKS}/pump-17-ssh");
    let first = call(
        &c.app,
        Method::PATCH,
        &uri,
        Some(&c.admin),
        Some(json!({"description": "first"})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.etag.as_deref(), Some("\"2\""));

    let stale = call(
        &c.app,
        Method::PATCH,
        &uri,
        Some(&c.admin),
        Some(json!({"description": "second", "maxConnections": 5})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.body["currentVersion"], "2");
    assert_eq!(stale.etag.as_deref(), Some("\"2\""));

    let now = call(&c.app, Method::GET, &uri, Some(&c.viewer), None, &[]).await;
    assert_eq!(now.body["description"], "first");
    assert_eq!(now.body["maxConnections"], Value::Null);

    let cleared = call(
        &c.app,
        Method::PATCH,
        &uri,
        Some(&c.admin),
        Some(json!({"description": null})),
        &[],
    )
    .await;
    assert_eq!(cleared.body["description"], Value::Null);
}

#[tokio::test]
async fn disable_enable_and_extend_move_the_state_and_leave_an_audit_trail() {
    let c = console();
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    let uri = format!("{LINKS}/pump-17-ssh");
    let disabled = call(
        &c.app,
        Method::POST,
        &format!("{uri}/disable"),
        Some(&c.operator),
        None,
        &[],
    )
    .await;
    assert_eq!(
        disabled.body["status"]["state"], "disabled",
        "{}",
        disabled.text
    );
    let enabled = call(
        &c.app,
        Method::POST,
        &format!("{uri}/enable"),
        Some(&c.operator),
        None,
        &[],
    )
    .await;
    assert_eq!(enabled.body["status"]["state"], "pending");
    let before = enabled.body["status"]["secondsLeft"].as_u64().unwrap();
    let extended = call(
        &c.app,
        Method::POST,
        &format!("{uri}/extend"),
        Some(&c.operator),
        Some(json!({"by": "1h"})),
        &[],
    )
    .await;
    let after = extended.body["status"]["secondsLeft"].as_u64().unwrap();
    assert!(after >= before + 3590, "{before} -> {after}");
    let to = call(
        &c.app,
        Method::POST,
        &format!("{uri}/extend"),
        Some(&c.operator),
        Some(json!({"to": "2099-01-01T00:00:00Z"})),
        &[],
    )
    .await;
    assert_eq!(to.body["expiresAt"], "2099-01-01T00:00:00Z");
    let neither = call(
        &c.app,
        Method::POST,
        &format!("{uri}/extend"),
        Some(&c.operator),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(neither.status, StatusCode::UNPROCESSABLE_ENTITY);

    let events = call(
        &c.app,
        Method::GET,
        &format!("{uri}/events"),
        Some(&c.viewer),
        None,
        &[],
    )
    .await;
    let trail: Vec<(String, String)> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("created", "ada"),
        ("disabled", "otto"),
        ("enabled", "otto"),
        ("extended", "otto"),
        ("extended", "otto"),
    ];
    assert_eq!(
        trail,
        expected.map(|(k, a)| (k.to_owned(), a.to_owned())).to_vec()
    );
}

#[tokio::test]
async fn allow_my_address_adds_the_forwarded_client_only_behind_a_trusted_proxy() {
    let c = console();
    let mut link = pump("pump-17-ssh");
    link["allowMyAddress"] = json!(true);
    let created = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(link),
        &[("x-forwarded-for", "198.51.100.9")],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(
        created.body["allowedSourceRanges"],
        json!(["203.0.113.0/24", "198.51.100.9/32"])
    );
}

#[tokio::test]
async fn every_role_may_do_exactly_what_it_is_allowed_and_every_refusal_says_why() {
    let c = console();
    let link = |n: &str| format!("{LINKS}/{n}");
    // (method, uri, body, the least role allowed)
    let routes: Vec<(Method, String, Option<Value>, Role)> = vec![
        (Method::GET, LINKS.to_owned(), None, Role::Viewer),
        (Method::GET, link("fixed"), None, Role::Viewer),
        (Method::GET, link("fixed") + "/events", None, Role::Viewer),
        (Method::GET, "/api/v1/events".to_owned(), None, Role::Viewer),
        (
            Method::POST,
            link("fixed") + "/disable",
            None,
            Role::Operator,
        ),
        (
            Method::POST,
            link("fixed") + "/enable",
            None,
            Role::Operator,
        ),
        (
            Method::POST,
            link("fixed") + "/extend",
            Some(json!({"by": "1m"})),
            Role::Operator,
        ),
        (
            Method::PATCH,
            link("fixed"),
            Some(json!({"description": "x"})),
            Role::Admin,
        ),
        (
            Method::POST,
            LINKS.to_owned(),
            Some(pump("new-one")),
            Role::Admin,
        ),
        (Method::DELETE, link("doomed"), None, Role::Admin),
        (Method::GET, "/metrics".to_owned(), None, Role::Viewer),
        (Method::GET, "/api/v1/tokens".to_owned(), None, Role::Admin),
        (
            Method::POST,
            "/api/v1/tokens".to_owned(),
            Some(json!({"name": "new-bot", "role": "viewer"})),
            Role::Admin,
        ),
        (
            Method::DELETE,
            "/api/v1/tokens/vera".to_owned(),
            None,
            Role::Admin,
        ),
    ];
    // Sessions need a proxy: their role checks are in the sessions test.
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("fixed")),
        &[],
    )
    .await;
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("doomed")),
        &[],
    )
    .await;
    for (method, uri, body, least) in routes {
        let nobody = call(&c.app, method.clone(), &uri, None, body.clone(), &[]).await;
        assert_eq!(
            nobody.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} without a token"
        );
        let forged = call(
            &c.app,
            method.clone(),
            &uri,
            Some("dlc_00"),
            body.clone(),
            &[],
        )
        .await;
        assert_eq!(
            forged.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} with an unknown token"
        );
        for (role, token) in [
            (Role::Viewer, &c.viewer),
            (Role::Operator, &c.operator),
            (Role::Admin, &c.admin),
        ] {
            let reply = call(&c.app, method.clone(), &uri, Some(token), body.clone(), &[]).await;
            if role >= least {
                assert!(
                    reply.status.is_success(),
                    "{method} {uri} as {role}: {} {}",
                    reply.status,
                    reply.text
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {role}"
                );
                let detail = reply.body["detail"].as_str().unwrap();
                assert!(detail.contains(&format!("needs role {least}")), "{detail}");
            }
        }
    }
}

#[tokio::test]
async fn a_thousand_links_are_created_and_listed_page_by_page() {
    let c = console();
    for i in 0..1000 {
        let created = call(
            &c.app,
            Method::POST,
            LINKS,
            Some(&c.admin),
            Some(pump(&format!("link-{i:04}"))),
            &[],
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    }
    let mut names = Vec::new();
    let mut uri = format!("{LINKS}?limit=300");
    loop {
        let page = call(&c.app, Method::GET, &uri, Some(&c.viewer), None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        names.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["name"].as_str().unwrap().to_owned()),
        );
        match page.body["continue"].as_str() {
            Some(next) => uri = format!("{LINKS}?limit=300&continue={next}"),
            None => break,
        }
    }
    assert_eq!(names.len(), 1000);
    assert_eq!(
        names,
        (0..1000)
            .map(|i| format!("link-{i:04}"))
            .collect::<Vec<_>>()
    );
    let ports: std::collections::BTreeSet<i64> = {
        let all = call(
            &c.app,
            Method::GET,
            &format!("{LINKS}?limit=1000"),
            Some(&c.viewer),
            None,
            &[],
        )
        .await;
        all.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["port"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ports.len(), 1000, "every link got its own port");
    let disabled = call(
        &c.app,
        Method::GET,
        &format!("{LINKS}?state=disabled"),
        Some(&c.viewer),
        None,
        &[],
    )
    .await;
    assert_eq!(disabled.body["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn fifty_clients_changing_one_link_at_once_lose_no_update() {
    let c = console();
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("shared")),
        &[],
    )
    .await;
    let uri = format!("{LINKS}/shared");
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..50u8 {
        let (app, token, uri) = (c.app.clone(), c.admin.clone(), uri.clone());
        clients.spawn(async move {
            let mine = format!("198.51.100.{client}/32");
            let mut conflicts = 0;
            loop {
                let read = call(&app, Method::GET, &uri, Some(&token), None, &[]).await;
                let mut ranges: Vec<Value> =
                    read.body["allowedSourceRanges"].as_array().unwrap().clone();
                ranges.push(json!(mine));
                let etag = read.etag.unwrap();
                let write = call(
                    &app,
                    Method::PATCH,
                    &uri,
                    Some(&token),
                    Some(json!({"allowedSourceRanges": ranges})),
                    &[("if-match", &etag)],
                )
                .await;
                match write.status {
                    StatusCode::OK => return conflicts,
                    StatusCode::CONFLICT => conflicts += 1,
                    other => panic!("{other}: {}", write.text),
                }
            }
        });
    }
    let mut conflicts = 0;
    while let Some(result) = clients.join_next().await {
        conflicts += result.unwrap();
    }
    let last = call(&c.app, Method::GET, &uri, Some(&c.viewer), None, &[]).await;
    let ranges = last.body["allowedSourceRanges"].as_array().unwrap();
    assert_eq!(
        ranges.len(),
        51,
        "every client's range is there ({conflicts} conflicts retried)"
    );
    assert_eq!(last.body["version"], "51");
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let c = console();
    let doc = call(&c.app, Method::GET, "/api/v1/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc.body["paths"].as_object().unwrap();
    for path in [
        "/api/v1/namespaces/{namespace}/links",
        "/api/v1/namespaces/{namespace}/links/{name}",
        "/api/v1/namespaces/{namespace}/links/{name}/extend",
        "/api/v1/events",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn probes_answer_without_a_token_and_metrics_with_any_role() {
    let c = console();
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    assert_eq!(
        call(&c.app, Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&c.app, Method::GET, "/readyz", None, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&c.app, Method::GET, "/metrics", None, None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let metrics = call(&c.app, Method::GET, "/metrics", Some(&c.viewer), None, &[]).await;
    assert!(
        metrics
            .text
            .contains("devicelink_console_links{state=\"pending\"} 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("route=\"/api/v1/namespaces/{namespace}/links\",status=\"201\""),
        "{}",
        metrics.text
    );
    let unknown = call(&c.app, Method::GET, "/nowhere", None, None, &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.content_type.as_deref(),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn without_a_port_range_a_link_takes_its_device_port_and_a_clash_names_the_port_field() {
    let c = console_with(None);
    let first = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("first")),
        &[],
    )
    .await;
    assert_eq!(first.body["port"], 22);
    let clash = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("second")),
        &[],
    )
    .await;
    assert_eq!(clash.status, StatusCode::CONFLICT);
    assert_eq!(clash.body["field"], "port");
}

#[tokio::test]
async fn the_live_event_stream_sends_recorded_and_new_events_as_server_sent_events() {
    let c = console();
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("first")),
        &[],
    )
    .await;
    let request = Request::builder()
        .uri("/api/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {}", c.viewer))
        .header(header::ACCEPT, "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let response = c.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut seen = String::new();
    let mut next_frame = async || {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    };
    seen.push_str(&next_frame().await);
    assert!(
        seen.contains("event: created") && seen.contains("id: 1"),
        "{seen}"
    );
    call(
        &c.app,
        Method::POST,
        &format!("{LINKS}/first/disable"),
        Some(&c.operator),
        None,
        &[],
    )
    .await;
    let later = next_frame().await;
    assert!(
        later.contains("event: disabled") && later.contains("\"actor\":\"otto\""),
        "{later}"
    );
}

/// A proxy with one open session on `plant-a.pump-17-ssh`, answering as the control socket does.
struct OneSession(std::sync::Mutex<bool>);

impl ProxyControl for OneSession {
    fn links(&self) -> ControlResult<'_, LinksReport> {
        Box::pin(async {
            Ok(LinksReport {
                generation: 1,
                config_error: None,
                links: vec![],
            })
        })
    }
    fn sessions(&self, link: Option<String>) -> ControlResult<'_, SessionsReport> {
        let open = *self.0.lock().unwrap();
        Box::pin(async move {
            let session = SessionReport {
                id: "42".into(),
                link: "plant-a.pump-17-ssh".into(),
                client: "203.0.113.7:50000".into(),
                since: "2026-11-25T09:00:00Z".into(),
                bytes_to_device: 1,
                bytes_from_device: 2,
                data_plane: "kernel".into(),
            };
            let wanted = link.is_none_or(|l| l == session.link);
            Ok(SessionsReport {
                sessions: if open && wanted {
                    vec![session]
                } else {
                    vec![]
                },
            })
        })
    }
    fn close_session(&self, id: String) -> ControlResult<'_, bool> {
        let mut open = self.0.lock().unwrap();
        let closed = *open && id == "42";
        *open &= !closed;
        Box::pin(async move { Ok(closed) })
    }
    fn events(&self, after: u64, _wait: std::time::Duration) -> ControlResult<'_, EventsReport> {
        Box::pin(async move {
            Ok(EventsReport {
                next: after,
                lost: false,
                events: vec![],
            })
        })
    }
    fn reload(&self) -> ControlResult<'_, u64> {
        Box::pin(async { Ok(1) })
    }
}

#[tokio::test]
async fn an_operator_sees_and_closes_a_links_session_and_the_trail_names_them() {
    let c = console_full(
        Some(20000..=29999),
        Some(Arc::new(OneSession(std::sync::Mutex::new(true)))),
    );
    call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&c.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    let sessions = format!("{LINKS}/pump-17-ssh/sessions");
    let listed = call(&c.app, Method::GET, &sessions, Some(&c.viewer), None, &[]).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body["items"][0]["client"], "203.0.113.7:50000");
    assert_eq!(listed.body["items"][0]["dataPlane"], "kernel");

    let viewer = call(
        &c.app,
        Method::DELETE,
        &format!("{sessions}/42"),
        Some(&c.viewer),
        None,
        &[],
    )
    .await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
    let closed = call(
        &c.app,
        Method::DELETE,
        &format!("{sessions}/42"),
        Some(&c.operator),
        None,
        &[],
    )
    .await;
    assert_eq!(closed.status, StatusCode::NO_CONTENT, "{}", closed.text);
    let again = call(
        &c.app,
        Method::DELETE,
        &format!("{sessions}/42"),
        Some(&c.operator),
        None,
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    let events = call(
        &c.app,
        Method::GET,
        &format!("{LINKS}/pump-17-ssh/events"),
        Some(&c.viewer),
        None,
        &[],
    )
    .await;
    let last = events.body["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["kind"], "session_closed_by_user");
    assert_eq!(last["actor"], "otto");
    assert_eq!(last["detail"], "client 203.0.113.7:50000");

    let no_proxy = console();
    call(
        &no_proxy.app,
        Method::POST,
        LINKS,
        Some(&no_proxy.admin),
        Some(pump("pump-17-ssh")),
        &[],
    )
    .await;
    let unavailable = call(
        &no_proxy.app,
        Method::GET,
        &sessions,
        Some(&no_proxy.viewer),
        None,
        &[],
    )
    .await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn an_admin_creates_lists_and_revokes_tokens_and_the_secret_is_shown_once() {
    let c = console();
    let created = call(
        &c.app,
        Method::POST,
        "/api/v1/tokens",
        Some(&c.admin),
        Some(json!({"name": "ci-bot", "role": "operator"})),
        &[],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let secret = created.body["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("dlc_"), "{secret}");
    assert_eq!(created.body["role"], "operator");

    // The new token works at once, with its role.
    let as_bot = call(&c.app, Method::GET, LINKS, Some(&secret), None, &[]).await;
    assert_eq!(as_bot.status, StatusCode::OK);
    let bot_creates = call(
        &c.app,
        Method::POST,
        LINKS,
        Some(&secret),
        Some(pump("by-bot")),
        &[],
    )
    .await;
    assert_eq!(bot_creates.status, StatusCode::FORBIDDEN);

    // Listed by name and role, never with a secret.
    let listed = call(
        &c.app,
        Method::GET,
        "/api/v1/tokens",
        Some(&c.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    let names: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada", "ci-bot", "otto", "vera"]);
    assert!(!listed.text.contains(&secret));
    assert!(listed.body["items"][1].get("token").is_none());

    // The same name twice is a conflict naming it; a bad name names the field.
    let again = call(
        &c.app,
        Method::POST,
        "/api/v1/tokens",
        Some(&c.admin),
        Some(json!({"name": "ci-bot", "role": "viewer"})),
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let bad = call(
        &c.app,
        Method::POST,
        "/api/v1/tokens",
        Some(&c.admin),
        Some(json!({"name": "CI Bot", "role": "viewer"})),
        &[],
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert!(bad.text.contains("name"), "{}", bad.text);

    // Revoked: the secret stops working at the next request; revoking twice is 404.
    let revoked = call(
        &c.app,
        Method::DELETE,
        "/api/v1/tokens/ci-bot",
        Some(&c.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let after = call(&c.app, Method::GET, LINKS, Some(&secret), None, &[]).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    let twice = call(
        &c.app,
        Method::DELETE,
        "/api/v1/tokens/ci-bot",
        Some(&c.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);

    // The token in hand is not revoked by itself: its holder would be locked out.
    let own = call(
        &c.app,
        Method::DELETE,
        "/api/v1/tokens/ada",
        Some(&c.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(own.status, StatusCode::CONFLICT, "{}", own.text);
    assert_eq!(own.body["field"], "name");
    let still = call(&c.app, Method::GET, LINKS, Some(&c.admin), None, &[]).await;
    assert_eq!(still.status, StatusCode::OK);
}
