//! What `kubectl apply -k deploy/` sends, checked offline: `kubectl kustomize deploy/` through
//! `kubernetes-validate --strict`, and every Deployment in it (operator, console) unprivileged:
//! non-root, read-only root, no privilege escalation, every capability dropped, probes and
//! resources set, and the images named as `cargo xtask image` tags them.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize as _;
use serde_json::Value;

/// Kubernetes version the manifests target (the k8s-openapi feature the operator builds with).
const KUBERNETES_VERSION: &str = "1.33.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `tool <version_args>`; when it fails, says loudly what was not checked.
fn available(tool: &str, version_args: &[&str], install: &str) -> bool {
    let found = Command::new(tool)
        .args(version_args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let banner = "=".repeat(78);
        let _ = writeln!(
            std::io::stderr(),
            "\n{banner}\nSKIPPED: {tool} is not installed, so deploy/'s kustomization was NOT \
             checked.\nInstall it: {install}\n{banner}\n"
        );
    }
    found
}

fn kubectl_available() -> bool {
    available(
        "kubectl",
        &["version", "--client"],
        "https://kubernetes.io/docs/tasks/tools/ (its `kustomize` works offline)",
    )
}

fn kustomized() -> String {
    let output = Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy_dir())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

#[test]
fn the_kustomization_passes_kubernetes_validate_strict() {
    if !kubectl_available()
        || !available(
            "kubernetes-validate",
            &["--version"],
            "python3 -m pip install kubernetes-validate==1.34.1 (cargo xtask setup does)",
        )
    {
        return;
    }
    let yaml = kustomized();
    let mut validate = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubernetes-validate");
    validate
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write the manifests");
    let output = validate.wait_with_output().expect("kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate --strict:\n{report}"
    );
    // Kubernetes' schemas do not know devicelink's own kinds (the DeviceLinkPolicy shipped in
    // deploy/): the CRD's schema checks those, in the CRD tests.
    let warnings: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("WARN"))
        .filter(|line| !line.contains("with api version devicelink.io/"))
        .collect();
    assert!(warnings.is_empty(), "kubernetes-validate warned:\n{report}");
    for kind in [
        "deployment/devicelink-operator",
        "deployment/devicelink-console",
    ] {
        assert!(report.contains(kind), "{kind} validated:\n{report}");
    }
}

#[test]
fn every_deployment_in_the_kustomization_runs_unprivileged_with_probes_and_built_images() {
    if !kubectl_available() {
        return;
    }
    let version = env!("CARGO_PKG_VERSION");
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&kustomized())
        .map(|document| Value::deserialize(document).expect("YAML"))
        .collect();
    let deployments: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    let names: Vec<&str> = deployments
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["devicelink-console", "devicelink-operator"]);
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert!(pod["hostNetwork"].is_null(), "{name}");
        for container in pod["containers"].as_array().expect("containers") {
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["privileged"], false, "{name}");
            assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
            assert!(
                security["capabilities"]["add"].is_null(),
                "{name} adds none"
            );
            for probe in ["livenessProbe", "readinessProbe"] {
                assert!(container[probe]["httpGet"].is_object(), "{name}: {probe}");
            }
            assert!(
                container["resources"]["requests"]["memory"].is_string()
                    && container["resources"]["limits"]["memory"].is_string(),
                "{name}: memory request and limit"
            );
            assert_eq!(
                container["image"],
                format!("{name}:{version}"),
                "{name}: the image `cargo xtask image` tags"
            );
        }
    }
    let operator = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "devicelink-operator")
        .unwrap();
    let proxy_image = operator["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DEVICELINK_PROXY_IMAGE")
        .expect("DEVICELINK_PROXY_IMAGE");
    assert_eq!(proxy_image["value"], format!("devicelink-proxy:{version}"));
}
