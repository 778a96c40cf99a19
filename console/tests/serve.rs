//! The binary as an operator runs it: real sockets, a real certificate (openssl), a real client (curl).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const CONSOLE: &str = env!("CARGO_BIN_EXE_devicelink-console");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("devicelink-console-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the console never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(data: &Path, name: &str, role: &str) -> String {
    let out = Command::new(CONSOLE)
        .args(["token", "create", name, "--role", role, "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn with_a_certificate_the_console_serves_https_that_curl_trusts() {
    let dir = Dir::new("tls");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let data = dir.0.join("data");
    let viewer = token(&data, "vera", "viewer");
    let port = free_port();
    let _console = Running(
        Command::new(CONSOLE)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tls-cert",
            ])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--data")
            .arg(&data)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let curl = |path: &str, token: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(&cert);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(curl("/healthz", None).ends_with("\n200"));
    let listed = curl("/api/v1/namespaces/default/links", Some(&viewer));
    assert!(listed.ends_with("\n200"), "{listed}");
    assert!(listed.starts_with("{\"items\":[]"), "{listed}");
    assert!(curl("/api/v1/namespaces/default/links", None).ends_with("\n401"));
}

#[test]
fn plain_http_off_loopback_is_refused_unless_called_insecure() {
    let dir = Dir::new("plain");
    let out = Command::new(CONSOLE)
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--insecure-plain-http-on-any-address"),
        "{said}"
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_link_created_through_the_api_lands_in_the_proxys_links_file() {
    let dir = Dir::new("render");
    let admin = token(&dir.0, "ada", "admin");
    let port = free_port();
    let _console = Running(
        Command::new(CONSOLE)
            .args([
                "serve",
                "--without-proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data",
            ])
            .arg(&dir.0)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let body = r#"{"name":"pump-17-ssh","device":{"host":"10.20.30.40","port":22},"port":20022,"allowedSourceRanges":["203.0.113.0/24"],"ttl":"2h"}"#;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {admin}"),
        ])
        .args(["-H", "Content-Type: application/json", "--data", body])
        .arg(format!(
            "http://127.0.0.1:{port}/api/v1/namespaces/plant-a/links"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    let file = dir.0.join("proxy-links.json");
    wait_for("the links file to name the link", || {
        std::fs::read_to_string(&file).is_ok_and(|text| text.contains("plant-a.pump-17-ssh"))
    });
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"listen\": \"[::]:20022\""), "{text}");
    assert!(text.contains("\"device\": \"10.20.30.40:22\""), "{text}");
}

#[test]
fn the_supervised_proxy_is_started_with_its_config_and_socket_and_restarted_when_it_dies() {
    let dir = Dir::new("supervise");
    let starts = dir.0.join("starts");
    let fake = dir.0.join("fake-proxy");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", starts.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port();
    let _console = Running(
        Command::new(CONSOLE)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-plane",
                "userspace",
                "--proxy-binary",
            ])
            .arg(&fake)
            .arg("--data")
            .arg(&dir.0)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the proxy to be started twice", || {
        std::fs::read_to_string(&starts).is_ok_and(|text| text.lines().count() >= 2)
    });
    let first = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let data = dir.0.display();
    assert_eq!(
        first,
        format!(
            "--config {data}/proxy-links.json --control-socket {data}/proxy-control.sock --data-plane userspace"
        )
    );
}
