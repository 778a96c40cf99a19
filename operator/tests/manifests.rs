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
    let files: Vec<PathBuf> = ["crd.yaml", "namespace.yaml", "rbac.yaml", "operator.yaml"]
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
        let yaml = render_manifest(&manifest, render_time(), &proxy)
            .unwrap_or_else(|e| panic!("{} should render: {e}", example.display()));
        let path = out_dir.join(example.file_name().unwrap());
        std::fs::write(&path, yaml).unwrap();
        rendered.push(path);
    }
    if kubernetes_validate_available() {
        kubernetes_validate(&rendered);
    }
}

fn crd_schema() -> Value {
    let crd: Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy_dir().join("crd.yaml")).unwrap())
            .unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
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
