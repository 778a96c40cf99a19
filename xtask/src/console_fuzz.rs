//! `cargo xtask console-fuzz`: schemathesis generates requests from the console's own OpenAPI
//! document and sends them to a running console (local backend, fresh data directory, an admin
//! token): no answer may be a 5xx, and none may break the schema the document promises.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{setup, workspace};

/// Kills the console when the fuzzing ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    workspace::run(Command::new("cargo").args(["build", "--package", "devicelink-console"]))?;
    let console = workspace::root().join("target/debug/devicelink-console");
    let data = std::env::temp_dir().join(format!("devicelink-console-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);

    let output = Command::new(&console)
        .args(["token", "create", "fuzzer", "--role", "admin", "--data"])
        .arg(&data)
        .output()
        .context("creating the fuzzer's token")?;
    if !output.status.success() {
        bail!(
            "token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let token = String::from_utf8(output.stdout)?.trim().to_owned();

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let _running = Running(
        Command::new(&console)
            .args([
                "serve",
                "--without-proxy",
                "--listen",
                &listen,
                "--port-range",
                "20000-29999",
                "--data",
            ])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the console")?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        if Instant::now() > deadline {
            bail!("the console did not listen on {listen} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Run from the data directory: schemathesis leaves its cache in the working directory.
    let status = Command::new("schemathesis")
        .current_dir(&data)
        .args(["run", &format!("http://{listen}/api/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "50", "--seed", "1"])
        // Sessions live in the proxy, which this run does not start (they answer 503).
        .args(["--exclude-tag", "sessions"])
        .status()
        .context("starting schemathesis (cargo xtask setup installs it)")?;
    let _ = std::fs::remove_dir_all(&data);
    if !status.success() {
        bail!("schemathesis found answers that break the console's OpenAPI document: {status}");
    }
    Ok(())
}
