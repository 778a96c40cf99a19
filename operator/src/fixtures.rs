//! Test fixtures: DeviceLinks in known states, a [`Context`] over kube's mock service, and an
//! [`ApiServerVerifier`] that expects each request in order (method, path, query, body) and
//! answers as a real API server would: server-side apply answers 201 when it creates and 200
//! when it updates, a missing object is a 404 `Status`, a conflicting write a 409, and so on.
//!
//! When the reconciler makes a call the scenario did not expect, the verifier has already
//! dropped its handle and the call fails, so the test sees an error rather than a silent pass.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Client, Resource,
    client::Body,
    runtime::{events::Reporter, watcher},
};
use serde_json::{Value, json};

use crate::{
    clock::Clock,
    controller::Context,
    metrics::Metrics,
    policy::DeviceLinkPolicy,
    render::{LINKS_FILE, LINKS_REVISION_ANNOTATION, ProxyImage},
    resolve::Resolver,
    resource::{DeviceLink, DeviceLinkStatus, Phase},
};

pub const NAMESPACE: &str = "plant-a";
pub const LINK: &str = "pump-17-ssh";
/// The children's name: the link's, then 8 hex digits of its namespace's.
pub const CHILD: &str = "pump-17-ssh-8b7d191b";
/// Where the children live.
pub const PROXY_NAMESPACE: &str = "devicelink-proxies";
pub const LINK_UID: &str = "8a3c1f0e-5d2b-4c1a-9e7f-000000000017";
pub const PROXY_IMAGE: &str = "registry.example/devicelink-proxy:test";

pub fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("test instant {text}: {e}"))
}

impl DeviceLink {
    /// The README's example as the API server stores it: SSH to 10.20.30.40, a 2h TTL.
    pub fn test() -> Self {
        serde_json::from_value(json!({
            "apiVersion": "devicelink.io/v1alpha1",
            "kind": "DeviceLink",
            "metadata": {
                "name": LINK, "namespace": NAMESPACE, "uid": LINK_UID,
                "generation": 1, "resourceVersion": "100",
                "finalizers": ["devicelink.io/children"],
                "creationTimestamp": "2026-11-25T07:59:00Z",
            },
            "spec": {
                "enabled": true,
                "device": {"host": "10.20.30.40", "port": 22},
                "allowedSourceRanges": ["203.0.113.0/24", "2001:db8::/32"],
                "ttl": "2h",
                "dataPlane": "auto",
            },
        }))
        .expect("fixture DeviceLink")
    }

    /// A spec edit: the API server bumps the generation.
    pub fn edited(mut self, edit: impl FnOnce(&mut crate::resource::DeviceLinkSpec)) -> Self {
        edit(&mut self.spec);
        self.metadata.generation = Some(self.metadata.generation.unwrap_or(1) + 1);
        self
    }

    pub fn with_status(mut self, status: DeviceLinkStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// The status the operator wrote for an Active link enabled at `enabled_at`.
    pub fn active_since(self, enabled_at: &str, now: &str) -> Self {
        let desired = crate::lifecycle::decide(
            &self.clone().with_status(DeviceLinkStatus {
                phase: Some(Phase::Active),
                enabled_at: Some(Time(at(enabled_at))),
                ..DeviceLinkStatus::default()
            }),
            at(now),
        );
        let observed = crate::lifecycle::Observed {
            endpoint: Some("198.51.100.7:22".into()),
            proxy_ready: true,
            problem: None,
        };
        let status = crate::lifecycle::status_for(&self, &desired, &observed, at(enabled_at));
        self.with_status(status)
    }

    pub fn being_deleted(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(at("2026-11-25T09:00:00Z")));
        self
    }
}

impl Context {
    /// A context over kube's mock service, with the clock fixed at `now`, no DeviceLinkPolicy
    /// and no name that resolves.
    pub fn test(now: Timestamp) -> (Arc<Self>, ApiServerVerifier) {
        Self::test_with_policies(now, Vec::new(), &[])
    }

    /// As [`Context::test`], with these DeviceLinkPolicies in the cluster and these names
    /// resolving to these addresses.
    pub fn test_with_policies(
        now: Timestamp,
        policies: Vec<DeviceLinkPolicy>,
        names: &[(&str, &[&str])],
    ) -> (Arc<Self>, ApiServerVerifier) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NAMESPACE);
        let mut ctx = Context::new(
            client,
            Reporter::from("devicelink-operator"),
            Metrics::default(),
            ProxyImage {
                image: PROXY_IMAGE.into(),
                pull_policy: None,
            },
        );
        ctx.clock = Clock::Fixed(now);
        ctx.resolver = Resolver::Fixed(Arc::new(
            names
                .iter()
                .map(|(name, addresses)| {
                    let addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
                    ((*name).to_owned(), addresses)
                })
                .collect::<HashMap<_, _>>(),
        ));
        // As the policy watch's first list would: these, and the store is ready.
        if let Some(writer) = ctx.policy_writer.lock().unwrap().as_mut() {
            writer.apply_watcher_event(&watcher::Event::Init);
            for policy in policies {
                writer.apply_watcher_event(&watcher::Event::InitApply(policy));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        (Arc::new(ctx), ApiServerVerifier(handle))
    }
}

/// A DeviceLinkPolicy as an admin writes it: `spec` in YAML flow form.
pub fn policy(name: &str, spec: &str) -> DeviceLinkPolicy {
    serde_yaml::from_str(&format!(
        "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLinkPolicy\nmetadata: {{name: {name}, uid: policy-uid-{name}}}\nspec: {spec}\n"
    ))
    .expect("fixture DeviceLinkPolicy")
}

/// Waits for a scenario to have answered every request it expected.
pub async fn scenario_completes(handle: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("the reconciler stopped before making every request the scenario expected")
        .expect("scenario assertions hold");
}

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers the reconciler's requests one by one, checking each.
pub struct ApiServerVerifier(pub ApiServerHandle);

/// What the load balancer has done for the Service so far.
#[derive(Clone, Copy, Debug)]
pub enum LoadBalancer {
    NoAddressYet,
    Address(&'static str),
}

/// Whether the proxy pod passes its readiness probe.
#[derive(Clone, Copy, Debug)]
pub enum Proxy {
    NotReady,
    Ready,
    /// The template changed; the new pod is not available, an old one (old settings) is.
    OldPodServing,
    /// The ReplicaSet cannot create pods: pod security admission refuses them.
    PodsRefused,
}

/// Whether a server-side apply creates the object (201) or updates it (200).
#[derive(Clone, Copy, Debug)]
pub enum Exists {
    No,
    Yes,
}

/// Whether the object to delete is there (and this link's), already gone (404), or a
/// namesake that is not this link's.
#[derive(Clone, Copy, Debug)]
pub enum Present {
    Yes,
    No,
    NotOurs,
}

/// What a GET of a child's name finds.
#[derive(Clone, Copy, Debug)]
pub enum Found {
    Absent,
    /// The link's own child: its controller owner reference names the link.
    Ours,
    /// An object of that name someone else made (no owner reference to the link).
    Foreign,
}

/// The paths (and resource names, for a 404) of the ConfigMap, Service and Deployment.
fn child_paths() -> [(String, &'static str); 4] {
    [
        (
            format!("/api/v1/namespaces/{PROXY_NAMESPACE}/configmaps/{CHILD}"),
            "configmaps",
        ),
        (
            format!("/api/v1/namespaces/{PROXY_NAMESPACE}/services/{CHILD}"),
            "services",
        ),
        (
            format!("/apis/apps/v1/namespaces/{PROXY_NAMESPACE}/deployments/{CHILD}"),
            "deployments",
        ),
        (
            format!(
                "/apis/networking.k8s.io/v1/namespaces/{PROXY_NAMESPACE}/networkpolicies/{CHILD}"
            ),
            "networkpolicies",
        ),
    ]
}

/// A child as a GET returns it; owned by the link when `owner` is its uid, else made by hand.
fn existing_child(path: &str, owner: Option<&str>) -> Value {
    let (api_version, kind) = if path.contains("/deployments/") {
        ("apps/v1", "Deployment")
    } else if path.contains("/networkpolicies/") {
        ("networking.k8s.io/v1", "NetworkPolicy")
    } else if path.contains("/services/") {
        ("v1", "Service")
    } else {
        ("v1", "ConfigMap")
    };
    let mut object = json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": CHILD, "namespace": PROXY_NAMESPACE, "uid": format!("uid-of-{CHILD}"), "resourceVersion": "77",
                     "managedFields": [{"manager": "kubectl-create", "operation": "Update", "apiVersion": api_version}]},
    });
    if let Some(uid) = owner {
        // In the proxies' namespace a child is the link's by its labels (no owner reference
        // can cross namespaces).
        object["metadata"]["labels"] = json!({"devicelink.io/link": LINK, "devicelink.io/link-namespace": NAMESPACE,
            "devicelink.io/link-uid": uid, "app.kubernetes.io/managed-by": "devicelink-operator"});
        object["metadata"]["managedFields"][0]["manager"] = json!("devicelink-operator");
    }
    object
}

struct Captured {
    method: Method,
    uri: String,
    content_type: Option<String>,
    body: Value,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    let response = Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    send.send_response(response);
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
        "details": {"name": name, "kind": kind}, "code": 404,
    })
}

/// The metadata the API server adds to what was applied.
fn stored(mut object: Value, uid: &str, created: bool) -> Value {
    let api_version = object["apiVersion"].clone();
    let meta = object["metadata"].as_object_mut().expect("metadata");
    meta.insert("uid".into(), json!(uid));
    meta.insert(
        "resourceVersion".into(),
        json!(if created { "201" } else { "202" }),
    );
    meta.insert("generation".into(), json!(1));
    meta.insert("creationTimestamp".into(), json!("2026-11-25T08:00:00Z"));
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "devicelink-operator", "operation": "Apply", "apiVersion": api_version, "time": "2026-11-25T08:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {}}]),
    );
    object
}

impl ApiServerVerifier {
    async fn next(&mut self) -> Captured {
        let (request, send) = self
            .0
            .next_request()
            .await
            .expect("the reconciler made no further request");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let content_type = request
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request bodies are JSON")
        };
        Captured {
            method,
            uri,
            content_type,
            body,
            send,
        }
    }

    fn assert_apply(request: &Captured, path: &str) {
        assert_eq!(
            request.method,
            Method::PATCH,
            "server-side apply is a PATCH to {path}"
        );
        assert_eq!(
            request.uri,
            format!("{path}?&force=true&fieldManager=devicelink-operator"),
            "one field manager, forced"
        );
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }

    /// Server-side apply of the link's ConfigMap; `check` sees the one link of its links file.
    pub async fn apply_config_map(mut self, exists: Exists, check: impl FnOnce(&Value)) -> Self {
        let request = self.next().await;
        Self::assert_apply(
            &request,
            &format!("/api/v1/namespaces/{PROXY_NAMESPACE}/configmaps/{CHILD}"),
        );
        let applied: ConfigMap =
            serde_json::from_value(request.body.clone()).expect("a ConfigMap was applied");
        check(&linked(&applied));
        let object = stored(request.body, "cm-uid-17", matches!(exists, Exists::No));
        let code = match exists {
            Exists::No => StatusCode::CREATED,
            Exists::Yes => StatusCode::OK,
        };
        respond(request.send, code, &object);
        self
    }

    /// The list of the link's proxy pods, answered with `pods` (name and the links revision
    /// each is marked with); then a merge patch of each pod whose mark is not `revision`.
    pub async fn mark_pods(
        mut self,
        pods: &[(&str, Option<&str>)],
        revision: Option<&str>,
    ) -> Self {
        let request = self.next().await;
        assert_eq!(request.method, Method::GET, "listing the proxy pods");
        assert!(
            request.uri.starts_with(&format!("/api/v1/namespaces/{PROXY_NAMESPACE}/pods?"))
                && request.uri.contains("labelSelector=app.kubernetes.io%2Fname%3Ddevicelink-proxy%2Cdevicelink.io%2Flink%3Dpump-17-ssh%2Cdevicelink.io%2Flink-namespace%3Dplant-a"),
            "the link's pods by label: {}",
            request.uri
        );
        let items: Vec<Value> = pods
            .iter()
            .map(|(name, mark)| {
                let mut pod = json!({"metadata": {"name": name, "namespace": PROXY_NAMESPACE, "uid": format!("pod-uid-{name}")}});
                if let Some(mark) = mark {
                    pod["metadata"]["annotations"] = json!({LINKS_REVISION_ANNOTATION: mark});
                }
                pod
            })
            .collect();
        respond(
            request.send,
            StatusCode::OK,
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "900"}, "items": items}),
        );
        for (name, mark) in pods {
            if mark.is_some() && *mark == revision {
                continue;
            }
            let request = self.next().await;
            assert_eq!(request.method, Method::PATCH, "marking pod {name}");
            assert_eq!(
                request.uri,
                format!("/api/v1/namespaces/{PROXY_NAMESPACE}/pods/{name}?")
            );
            assert_eq!(
                request.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            let marked = request.body["metadata"]["annotations"][LINKS_REVISION_ANNOTATION]
                .as_str()
                .expect("the links revision annotation")
                .to_owned();
            if let Some(revision) = revision {
                assert_eq!(marked, revision);
            }
            respond(
                request.send,
                StatusCode::OK,
                &json!({"metadata": {"name": name, "namespace": PROXY_NAMESPACE, "annotations": {LINKS_REVISION_ANNOTATION: marked}}}),
            );
        }
        self
    }

    /// The list of the link's proxy pods, answered with `pods` as given (statuses and all);
    /// then the mark of each that carries no links revision yet.
    pub async fn proxy_pods(mut self, pods: Vec<Value>) -> Self {
        let request = self.next().await;
        assert_eq!(request.method, Method::GET, "listing the proxy pods");
        assert!(
            request
                .uri
                .starts_with(&format!("/api/v1/namespaces/{PROXY_NAMESPACE}/pods?"))
        );
        respond(
            request.send,
            StatusCode::OK,
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "900"}, "items": pods.clone()}),
        );
        for pod in pods
            .iter()
            .filter(|p| p["metadata"]["annotations"][LINKS_REVISION_ANNOTATION].is_null())
        {
            let request = self.next().await;
            assert_eq!(
                request.method,
                Method::PATCH,
                "marking pod {}",
                pod["metadata"]["name"]
            );
            respond(request.send, StatusCode::OK, pod);
        }
        self
    }

    /// A server-side apply of the child at `resource` (configmaps, services, deployments)
    /// refused by the API server with `code`, `reason`, `message` and field `causes`.
    pub async fn refuse_apply(
        mut self,
        resource: &str,
        code: u16,
        reason: &str,
        message: &str,
        causes: Value,
    ) -> Self {
        let request = self.next().await;
        let prefix = if resource == "deployments" {
            "/apis/apps/v1"
        } else {
            "/api/v1"
        };
        Self::assert_apply(
            &request,
            &format!("{prefix}/namespaces/{PROXY_NAMESPACE}/{resource}/{CHILD}"),
        );
        respond(
            request.send,
            StatusCode::from_u16(code).unwrap(),
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                    "reason": reason, "details": {"name": CHILD, "kind": resource, "causes": causes}, "code": code}),
        );
        self
    }

    /// Server-side apply of the link's Service; `check` sees what was applied.
    pub async fn apply_service(
        mut self,
        exists: Exists,
        lb: LoadBalancer,
        check: impl FnOnce(&Service),
    ) -> Self {
        let request = self.next().await;
        Self::assert_apply(
            &request,
            &format!("/api/v1/namespaces/{PROXY_NAMESPACE}/services/{CHILD}"),
        );
        let applied: Service =
            serde_json::from_value(request.body.clone()).expect("a Service was applied");
        check(&applied);
        let mut object = stored(request.body, "svc-uid-17", matches!(exists, Exists::No));
        object["spec"]["clusterIP"] = json!("10.96.0.17");
        object["spec"]["clusterIPs"] = json!(["10.96.0.17"]);
        object["spec"]["ipFamilies"] = json!(["IPv4"]);
        object["spec"]["ports"][0]["nodePort"] = json!(31022);
        object["status"] = match lb {
            LoadBalancer::NoAddressYet => json!({"loadBalancer": {}}),
            LoadBalancer::Address(ip) => {
                json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}})
            }
        };
        let code = match exists {
            Exists::No => StatusCode::CREATED,
            Exists::Yes => StatusCode::OK,
        };
        respond(request.send, code, &object);
        self
    }

    /// Server-side apply of the link's Deployment; `check` sees what was applied.
    pub async fn apply_deployment(
        mut self,
        exists: Exists,
        proxy: Proxy,
        check: impl FnOnce(&Deployment),
    ) -> Self {
        let request = self.next().await;
        Self::assert_apply(
            &request,
            &format!("/apis/apps/v1/namespaces/{PROXY_NAMESPACE}/deployments/{CHILD}"),
        );
        let applied: Deployment =
            serde_json::from_value(request.body.clone()).expect("a Deployment was applied");
        check(&applied);
        let mut object = stored(request.body, "deploy-uid-17", matches!(exists, Exists::No));
        object["status"] = match proxy {
            Proxy::NotReady => {
                json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1})
            }
            Proxy::Ready => {
                json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1})
            }
            Proxy::OldPodServing => {
                json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "unavailableReplicas": 1})
            }
            Proxy::PodsRefused => json!({"observedGeneration": 1, "replicas": 0, "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": format!("pods \"{CHILD}-7d9f4-x2v8k\" is forbidden: violates PodSecurity \"restricted:latest\": unrestricted capabilities (container \"proxy\" must not include \"BPF\", \"NET_ADMIN\", \"PERFMON\" in securityContext.capabilities.add)")}]}),
        };
        let code = match exists {
            Exists::No => StatusCode::CREATED,
            Exists::Yes => StatusCode::OK,
        };
        respond(request.send, code, &object);
        self
    }

    /// The GET of a child before it is applied or deleted, answered with `found`.
    async fn read_child(&mut self, path: &str, kind: &str, found: Found) {
        let request = self.next().await;
        assert_eq!(request.method, Method::GET, "expected a GET of {path}");
        assert_eq!(request.uri, path, "the child is read by name");
        match found {
            Found::Absent => respond(request.send, StatusCode::NOT_FOUND, &not_found(kind, CHILD)),
            Found::Ours => respond(
                request.send,
                StatusCode::OK,
                &existing_child(path, Some(LINK_UID)),
            ),
            Found::Foreign => respond(request.send, StatusCode::OK, &existing_child(path, None)),
        }
    }

    /// The GETs of the ConfigMap, Service, Deployment and NetworkPolicy before an apply;
    /// `exists` says whether they are there (and this link's).
    pub async fn read_children(self, exists: Exists) -> Self {
        let found = match exists {
            Exists::No => Found::Absent,
            Exists::Yes => Found::Ours,
        };
        self.read_children_as([found; 4]).await
    }

    /// The GETs of the ConfigMap, Service, Deployment and NetworkPolicy, each answered as given.
    pub async fn read_children_as(mut self, found: [Found; 4]) -> Self {
        for ((path, kind), found) in child_paths().into_iter().zip(found) {
            self.read_child(&path, kind, found).await;
        }
        self
    }

    async fn delete(mut self, path: String, kind: &str, present: Present) -> Self {
        let found = match present {
            Present::Yes => Found::Ours,
            Present::No => Found::Absent,
            Present::NotOurs => Found::Foreign,
        };
        self.read_child(&path, kind, found).await;
        if !matches!(present, Present::Yes) {
            return self;
        }
        let request = self.next().await;
        assert_eq!(
            request.method,
            Method::DELETE,
            "expected a DELETE of {path}"
        );
        assert_eq!(request.uri, format!("{path}?"));
        assert_eq!(
            request.body["propagationPolicy"], "Background",
            "children go with their pods"
        );
        assert_eq!(
            request.body["preconditions"]["uid"],
            format!("uid-of-{CHILD}"),
            "only the object read (and found ours) is deleted"
        );
        respond(
            request.send,
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": CHILD, "kind": kind, "uid": "child-uid-17"}}),
        );
        self
    }

    pub async fn delete_service(self, present: Present) -> Self {
        self.delete(
            format!("/api/v1/namespaces/{PROXY_NAMESPACE}/services/{CHILD}"),
            "services",
            present,
        )
        .await
    }

    pub async fn delete_deployment(self, present: Present) -> Self {
        self.delete(
            format!("/apis/apps/v1/namespaces/{PROXY_NAMESPACE}/deployments/{CHILD}"),
            "deployments",
            present,
        )
        .await
    }

    pub async fn delete_network_policy(self, present: Present) -> Self {
        self.delete(
            format!(
                "/apis/networking.k8s.io/v1/namespaces/{PROXY_NAMESPACE}/networkpolicies/{CHILD}"
            ),
            "networkpolicies",
            present,
        )
        .await
    }

    /// Server-side apply of the link's egress NetworkPolicy; `check` sees what was applied.
    pub async fn apply_network_policy(
        mut self,
        exists: Exists,
        check: impl FnOnce(&NetworkPolicy),
    ) -> Self {
        let request = self.next().await;
        Self::assert_apply(
            &request,
            &format!(
                "/apis/networking.k8s.io/v1/namespaces/{PROXY_NAMESPACE}/networkpolicies/{CHILD}"
            ),
        );
        let applied: NetworkPolicy =
            serde_json::from_value(request.body.clone()).expect("a NetworkPolicy was applied");
        check(&applied);
        let object = stored(request.body, "netpol-uid-17", matches!(exists, Exists::No));
        let code = match exists {
            Exists::No => StatusCode::CREATED,
            Exists::Yes => StatusCode::OK,
        };
        respond(request.send, code, &object);
        self
    }

    pub async fn delete_config_map(self, present: Present) -> Self {
        self.delete(
            format!("/api/v1/namespaces/{PROXY_NAMESPACE}/configmaps/{CHILD}"),
            "configmaps",
            present,
        )
        .await
    }

    /// A merge patch of the link's finalizers, conditional on its resourceVersion.
    pub async fn patch_finalizers(mut self, link: &DeviceLink, expected: &[&str]) -> Self {
        let request = self.next().await;
        assert_eq!(request.method, Method::PATCH, "the finalizers are patched");
        assert_eq!(
            request.uri,
            format!("/apis/devicelink.io/v1alpha1/namespaces/{NAMESPACE}/devicelinks/{LINK}?")
        );
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(request.body["metadata"]["finalizers"], json!(expected));
        assert_eq!(
            request.body["metadata"]["resourceVersion"],
            json!(link.metadata.resource_version),
            "conditional on what was read, so another's finalizer is never dropped"
        );
        let mut object = serde_json::to_value(link).unwrap();
        object["metadata"]["finalizers"] = json!(expected);
        object["metadata"]["resourceVersion"] = json!("101");
        respond(request.send, StatusCode::OK, &object);
        self
    }

    /// A status patch (server-side apply on the status subresource); `check` sees the status.
    pub async fn patch_status(
        mut self,
        link: &DeviceLink,
        check: impl FnOnce(&DeviceLinkStatus),
    ) -> Self {
        let request = self.next().await;
        Self::assert_apply(
            &request,
            &format!(
                "/apis/devicelink.io/v1alpha1/namespaces/{NAMESPACE}/devicelinks/{LINK}/status"
            ),
        );
        assert_eq!(request.body["apiVersion"], "devicelink.io/v1alpha1");
        assert_eq!(request.body["kind"], "DeviceLink");
        let status: DeviceLinkStatus =
            serde_json::from_value(request.body["status"].clone()).expect("a DeviceLink status");
        check(&status);
        let mut object = serde_json::to_value(link).unwrap();
        object["status"] = request.body["status"].clone();
        object["metadata"]["resourceVersion"] = json!("101");
        respond(request.send, StatusCode::OK, &object);
        self
    }

    /// An Event about the link, created through events.k8s.io/v1.
    pub async fn event(mut self, reason: &str, event_type: &str) -> Self {
        let request = self.next().await;
        assert_eq!(request.method, Method::POST, "events are created");
        assert_eq!(
            request.uri,
            format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events?")
        );
        assert_eq!(request.body["reason"], reason, "event: {}", request.body);
        assert_eq!(request.body["type"], event_type);
        assert_eq!(request.body["regarding"]["kind"], "DeviceLink");
        assert_eq!(request.body["regarding"]["name"], LINK);
        respond(request.send, StatusCode::CREATED, &request.body);
        self
    }

    /// Answers the next request with 403 Forbidden, as RBAC would.
    pub async fn forbidden(mut self) -> Self {
        let request = self.next().await;
        respond(
            request.send,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "services \"devicelink-pump-17-ssh\" is forbidden: User \"system:serviceaccount:devicelink-system:devicelink-operator\" cannot patch resource \"services\"",
                    "reason": "Forbidden", "code": 403}),
        );
        self
    }

    /// Runs the scenario in the background; await it with [`scenario_completes`].
    pub fn run<F, Fut>(self, scenario: F) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce(Self) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Self> + Send,
    {
        tokio::spawn(async move {
            drop(scenario(self).await);
        })
    }
}

/// A stand-in for the API server's Lease storage shared by several replicas: GET, POST and
/// PUT with resourceVersion checks, exactly the semantics leader election relies on.
#[derive(Clone, Default)]
pub struct LeaseStore {
    lease: Arc<Mutex<Option<Value>>>,
    version: Arc<Mutex<u64>>,
}

impl LeaseStore {
    pub fn holder(&self) -> Option<String> {
        self.lease
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }

    /// A client whose requests this store answers, for as long as the test runs.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let store = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let (code, body) = store.answer(&method, &path, &bytes);
                respond(send, code, &body);
            }
        });
        Client::new(service, "devicelink-system")
    }

    fn answer(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        let collection = "/apis/coordination.k8s.io/v1/namespaces/devicelink-system/leases";
        let item = format!("{collection}/devicelink-operator");
        let mut lease = self.lease.lock().unwrap();
        let mut version = self.version.lock().unwrap();
        match (method.clone(), path) {
            (Method::GET, p) if p == item => match lease.as_ref() {
                Some(current) => (StatusCode::OK, current.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    not_found("leases.coordination.k8s.io", "devicelink-operator"),
                ),
            },
            (Method::POST, p) if p == collection => {
                if lease.is_some() {
                    return (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
                               "message": "leases.coordination.k8s.io \"devicelink-operator\" already exists"}),
                    );
                }
                *version += 1;
                let mut created: Value = serde_json::from_slice(body).unwrap();
                created["metadata"]["resourceVersion"] = json!(version.to_string());
                created["metadata"]["namespace"] = json!("devicelink-system");
                *lease = Some(created.clone());
                (StatusCode::CREATED, created)
            }
            (Method::PUT, p) if p == item => {
                let mut replacement: Value = serde_json::from_slice(body).unwrap();
                let current_version = lease
                    .as_ref()
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if current_version.as_ref() != Some(&replacement["metadata"]["resourceVersion"]) {
                    return (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                               "message": "Operation cannot be fulfilled on leases.coordination.k8s.io \"devicelink-operator\": the object has been modified; please apply your changes to the latest version and try again"}),
                    );
                }
                *version += 1;
                replacement["metadata"]["resourceVersion"] = json!(version.to_string());
                *lease = Some(replacement.clone());
                (StatusCode::OK, replacement)
            }
            other => panic!("unexpected Lease request {other:?}"),
        }
    }
}

/// Labels on a rendered child, for assertions.
pub fn labels_of<K: Resource>(object: &K) -> BTreeMap<String, String> {
    object.meta().labels.clone().unwrap_or_default()
}

/// The one link of an applied ConfigMap's links file.
pub fn linked(config_map: &ConfigMap) -> Value {
    let text = &config_map.data.as_ref().expect("data")[LINKS_FILE];
    let file: Value = serde_json::from_str(text).expect("the links file is JSON");
    assert_eq!(file["links"].as_array().map(Vec::len), Some(1), "one link");
    file["links"][0].clone()
}

/// The proxy's command line in an applied Deployment.
pub fn proxy_args(deployment: &Deployment) -> Vec<String> {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

/// The value that follows `flag` on a command line.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}
