//! `devicelink-operator render -f` works with no cluster and says why when it prints nothing.

use std::{io::Write, process::Command};

fn render(manifest: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devicelink-operator"))
        .args([
            "render",
            "-f",
            "-",
            "--now",
            "2026-11-25T08:00:00Z",
            "--proxy-image",
            "example/devicelink-proxy:test",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run devicelink-operator");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const LINK: &str = "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {name: pump-17-ssh, namespace: plant-a}\nspec:\n  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n";

#[test]
fn render_prints_the_links_file_service_and_deployment() {
    let output = render(&format!("{LINK}  ttl: 2h\n"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("kind: ConfigMap")
            && stdout.contains("kind: Service")
            && stdout.contains("kind: Deployment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\\\"expiresAt\\\": \\\"2026-11-25T10:00:00Z\\\""),
        "the links file's expiresAt is start + ttl: {stdout}"
    );
    assert!(
        stdout.contains("image: example/devicelink-proxy:test"),
        "{stdout}"
    );
}

#[test]
fn render_of_an_invalid_link_fails_naming_the_field() {
    let output = render(&format!("{LINK}  ttl: 2h\n  port: 70000\n"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.port") && stderr.contains("1 to 65535"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no children for an invalid link");
}

#[test]
fn render_of_a_disabled_link_says_there_is_nothing_to_apply() {
    let output = render(&format!("{LINK}  ttl: 2h\n  enabled: false\n"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("spec.enabled is false"));
}
