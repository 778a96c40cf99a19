//! End-to-end on a real cluster (kind with cloud-provider-kind or MetalLB, say), run when
//! `KUBECONFIG` points at one; without a reachable cluster it prints a SKIPPED banner (never a
//! silent pass). See docs/operations.md for how to prepare the images.
//!
//! It installs the CRD, RBAC and a two-replica operator from deploy/, runs a test device (the
//! Kubernetes e2e image agnhost, answering TCP with its pod name), and walks a link through its
//! life: create, endpoint appearing, a connection through it, an ACL change that keeps the proxy
//! pod, disable, re-enable, expiry on time, an invalid spec, deletion, and a leader failover.
//!
//! Settings (environment):
//! - `DEVICELINK_E2E_OPERATOR_IMAGE` (default devicelink-operator:0.1.0) and
//!   `DEVICELINK_E2E_PROXY_IMAGE` (default devicelink-proxy:0.1.0): already loaded in the cluster
//!   (`kind load docker-image ...`).
//! - `DEVICELINK_E2E_CLIENT_CIDR` (default 0.0.0.0/0): where this test's connections come from.

use std::{
    future::Future,
    io::{Read, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use devicelink_operator::{
    policy::DeviceLinkPolicy,
    resource::{DeviceLink, Phase, child_name},
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Namespace, Pod, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::Timestamp,
};
use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    discovery::pinned_kind,
};
use serde_json::json;

const MANAGER: &str = "devicelink-e2e";
const OPERATOR_NAMESPACE: &str = "devicelink-system";
/// Where the operator runs every link's proxy (deploy/namespace.yaml).
const PROXY_NAMESPACE: &str = "devicelink-proxies";

/// Written straight to the process's stderr: libtest captures `eprintln!` of passing tests,
/// and a skip must be seen.
fn announce(message: &str) {
    let banner = "=".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{banner}\n{message}\n{banner}\n");
}

fn step(message: &str) {
    let _ = writeln!(std::io::stderr(), "e2e: {message}");
}

/// A client for a cluster that answers, or None after announcing the skip.
async fn reachable_cluster() -> Option<Client> {
    let skip = |why: String| {
        announce(&format!(
            "SKIPPED: end-to-end suite NOT run: {why}.\n\
             Point KUBECONFIG at a cluster (e.g. `kind create cluster`) with the devicelink images loaded\n\
             to run it; see docs/operations.md."
        ));
        None
    };
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(error) => return skip(format!("no kubeconfig ({error})")),
    };
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(version)) => {
            step(&format!(
                "cluster reachable: Kubernetes {}.{}",
                version.major, version.minor
            ));
            Some(client)
        }
        Ok(Err(error)) => skip(format!(
            "the cluster in the kubeconfig does not answer ({error})"
        )),
        Err(_) => skip("the cluster in the kubeconfig did not answer within 10s".to_owned()),
    }
}

/// Polls `probe` until it yields a value, or fails the test saying what never happened.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            step(&format!(
                "{what}: after {:.1}s",
                start.elapsed().as_secs_f64()
            ));
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Server-side applies every object of a multi-document YAML file.
async fn apply_yaml(client: &Client, text: &str, edit: impl Fn(&mut serde_json::Value)) {
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut value: serde_json::Value =
            serde::Deserialize::deserialize(document).expect("YAML document");
        if value.is_null() {
            continue;
        }
        edit(&mut value);
        let object: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("group/version/kind");
        let (resource, capabilities) = pinned_kind(client, &gvk)
            .await
            .expect("kind known to the cluster");
        let api: Api<DynamicObject> = match (capabilities.scope, object.namespace()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), &namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &object.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {}: {e}", types.kind, object.name_any()));
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn install_operator(client: &Client) {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        DeviceLink::crd_name(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(DeviceLink::crd()),
    )
    .await
    .expect("install the CRD");
    kube::runtime::wait::await_condition(
        crds.clone(),
        DeviceLink::crd_name(),
        kube::runtime::wait::conditions::is_crd_established(),
    )
    .await
    .expect("CRD established");
    crds.patch(
        DeviceLinkPolicy::crd_name(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(DeviceLinkPolicy::crd()),
    )
    .await
    .expect("install the DeviceLinkPolicy CRD");
    kube::runtime::wait::await_condition(
        crds,
        DeviceLinkPolicy::crd_name(),
        kube::runtime::wait::conditions::is_crd_established(),
    )
    .await
    .expect("DeviceLinkPolicy CRD established");
    let operator_image = env_or("DEVICELINK_E2E_OPERATOR_IMAGE", "devicelink-operator:0.1.0");
    let proxy_image = env_or("DEVICELINK_E2E_PROXY_IMAGE", "devicelink-proxy:0.1.0");
    // The test's own policy replaces the shipped one (deploy/policy.yaml): its clients may be
    // anywhere (DEVICELINK_E2E_CLIENT_CIDR defaults to 0.0.0.0/0), and a link may last an hour.
    apply_yaml(client, &e2e_policy(&[]).to_string(), |_| {}).await;
    for file in [
        "namespace.yaml",
        "rbac.yaml",
        "policy-admission.yaml",
        "operator.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{deploy}/{file}")).unwrap();
        apply_yaml(client, &text, |object| {
            if object["kind"] == "Deployment" {
                let container = &mut object["spec"]["template"]["spec"]["containers"][0];
                container["image"] = json!(operator_image);
                for env in container["env"].as_array_mut().unwrap() {
                    if env["name"] == "DEVICELINK_PROXY_IMAGE" {
                        env["value"] = json!(proxy_image);
                    }
                }
            }
        })
        .await;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    wait_for(
        "both operator replicas ready",
        Duration::from_secs(180),
        || async {
            let deployment = deployments.get("devicelink-operator").await.ok()?;
            (deployment.status?.ready_replicas? >= 2).then_some(())
        },
    )
    .await;
}

/// The test's DeviceLinkPolicy: no forbidden source range, at most an hour, and devices in
/// `networks` (anywhere when empty).
fn e2e_policy(networks: &[&str]) -> serde_json::Value {
    let mut spec = json!({"forbiddenSourceRanges": [], "maxTtl": "1h"});
    if !networks.is_empty() {
        spec["allowedDeviceNetworks"] = json!(networks);
    }
    json!({"apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLinkPolicy",
           "metadata": {"name": "devicelink-e2e"}, "spec": spec})
}

async fn create_test_namespace(client: &Client) -> String {
    let name = format!("devicelink-e2e-{}", Timestamp::now().as_second());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        // No Pod Security label: the proxy runs in devicelink-proxies, not here.
        "metadata": {"name": name},
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create test namespace");
    name
}

/// The device: agnhost answers each TCP connection with its pod name.
async fn start_device(client: &Client, namespace: &str) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "device", "labels": {"app": "device"}},
        "spec": {"containers": [{
            "name": "device",
            "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
            "args": ["serve-hostname", "--tcp", "--http=false", "--port", "9376"],
            "ports": [{"containerPort": 9376}],
        }]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create device pod");
    let ip = wait_for("device pod running", Duration::from_secs(180), || async {
        let pod = pods.get("device").await.ok()?;
        let status = pod.status?;
        (status.phase.as_deref() == Some("Running")).then_some(status.pod_ip?)
    })
    .await;
    ("device".to_owned(), ip)
}

fn link_manifest(
    name: &str,
    device_ip: &str,
    cidr: &str,
    lifetime: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({
        "device": {"host": device_ip, "port": 9376},
        "port": 19376,
        "allowedSourceRanges": [cidr],
    });
    spec.as_object_mut()
        .unwrap()
        .extend(lifetime.as_object().unwrap().clone());
    json!({"apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink", "metadata": {"name": name}, "spec": spec})
}

async fn apply_link(links: &Api<DeviceLink>, manifest: &serde_json::Value) {
    let name = manifest["metadata"]["name"].as_str().unwrap();
    links
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(manifest),
        )
        .await
        .unwrap_or_else(|e| panic!("apply DeviceLink {name}: {e}"));
}

async fn wait_phase(
    links: &Api<DeviceLink>,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> DeviceLink {
    wait_for(&format!("{name} {phase}"), timeout, || async {
        let link = links.get(name).await.ok()?;
        let status = link.status.as_ref()?;
        (status.phase == Some(phase) && status.observed_generation == link.metadata.generation)
            .then_some(link)
    })
    .await
}

async fn children_gone(client: &Client, namespace: &str, link: &str) {
    let child = child_name(namespace, link);
    let services: Api<Service> = Api::namespaced(client.clone(), PROXY_NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), PROXY_NAMESPACE);
    wait_for(
        &format!("{child} Service and Deployment gone"),
        Duration::from_secs(60),
        || async {
            let service = services.get_opt(&child).await.ok()?;
            let deployment = deployments.get_opt(&child).await.ok()?;
            (service.is_none() && deployment.is_none()).then_some(())
        },
    )
    .await;
}

/// Connects through the endpoint and returns what the device said.
fn talk_through(endpoint: &str) -> std::io::Result<String> {
    let address = std::net::ToSocketAddrs::to_socket_addrs(endpoint)?
        .next()
        .expect("an address");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.trim().to_owned())
}

#[tokio::test]
async fn end_to_end_on_a_real_cluster() {
    let Some(client) = reachable_cluster().await else {
        return;
    };
    install_operator(&client).await;
    let namespace = create_test_namespace(&client).await;
    let (device_name, device_ip) = start_device(&client, &namespace).await;
    let links: Api<DeviceLink> = Api::namespaced(client.clone(), &namespace);
    let cidr = env_or("DEVICELINK_E2E_CLIENT_CIDR", "0.0.0.0/0");

    // Create: the endpoint appears later (the load balancer assigns it), then the link is Active.
    step("create");
    apply_link(
        &links,
        &link_manifest("e2e", &device_ip, &cidr, json!({"ttl": "1h"})),
    )
    .await;
    let active = wait_phase(&links, "e2e", Phase::Active, Duration::from_secs(300)).await;
    let endpoint = active
        .status
        .as_ref()
        .unwrap()
        .endpoint
        .clone()
        .expect("Active has an endpoint");
    let reply = wait_for(
        "a connection through the link",
        Duration::from_secs(60),
        || {
            let endpoint = endpoint.clone();
            async move { talk_through(&endpoint).ok() }
        },
    )
    .await;
    assert_eq!(reply, device_name, "the device answered through the link");

    // ACL change: updated in place (same Service object, new ranges), and the same proxy pod
    // takes the new links file: its sessions are not dropped by a restart.
    step("ACL change");
    let services: Api<Service> = Api::namespaced(client.clone(), PROXY_NAMESPACE);
    let child = child_name(&namespace, "e2e");
    let uid_before = services.get(&child).await.unwrap().uid();
    let pods: Api<Pod> = Api::namespaced(client.clone(), PROXY_NAMESPACE);
    let link_pods = format!("devicelink.io/link=e2e,devicelink.io/link-namespace={namespace}");
    let proxy_pods = || async {
        pods.list(&kube::api::ListParams::default().labels(&link_pods))
            .await
            .map(|list| list.items.iter().map(|pod| pod.uid()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let pods_before = proxy_pods().await;
    apply_link(
        &links,
        &link_manifest("e2e", &device_ip, "198.51.100.0/24", json!({"ttl": "1h"})),
    )
    .await;
    wait_for(
        "Service carries the new range",
        Duration::from_secs(60),
        || async {
            let service = services.get(&child).await.ok()?;
            (service.spec?.load_balancer_source_ranges? == vec!["198.51.100.0/24".to_owned()])
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        services.get(&child).await.unwrap().uid(),
        uid_before,
        "updated, not recreated"
    );
    let edited_at = std::time::Instant::now();
    wait_for(
        "the proxy pod marked with the new links file",
        Duration::from_secs(30),
        || async {
            let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone(), PROXY_NAMESPACE);
            let data = config_maps.get(&child).await.ok()?.data?;
            let revision = devicelink_operator::render::revision_of(data.get("links.json")?);
            let list = pods
                .list(&kube::api::ListParams::default().labels(&link_pods))
                .await
                .ok()?;
            list.items
                .iter()
                .all(|pod| pod.annotations().get("devicelink.io/links-revision") == Some(&revision))
                .then_some(())
        },
    )
    .await;
    step(&format!(
        "pods marked {:.1}s after the edit",
        edited_at.elapsed().as_secs_f64()
    ));
    assert_eq!(
        proxy_pods().await,
        pods_before,
        "an ACL change keeps the proxy pod (and its sessions)"
    );
    apply_link(
        &links,
        &link_manifest("e2e", &device_ip, &cidr, json!({"ttl": "1h"})),
    )
    .await;

    // Disable: everything goes.
    step("disable");
    links
        .patch("e2e", &PatchParams::apply(MANAGER).force(), &Patch::Apply(json!({
            "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink", "metadata": {"name": "e2e"},
            "spec": link_manifest("e2e", &device_ip, &cidr, json!({"ttl": "1h", "enabled": false}))["spec"],
        })))
        .await
        .unwrap();
    let disabled = wait_phase(&links, "e2e", Phase::Disabled, Duration::from_secs(60)).await;
    children_gone(&client, &namespace, "e2e").await;
    assert!(
        talk_through(&endpoint).is_err(),
        "a disabled link accepts no connection"
    );

    // Re-enable: open again, the TTL restarted.
    step("re-enable");
    apply_link(
        &links,
        &link_manifest("e2e", &device_ip, &cidr, json!({"ttl": "1h"})),
    )
    .await;
    let reenabled = wait_phase(&links, "e2e", Phase::Active, Duration::from_secs(300)).await;
    let first_enabled = active.status.unwrap().enabled_at.unwrap().0;
    let second_enabled = reenabled
        .status
        .as_ref()
        .unwrap()
        .enabled_at
        .as_ref()
        .unwrap()
        .0;
    assert!(
        second_enabled > first_enabled,
        "re-enabling restarts the TTL"
    );
    let _ = disabled;

    // Expiry fires on time.
    step("expiry");
    apply_link(
        &links,
        &link_manifest("e2e-expiry", &device_ip, &cidr, json!({"ttl": "45s"})),
    )
    .await;
    // Pending or already Active: either way the operator has recorded when it closes.
    let expires_at = wait_for(
        "e2e-expiry has its expiry recorded",
        Duration::from_secs(30),
        || async {
            let link = links.get("e2e-expiry").await.ok()?;
            link.status?.expires_at.map(|t| t.0)
        },
    )
    .await;
    wait_phase(
        &links,
        "e2e-expiry",
        Phase::Expired,
        Duration::from_secs(120),
    )
    .await;
    let lateness = Timestamp::now().duration_since(expires_at);
    assert!(
        lateness.as_secs() < 10,
        "expired {lateness:?} after its expiresAt (the requeue is at the instant; polling here is every 0.5s)"
    );
    children_gone(&client, &namespace, "e2e-expiry").await;

    // Invalid spec: the schema rejects a non-CIDR outright; the operator fails what the schema
    // cannot see (a device host that is neither an address nor a DNS name) with the field
    // named, and no children.
    step("invalid spec");
    let rejected = links
        .create(
            &PostParams::default(),
            &serde_json::from_value(link_manifest(
                "e2e-bad",
                &device_ip,
                "10.0.0.300/24",
                json!({"ttl": "1h"}),
            ))
            .unwrap(),
        )
        .await
        .expect_err("the API server rejects a non-CIDR");
    assert!(rejected.to_string().contains("CIDR"), "{rejected}");
    apply_link(
        &links,
        &link_manifest("e2e-bad", "not a host!", &cidr, json!({"ttl": "1h"})),
    )
    .await;
    let failed = wait_phase(&links, "e2e-bad", Phase::Failed, Duration::from_secs(60)).await;
    let message = failed.status.unwrap().conditions[0].message.clone();
    assert!(message.contains("spec.device.host"), "{message}");
    children_gone(&client, &namespace, "e2e-bad").await;

    // The admin's policy: admission refuses what CEL can judge (a TTL past maxTtl); the
    // operator closes a link whose device leaves the allowed networks, naming the rule, and
    // opens it again when the policy allows it.
    step("policy");
    let refused = links
        .create(
            &PostParams::default(),
            &serde_json::from_value(link_manifest(
                "e2e-long",
                &device_ip,
                &cidr,
                json!({"ttl": "2h"}),
            ))
            .unwrap(),
        )
        .await
        .expect_err("admission refuses a TTL past the policy's maxTtl");
    assert!(refused.to_string().contains("maxTtl: 1h"), "{refused}");
    let policies: Api<DeviceLinkPolicy> = Api::all(client.clone());
    policies
        .patch(
            "devicelink-e2e",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(e2e_policy(&["192.0.2.0/24"])),
        )
        .await
        .expect("narrow the policy");
    let denied = wait_for(
        "e2e refused by the narrowed policy",
        Duration::from_secs(60),
        || async {
            let link = links.get("e2e").await.ok()?;
            let condition = link.status?.conditions.first()?.clone();
            (condition.reason == "PolicyDenied").then_some(condition.message)
        },
    )
    .await;
    assert!(
        denied.contains("allowedDeviceNetworks: 192.0.2.0/24"),
        "{denied}"
    );
    children_gone(&client, &namespace, "e2e").await;
    policies
        .patch(
            "devicelink-e2e",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(e2e_policy(&[])),
        )
        .await
        .expect("widen the policy again");
    wait_phase(&links, "e2e", Phase::Active, Duration::from_secs(300)).await;

    // The CLI against the same cluster: open, list, extend, status, close.
    step("devicelink CLI");
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_devicelink"))
            .args(["-n", &namespace])
            .args(args)
            .output()
            .expect("run devicelink");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "devicelink {args:?} failed ({:?}): {stderr}",
            output.status.code()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let device = format!("{device_ip}:9376");
    let opened: serde_json::Value = serde_json::from_str(&cli(&[
        "-o", "json", "open", "e2e-cli", "--device", &device, "--port", "19377", "--for", "30m",
        "--allow", &cidr,
    ]))
    .expect("open -o json prints JSON");
    let cli_endpoint = opened["endpoint"].as_str().expect("an endpoint").to_owned();
    let reply = wait_for(
        "a connection through the CLI's link",
        Duration::from_secs(60),
        || {
            let endpoint = cli_endpoint.clone();
            async move { talk_through(&endpoint).ok() }
        },
    )
    .await;
    assert_eq!(reply, device_name);
    assert!(
        cli(&["list"])
            .lines()
            .any(|line| line.starts_with("e2e-cli ") && line.contains("Active"))
    );
    let extended: serde_json::Value =
        serde_json::from_str(&cli(&["-o", "json", "extend", "e2e-cli", "--for", "10m"])).unwrap();
    assert!(
        extended["expiresInSeconds"].as_i64().unwrap() > 35 * 60,
        "30m + 10m: {extended}"
    );
    assert!(
        cli(&["status", "e2e-cli"]).contains("Opened"),
        "the Opened event is listed"
    );
    cli(&["close", "e2e-cli"]);
    children_gone(&client, &namespace, "e2e-cli").await;
    links
        .delete("e2e-cli", &DeleteParams::default())
        .await
        .expect("delete CLI link");

    // Two replicas: kill the leader; the other takes over and keeps reconciling.
    step("leader failover");
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leader = leases
        .get("devicelink-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    operator_pods
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    wait_for(
        "another replica holds the Lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            let leader = leader.clone();
            async move {
                let holder = leases
                    .get("devicelink-operator")
                    .await
                    .ok()?
                    .spec?
                    .holder_identity?;
                (holder != leader).then_some(())
            }
        },
    )
    .await;
    apply_link(
        &links,
        &link_manifest(
            "e2e-after-failover",
            &device_ip,
            &cidr,
            json!({"ttl": "1h"}),
        ),
    )
    .await;
    wait_phase(
        &links,
        "e2e-after-failover",
        Phase::Active,
        Duration::from_secs(300),
    )
    .await;

    // Deleting a DeviceLink takes its children with it (owner references).
    step("delete");
    for name in ["e2e", "e2e-after-failover", "e2e-expiry", "e2e-bad"] {
        links
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete link");
    }
    for name in ["e2e", "e2e-after-failover"] {
        children_gone(&client, &namespace, name).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("delete test namespace");
    step("passed");
}
