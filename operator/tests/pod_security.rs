//! The proxy Deployment the operator renders carries exactly the privileges of
//! `devicelink_spec::pod_security`, the module the container tests (tests/tests/images.rs) run
//! the proxy image with: what is proven there is what the cluster gets.

use std::{path::Path, process::Command};

use devicelink_spec::pod_security::{
    PROXY_CAPABILITIES, PROXY_DROPPED_CAPABILITIES, PROXY_NO_NEW_PRIVILEGES, PROXY_READ_ONLY_ROOT,
    PROXY_RUN_AS_GROUP, PROXY_RUN_AS_USER, PROXY_SECCOMP,
};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// The Deployment `devicelink-operator render` prints for the SSH example: the children the
/// controller applies, by the same rendering.
fn rendered_deployment() -> Value {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/ssh.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_devicelink-operator"))
        .arg("render")
        .arg("-f")
        .arg(example)
        .args(["--now", "2026-11-25T08:00:00Z"])
        .output()
        .expect("run devicelink-operator render");
    assert!(
        output.status.success(),
        "render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| Value::deserialize(document).expect("rendered YAML"))
        .find(|object| object["kind"] == "Deployment")
        .expect("a Deployment among the rendered children")
}

#[test]
fn the_rendered_proxy_deployment_grants_exactly_the_shared_pod_security() {
    let deployment = rendered_deployment();
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    assert_eq!(
        containers[0]["securityContext"],
        json!({
            "privileged": false,
            "allowPrivilegeEscalation": !PROXY_NO_NEW_PRIVILEGES,
            "readOnlyRootFilesystem": PROXY_READ_ONLY_ROOT,
            "runAsUser": PROXY_RUN_AS_USER,
            "runAsGroup": PROXY_RUN_AS_GROUP,
            "runAsNonRoot": false,
            "capabilities": {"add": PROXY_CAPABILITIES, "drop": PROXY_DROPPED_CAPABILITIES},
        }),
        "the container's security context, field for field"
    );
    let mut seccomp = json!({"type": PROXY_SECCOMP.kubernetes_type()});
    if let Some(profile) = PROXY_SECCOMP.localhost_profile() {
        seccomp["localhostProfile"] = json!(profile);
    }
    assert_eq!(
        pod["securityContext"],
        json!({"seccompProfile": seccomp}),
        "the pod's security context"
    );
    assert_eq!(pod["hostNetwork"], Value::Null, "no host network");
    assert_eq!(pod["automountServiceAccountToken"], false);
}
