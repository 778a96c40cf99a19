//! Everything in deploy/ checked offline: the manifests and every example's rendered children
//! against Kubernetes' own schemas (`kubernetes-validate --strict`), and the examples (and
//! known-bad DeviceLinks) against the CRD's CEL rules, evaluated as the API server would.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use devicelink_operator::{render::ProxyImage, render_manifest};
use k8s_openapi::jiff::Timestamp;
use kube::core::cel::Validator;
use serde::Deserialize as _;
use serde_json::Value;

/// Kubernetes version the manifests target (the k8s-openapi feature the operator builds with).
const KUBERNETES_VERSION: &str = "1.33.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn examples() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("examples"))
        .expect("deploy/examples exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "examples for SSH, VNC and RDP: {paths:?}");
    paths
}

/// An instant before every example's absolute expiry.
fn render_time() -> Timestamp {
    "2026-11-25T08:00:00Z".parse().unwrap()
}

fn kubernetes_validate_available() -> bool {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let banner = "=".repeat(78);
        // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n{banner}\nSKIPPED: kubernetes-validate is not installed, so deploy/ manifests were NOT \
             validated.\nInstall it with: python3 -m pip install kubernetes-validate==1.34.1 (cargo xtask setup does)\n{banner}\n"
        );
    }
    found
}

fn kubernetes_validate(files: &[PathBuf]) {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate --strict rejected:\n{report}"
    );
    assert!(
        !report.contains("WARN"),
        "kubernetes-validate warned:\n{report}"
    );
}

#[test]
fn deploy_manifests_pass_kubernetes_validate_strict() {
    if !kubernetes_validate_available() {
        return;
    }
    let files: Vec<PathBuf> = [
        "crd.yaml",
        "namespace.yaml",
        "rbac.yaml",
        "policy-admission.yaml",
        "operator.yaml",
    ]
    .iter()
    .map(|name| deploy_dir().join(name))
    .collect();
    kubernetes_validate(&files);
}

#[test]
fn every_example_renders_children_that_pass_kubernetes_validate_strict() {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rendered-examples");
    std::fs::create_dir_all(&out_dir).unwrap();
    let proxy = ProxyImage {
        image: "devicelink-proxy:0.1.0".into(),
        pull_policy: Some("IfNotPresent".into()),
    };
    let mut rendered = Vec::new();
    for example in examples() {
        let manifest = std::fs::read_to_string(&example).unwrap();
        let yaml = render_manifest(&manifest, render_time(), &proxy, "devicelink-proxies")
            .unwrap_or_else(|e| panic!("{} should render: {e}", example.display()));
        let path = out_dir.join(example.file_name().unwrap());
        std::fs::write(&path, yaml).unwrap();
        rendered.push(path);
    }
    if kubernetes_validate_available() {
        kubernetes_validate(&rendered);
    }
}

/// The CRDs of deploy/crd.yaml (DeviceLink, DeviceLinkPolicy), by kind.
fn crd_schema_of(kind: &str) -> Value {
    let text = std::fs::read_to_string(deploy_dir().join("crd.yaml")).unwrap();
    let crd = serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .find(|crd| crd["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/crd.yaml defines {kind}"));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn crd_schema() -> Value {
    crd_schema_of("DeviceLink")
}

fn cel_errors(object: &Value) -> Vec<String> {
    match Validator::new().validate(&crd_schema(), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn examples_satisfy_the_crds_cel_rules() {
    for example in examples() {
        let object: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
        assert_eq!(
            cel_errors(&object),
            Vec::<String>::new(),
            "{}",
            example.display()
        );
    }
}

fn link_with(spec: Value, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink",
        "metadata": {"name": name, "namespace": "plant-a"},
        "spec": spec,
    })
}

#[test]
fn crd_cel_rules_reject_what_the_operator_rejects() {
    let base = serde_json::json!({"device": {"host": "10.20.30.40", "port": 22}, "allowedSourceRanges": ["203.0.113.0/24"]});
    let with = |extra: Value| {
        let mut spec = base.clone();
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    let cases = [
        (
            link_with(with(serde_json::json!({})), "pump-17-ssh"),
            "exactly one of spec.ttl",
        ),
        (
            link_with(
                with(serde_json::json!({"ttl": "2h", "expiresAt": "2026-11-25T10:00:00Z"})),
                "pump-17-ssh",
            ),
            "exactly one of spec.ttl",
        ),
        (
            link_with(
                with(serde_json::json!({"ttl": "2h", "allowedSourceRanges": ["10.0.0.300/24"]})),
                "pump-17-ssh",
            ),
            "must be a CIDR",
        ),
        (
            link_with(with(serde_json::json!({"ttl": "2h"})), &"a".repeat(53)),
            "at most 52 characters",
        ),
        (
            link_with(with(serde_json::json!({"ttl": "2h"})), "pump.17"),
            "have no '.'",
        ),
        // What the proxy refuses, the API server refuses: zero, and past 36500d.
        (
            link_with(with(serde_json::json!({"ttl": "0m"})), "pump-17-ssh"),
            "spec.ttl must be a positive duration",
        ),
        (
            link_with(with(serde_json::json!({"ttl": "36500d1s"})), "pump-17-ssh"),
            "spec.ttl must be a positive duration of at most 36500d",
        ),
        (
            link_with(
                with(serde_json::json!({"ttl": "2h", "idleTimeout": "36501d"})),
                "pump-17-ssh",
            ),
            "spec.idleTimeout must be a positive duration",
        ),
    ];
    for (object, expected) in cases {
        let errors = cel_errors(&object);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected a CEL error containing {expected:?} for {}, got {errors:?}",
            object["spec"]
        );
    }
    let good = link_with(with(serde_json::json!({"ttl": "2h"})), "pump-17-ssh");
    assert_eq!(cel_errors(&good), Vec::<String>::new());
    let longest = link_with(
        with(serde_json::json!({"ttl": "36500d", "idleTimeout": "1d2h3m4s"})),
        "pump-17-ssh",
    );
    assert_eq!(cel_errors(&longest), Vec::<String>::new());
}

#[test]
fn crd_cel_rules_compile() {
    let compiled = kube::core::cel::compile_schema(&crd_schema());
    assert!(
        !compiled.has_errors(),
        "CEL rules compile: {:?}",
        compiled.compilation_errors()
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    // `kubectl apply --dry-run=client` needs an API server for discovery; `kubectl kustomize`
    // does not, and proves `kubectl apply -k deploy/` sees every object.
    let Ok(output) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy_dir())
        .output()
    else {
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: kubectl is not installed, so deploy/kustomization.yaml was NOT checked\n"
        );
        return;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    for kind in [
        "kind: CustomResourceDefinition",
        "kind: Namespace",
        "kind: ServiceAccount",
        "kind: ClusterRole",
        "kind: ClusterRoleBinding",
        "kind: Role",
        "kind: RoleBinding",
        "kind: Deployment",
        "kind: Service",
        "kind: DeviceLinkPolicy",
        "kind: ValidatingAdmissionPolicy",
        "kind: ValidatingAdmissionPolicyBinding",
    ] {
        assert!(
            text.lines().any(|line| line == kind),
            "{kind} missing from kubectl kustomize deploy/"
        );
    }
}

#[test]
fn the_crd_bounds_connection_limits_at_what_the_proxy_carries() {
    let schema = crd_schema();
    for field in ["maxConnections", "maxConnectionsPerSource"] {
        let bounds = &schema["properties"]["spec"]["properties"][field];
        assert_eq!(
            bounds["maximum"].as_f64(),
            Some(f64::from(devicelink_spec::MAX_CONNECTIONS)),
            "{field}: a value the API server accepts is one the proxy accepts"
        );
        assert_eq!(bounds["minimum"].as_f64(), Some(1.0), "{field}");
    }
}

/// The ValidatingAdmissionPolicy's validations, as the API server reads them.
fn admission_expressions() -> Vec<kube::core::cel::VapExpression> {
    let text = std::fs::read_to_string(deploy_dir().join("policy-admission.yaml")).unwrap();
    let vap = serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .find(|object| object["kind"] == "ValidatingAdmissionPolicy")
        .expect("deploy/policy-admission.yaml holds the ValidatingAdmissionPolicy");
    vap["spec"]["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| kube::core::cel::VapExpression {
            expression: v["expression"].as_str().unwrap().to_owned(),
            message: None,
            message_expression: v["messageExpression"].as_str().map(str::to_owned),
        })
        .collect()
}

/// What admission says of `link` with `policy` as its parameter: the failed messages.
fn admission_refusals(link: &Value, policy: &Value) -> Vec<String> {
    let evaluator = kube::core::cel::VapEvaluator::builder()
        .object(link.clone())
        .params(policy.clone())
        .build();
    evaluator
        .evaluate(&admission_expressions())
        .into_iter()
        .filter(|result| !result.passed)
        .map(|result| result.message.unwrap_or(result.expression))
        .collect()
}

fn shipped_policy() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(deploy_dir().join("policy.yaml")).unwrap())
        .unwrap()
}

#[test]
fn admission_and_the_operator_refuse_the_same_links_under_the_shipped_policy() {
    use devicelink_operator::{policy, resource::DeviceLink};
    let policy_object = shipped_policy();
    let typed: policy::DeviceLinkPolicy = serde_json::from_value(policy_object.clone()).unwrap();
    let link = |spec: Value| {
        serde_json::json!({
            "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink",
            "metadata": {"name": "pump-17-ssh", "namespace": "plant-a"},
            "spec": spec,
        })
    };
    let base = serde_json::json!({"device": {"host": "10.20.30.40", "port": 22}, "allowedSourceRanges": ["203.0.113.0/24"], "ttl": "2h"});
    let with = |extra: Value| {
        let mut spec = base.clone();
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        link(spec)
    };
    // (the link, the words admission's message must hold; None when it is allowed)
    let cases = [
        (with(serde_json::json!({})), None),
        (
            with(serde_json::json!({"ttl": "11h59m", "maxConnections": 1024})),
            None,
        ),
        (
            with(serde_json::json!({"device": {"host": "pump-17.plant-a.internal", "port": 22}})),
            None,
        ),
        (
            with(serde_json::json!({"allowedSourceRanges": ["203.0.113.0/24", "::/0"]})),
            Some("forbiddenSourceRanges: 0.0.0.0/0, ::/0"),
        ),
        (
            with(serde_json::json!({"allowedSourceRanges": ["0.0.0.0/0"]})),
            Some("spec.allowedSourceRanges"),
        ),
        (
            with(serde_json::json!({"ttl": "1d"})),
            Some("spec.ttl: 1d is longer than DeviceLinkPolicy default allows (maxTtl: 12h)"),
        ),
        (
            with(serde_json::json!({"ttl": "12h1s"})),
            Some("maxTtl: 12h"),
        ),
        (
            with(serde_json::json!({"maxConnections": 2048})),
            Some("spec.maxConnections: 2048 is more than"),
        ),
        (
            with(serde_json::json!({"device": {"host": "192.0.2.7", "port": 22}})),
            Some("spec.device.host: 192.0.2.7 is outside"),
        ),
        (
            with(serde_json::json!({"device": {"host": "fd00::7", "port": 22}})),
            None,
        ),
    ];
    let now: Timestamp = "2026-11-25T08:00:00Z".parse().unwrap();
    for (object, refusal) in cases {
        let refusals = admission_refusals(&object, &policy_object);
        match refusal {
            None => assert_eq!(refusals, Vec::<String>::new(), "{}", object["spec"]),
            Some(words) => assert!(
                refusals.len() == 1 && refusals[0].contains(words),
                "admission of {}: expected one refusal saying {words:?}, got {refusals:?}",
                object["spec"]
            ),
        }
        // The operator, the authority, judges the same link the same way.
        let valid = serde_json::from_value::<DeviceLink>(object.clone())
            .unwrap()
            .validate()
            .unwrap();
        let address: Vec<std::net::IpAddr> = valid.device.host.parse().into_iter().collect();
        let resolved = if address.is_empty() {
            vec!["10.20.30.40".parse().unwrap()]
        } else {
            address
        };
        let verdict = policy::check(&valid, now, &resolved, std::slice::from_ref(&typed));
        assert_eq!(
            verdict.is_ok(),
            refusal.is_none(),
            "the operator and admission disagree on {}: {verdict:?}",
            object["spec"]
        );
    }
}

#[test]
fn without_a_forbidden_list_admission_still_refuses_the_whole_internet() {
    let policy = serde_json::json!({"apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLinkPolicy",
        "metadata": {"name": "ttl-only"}, "spec": {"maxTtl": "8h"}});
    let world = serde_json::json!({"spec": {"device": {"host": "10.20.30.40", "port": 22},
        "allowedSourceRanges": ["0.0.0.0/0"], "ttl": "2h"}});
    let refusals = admission_refusals(&world, &policy);
    assert!(
        refusals.len() == 1 && refusals[0].contains("DeviceLinkPolicy ttl-only"),
        "{refusals:?}"
    );
}

#[test]
fn admission_and_the_operator_judge_device_host_names_alike() {
    use devicelink_operator::{policy, resource::DeviceLink};
    let policy_object = serde_json::json!({"apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLinkPolicy",
        "metadata": {"name": "plants"}, "spec": {"forbiddenSourceRanges": [],
        "allowedDeviceHosts": ["*.plant-a.internal", "historian.corp"]}});
    let typed: policy::DeviceLinkPolicy = serde_json::from_value(policy_object.clone()).unwrap();
    let now: Timestamp = "2026-11-25T08:00:00Z".parse().unwrap();
    for (host, allowed) in [
        ("pump-17.plant-a.internal", true),
        ("PUMP-17.Plant-A.internal", true),
        ("historian.corp", true),
        ("10.20.30.40", true),
        ("plant-a.internal", false),
        ("evilplant-a.internal", false),
        ("db.corp", false),
    ] {
        let object = serde_json::json!({
            "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink",
            "metadata": {"name": "pump-17-ssh", "namespace": "plant-a"},
            "spec": {"device": {"host": host, "port": 22}, "allowedSourceRanges": ["203.0.113.0/24"], "ttl": "2h"},
        });
        let refusals = admission_refusals(&object, &policy_object);
        assert_eq!(
            refusals.is_empty(),
            allowed,
            "admission of {host}: {refusals:?}"
        );
        if !allowed {
            assert!(
                refusals[0].contains("allowedDeviceHosts: *.plant-a.internal, historian.corp"),
                "{refusals:?}"
            );
        }
        let valid = serde_json::from_value::<DeviceLink>(object)
            .unwrap()
            .validate()
            .unwrap();
        let verdict = policy::check(
            &valid,
            now,
            &["10.20.30.40".parse().unwrap()],
            std::slice::from_ref(&typed),
        );
        assert_eq!(
            verdict.is_ok(),
            allowed,
            "the operator on {host}: {verdict:?}"
        );
    }
}

#[test]
fn the_policy_crd_accepts_the_shipped_policy_and_refuses_a_bad_network() {
    let schema = crd_schema_of("DeviceLinkPolicy");
    let errors = |object: &Value| match Validator::new().validate(&schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(errors(&shipped_policy()), Vec::<String>::new());
    let mut bad = shipped_policy();
    bad["spec"]["allowedDeviceNetworks"] = serde_json::json!(["10.0.0.0/33"]);
    assert!(
        errors(&bad).iter().any(|e| e.contains("must be a CIDR")),
        "{:?}",
        errors(&bad)
    );
}
