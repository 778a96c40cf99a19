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
