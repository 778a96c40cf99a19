//! The `devicelink` binary's exit codes and messages where no cluster is needed to see them.

use std::process::Command;

fn devicelink(args: &[&str], kubeconfig: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_devicelink"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run devicelink")
}

#[test]
fn usage_errors_exit_2_and_say_what_to_write() {
    let output = devicelink(
        &["open", "x", "--device", "10.0.0.1", "--for", "2h"],
        "/nonexistent",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HOST:PORT"));
}

#[test]
fn unreachable_cluster_exits_6_naming_the_server_and_what_to_check() {
    let dir = std::env::temp_dir().join(format!("devicelink-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {server: 'https://127.0.0.1:9'}\n  name: c\ncontexts:\n- context: {cluster: c, user: u}\n  name: c\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let output = devicelink(&["list"], kubeconfig.to_str().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("https://127.0.0.1:9"), "{stderr}");
    assert!(stderr.contains("kubectl cluster-info"), "{stderr}");
}

#[test]
fn missing_kubeconfig_exits_6() {
    let output = Command::new(env!("CARGO_BIN_EXE_devicelink"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/kubeconfig"));
}

#[test]
fn the_kubectl_plugin_binary_presents_itself_as_kubectl_devicelink() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-devicelink"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("kubectl devicelink"));
}
