//! Reconcile tests against kube's mock service: each scenario lists, in order, the requests a
//! real API server would receive and answers them as it would.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::json;

use super::{error_policy, reconcile};
use crate::{
    Error,
    clock::{Clock, until},
    controller::Context,
    fixtures::*,
    leader::LeaderElection,
    metrics::Metrics,
    render,
    resource::{DeviceLink, DeviceLinkStatus, Phase},
};

const NOW: &str = "2026-11-25T08:00:00Z";

#[tokio::test]
async fn new_link_applies_owned_children_and_requeues_at_its_expiry() {
    let (ctx, server) = Context::test(at(NOW));
    let link = DeviceLink::test();
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |link| {
                assert_eq!(link["device"], "10.20.30.40:22");
                assert_eq!(
                    link["allowedSourceRanges"],
                    json!(["203.0.113.0/24", "2001:db8::/32"])
                );
                assert_eq!(link["expiresAt"], "2026-11-25T10:00:00Z", "now + ttl");
                assert_eq!(link["listen"], "[::]:10000");
            })
            .await
            .apply_network_policy(Exists::No, |policy| {
                let spec = policy.spec.as_ref().unwrap();
                assert_eq!(
                    spec.policy_types.as_deref(),
                    Some(&["Egress".to_owned()][..])
                );
                let device = &spec.egress.as_ref().unwrap()[0];
                assert_eq!(
                    device.to.as_ref().unwrap()[0]
                        .ip_block
                        .as_ref()
                        .unwrap()
                        .cidr,
                    "10.20.30.40/32",
                    "the proxy pod reaches its device and nothing else but DNS"
                );
                assert_eq!(labels_of(policy)["devicelink.io/link-uid"], LINK_UID);
            })
            .await
            .apply_service(Exists::No, LoadBalancer::NoAddressYet, |service| {
                let spec = service.spec.as_ref().unwrap();
                assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
                assert_eq!(
                    spec.load_balancer_source_ranges.as_deref(),
                    Some(&["203.0.113.0/24".to_owned(), "2001:db8::/32".to_owned()][..])
                );
                assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
                assert!(
                    service.metadata.owner_references.is_none(),
                    "no owner reference can cross namespaces: the labels say whose it is"
                );
                assert_eq!(labels_of(service)["devicelink.io/link-uid"], LINK_UID);
                assert_eq!(
                    labels_of(service)["devicelink.io/link-namespace"],
                    NAMESPACE
                );
                assert_eq!(service.metadata.namespace.as_deref(), Some(PROXY_NAMESPACE));
                assert_eq!(
                    labels_of(service)
                        .get("devicelink.io/link")
                        .map(String::as_str),
                    Some(LINK)
                );
                assert_eq!(
                    labels_of(service)
                        .get("app.kubernetes.io/managed-by")
                        .map(String::as_str),
                    Some("devicelink-operator")
                );
            })
            .await
            .apply_deployment(Exists::No, Proxy::NotReady, |deployment| {
                assert_eq!(
                    flag_value(&proxy_args(deployment), "--config").as_deref(),
                    Some("/etc/devicelink/links.json")
                );
                assert_eq!(labels_of(deployment)["devicelink.io/link-uid"], LINK_UID);
                let image = deployment
                    .spec
                    .as_ref()
                    .unwrap()
                    .template
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone();
                assert_eq!(
                    image.as_deref(),
                    Some(PROXY_IMAGE),
                    "image from the operator's configuration"
                );
            })
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Pending));
                assert_eq!(status.endpoint, None);
                assert_eq!(status.enabled_at, Some(Time(at(NOW))));
                assert_eq!(status.expires_at, Some(Time(at("2026-11-25T10:00:00Z"))));
                assert_eq!(status.observed_generation, Some(1));
                assert_eq!(status.conditions[0].reason, "WaitingForLoadBalancer");
            })
            .await
    });
    let action = reconcile(Arc::new(link), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "not serving yet: looked at again soon, since a proxy pod's trouble shows on the pod"
    );
}

#[tokio::test]
async fn endpoint_appearing_later_makes_the_link_active_with_an_opened_event() {
    let now = "2026-11-25T08:01:00Z";
    let (ctx, server) = Context::test(at(now));
    // The first reconcile left it Pending; the load balancer has since assigned an address,
    // which the Service watch reports, triggering this reconcile.
    let pending = DeviceLink::test().with_status(DeviceLinkStatus {
        phase: Some(Phase::Pending),
        enabled_at: Some(Time(at(NOW))),
        ..DeviceLinkStatus::default()
    });
    let stored = pending.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |_| {})
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::Ready, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Active));
                assert_eq!(status.endpoint.as_deref(), Some("198.51.100.7:22"));
                assert_eq!(
                    status.enabled_at,
                    Some(Time(at(NOW))),
                    "the TTL keeps its start"
                );
                assert_eq!(status.conditions[0].status, "True");
            })
            .await
            .event("Opened", "Normal")
            .await
    });
    let action = reconcile(Arc::new(pending), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2 * 3600 - 60)));
}

#[tokio::test]
async fn steady_active_link_is_reapplied_without_status_write_or_event() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let active = DeviceLink::test().active_since(NOW, now);
    let mock = server.run(|server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |_| {})
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::Ready, |_| {})
            .await
            .mark_pods(&[], None)
            .await
    });
    reconcile(Arc::new(active), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn disabling_deletes_both_children_and_reports_closed() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let disabled = DeviceLink::test()
        .active_since(NOW, now)
        .edited(|spec| spec.enabled = false);
    let stored = disabled.clone();
    let mock = server.run(move |server| async move {
        server
            .delete_service(Present::Yes)
            .await
            .delete_deployment(Present::Yes)
            .await
            .delete_config_map(Present::Yes)
            .await
            .delete_network_policy(Present::Yes)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Disabled));
                assert_eq!(status.endpoint, None, "no endpoint once closed");
                assert_eq!(status.observed_generation, Some(2));
            })
            .await
            .event("Closed", "Normal")
            .await
    });
    let action = reconcile(Arc::new(disabled), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(
        action,
        Action::await_change(),
        "nothing to wait for while disabled"
    );
}

#[tokio::test]
async fn re_enabling_reapplies_and_restarts_the_ttl() {
    let now = "2026-11-25T12:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let reenabled = DeviceLink::test().with_status(DeviceLinkStatus {
        phase: Some(Phase::Disabled),
        enabled_at: Some(Time(at(NOW))),
        ..DeviceLinkStatus::default()
    });
    let stored = reenabled.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |link| {
                assert_eq!(
                    link["expiresAt"], "2026-11-25T14:00:00Z",
                    "two hours from the re-enable, not from the first enable"
                );
            })
            .await
            .apply_network_policy(Exists::No, |_| {})
            .await
            .apply_service(Exists::No, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::No, Proxy::Ready, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Active));
                assert_eq!(status.enabled_at, Some(Time(at(now))));
            })
            .await
            .event("Opened", "Normal")
            .await
    });
    let action = reconcile(Arc::new(reenabled), ctx)
        .await
        .expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2 * 3600)));
}

#[tokio::test]
async fn acl_change_updates_the_children_in_place() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let edited = DeviceLink::test()
        .active_since(NOW, now)
        .edited(|spec| spec.allowed_source_ranges = vec!["198.51.100.0/25".into()]);
    let stored = edited.clone();
    let mut original = DeviceLink::test()
        .active_since(NOW, now)
        .validate()
        .unwrap();
    original.children_namespace = PROXY_NAMESPACE.into();
    let unchanged_deployment = render::render_deployment(&original, &ctx.proxy);
    let revision = render::render(
        &edited.validate().unwrap(),
        at("2026-11-25T10:00:00Z"),
        &ctx.proxy,
    )
    .links_revision();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |link| {
                assert_eq!(link["allowedSourceRanges"], json!(["198.51.100.0/25"]));
                assert_eq!(
                    link["expiresAt"], "2026-11-25T10:00:00Z",
                    "an ACL change does not restart the TTL"
                );
            })
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes,
                LoadBalancer::Address("198.51.100.7"),
                |service| {
                    let ranges = service
                        .spec
                        .as_ref()
                        .unwrap()
                        .load_balancer_source_ranges
                        .clone();
                    assert_eq!(
                        ranges,
                        Some(vec!["198.51.100.0/25".to_owned()]),
                        "the old ranges are gone"
                    );
                },
            )
            .await
            .apply_deployment(Exists::Yes, Proxy::Ready, move |deployment| {
                assert_eq!(
                    deployment, &unchanged_deployment,
                    "the pod template does not change: the proxy re-reads its links file, sessions stay"
                );
            })
            .await
            // The running pod still has the old file: it is marked so its kubelet refreshes the
            // volume now; a pod already marked with the new revision is left alone.
            .mark_pods(
                &[("proxy-abc", Some("0123456789abcdef")), ("proxy-new", Some(&revision))],
                Some(&revision),
            )
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Active));
                assert_eq!(
                    status.observed_generation,
                    Some(2),
                    "the new generation is acknowledged"
                );
            })
            .await
    });
    reconcile(Arc::new(edited), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn expiry_fires_at_the_requeued_instant_and_removes_everything() {
    // The reconcile an hour in asks to be called again exactly at the expiry...
    let one_hour_in = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(one_hour_in));
    let active = DeviceLink::test().active_since(NOW, one_hour_in);
    let mock = server.run(|server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |_| {})
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::Ready, |_| {})
            .await
            .mark_pods(&[], None)
            .await
    });
    let action = reconcile(Arc::new(active.clone()), ctx)
        .await
        .expect("reconcile");
    scenario_completes(mock).await;
    let requeue_after = Duration::from_secs(3600);
    assert_eq!(action, Action::requeue(requeue_after));

    // ...and that reconcile closes the link.
    let expiry = at(one_hour_in).checked_add(requeue_after).unwrap();
    let (ctx, server) = Context::test(expiry);
    let stored = active.clone();
    let mock = server.run(move |server| async move {
        server
            .delete_service(Present::Yes)
            .await
            .delete_deployment(Present::Yes)
            .await
            .delete_config_map(Present::Yes)
            .await
            .delete_network_policy(Present::Yes)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Expired));
                assert_eq!(status.endpoint, None);
                assert_eq!(status.expires_at, Some(Time(at("2026-11-25T10:00:00Z"))));
                assert_eq!(status.conditions[0].reason, "Expired");
            })
            .await
            .event("Expired", "Normal")
            .await
    });
    let action = reconcile(Arc::new(active), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(until(expiry, at("2026-11-25T10:00:00Z")), Duration::ZERO);
}

#[tokio::test]
async fn expired_link_stays_closed_and_quiet() {
    let now = "2026-11-25T11:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let link = DeviceLink::test();
    let expired = link.clone().with_status(crate::lifecycle::status_for(
        &link,
        &crate::lifecycle::decide(&link.clone().active_since(NOW, now), at(now)),
        &crate::lifecycle::Observed::default(),
        at("2026-11-25T10:00:00Z"),
    ));
    assert_eq!(expired.status.as_ref().unwrap().phase, Some(Phase::Expired));
    let mock = server.run(|server| async move {
        server
            .delete_service(Present::No)
            .await
            .delete_deployment(Present::No)
            .await
            .delete_config_map(Present::No)
            .await
            .delete_network_policy(Present::No)
            .await
    });
    let action = reconcile(Arc::new(expired), ctx)
        .await
        .expect("404s on delete are fine");
    scenario_completes(mock).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_deleted_link_removes_its_children_in_the_proxies_namespace_then_its_finalizer() {
    let (ctx, server) = Context::test(at(NOW));
    let deleted = DeviceLink::test().active_since(NOW, NOW).being_deleted();
    let stored = deleted.clone();
    let mock = server.run(move |server| async move {
        server
            .delete_service(Present::Yes)
            .await
            .delete_deployment(Present::Yes)
            .await
            .delete_config_map(Present::Yes)
            .await
            .delete_network_policy(Present::Yes)
            .await
            .patch_finalizers(&stored, &[])
            .await
    });
    let action = reconcile(Arc::new(deleted), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_new_link_gets_the_cleanup_finalizer_before_any_child() {
    let (ctx, server) = Context::test(at(NOW));
    let mut link = DeviceLink::test();
    link.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            .patch_finalizers(&stored, &["example.com/keep", "devicelink.io/children"])
            .await
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |_| {})
            .await
            .apply_network_policy(Exists::No, |_| {})
            .await
            .apply_service(Exists::No, LoadBalancer::NoAddressYet, |_| {})
            .await
            .apply_deployment(Exists::No, Proxy::NotReady, |deployment| {
                assert_eq!(
                    deployment.metadata.namespace.as_deref(),
                    Some(PROXY_NAMESPACE),
                    "the proxy runs in the proxies' namespace, not the tenant's"
                );
            })
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |_| {})
            .await
    });
    reconcile(Arc::new(link), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn invalid_spec_fails_naming_the_field_and_leaves_no_children() {
    let (ctx, server) = Context::test(at(NOW));
    let invalid = DeviceLink::test().edited(|spec| spec.port = Some(70_000));
    let stored = invalid.clone();
    let mock = server.run(move |server| async move {
        server
            .delete_service(Present::No)
            .await
            .delete_deployment(Present::No)
            .await
            .delete_config_map(Present::No)
            .await
            .delete_network_policy(Present::No)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(condition.reason, "InvalidSpec");
                assert!(
                    condition.message.contains("spec.port")
                        && condition.message.contains("1 to 65535"),
                    "names the field and the fix: {}",
                    condition.message
                );
            })
            .await
            .event("InvalidSpec", "Warning")
            .await
    });
    let action = reconcile(Arc::new(invalid), ctx)
        .await
        .expect("an invalid spec is a status, not an error");
    scenario_completes(mock).await;
    assert_eq!(
        action,
        Action::await_change(),
        "nothing to retry until the spec changes"
    );
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_count_by_kind() {
    let (ctx, server) = Context::test(at(NOW));
    let link = Arc::new(DeviceLink::test());
    let stored = DeviceLink::test();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .forbidden()
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(
                    (condition.status.as_str(), condition.reason.as_str()),
                    ("False", "ApplyRefused")
                );
                assert!(
                    condition
                        .message
                        .contains("ConfigMap devicelink-proxies/pump-17-ssh-8b7d191b")
                        && condition.message.contains("forbidden"),
                    "names the object and the API server's words: {}",
                    condition.message
                );
            })
            .await
            .event("ApplyRefused", "Warning")
            .await
    });
    let error = reconcile(link.clone(), ctx.clone())
        .await
        .expect_err("a 403 is an error, retried with backoff");
    scenario_completes(mock).await;
    assert!(matches!(error, Error::Apply(_)), "{error:?}");
    assert!(error.to_string().contains("forbidden"), "{error}");
    assert_eq!(
        error_policy(link, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("devicelink_operator_reconcile_errors_total{error=\"apply\"} 1")
    );
}

#[tokio::test]
async fn missing_crd_is_reported_with_an_install_hint() {
    let (ctx, server) = Context::test(at(NOW));
    let mock = tokio::spawn(async move {
        let mut handle = server.0;
        let (request, send) = handle.next_request().await.expect("a list of DeviceLinks");
        assert_eq!(
            request.uri().to_string(),
            "/apis/devicelink.io/v1alpha1/devicelinks?&limit=1"
        );
        send.send_response(
            http::Response::builder()
                .status(404)
                .body(kube::client::Body::from(
                    br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#.to_vec(),
                ))
                .unwrap(),
        );
    });
    let error = super::ensure_crd_installed(&ctx.client)
        .await
        .expect_err("CRD missing");
    scenario_completes(mock).await;
    assert!(
        error
            .to_string()
            .contains("kubectl apply -f deploy/crd.yaml"),
        "{error}"
    );
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_stops_renewing() {
    let store = LeaseStore::default();
    let lease_duration = Duration::from_secs(15);
    let mut first = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-a",
        lease_duration,
    );
    let mut second = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-b",
        lease_duration,
    );
    let t0 = at(NOW);
    first.clock = Clock::Fixed(t0);
    second.clock = Clock::Fixed(t0);

    assert!(
        first.try_acquire_or_renew().await.expect("create"),
        "the first replica creates the Lease (404 then 201)"
    );
    assert!(
        !second.try_acquire_or_renew().await.expect("read"),
        "the second follows a fresh Lease"
    );
    assert_eq!(store.holder().as_deref(), Some("replica-a"));

    let t10 = t0.checked_add(Duration::from_secs(10)).unwrap();
    first.clock = Clock::Fixed(t10);
    second.clock = Clock::Fixed(t10);
    assert!(
        first.try_acquire_or_renew().await.expect("renew"),
        "the leader renews"
    );
    assert!(
        !second.try_acquire_or_renew().await.expect("read"),
        "renewed: still following"
    );

    // The first replica stops renewing (it hangs or its node dies); 15s after its last renewal
    // the second takes over, and the first, when it comes back, finds it no longer leads.
    let t25 = t10.checked_add(lease_duration).unwrap();
    second.clock = Clock::Fixed(t25);
    assert!(
        second.try_acquire_or_renew().await.expect("take over"),
        "a lapsed Lease is taken over"
    );
    assert_eq!(store.holder().as_deref(), Some("replica-b"));
    first.clock = Clock::Fixed(t25);
    assert!(
        !first.try_acquire_or_renew().await.expect("read"),
        "the old leader steps down"
    );
}

#[tokio::test]
async fn racing_replicas_cannot_both_take_a_lapsed_lease() {
    let store = LeaseStore::default();
    let lease_duration = Duration::from_secs(15);
    let mut gone = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-gone",
        lease_duration,
    );
    gone.clock = Clock::Fixed(at(NOW));
    assert!(gone.try_acquire_or_renew().await.unwrap());
    let later = Clock::Fixed(at("2026-11-25T08:01:00Z"));
    let mut a = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-a",
        lease_duration,
    );
    let mut b = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-b",
        lease_duration,
    );
    a.clock = later;
    b.clock = later;
    // Both first see the Lease as it stands, then see it unchanged 15s later.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    let lapsed = Clock::Fixed(at("2026-11-25T08:01:15Z"));
    a.clock = lapsed;
    b.clock = lapsed;
    let (won_a, won_b) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let winners = [won_a.unwrap(), won_b.unwrap()]
        .iter()
        .filter(|won| **won)
        .count();
    assert_eq!(
        winners, 1,
        "resourceVersion makes exactly one write win (the other gets 409)"
    );
    let metrics = Metrics::default();
    let leader = if store.holder().as_deref() == Some("replica-a") {
        a
    } else {
        b
    };
    leader.acquire(Duration::from_millis(1), &metrics).await;
    assert!(metrics.encode().contains("devicelink_operator_leader 1"));
}

/// The whole controller, watches included, against a fake API server that routes by path:
/// lists answer at once, watches are held open, and the Service watch later reports the load
/// balancer's address, which must trigger the reconcile that makes the link Active.
#[tokio::test]
async fn controller_watches_the_service_and_goes_active_when_the_endpoint_appears() {
    use http::{Method, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    let (ctx, server) = Context::test(at(NOW));
    let mut handle = server.0;
    let link = serde_json::to_value(DeviceLink::test()).unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<(Vec<String>, Vec<String>)>();
    let fake = tokio::spawn(async move {
        let reply = |send: tower_test::mock::SendResponse<http::Response<Body>>,
                     code: StatusCode,
                     body: Value| {
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        };
        let list = |kind: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": items});
        let mut held_watches = Vec::new();
        let mut service_watch = None;
        let mut endpoint_reported = false;
        let mut phases = Vec::new();
        let mut events = Vec::new();
        let mut done_tx = Some(done_tx);
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let body: Value = {
                let bytes = request.into_body().collect_bytes().await.unwrap();
                if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                }
            };
            let watching = query.contains("watch=true");
            match (method, path.as_str()) {
                (Method::GET, "/apis/devicelink.io/v1alpha1/devicelinks") if watching => {
                    held_watches.push(send)
                }
                (Method::GET, "/apis/devicelink.io/v1alpha1/devicelinks") => {
                    reply(
                        send,
                        StatusCode::OK,
                        list("DeviceLinkList", vec![link.clone()]),
                    );
                }
                (Method::GET, "/api/v1/namespaces/devicelink-proxies/services") if watching => {
                    assert!(
                        query.contains(
                            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddevicelink-operator"
                        ),
                        "{query}"
                    );
                    if service_watch.is_none() && !endpoint_reported {
                        service_watch = Some(send);
                    } else {
                        held_watches.push(send);
                    }
                }
                (Method::GET, "/api/v1/namespaces/devicelink-proxies/services") => {
                    reply(send, StatusCode::OK, list("ServiceList", vec![]))
                }
                (Method::GET, "/apis/devicelink.io/v1alpha1/devicelinkpolicies") if watching => {
                    held_watches.push(send)
                }
                (Method::GET, "/apis/devicelink.io/v1alpha1/devicelinkpolicies") => {
                    reply(send, StatusCode::OK, list("DeviceLinkPolicyList", vec![]))
                }
                (Method::GET, "/apis/apps/v1/namespaces/devicelink-proxies/deployments")
                    if watching =>
                {
                    held_watches.push(send)
                }
                (Method::GET, "/apis/apps/v1/namespaces/devicelink-proxies/deployments") => {
                    reply(send, StatusCode::OK, list("DeploymentList", vec![]))
                }
                (
                    Method::GET,
                    "/api/v1/namespaces/devicelink-proxies/configmaps/pump-17-ssh-8b7d191b"
                    | "/api/v1/namespaces/devicelink-proxies/services/pump-17-ssh-8b7d191b"
                    | "/apis/apps/v1/namespaces/devicelink-proxies/deployments/pump-17-ssh-8b7d191b"
                    | "/apis/networking.k8s.io/v1/namespaces/devicelink-proxies/networkpolicies/pump-17-ssh-8b7d191b",
                ) => reply(
                    send,
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
                (
                    Method::PATCH,
                    "/apis/networking.k8s.io/v1/namespaces/devicelink-proxies/networkpolicies/pump-17-ssh-8b7d191b",
                ) => reply(send, StatusCode::OK, body.clone()),
                (
                    Method::PATCH,
                    "/api/v1/namespaces/devicelink-proxies/configmaps/pump-17-ssh-8b7d191b",
                ) => {
                    let mut config_map = body.clone();
                    config_map["metadata"]["uid"] = json!("cm-uid-17");
                    reply(send, StatusCode::OK, config_map);
                }
                // No proxy pod has started in this scenario: nothing to mark.
                (Method::GET, "/api/v1/namespaces/devicelink-proxies/pods") => {
                    reply(send, StatusCode::OK, list("PodList", vec![]))
                }
                (
                    Method::PATCH,
                    "/api/v1/namespaces/devicelink-proxies/services/pump-17-ssh-8b7d191b",
                ) => {
                    let mut service = body.clone();
                    service["metadata"]["uid"] = json!("svc-uid-17");
                    service["metadata"]["resourceVersion"] = json!("150");
                    service["status"] = if endpoint_reported {
                        json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7", "ipMode": "VIP"}]}})
                    } else {
                        json!({"loadBalancer": {}})
                    };
                    reply(
                        send,
                        if endpoint_reported {
                            StatusCode::OK
                        } else {
                            StatusCode::CREATED
                        },
                        service,
                    );
                }
                (
                    Method::PATCH,
                    "/apis/apps/v1/namespaces/devicelink-proxies/deployments/pump-17-ssh-8b7d191b",
                ) => {
                    let mut deployment = body.clone();
                    deployment["metadata"]["uid"] = json!("deploy-uid-17");
                    deployment["metadata"]["generation"] = json!(1);
                    deployment["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                                                  "readyReplicas": 1, "availableReplicas": 1});
                    reply(send, StatusCode::OK, deployment);
                }
                (
                    Method::PATCH,
                    "/apis/devicelink.io/v1alpha1/namespaces/plant-a/devicelinks/pump-17-ssh/status",
                ) => {
                    phases.push(body["status"]["phase"].as_str().unwrap().to_owned());
                    let mut stored = link.clone();
                    stored["status"] = body["status"].clone();
                    reply(send, StatusCode::OK, stored);
                    if !endpoint_reported {
                        // The load balancer assigns an address: the Service watch says so.
                        endpoint_reported = true;
                        let service = json!({
                            "apiVersion": "v1", "kind": "Service",
                            "metadata": {
                                "name": "pump-17-ssh-8b7d191b", "namespace": "devicelink-proxies", "uid": "svc-uid-17",
                                "resourceVersion": "160",
                                "labels": {"app.kubernetes.io/managed-by": "devicelink-operator",
                                           "devicelink.io/link": "pump-17-ssh", "devicelink.io/link-namespace": "plant-a"},
                                "ownerReferences": [{"apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink",
                                    "name": "pump-17-ssh", "uid": LINK_UID, "controller": true}],
                            },
                            "spec": {"type": "LoadBalancer", "ports": [{"port": 22}]},
                            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}},
                        });
                        let event =
                            serde_json::to_vec(&json!({"type": "MODIFIED", "object": service}))
                                .unwrap();
                        let watch = service_watch
                            .take()
                            .expect("the controller watches Services");
                        watch.send_response(
                            http::Response::builder()
                                .status(200)
                                .body(Body::from(event))
                                .unwrap(),
                        );
                    }
                }
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/plant-a/events") => {
                    events.push(body["reason"].as_str().unwrap().to_owned());
                    reply(send, StatusCode::CREATED, body);
                    if let Some(done) = done_tx.take() {
                        let _ = done.send((phases.clone(), events.clone()));
                    }
                }
                (method, path) => panic!("unexpected request {method} {path}?{query}"),
            }
        }
        drop(held_watches);
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (_store, run) = super::controller(ctx, async move {
        let _ = stop_rx.await;
    });
    let running = tokio::spawn(run);
    let (phases, events) = tokio::time::timeout(Duration::from_secs(10), done_rx)
        .await
        .expect("the Service watch event led to a reconcile that opened the link")
        .expect("fake API server ran");
    assert_eq!(
        phases,
        ["Pending", "Active"],
        "first waiting for the load balancer, then active"
    );
    assert_eq!(events, ["Opened"]);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the controller stops on shutdown")
        .unwrap();
    fake.abort();
}

#[tokio::test]
async fn a_stopping_leader_releases_the_lease_so_the_other_replica_takes_over_at_once() {
    let store = LeaseStore::default();
    let lease_duration = Duration::from_secs(15);
    let mut first = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-a",
        lease_duration,
    );
    let mut second = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-b",
        lease_duration,
    );
    first.clock = Clock::Fixed(at(NOW));
    second.clock = Clock::Fixed(at("2026-11-25T08:00:01Z"));
    assert!(first.try_acquire_or_renew().await.unwrap());
    second
        .release()
        .await
        .expect("releasing a Lease held by another is a no-op");
    assert_eq!(store.holder().as_deref(), Some("replica-a"));
    first.release().await.expect("release");
    assert_eq!(store.holder(), None);
    assert!(
        second.try_acquire_or_renew().await.unwrap(),
        "taken one second later, not fifteen"
    );
}

#[tokio::test]
async fn a_leader_that_finds_another_holder_steps_down() {
    let store = LeaseStore::default();
    let lease_duration = Duration::from_secs(15);
    let mut first = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-a",
        lease_duration,
    );
    let mut second = LeaderElection::new(
        store.client(),
        "devicelink-system",
        "devicelink-operator",
        "replica-b",
        lease_duration,
    );
    first.clock = Clock::Fixed(at(NOW));
    assert!(first.try_acquire_or_renew().await.unwrap());
    // The first replica was paused past its lease; the second, having watched it go
    // unrenewed for 15s of its own time, took over meanwhile.
    second.clock = Clock::Fixed(at("2026-11-25T08:00:01Z"));
    assert!(!second.try_acquire_or_renew().await.unwrap());
    second.clock = Clock::Fixed(at("2026-11-25T08:00:20Z"));
    assert!(second.try_acquire_or_renew().await.unwrap());
    let metrics = Metrics::default();
    metrics.leader.set(1);
    let lost = first.hold(Duration::from_millis(1), &metrics).await;
    assert!(matches!(lost, Error::LostLeadership(_)), "{lost:?}");
    assert!(metrics.encode().contains("devicelink_operator_leader 0"));
}

#[tokio::test]
async fn ttl_and_device_changes_update_the_children_in_place() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let edited = DeviceLink::test().active_since(NOW, now).edited(|spec| {
        spec.ttl = Some("3h".into());
        spec.device.host = "10.20.30.41".into();
    });
    let stored = edited.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |link| {
                assert_eq!(link["device"], "10.20.30.41:22");
                assert_eq!(
                    link["expiresAt"], "2026-11-25T11:00:00Z",
                    "3h from the same enable"
                );
            })
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::Ready, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.expires_at, Some(Time(at("2026-11-25T11:00:00Z"))));
                assert_eq!(status.enabled_at, Some(Time(at(NOW))));
            })
            .await
    });
    let action = reconcile(Arc::new(edited), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(2 * 3600)),
        "requeued at the new expiry"
    );
}

#[tokio::test]
async fn a_service_of_the_childs_name_made_by_someone_else_is_left_alone_and_the_name_reported_taken()
 {
    let (ctx, server) = Context::test(at(NOW));
    let link = DeviceLink::test();
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            // Nothing is applied: not the ConfigMap (which is free), not over the Service.
            .read_children_as([Found::Absent, Found::Foreign, Found::Absent, Found::Absent])
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(
                    (condition.status.as_str(), condition.reason.as_str()),
                    ("False", "NameTaken")
                );
                assert!(
                    condition
                        .message
                        .contains("Service devicelink-proxies/pump-17-ssh-8b7d191b already exists")
                        && condition.message.contains("kubectl-create"),
                    "names the object and who made it: {}",
                    condition.message
                );
                assert_eq!(
                    status.expires_at,
                    Some(Time(at("2026-11-25T10:00:00Z"))),
                    "the TTL still runs"
                );
            })
            .await
            .event("NameTaken", "Warning")
            .await
    });
    let action = reconcile(Arc::new(link), ctx)
        .await
        .expect("a taken name is a status, not an error");
    scenario_completes(mock).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "looked at again: the namesake may be removed"
    );
}

#[tokio::test]
async fn closing_deletes_only_the_links_own_children_and_never_a_namesake() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let disabled = DeviceLink::test()
        .active_since(NOW, now)
        .edited(|spec| spec.enabled = false);
    let stored = disabled.clone();
    let mock = server.run(move |server| async move {
        server
            // The GET finds a Service of that name without the link's owner reference: no DELETE.
            .delete_service(Present::NotOurs)
            .await
            .delete_deployment(Present::Yes)
            .await
            .delete_config_map(Present::Yes)
            .await
            .delete_network_policy(Present::Yes)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Disabled))
            })
            .await
            .event("Closed", "Normal")
            .await
    });
    reconcile(Arc::new(disabled), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn a_deployment_the_api_server_refuses_with_422_shows_the_field_on_the_link_and_in_an_event()
{
    let (ctx, server) = Context::test(at(NOW));
    let link = Arc::new(DeviceLink::test());
    let stored = DeviceLink::test();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |_| {})
            .await
            .apply_network_policy(Exists::No, |_| {})
            .await
            .apply_service(Exists::No, LoadBalancer::NoAddressYet, |_| {})
            .await
            .refuse_apply(
                "deployments",
                422,
                "Invalid",
                "Deployment.apps \"devicelink-pump-17-ssh\" is invalid",
                json!([{"reason": "FieldValueInvalid", "message": "Invalid value: \"2\": must be less than or equal to memory limit of 1Mi",
                        "field": "spec.template.spec.containers[0].resources.requests"}]),
            )
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(condition.reason, "ApplyRefused");
                assert!(
                    condition
                        .message
                        .contains("Deployment devicelink-proxies/pump-17-ssh-8b7d191b (Invalid)")
                        && condition
                            .message
                            .contains("spec.template.spec.containers[0].resources.requests: Invalid value"),
                    "the object, the reason and the field: {}",
                    condition.message
                );
            })
            .await
            .event("ApplyRefused", "Warning")
            .await
    });
    let error = reconcile(link, ctx)
        .await
        .expect_err("retried with backoff");
    scenario_completes(mock).await;
    assert!(matches!(error, Error::Apply(_)), "{error:?}");
}

#[tokio::test]
async fn proxy_pods_refused_by_pod_security_fail_the_link_with_the_admission_message() {
    let (ctx, server) = Context::test(at(NOW));
    let link = DeviceLink::test();
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |_| {})
            .await
            .apply_network_policy(Exists::No, |_| {})
            .await
            .apply_service(Exists::No, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::No, Proxy::PodsRefused, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(condition.reason, "ProxyPodsRefused");
                assert!(
                    condition.message.contains("violates PodSecurity"),
                    "{}",
                    condition.message
                );
            })
            .await
            .event("ProxyPodsRefused", "Warning")
            .await
    });
    reconcile(Arc::new(link), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn a_crash_looping_proxy_fails_the_link_with_its_exit_message() {
    let now = "2026-11-25T08:03:00Z";
    let (ctx, server) = Context::test(at(now));
    let pending = DeviceLink::test().with_status(DeviceLinkStatus {
        phase: Some(Phase::Pending),
        enabled_at: Some(Time(at(NOW))),
        ..DeviceLinkStatus::default()
    });
    let stored = pending.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |_| {})
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::NotReady, |_| {})
            .await
            .proxy_pods(vec![json!({
                "metadata": {"name": "devicelink-pump-17-ssh-7d9f4-x2v8k", "namespace": NAMESPACE},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "proxy", "image": PROXY_IMAGE, "imageID": "", "ready": false, "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=proxy"}},
                    "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                        "message": "--data-plane ebpf: loading the XDP program: Operation not permitted (is bpf() allowed by seccomp?)"}}}]},
            })])
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(condition.reason, "ProxyCrashLooping");
                assert!(
                    condition.message.contains("code 2")
                        && condition.message.contains("Operation not permitted")
                        && condition.message.contains("logs devicelink-pump-17-ssh-7d9f4-x2v8k --previous"),
                    "{}",
                    condition.message
                );
            })
            .await
            .event("ProxyCrashLooping", "Warning")
            .await
    });
    let action = reconcile(Arc::new(pending), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "looked at again: it may recover"
    );
}

#[tokio::test]
async fn an_old_pod_still_serving_after_a_template_change_is_not_ready() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test(at(now));
    let edited = DeviceLink::test()
        .active_since(NOW, now)
        .edited(|spec| spec.data_plane = crate::resource::DataPlane::Userspace);
    let stored = edited.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |_| {})
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::OldPodServing, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(
                    status.phase,
                    Some(Phase::Pending),
                    "the pod serving is the old one: not Active until the new one is available"
                );
                assert_eq!(status.conditions[0].reason, "WaitingForProxy");
            })
            .await
    });
    reconcile(Arc::new(edited), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn an_open_request_restarts_the_ttl_of_a_link_enabled_earlier_from_the_operators_now() {
    let now = "2026-11-25T09:30:00Z";
    let (ctx, server) = Context::test(at(now));
    let mut asked = DeviceLink::test().active_since(NOW, now);
    asked.metadata.annotations = Some(
        [(
            crate::resource::OPEN_REQUEST_ANNOTATION.to_owned(),
            "2026-11-25T09:29:58Z".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    let stored = asked.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::Yes)
            .await
            .apply_config_map(Exists::Yes, |link| {
                assert_eq!(
                    link["expiresAt"], "2026-11-25T11:30:00Z",
                    "two hours from the request, not from the first enable at 08:00"
                );
            })
            .await
            .apply_network_policy(Exists::Yes, |_| {})
            .await
            .apply_service(Exists::Yes, LoadBalancer::Address("198.51.100.7"), |_| {})
            .await
            .apply_deployment(Exists::Yes, Proxy::Ready, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.enabled_at, Some(Time(at(now))));
                assert_eq!(status.open_request.as_deref(), Some("2026-11-25T09:29:58Z"));
            })
            .await
    });
    let action = reconcile(Arc::new(asked), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2 * 3600)));
}

#[tokio::test]
async fn a_link_the_policy_refuses_fails_naming_the_field_and_the_rule_and_gets_no_children() {
    let (ctx, server) =
        Context::test_with_policies(at(NOW), vec![policy("plants", "{maxTtl: 1h}")], &[]);
    let link = DeviceLink::test();
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            .delete_service(Present::No)
            .await
            .delete_deployment(Present::No)
            .await
            .delete_config_map(Present::No)
            .await
            .delete_network_policy(Present::No)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                let condition = &status.conditions[0];
                assert_eq!(
                    (condition.status.as_str(), condition.reason.as_str()),
                    ("False", "PolicyDenied")
                );
                assert!(
                    condition
                        .message
                        .starts_with("spec.ttl: the link would stay open 2h")
                        && condition.message.contains("DeviceLinkPolicy plants")
                        && condition.message.contains("maxTtl: 1h"),
                    "{}",
                    condition.message
                );
            })
            .await
            .event("PolicyDenied", "Warning")
            .await
    });
    reconcile(Arc::new(link), ctx)
        .await
        .expect("a refusal is a status, not an error");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn a_device_name_resolving_outside_the_allowed_networks_closes_an_open_link() {
    let now = "2026-11-25T09:00:00Z";
    let (ctx, server) = Context::test_with_policies(
        at(now),
        vec![policy("plants", "{allowedDeviceNetworks: [10.20.0.0/16]}")],
        &[(
            "pump-17.plant-a.internal",
            &["10.20.30.40", "169.254.169.254"],
        )],
    );
    let renamed = DeviceLink::test()
        .active_since(NOW, now)
        .edited(|spec| spec.device.host = "pump-17.plant-a.internal".into());
    let stored = renamed.clone();
    let mock = server.run(move |server| async move {
        server
            .delete_service(Present::Yes)
            .await
            .delete_deployment(Present::Yes)
            .await
            .delete_config_map(Present::Yes)
            .await
            .delete_network_policy(Present::Yes)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Failed));
                assert_eq!(status.endpoint, None, "the endpoint is gone");
                let condition = &status.conditions[0];
                assert_eq!(condition.reason, "PolicyDenied");
                assert!(
                    condition
                        .message
                        .contains("pump-17.plant-a.internal resolves to 169.254.169.254"),
                    "{}",
                    condition.message
                );
            })
            .await
            .event("PolicyDenied", "Warning")
            .await
    });
    reconcile(Arc::new(renamed), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn a_link_within_every_policy_opens_as_usual() {
    let (ctx, server) = Context::test_with_policies(
        at(NOW),
        vec![
            policy(
                "plants",
                "{allowedDeviceNetworks: [10.20.0.0/16], maxTtl: 8h}",
            ),
            policy(
                "sources",
                "{forbiddenSourceRanges: ['0.0.0.0/0', '::/0', 10.0.0.0/8]}",
            ),
        ],
        &[],
    );
    let link = DeviceLink::test();
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |_| {})
            .await
            .apply_network_policy(Exists::No, |_| {})
            .await
            .apply_service(Exists::No, LoadBalancer::NoAddressYet, |_| {})
            .await
            .apply_deployment(Exists::No, Proxy::NotReady, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |status| {
                assert_eq!(status.phase, Some(Phase::Pending))
            })
            .await
    });
    reconcile(Arc::new(link), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn service_annotations_class_and_proxy_protocol_reach_the_service_and_the_proxy() {
    let (ctx, server) = Context::test(at(NOW));
    let link = DeviceLink::test().edited(|spec| {
        spec.service = Some(crate::resource::ServiceOptions {
            annotations: [(
                "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol".to_owned(),
                "*".to_owned(),
            )]
            .into_iter()
            .collect(),
            load_balancer_class: Some("service.k8s.aws/nlb".into()),
            proxy_protocol: true,
        })
    });
    let stored = link.clone();
    let mock = server.run(move |server| async move {
        server
            .read_children(Exists::No)
            .await
            .apply_config_map(Exists::No, |link| {
                assert_eq!(link["proxyProtocol"], true, "{link}");
            })
            .await
            .apply_network_policy(Exists::No, |_| {})
            .await
            .apply_service(Exists::No, LoadBalancer::NoAddressYet, |service| {
                assert_eq!(
                    service.metadata.annotations.as_ref().unwrap()
                        ["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"],
                    "*"
                );
                assert_eq!(
                    service.spec.as_ref().unwrap().load_balancer_class.as_deref(),
                    Some("service.k8s.aws/nlb")
                );
            })
            .await
            .apply_deployment(Exists::No, Proxy::NotReady, |_| {})
            .await
            .mark_pods(&[], None)
            .await
            .patch_status(&stored, |_| {})
            .await
    });
    reconcile(Arc::new(link), ctx).await.expect("reconcile");
    scenario_completes(mock).await;
}

#[tokio::test]
async fn a_follower_whose_clock_runs_an_hour_ahead_does_not_take_over_a_lease_being_renewed() {
    let store = LeaseStore::default();
    let lease_duration = Duration::from_secs(15);
    let election = |identity: &str| {
        LeaderElection::new(
            store.client(),
            "devicelink-system",
            "devicelink-operator",
            identity,
            lease_duration,
        )
    };
    let mut leader = election("replica-a");
    let mut ahead = election("replica-b");
    for second in [0, 5, 10, 15, 20, 25] {
        leader.clock = Clock::Fixed(at(NOW).checked_add(Duration::from_secs(second)).unwrap());
        ahead.clock = Clock::Fixed(
            at("2026-11-25T09:00:00Z")
                .checked_add(Duration::from_secs(second))
                .unwrap(),
        );
        assert!(leader.try_acquire_or_renew().await.unwrap(), "{second}s");
        assert!(
            !ahead.try_acquire_or_renew().await.unwrap(),
            "{second}s: the renewTime it reads is an hour old by its clock, yet it keeps changing"
        );
    }
    assert_eq!(store.holder().as_deref(), Some("replica-a"));
}

#[tokio::test]
async fn a_lease_call_that_never_answers_fails_within_its_deadline() {
    let (service, _silent) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let mut election = LeaderElection::new(
        kube::Client::new(service, "devicelink-system"),
        "devicelink-system",
        "devicelink-operator",
        "replica-a",
        Duration::from_secs(15),
    );
    election.call_timeout = Duration::from_millis(50);
    let started = std::time::Instant::now();
    let error = election
        .try_acquire_or_renew()
        .await
        .expect_err("no answer");
    assert!(matches!(error, Error::LeaseTimeout(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
