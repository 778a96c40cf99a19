//! The console (local backend) started in the test bed's proxy namespace, supervising a real
//! `devicelink-proxy` on the eBPF data plane, and called over its HTTP API from that namespace.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    PROXY_FRONT_IFACE, PROXY_FRONT_V4, Process, Topology, http, proxy_binary,
};
use serde_json::Value;

pub const CONSOLE: &str = env!("CARGO_BIN_EXE_devicelink-console");
/// Where the API listens by default: loopback in the proxy namespace.
pub const API: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 18_080);
pub const SSH_PORT: u16 = 2222;
pub const DATA_PORT: u16 = 2223;

pub struct Console {
    pub process: Process,
    pub netns: PathBuf,
    pub token: String,
    /// Where the console listens, in the proxy namespace.
    pub api: SocketAddr,
}

impl Console {
    pub fn start(topology: &Topology, data: &Path, token: &str) -> Self {
        Self::start_on(topology, data, token, API, &[])
    }

    /// The console listening on `api`, with `extra` arguments to `serve`.
    pub fn start_on(
        topology: &Topology,
        data: &Path,
        token: &str,
        api: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let mut cmd = topology.proxy.command(CONSOLE);
        cmd.env("RUST_LOG", "info")
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", &api.to_string()])
            .arg("--proxy-binary")
            .arg(proxy_binary().expect("the proxy is built"))
            .args(["--data-plane", "ebpf", "--xdp-interface", PROXY_FRONT_IFACE])
            .args(["--public-host", &PROXY_FRONT_V4.to_string()])
            .args(extra);
        let process = Process::start("devicelink-console", cmd).expect("console starts");
        let console = Self {
            process,
            netns: PathBuf::from(format!("/run/netns/{}", topology.proxy.name())),
            token: token.to_string(),
            api,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while console.call("GET", "/healthz", None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "console not up:\n{}",
                console.process.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        console
    }

    /// One HTTP request from inside the proxy namespace: `(status, JSON body or Null)`.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let authorization = format!("Bearer {}", self.token);
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Content-Type", "application/json"),
        ];
        match http::request_in(
            &self.netns,
            self.api,
            method,
            path,
            &headers,
            body.as_deref(),
        ) {
            Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    pub fn link(&self, name: &str) -> Value {
        let (status, link) = self.call(
            "GET",
            &format!("/api/v1/namespaces/plant-a/links/{name}"),
            None,
        );
        assert_eq!(status, 200, "GET link {name}: {link}");
        link
    }

    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let link = self.link(name);
            if link["status"]["state"] == state {
                return link;
            }
            assert!(
                Instant::now() < deadline,
                "link {name} never became {state}: {link}\n{}",
                self.process.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn front(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), port)
}

/// An admin token named ada.
pub fn token(data: &Path) -> String {
    token_for(data, "ada", "admin")
}

/// A token created on the host, as an operator would with the console's CLI.
pub fn token_for(data: &Path, name: &str, role: &str) -> String {
    let output = Command::new(CONSOLE)
        .args(["token", "create", name, "--role", role, "--data"])
        .arg(data)
        .output()
        .expect("token create runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}
