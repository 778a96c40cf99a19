//! The proxies a user would pick instead of devicelink, each configured the same way: listen on
//! the proxy namespace's client-facing address, forward to one device port, admit only the
//! client's address where the peer supports an ACL.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
};

use anyhow::Context as _;
use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, PROXY_FRONT_V4, Process, Proxy, ProxyOptions, Topology,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// No proxy: the client talks to the device through the routing proxy namespace.
    Direct,
    /// devicelink-proxy as users get it by default (`--data-plane auto`), source ACL attached.
    DevicelinkAuto,
    /// devicelink-proxy, eBPF sockmap splice only, source ACL attached (TC ingress).
    DevicelinkEbpf,
    /// devicelink-proxy, userspace copy.
    DevicelinkUserspace,
    /// HAProxy in TCP mode with `option splice-auto`.
    Haproxy,
    /// nginx `stream` proxy.
    Nginx,
    /// socat, one forked process per connection.
    Socat,
}

impl Contender {
    pub const ALL: [Contender; 7] = [
        Contender::Direct,
        Contender::DevicelinkAuto,
        Contender::DevicelinkEbpf,
        Contender::DevicelinkUserspace,
        Contender::Haproxy,
        Contender::Nginx,
        Contender::Socat,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::DevicelinkAuto => "devicelink auto",
            Contender::DevicelinkEbpf => "devicelink eBPF",
            Contender::DevicelinkUserspace => "devicelink userspace",
            Contender::Haproxy => "HAProxy splice",
            Contender::Nginx => "nginx stream",
            Contender::Socat => "socat",
        }
    }

    /// Whether a process in the proxy namespace carries the bytes (direct has none).
    pub fn is_proxy(self) -> bool {
        self != Contender::Direct
    }
}

/// A started contender for one device port; stops on drop, with anything it forked.
pub struct Running {
    /// Where the client connects.
    pub target: SocketAddr,
    process: Option<Started>,
    proxy_ns: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.process.take());
        // socat's per-connection children outlive their parent; the proxy namespace holds
        // nothing else of ours, so everything in it goes.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.proxy_ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill takes no pointers; the pid comes from the bench's own proxy
                    // namespace, so only the bench's processes are signalled.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Each start listens on a port not used before in this run: a port the previous contender
/// closed connections on has TIME_WAIT sockets, and not every peer binds with SO_REUSEADDR.
static NEXT_FRONT_PORT: AtomicU16 = AtomicU16::new(20000);

enum Started {
    Devicelink {
        _proxy: Box<Proxy>,
    },
    Peer {
        _process: Process,
        _config: TempFile,
    },
}

/// A config file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How many connections devicelink must admit at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slots {
    /// What the memory budget gives with the default sizes.
    Default,
    /// Thousands, for the idle-connection measure.
    Many,
}

/// Starts `contender` forwarding a fresh port of the proxy to the device's `device_port`.
/// `devicelink_flags` go to devicelink-proxy only (e.g. the `--splice-sndbuf` sweep).
pub fn start(
    contender: Contender,
    topology: &Topology,
    device_port: u16,
    devicelink_flags: &[String],
    slots: Slots,
) -> anyhow::Result<Running> {
    let device = Topology::device_addr(device_port);
    let proxy_ns = topology.proxy.name().to_string();
    if contender == Contender::Direct {
        return Ok(Running {
            target: device,
            process: None,
            proxy_ns,
        });
    }
    let port = NEXT_FRONT_PORT.fetch_add(1, Ordering::Relaxed);
    let front = Topology::front(port);
    let process = match contender {
        Contender::Direct => unreachable!("handled above"),
        Contender::DevicelinkAuto | Contender::DevicelinkEbpf | Contender::DevicelinkUserspace => {
            let data_plane = match contender {
                Contender::DevicelinkAuto => "auto",
                Contender::DevicelinkEbpf => "ebpf",
                _ => "userspace",
            };
            // The bench's one client stands for many, so it may hold every slot and connect at
            // full speed.
            let mut extra = [
                "--max-connections-per-source",
                "4096",
                "--connect-rate-per-source",
                "0",
            ]
            .map(String::from)
            .to_vec();
            // Room for the idle-connection measure (1,000 by default) with a margin. That many
            // slots make the proxy shrink each connection's queues so the worst case fits its
            // memory budget, as a user asking for them gets; every other measure runs with the
            // sizes and limit the budget gives by default.
            if slots == Slots::Many {
                extra.extend(["--max-connections", "4096"].map(String::from));
            }
            extra.extend_from_slice(devicelink_flags);
            let proxy = Proxy::start(
                topology,
                front,
                device,
                ProxyOptions {
                    data_plane,
                    allow: vec![format!("{CLIENT_V4}/32")],
                    // The source ACL stays attached (TC ingress, the default) so that its cost
                    // is in the numbers; the userspace mode refuses at accept instead.
                    xdp: data_plane != "userspace",
                    extra,
                    ..ProxyOptions::default()
                },
            )
            .with_context(|| format!("starting {}", contender.label()))?;
            Started::Devicelink {
                _proxy: Box::new(proxy),
            }
        }
        Contender::Haproxy => {
            let config = temp_config("haproxy.cfg", &haproxy_config(port, device_port))?;
            let mut cmd = topology.proxy.command("haproxy");
            cmd.arg("-db").arg("-f").arg(&config.0);
            let process = Process::start("haproxy", cmd)?;
            Started::Peer {
                _process: process,
                _config: config,
            }
        }
        Contender::Nginx => {
            let config = temp_config("nginx.conf", &nginx_config(port, device_port))?;
            let mut cmd = topology.proxy.command("nginx");
            cmd.arg("-c")
                .arg(&config.0)
                .args(["-p", "/tmp", "-e", "stderr"]);
            let process = Process::start("nginx", cmd)?;
            Started::Peer {
                _process: process,
                _config: config,
            }
        }
        Contender::Socat => {
            let mut cmd = topology.proxy.command("socat");
            cmd.arg(format!(
                "TCP4-LISTEN:{port},bind={PROXY_FRONT_V4},reuseaddr,fork,backlog=4096,range={CLIENT_V4}/32"
            ))
            .arg(format!("TCP4:{DEVICE_V4}:{device_port}"));
            let process = Process::start("socat", cmd)?;
            Started::Peer {
                _process: process,
                _config: TempFile(PathBuf::new()),
            }
        }
    };
    let running = Running {
        target: front,
        process: Some(process),
        proxy_ns,
    };
    wait_listening(topology, front)
        .with_context(|| format!("{} did not start listening", contender.label()))?;
    Ok(running)
}

fn temp_config(name: &str, text: &str) -> anyhow::Result<TempFile> {
    let path = std::env::temp_dir().join(format!("devicelink-bench-{}-{name}", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(TempFile(path))
}

/// Waits until something listens on `addr` in the proxy namespace, by looking at the
/// namespace's listening sockets (a test connection would count as traffic for some peers).
fn wait_listening(topology: &Topology, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = topology
            .proxy
            .command("ss")
            .args(["-Hltn", &format!("sport = :{}", addr.port())])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&addr.ip().to_string()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("nothing listens on {addr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
}

/// HAProxy in TCP mode, splicing whenever it judges it useful, with the same ACL.
pub fn haproxy_config(port: u16, device_port: u16) -> String {
    format!(
        "global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option splice-auto
frontend clients
    bind {PROXY_FRONT_V4}:{port}
    tcp-request connection reject unless {{ src {CLIENT_V4}/32 }}
    default_backend device
backend device
    server device {DEVICE_V4}:{device_port}
"
    )
}

/// nginx's `stream` module, one worker per core, with the same ACL.
pub fn nginx_config(port: u16, device_port: u16) -> String {
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes auto;
worker_rlimit_nofile 16384;
pid /tmp/devicelink-bench-nginx-{pid}.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
stream {{
    server {{
        listen {PROXY_FRONT_V4}:{port};
        allow {CLIENT_V4};
        deny all;
        proxy_pass {DEVICE_V4}:{device_port};
    }}
}}
",
        pid = std::process::id()
    )
}

/// CPU time (user + system, reaped children included) and memory of every process in the
/// proxy namespace: the contender and anything it forked.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
}

pub fn usage_in(topology: &Topology) -> Usage {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", topology.proxy.name()])
        .output()
    else {
        return Usage::default();
    };
    let mut usage = Usage::default();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        usage.cpu_seconds += cpu_seconds_with_children(pid).unwrap_or(0.0);
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            usage.rss_bytes += kib_field(&rollup, "Rss:") * 1024;
            usage.pss_bytes += kib_field(&rollup, "Pss:") * 1024;
        }
    }
    usage
}

fn cpu_seconds_with_children(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime stime cutime cstime: socat's finished per-connection children land in cutime.
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf takes no pointers and only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / per_second)
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_get_the_same_acl_and_device() {
        let haproxy = haproxy_config(20001, 5201);
        assert!(haproxy.contains("src 10.77.1.2/32") && haproxy.contains("10.77.2.2:5201"));
        assert!(haproxy.contains("bind 10.77.1.1:20001"));
        assert!(
            haproxy.contains("option splice-auto"),
            "the performance goals compare against HAProxy with splicing"
        );
        let nginx = nginx_config(20001, 5201);
        assert!(nginx.contains("allow 10.77.1.2;") && nginx.contains("deny all;"));
        assert!(
            nginx.contains("proxy_pass 10.77.2.2:5201;")
                && nginx.contains("listen 10.77.1.1:20001;")
        );
    }

    #[test]
    fn smaps_fields_parse_in_kib() {
        let text = "Rss:                1234 kB\nPss:                 567 kB\n";
        assert_eq!(kib_field(text, "Rss:"), 1234);
        assert_eq!(kib_field(text, "Pss:"), 567);
        assert_eq!(kib_field(text, "Swap:"), 0);
    }
}
