//! A validated DeviceLink rendered into the children the operator applies: a ConfigMap holding
//! the link as the proxy's links file, a LoadBalancer Service and a Deployment of
//! `devicelink-proxy` pods. Pure, and shared by the controller and
//! `devicelink-operator render`, so what is reviewed is what is applied.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use devicelink_spec::{LinkSpec, pod_security::PROXY_SECCOMP};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
            ServiceSpec, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};

use crate::resource::{GROUP, ValidLink};

/// The one field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "devicelink-operator";

/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "devicelink-operator";

/// Label naming the DeviceLink a child belongs to; the Service selects pods by it.
pub const LINK_LABEL: &str = "devicelink.io/link";

/// The port the proxy listens on inside its pod. Fixed and unprivileged so the container needs
/// no CAP_NET_BIND_SERVICE even for links on 22 or 80; the Service maps the endpoint port to it.
pub const PROXY_LISTEN_PORT: u16 = 10_000;

/// Where the proxy serves /metrics, /healthz and /readyz.
pub const PROXY_METRICS_PORT: u16 = 9100;

/// The pod's only interface, where the proxy attaches its XDP source ACL.
pub const POD_INTERFACE: &str = "eth0";

/// Where the pod mounts the link's ConfigMap.
pub const LINKS_DIR: &str = "/etc/devicelink";

/// The links file's name in the ConfigMap and in [`LINKS_DIR`].
pub const LINKS_FILE: &str = "links.json";

/// Annotation on the proxy pods naming the links file they should run: changing it makes the
/// kubelet sync the pod at once, which refreshes the ConfigMap volume within a second or two
/// instead of at its next periodic sync (a minute or more).
pub const LINKS_REVISION_ANNOTATION: &str = "devicelink.io/links-revision";

/// The proxy image and how to pull it: the operator's configuration, not the link's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyImage {
    pub image: String,
    pub pull_policy: Option<String>,
}

/// Everything the operator applies for an open link.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The link as the proxy reads it (a links file): what may change while sessions stay.
    pub config_map: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
}

impl Children {
    /// The three objects as a multi-document YAML stream: ConfigMap, Service, Deployment.
    pub fn to_yaml(&self) -> Result<String, serde_json::Error> {
        Ok(format!(
            "---\n{}---\n{}---\n{}",
            crate::yaml::to_string(&self.config_map)?,
            crate::yaml::to_string(&self.service)?,
            crate::yaml::to_string(&self.deployment)?
        ))
    }

    /// The links file's revision, for [`LINKS_REVISION_ANNOTATION`].
    pub fn links_revision(&self) -> String {
        let text = self
            .config_map
            .data
            .as_ref()
            .and_then(|data| data.get(LINKS_FILE))
            .map_or("", String::as_str);
        revision_of(text)
    }
}

/// A short, stable digest of the links file (FNV-1a, 64 bits): it only has to differ when the
/// file does.
pub fn revision_of(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Renders the children of an enabled, unexpired link that closes at `expires_at`. The
/// Deployment depends on neither the ACL, the expiry nor the limits: those are in the
/// ConfigMap, which the proxy re-reads while it runs, so editing them keeps the pod and its
/// sessions.
pub fn render(link: &ValidLink, expires_at: Timestamp, proxy: &ProxyImage) -> Children {
    Children {
        config_map: render_config_map(link, expires_at),
        service: render_service(link),
        deployment: render_deployment(link, proxy),
    }
}

/// The proxy's links file for this link: one link listening on [`PROXY_LISTEN_PORT`], written
/// by the same code the proxy's reader checks against (`devicelink_spec`).
pub fn render_links_file(link: &ValidLink, expires_at: Timestamp) -> String {
    let spec = LinkSpec {
        name: link.name.clone(),
        listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, PROXY_LISTEN_PORT)),
        device: link.device.clone(),
        allowed_source_ranges: link.allowed_source_ranges.clone(),
        // The proxy closes the link at this instant by itself, even if the operator is down.
        expires_at: Some(system_time(expires_at)),
        max_connections: link.max_connections,
        max_connections_per_source: link.max_connections_per_source,
        connect_rate_per_source: link.connect_rate_per_source,
        idle_timeout: link.idle_timeout,
        enabled: true,
        // Behind a load balancer that sends the PROXY protocol header, the proxy reads each
        // client's address from it and judges that one.
        proxy_protocol: link.service.proxy_protocol,
    };
    devicelink_spec::render_links_file(&[spec])
}

/// A Kubernetes timestamp as the links file's instant (whole seconds, as status times are).
fn system_time(at: Timestamp) -> SystemTime {
    match u64::try_from(at.as_second()) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}

pub fn render_config_map(link: &ValidLink, expires_at: Timestamp) -> ConfigMap {
    ConfigMap {
        metadata: child_metadata(link),
        data: Some(BTreeMap::from([(
            LINKS_FILE.to_owned(),
            render_links_file(link, expires_at),
        )])),
        ..ConfigMap::default()
    }
}

/// Label naming the namespace of the DeviceLink a child belongs to: links of every namespace
/// meet in the proxies' namespace.
pub const LINK_NAMESPACE_LABEL: &str = "devicelink.io/link-namespace";

/// Label naming the uid of the DeviceLink a child belongs to: what makes a child the link's
/// when an owner reference cannot (it cannot cross namespaces).
pub const LINK_UID_LABEL: &str = "devicelink.io/link-uid";

/// Labels on the children and on the proxy pods.
pub fn child_labels(link: &ValidLink) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "devicelink-proxy".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), link.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (LINK_LABEL.to_owned(), link.name.clone()),
        (LINK_NAMESPACE_LABEL.to_owned(), link.namespace.clone()),
    ]);
    if let Some(uid) = &link.uid {
        labels.insert(LINK_UID_LABEL.to_owned(), uid.clone());
    }
    labels
}

/// Selects exactly this link's proxy pods (and nothing a user may label alike by accident).
pub fn pod_selector(link: &ValidLink) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "devicelink-proxy".to_owned(),
        ),
        (LINK_LABEL.to_owned(), link.name.clone()),
        (LINK_NAMESPACE_LABEL.to_owned(), link.namespace.clone()),
    ])
}

pub fn child_metadata(link: &ValidLink) -> ObjectMeta {
    // An owner reference cannot cross namespaces (the garbage collector would take the owner
    // for gone and delete the child): only children beside their link carry one; the others
    // are the link's by their uid label, and its finalizer removes them.
    let beside_the_link = link.children_namespace == link.namespace;
    ObjectMeta {
        name: Some(link.child_name()),
        namespace: Some(link.children_namespace.clone()),
        labels: Some(child_labels(link)),
        // Without a uid (a file given to `render` that never was in a cluster) there is nothing
        // to point at yet; the controller always has one.
        owner_references: link.uid.as_ref().filter(|_| beside_the_link).map(|uid| {
            vec![OwnerReference {
                api_version: format!("{GROUP}/v1alpha1"),
                kind: "DeviceLink".to_owned(),
                name: link.name.clone(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        }),
        ..ObjectMeta::default()
    }
}

/// The public endpoint: only the allowed ranges get through the load balancer, and
/// `externalTrafficPolicy: Local` keeps the client's address so the proxy's own ACL sees it.
pub fn render_service(link: &ValidLink) -> Service {
    let annotations = &link.service.annotations;
    Service {
        metadata: ObjectMeta {
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
            ..child_metadata(link)
        },
        spec: Some(ServiceSpec {
            load_balancer_class: link.service.load_balancer_class.clone(),
            type_: Some("LoadBalancer".to_owned()),
            external_traffic_policy: Some("Local".to_owned()),
            load_balancer_source_ranges: Some(
                link.allowed_source_ranges
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
            // Both families where the cluster has them, so IPv6 allowed ranges can be used.
            ip_family_policy: Some("PreferDualStack".to_owned()),
            selector: Some(pod_selector(link)),
            ports: Some(vec![ServicePort {
                name: Some("link".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: i32::from(link.port),
                target_port: Some(IntOrString::String("link".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The proxy container's memory limit. The proxy reads it as its budget (`--memory-budget
/// auto`) and sizes its queues to it; `--max-connections` below is what fits it, by the same
/// arithmetic (`devicelink_spec::memory::plan`), so the two agree: 10 spliced connections at a
/// 32 MiB queue, the smallest that keeps one stream fast. A limit, not a request: an idle or
/// interactive link uses a few MiB.
pub const PROXY_MEMORY_LIMIT: u64 = 1 << 30;

/// The proxy's command line: the links file and the process-wide settings. Nothing in it
/// changes when the link's ACL, expiry or limits do.
pub fn proxy_args(link: &ValidLink) -> Vec<String> {
    use devicelink_spec::memory::{MemoryRequest, Plane, RESERVE_BYTES, plan};
    let plane = match link.data_plane {
        crate::resource::DataPlane::Userspace => Plane::Copy,
        _ => Plane::Splice,
    };
    let request = MemoryRequest {
        budget: PROXY_MEMORY_LIMIT,
        reserve: RESERVE_BYTES,
        plane,
        max_connections: None,
        queue: None,
        socket_buffer: None,
        // The proxy runs the source ACL on the pod's interface at TC ingress (below, its
        // default), which copies nothing, and plans with that, so the limit passed here is the
        // one its own plan arrives at.
        behind_skb_xdp: false,
    };
    let max_connections = plan(&request).map_or(1, |fit| fit.max_connections);
    vec![
        "--config".to_owned(),
        format!("{LINKS_DIR}/{LINKS_FILE}"),
        "--data-plane".to_owned(),
        link.data_plane.as_flag().to_owned(),
        "--xdp-interface".to_owned(),
        POD_INTERFACE.to_owned(),
        "--metrics".to_owned(),
        format!("[::]:{PROXY_METRICS_PORT}"),
        "--log-format".to_owned(),
        "json".to_owned(),
        "--max-connections".to_owned(),
        max_connections.to_string(),
    ]
}

fn http_probe(path: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// One proxy pod, one container, no sidecar.
pub fn render_deployment(link: &ValidLink, proxy: &ProxyImage) -> Deployment {
    let container = Container {
        name: "proxy".to_owned(),
        image: Some(proxy.image.clone()),
        image_pull_policy: proxy.pull_policy.clone(),
        args: Some(proxy_args(link)),
        volume_mounts: Some(vec![VolumeMount {
            name: "links".to_owned(),
            mount_path: LINKS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("link".to_owned()),
                container_port: i32::from(PROXY_LISTEN_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: i32::from(PROXY_METRICS_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 2)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("50m".to_owned())),
                ("memory".to_owned(), Quantity("32Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity(PROXY_MEMORY_LIMIT.to_string()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(proxy_security_context()),
        ..Container::default()
    };
    Deployment {
        metadata: child_metadata(link),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(pod_selector(link)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(child_labels(link)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // Mounted as a directory (not a subPath) so that a change reaches the pod
                    // without a restart: the kubelet swaps the directory's contents.
                    volumes: Some(vec![Volume {
                        name: "links".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: link.child_name(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    // The proxy never talks to the API server.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(proxy_seccomp_profile()),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Least privilege for the eBPF data plane:
/// - BPF loads the programs and creates the maps (the LPM tries, the sockhash);
/// - NET_ADMIN attaches XDP to the pod's eth0 and the sk_skb verdict to the sockhash;
/// - PERFMON lets the verifier accept the pointer arithmetic and helpers the programs use.
///
/// Not SYS_RESOURCE: kernels from 5.11 charge BPF memory to the cgroup instead of RLIMIT_MEMLOCK,
/// and CAP_BPF itself needs 5.8; on 5.8-5.10 `dataPlane: auto` falls back to the userspace copy
/// rather than widening every link's privileges. Not privileged, no host network, no bpffs
/// mount (nothing is pinned). It runs as uid 0 because Kubernetes grants added capabilities to
/// root only (there are no ambient capabilities for non-root containers); every other
/// capability is dropped and privilege escalation is off, so that root is confined to these three.
fn proxy_security_context() -> SecurityContext {
    use devicelink_spec::pod_security::{
        PROXY_CAPABILITIES, PROXY_DROPPED_CAPABILITIES, PROXY_NO_NEW_PRIVILEGES,
        PROXY_READ_ONLY_ROOT, PROXY_RUN_AS_GROUP, PROXY_RUN_AS_USER,
    };
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(!PROXY_NO_NEW_PRIVILEGES),
        read_only_root_filesystem: Some(PROXY_READ_ONLY_ROOT),
        run_as_user: Some(PROXY_RUN_AS_USER),
        run_as_group: Some(PROXY_RUN_AS_GROUP),
        run_as_non_root: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(owned(PROXY_DROPPED_CAPABILITIES)),
            add: Some(owned(PROXY_CAPABILITIES)),
        }),
        ..SecurityContext::default()
    }
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// The pod's seccomp profile, as `devicelink_spec::pod_security` names it.
fn proxy_seccomp_profile() -> SeccompProfile {
    SeccompProfile {
        type_: PROXY_SECCOMP.kubernetes_type().to_owned(),
        localhost_profile: PROXY_SECCOMP.localhost_profile().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{DataPlane, DeviceAddr, Lifetime, ServiceOptions, format_instant};

    fn link() -> ValidLink {
        ValidLink {
            name: "pump-17-ssh".into(),
            namespace: "plant-a".into(),
            children_namespace: "plant-a".into(),
            uid: Some("5c1c1b5e-0000-4000-8000-000000000017".into()),
            enabled: true,
            device: DeviceAddr {
                host: "10.20.30.40".into(),
                port: 22,
            },
            port: 2222,
            allowed_source_ranges: vec![
                "203.0.113.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            lifetime: Lifetime::Ttl(Duration::from_secs(7200)),
            idle_timeout: Some(Duration::from_secs(900)),
            max_connections: Some(16),
            max_connections_per_source: None,
            connect_rate_per_source: None,
            data_plane: DataPlane::Ebpf,
            service: ServiceOptions::default(),
        }
    }

    fn image() -> ProxyImage {
        ProxyImage {
            image: "ghcr.io/example/devicelink-proxy:0.1.0".into(),
            pull_policy: Some("IfNotPresent".into()),
        }
    }

    fn expires() -> Timestamp {
        "2026-11-25T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn service_is_a_source_restricted_load_balancer_keeping_client_addresses() {
        let service = render_service(&link());
        let spec = service.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.external_traffic_policy.as_deref(),
            Some("Local"),
            "the proxy's ACL needs real client addresses"
        );
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec![
                "203.0.113.0/24".to_owned(),
                "2001:db8::/32".to_owned()
            ])
        );
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 2222, "the endpoint port is spec.port");
        assert_eq!(port.target_port, Some(IntOrString::String("link".into())));
        assert_eq!(
            spec.selector
                .expect("selector")
                .get(LINK_LABEL)
                .map(String::as_str),
            Some("pump-17-ssh"),
            "selects only this link's pods"
        );
    }

    #[test]
    fn both_children_are_owned_by_the_link_and_labelled() {
        let children = render(&link(), expires(), &image());
        for meta in [&children.service.metadata, &children.deployment.metadata] {
            assert_eq!(meta.name.as_deref(), Some("pump-17-ssh-8b7d191b"));
            assert_eq!(meta.namespace.as_deref(), Some("plant-a"));
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(
                labels
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str),
                Some(MANAGED_BY)
            );
            assert_eq!(
                labels.get(LINK_LABEL).map(String::as_str),
                Some("pump-17-ssh")
            );
            let owner = &meta.owner_references.as_ref().expect("owner references")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("DeviceLink", "pump-17-ssh")
            );
            assert_eq!(owner.api_version, "devicelink.io/v1alpha1");
            assert_eq!(
                owner.controller,
                Some(true),
                "garbage collection deletes children with the link"
            );
        }
    }

    #[test]
    fn service_options_reach_the_service_and_the_proxy_flag() {
        let plain = render(&link(), expires(), &image());
        assert!(plain.service.metadata.annotations.is_none());
        let proxy_protocol = |children: &Children| {
            let file = &children.config_map.data.as_ref().unwrap()[LINKS_FILE];
            let parsed = devicelink_spec::parse_links_file(file).unwrap();
            parsed[0].proxy_protocol
        };
        assert!(!proxy_protocol(&plain));
        let mut behind = link();
        behind.service = ServiceOptions {
            annotations: [(
                "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol".to_owned(),
                "*".to_owned(),
            )]
            .into_iter()
            .collect(),
            load_balancer_class: Some("service.k8s.aws/nlb".to_owned()),
            proxy_protocol: true,
        };
        let children = render(&behind, expires(), &image());
        assert_eq!(
            children.service.metadata.annotations,
            Some(behind.service.annotations.clone())
        );
        let spec = children.service.spec.clone().unwrap();
        assert_eq!(
            spec.load_balancer_class.as_deref(),
            Some("service.k8s.aws/nlb")
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert!(
            proxy_protocol(&children),
            "the proxy reads each client's address from the PROXY header"
        );
    }

    #[test]
    fn children_in_the_proxies_namespace_are_the_links_by_labels_not_owner_references() {
        let mut link = link();
        link.children_namespace = "devicelink-proxies".into();
        let children = render(&link, expires(), &image());
        let meta = &children.deployment.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("devicelink-proxies"));
        assert!(
            meta.owner_references.is_none(),
            "an owner reference across namespaces would have the child collected at once"
        );
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LINK_NAMESPACE_LABEL], "plant-a");
        assert_eq!(
            labels[LINK_UID_LABEL],
            "5c1c1b5e-0000-4000-8000-000000000017"
        );
        let selector = children.service.spec.unwrap().selector.unwrap();
        assert_eq!(
            selector[LINK_NAMESPACE_LABEL], "plant-a",
            "a namesake link of another namespace has pods of its own"
        );
    }

    #[test]
    fn link_without_uid_renders_without_owner_reference() {
        let mut link = link();
        link.uid = None;
        assert!(render_service(&link).metadata.owner_references.is_none());
    }

    fn links_file(link: &ValidLink) -> serde_json::Value {
        serde_json::from_str(&render_links_file(link, expires())).expect("the links file is JSON")
    }

    #[test]
    fn the_links_file_carries_every_setting_of_the_link() {
        assert_eq!(
            links_file(&link()),
            serde_json::json!({"links": [{
                "name": "pump-17-ssh",
                "listen": "[::]:10000",
                "device": "10.20.30.40:22",
                "allowedSourceRanges": ["203.0.113.0/24", "2001:db8::/32"],
                "expiresAt": "2026-11-25T10:00:00Z",
                "maxConnections": 16,
                "idleTimeout": "15m",
            }]})
        );
    }

    #[test]
    fn per_source_shares_reach_the_links_file() {
        let mut link = link();
        link.max_connections_per_source = Some(2);
        link.connect_rate_per_source = Some(0);
        let entry = &links_file(&link)["links"][0];
        assert_eq!(entry["maxConnectionsPerSource"], 2);
        assert_eq!(
            entry["connectRatePerSource"], 0,
            "0 means no limit, and is said"
        );
    }

    #[test]
    fn optional_settings_are_left_to_the_proxy_defaults() {
        let mut link = link();
        link.idle_timeout = None;
        link.max_connections = None;
        let entry = &links_file(&link)["links"][0];
        assert!(entry.get("idleTimeout").is_none());
        assert!(entry.get("maxConnections").is_none());
        assert!(
            entry.get("expiresAt").is_some(),
            "expiry is always enforced by the proxy too"
        );
    }

    #[test]
    fn the_pod_does_not_change_when_the_acl_expiry_or_limits_do() {
        let mut edited = link();
        edited.allowed_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        edited.max_connections = Some(2);
        edited.idle_timeout = None;
        let later = Timestamp::from_second(expires().as_second() + 3600).unwrap();
        let before = render(&link(), expires(), &image());
        let after = render(&edited, later, &image());
        assert_eq!(
            before.deployment, after.deployment,
            "the Deployment (and so the pod) stays: the proxy re-reads its links file"
        );
        assert_ne!(before.config_map, after.config_map);
        assert_ne!(before.links_revision(), after.links_revision());
        assert_eq!(
            proxy_args(&link()).join(" "),
            "--config /etc/devicelink/links.json --data-plane ebpf --xdp-interface eth0 \
             --metrics [::]:9100 --log-format json --max-connections 10"
        );
    }

    #[test]
    fn the_pod_mounts_the_links_file_as_a_directory() {
        let deployment = render_deployment(&link(), &image());
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(
            volume.config_map.as_ref().unwrap().name,
            "pump-17-ssh-8b7d191b"
        );
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, LINKS_DIR);
        assert!(
            mount.sub_path.is_none(),
            "a subPath mount would never see a change"
        );
    }

    #[test]
    fn deployment_runs_one_unprivileged_proxy_with_ebpf_capabilities_and_probes() {
        let deployment = render_deployment(&link(), &image());
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.containers.len(), 1, "one container, no sidecar");
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/example/devicelink-proxy:0.1.0")
        );
        let security = container
            .security_context
            .as_ref()
            .expect("security context");
        assert_eq!(security.privileged, Some(false));
        let caps = security.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.add,
            Some(vec!["BPF".into(), "NET_ADMIN".into(), "PERFMON".into()])
        );
        assert_eq!(caps.drop, Some(vec!["ALL".into()]));
        let readiness = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("readiness");
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        let liveness = container
            .liveness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("liveness");
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        // The pod template's labels must satisfy the Deployment's selector, or the API server rejects it.
        let template_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("template labels");
        for (key, value) in spec.selector.match_labels.expect("selector") {
            assert_eq!(
                template_labels.get(&key),
                Some(&value),
                "selector label {key}"
            );
        }
    }

    /// Values at the edges of what a DeviceLink accepts render into a links file that the
    /// proxy's own checks (devicelink-spec's `parse_links_file`) read back as the same link.
    #[test]
    fn edge_values_a_devicelink_accepts_render_into_a_links_file_the_proxy_reads_back() {
        let longest_name = format!(
            "p{}",
            "-7".repeat(crate::resource::MAX_LINK_NAME_LEN / 2 - 1)
        );
        let every_range: Vec<String> = (0..64).map(|i| format!("10.{i}.0.0/16")).collect();
        let cases = [
            (
                "pump-17-ssh".to_owned(),
                "device: {host: 10.20.30.40, port: 1}, allowedSourceRanges: [0.0.0.0/0, '::/0'], ttl: 1s, idleTimeout: 1s, maxConnections: 1".to_owned(),
            ),
            (
                longest_name,
                "device: {host: '[FD00::2]', port: 65535}, port: 1, allowedSourceRanges: [203.0.113.7/32, '2001:db8::7/128'], expiresAt: '9999-12-31T23:59:59Z', idleTimeout: 36500d, maxConnections: 4096, dataPlane: userspace".to_owned(),
            ),
            (
                "p".to_owned(),
                format!(
                    "device: {{host: Pump-17.Plant-A.Internal, port: 5900}}, allowedSourceRanges: [{}], ttl: 36500d, idleTimeout: 1d2h3m4s",
                    every_range.join(", ")
                ),
            ),
            (
                "rdp".to_owned(),
                "device: {host: '2001:db8::7', port: 3389}, allowedSourceRanges: [198.51.100.0/24], expiresAt: '2026-11-25T12:00:00.5+02:00', dataPlane: ebpf".to_owned(),
            ),
        ];
        let enabled_at: Timestamp = "2026-11-25T08:00:00Z".parse().unwrap();
        for (name, spec) in cases {
            let yaml = format!(
                "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {{name: {name}, namespace: plant-a}}\nspec: {{{spec}}}\n"
            );
            let resource: crate::resource::DeviceLink =
                serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            let valid = resource
                .validate()
                .unwrap_or_else(|e| panic!("the resource accepts {spec}: {e}"));
            let expires_at = valid.lifetime.expires_at(enabled_at);
            let text = render_links_file(&valid, expires_at);
            let read = devicelink_spec::parse_links_file(&text).unwrap_or_else(|e| {
                panic!("the proxy refuses what the operator rendered for {spec}: {e}\n{text}")
            });
            assert_eq!(read.len(), 1, "{text}");
            let proxy = &read[0];
            assert_eq!(proxy.name, valid.name);
            assert_eq!(proxy.listen.port(), PROXY_LISTEN_PORT);
            assert_eq!(proxy.device, valid.device, "{spec}");
            assert_eq!(proxy.allowed_source_ranges, valid.allowed_source_ranges);
            assert_eq!(
                proxy.expires_at.map(devicelink_spec::format_instant),
                Some(format_instant(expires_at)),
                "{spec}"
            );
            assert_eq!(proxy.max_connections, valid.max_connections);
            assert_eq!(proxy.idle_timeout, valid.idle_timeout, "{spec}");
            assert!(proxy.enabled, "an enabled link is rendered open");
            assert_eq!(
                proxy_args(&valid)[..2],
                ["--config".to_owned(), format!("{LINKS_DIR}/{LINKS_FILE}")],
                "the proxy reads the link from that file"
            );
        }
    }

    #[test]
    fn ipv6_device_is_bracketed_in_the_links_file() {
        let mut link = link();
        link.device = DeviceAddr {
            host: "2001:db8::7".into(),
            port: 5900,
        };
        assert_eq!(
            links_file(&link)["links"][0]["device"],
            "[2001:db8::7]:5900"
        );
    }
}
