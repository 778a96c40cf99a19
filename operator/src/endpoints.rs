//! The operator's HTTP endpoints: `/healthz` (the process answers), `/readyz` (started and
//! able to reach the API server; a standby replica is ready too, so a rollout never waits on an
//! election) and Prometheus `/metrics`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::runtime::reflector::Store;

use crate::{metrics::Metrics, resource::DeviceLink};

/// What the endpoints read.
#[derive(Clone, Default)]
pub struct Health {
    pub metrics: Metrics,
    /// The controller's cache of links, once this replica leads: counted at each scrape.
    pub links: Arc<Mutex<Option<Store<DeviceLink>>>>,
    pub ready: Arc<AtomicBool>,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn set_links(&self, store: Store<DeviceLink>) {
        *self.links.lock().expect("links lock") = Some(store);
    }
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health)
}

async fn metrics_text(State(health): State<Health>) -> impl IntoResponse {
    let store = health.links.lock().expect("links lock").clone();
    if let Some(store) = store {
        let links = store.state();
        health
            .metrics
            .count_links(links.iter().map(|link| link.as_ref()));
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

async fn readyz(State(health): State<Health>) -> StatusCode {
    if health.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use kube::runtime::{reflector, watcher};
    use tower::ServiceExt;

    use super::*;

    async fn get(health: &Health, path: &str) -> (StatusCode, String) {
        let response = router(health.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn healthz_answers_and_readyz_waits_for_start_up() {
        let health = Health::new(Metrics::default());
        assert_eq!(get(&health, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&health, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready();
        assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_count_the_cached_links_by_phase() {
        let health = Health::new(Metrics::default());
        let (reader, mut writer) = reflector::store::<DeviceLink>();
        let mut link: DeviceLink = serde_yaml::from_str(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {name: a, namespace: n}\nspec: {device: {host: h, port: 22}, allowedSourceRanges: [203.0.113.0/24], ttl: 2h}\nstatus: {phase: Expired}\n",
        )
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(link.clone()));
        link.metadata.name = Some("b".into());
        writer.apply_watcher_event(&watcher::Event::Apply(link));
        health.set_links(reader);
        let (status, text) = get(&health, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("devicelink_operator_links{phase=\"Expired\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("devicelink_operator_reconciles_total 0"),
            "{text}"
        );
    }
}
