//! `devicelink-proxy` as a real process in the topology's proxy namespace: finding the binary,
//! starting it with the flags a test asks for, waiting until it is ready, reading its metrics,
//! and stopping it as a user would.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    http::http_get_in,
    process::Process,
    topology::{CLIENT_V4, CLIENT_V6, PROXY_FRONT_IFACE, Topology},
};

/// Where the proxy binary is: `DEVICELINK_PROXY_BIN`, or the workspace's release build, or its
/// debug build.
pub fn proxy_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("DEVICELINK_PROXY_BIN") {
        return Ok(path.into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["release", "debug"] {
        let path = target.join(profile).join("devicelink-proxy");
        if path.exists() {
            return Ok(path);
        }
    }
    bail!(
        "devicelink-proxy is not built; run `cargo build --release -p devicelink-proxy` (the README's test command does)"
    )
}

/// `devicelink-proxy` running in the topology's proxy namespace.
pub struct Proxy {
    pub process: Process,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    netns: PathBuf,
}

/// Flags for [`Proxy::start`] beyond listen/device/metrics.
pub struct ProxyOptions<'a> {
    pub data_plane: &'a str,
    pub allow: Vec<String>,
    pub xdp: bool,
    pub extra: Vec<String>,
    /// A program (with its arguments) that starts the proxy, e.g. `setpriv` to drop
    /// capabilities; empty for none.
    pub launcher: Vec<String>,
    /// A cgroup's `cgroup.procs` to start the proxy in. The proxy then enters its namespace
    /// with `nsenter`, which (unlike `ip netns exec`) leaves `/sys` as it is, so the proxy sees
    /// its cgroup's files.
    pub cgroup: Option<PathBuf>,
}

impl Default for ProxyOptions<'_> {
    fn default() -> Self {
        Self {
            data_plane: "ebpf",
            allow: vec![format!("{CLIENT_V4}/32"), format!("{CLIENT_V6}/128")],
            xdp: true,
            extra: Vec::new(),
            launcher: Vec::new(),
            cgroup: None,
        }
    }
}

pub const METRICS_PORT: u16 = 9100;

impl Drop for Proxy {
    /// Stops it as a user would (SIGTERM), so it removes what it added to its namespace (XDP,
    /// its quick-ACK route to the device) before the next proxy or peer runs there; killed
    /// only if it does not exit within seconds.
    fn drop(&mut self) {
        if self.process.try_wait().is_none() {
            self.process.signal(libc::SIGTERM);
            let _ = self.process.wait_timeout(Duration::from_secs(5));
        }
    }
}

impl Proxy {
    /// Starts the proxy listening on `listen` for the device at `device` (`--device`: an
    /// address, or `name:port`), and waits until `/readyz` answers 200.
    pub fn start(
        topology: &Topology,
        listen: SocketAddr,
        device: impl std::fmt::Display,
        options: ProxyOptions<'_>,
    ) -> anyhow::Result<Self> {
        let metrics = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), METRICS_PORT);
        let netns = PathBuf::from(format!("/run/netns/{}", topology.proxy.name()));
        let mut cmd = match (&options.cgroup, options.launcher.split_first()) {
            (Some(procs), _) => {
                let mut cmd = std::process::Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display()))
                    .args(["sh", "-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .args(&options.launcher)
                    .arg(proxy_binary()?);
                cmd
            }
            (None, Some((program, args))) => {
                let mut cmd = topology.proxy.command(program);
                cmd.args(args).arg(proxy_binary()?);
                cmd
            }
            (None, None) => topology.proxy.command(proxy_binary()?),
        };
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--device")
            .arg(device.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--data-plane")
            .arg(options.data_plane);
        for allow in &options.allow {
            cmd.arg("--allow").arg(allow);
        }
        if options.xdp {
            cmd.args(["--xdp-interface", PROXY_FRONT_IFACE]);
        }
        cmd.args(&options.extra);
        let process = Process::start("devicelink-proxy", cmd)?;
        let mut proxy = Self {
            process,
            listen,
            metrics,
            netns,
        };
        proxy.wait_ready(Duration::from_secs(20))?;
        Ok(proxy)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait() {
                bail!(
                    "devicelink-proxy exited ({status}) before ready:\n{}",
                    self.process.log()
                );
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "devicelink-proxy not ready after {timeout:?}:\n{}",
                    self.process.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// An HTTP GET against the proxy's metrics address, from inside its namespace.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get_in(&self.netns, self.metrics, path)
    }

    /// Waits until the proxy carries no connection: a client sees its last byte (or EOF) a
    /// moment before the proxy has finished closing and counting that connection.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric("devicelink_connections_active") != 0.0 {
            assert!(
                Instant::now() < deadline,
                "connections still open after 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one Prometheus series (exact name with labels), or 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let Ok((_, text)) = self.get("/metrics") else {
            return f64::NAN;
        };
        parse_metric(&text, series).unwrap_or(0.0)
    }
}

pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
