//! The control-socket client against a small server on a real Unix socket that speaks the
//! proxy's control contract.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Path, Query},
    http::StatusCode,
    routing::{delete, get, post},
};
use devicelink_console::proxy::control::{
    ControlError, ProxyControl, ProxyLinkState, UnixControlClient,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct SessionsQuery {
    link: Option<String>,
}

#[derive(Deserialize)]
struct EventsQuery {
    after: u64,
    wait: u64,
}

fn contract(refuse_reload: bool) -> Router {
    Router::new()
        .route(
            "/v1/links",
            get(|| async {
                Json(json!({"generation": 3, "configError": null, "links": [{
                    "name": "plant-a.pump-17-ssh", "state": "active", "error": null,
                    "listen": "[::]:20001", "expiresAt": "2026-11-25T10:00:00Z",
                    "activeSessions": 1, "bytesToDevice": 10, "bytesFromDevice": 20, "xdpDrops": 0
                }]}))
            }),
        )
        .route(
            "/v1/sessions",
            get(|Query(q): Query<SessionsQuery>| async move {
                let link = q.link.unwrap_or_else(|| "any".into());
                Json(json!({"sessions": [{
                    "id": "18446744073709551615", "link": link, "client": "203.0.113.7:50000",
                    "since": "2026-11-25T09:00:00Z", "bytesToDevice": 1, "bytesFromDevice": 2,
                    "dataPlane": "kernel"
                }]}))
            }),
        )
        .route(
            "/v1/sessions/{id}",
            delete(|Path(id): Path<String>| async move {
                if id == "7" { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
            }),
        )
        .route(
            "/v1/events",
            get(|Query(q): Query<EventsQuery>| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Json(json!({"next": q.after + 1, "lost": q.after == 0, "events": [{
                    "seq": q.after + 1, "at": "2026-11-25T09:00:00Z", "link": "plant-a.pump-17-ssh",
                    "kind": "session_closed", "client": "203.0.113.7:50000",
                    "bytesToDevice": 5, "bytesFromDevice": 6, "reason": null, "wait": q.wait
                }]}))
            }),
        )
        .route(
            "/v1/reload",
            post(move || async move {
                if refuse_reload {
                    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": "links[0].listen: port 0"})))
                } else {
                    (StatusCode::OK, Json(json!({"generation": 4})))
                }
            }),
        )
}

async fn serve(tag: &str, refuse_reload: bool) -> (UnixControlClient, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "devicelink-console-ctl-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        axum::serve(listener, contract(refuse_reload))
            .await
            .unwrap()
    });
    (UnixControlClient::new(&socket), dir)
}

#[tokio::test]
async fn the_client_reads_links_sessions_and_events_and_closes_sessions() {
    let (client, dir) = serve("ok", false).await;
    let links = client.links().await.unwrap();
    assert_eq!(links.generation, 3);
    assert_eq!(links.links[0].state, ProxyLinkState::Active);
    assert_eq!(links.links[0].bytes_from_device, 20);

    let sessions = client
        .sessions(Some("plant-a.pump-17-ssh".into()))
        .await
        .unwrap();
    assert_eq!(sessions.sessions[0].link, "plant-a.pump-17-ssh");
    assert_eq!(sessions.sessions[0].id, u64::MAX.to_string());

    assert!(client.close_session("7".into()).await.unwrap());
    assert!(!client.close_session("8".into()).await.unwrap());

    let events = client.events(0, Duration::from_secs(1)).await.unwrap();
    assert!(events.lost);
    assert_eq!(events.next, 1);
    assert_eq!(events.events[0].kind, "session_closed");
    assert_eq!(events.events[0].bytes_from_device, Some(6));

    assert_eq!(client.reload().await.unwrap(), 4);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_refused_reload_and_a_missing_socket_are_told_apart() {
    let (client, dir) = serve("refuse", true).await;
    match client.reload().await {
        Err(ControlError::ConfigRefused(why)) => assert!(why.contains("links[0].listen")),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
    match UnixControlClient::new(dir.join("control.sock"))
        .links()
        .await
    {
        Err(ControlError::Unreachable { .. }) => {}
        other => panic!("{other:?}"),
    }
}
