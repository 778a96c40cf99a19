//! devicelink's test bed: the client / proxy / device topology in real network namespaces, the
//! proxy run as a real process inside it, and small helpers to run code or commands in a
//! namespace. Used by the integration tests in `tests/tests/` and by `cargo xtask bench`.
//!
//! ```text
//!  client ns                      proxy ns                        device ns
//!  eth0 10.77.1.2 (+ .3)  <--veth-->  to-client 10.77.1.1
//!       fd77:1::2 (+ ::3)             fd77:1::1
//!                                     to-device 10.77.2.1  <--veth-->  eth0 10.77.2.2
//!                                               fd77:2::1                   fd77:2::2
//! ```
//! The proxy namespace also routes between both sides, for "direct" (no proxy) baselines.
//! The second client address (`.3` / `::3`) is the "disallowed source" of ACL tests. Namespaces
//! are named after the test and the process, so tests run in parallel; everything is removed on
//! drop, which never panics.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod rfb;

pub mod peers;
pub mod ssh;

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const OTHER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
pub const PROXY_FRONT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const PROXY_BACK_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const DEVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
pub const OTHER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 3);
pub const PROXY_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
pub const PROXY_BACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 1);
pub const DEVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 2);
/// The proxy's interface facing clients: where the XDP ACL attaches.
pub const PROXY_FRONT_IFACE: &str = "to-client";
/// The proxy's interface facing the device.
pub const PROXY_BACK_IFACE: &str = "to-device";

/// Runs a command to completion and fails with its output if it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh(Command::new("ip").args(args))
}

/// A network namespace made by the test bed; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        // A namespace left over by a killed run of the same name would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Gives processes started with [`Netns::command`] their own `/etc/hosts` (`ip netns exec`
    /// bind-mounts `/etc/netns/<name>/hosts` over it), so a test can name the device as a user
    /// would without touching the machine's resolver. Removed with the namespace.
    pub fn set_hosts(&self, contents: &str) -> anyhow::Result<()> {
        let dir = Path::new("/etc/netns").join(&self.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("hosts"), contents).context("writing the namespace's hosts file")
    }

    /// Runs `f` on a new thread that has entered this namespace (a namespace belongs to a
    /// thread), and returns its handle.
    pub fn spawn<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = PathBuf::from(format!("/run/netns/{}", self.name));
        thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("entering {}: {e:#}", path.display()));
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then remove the namespace; never panic here.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

fn enter(path: &Path) -> anyhow::Result<()> {
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: valid fd of a namespace file; affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// The three namespaces joined by veth.
pub struct Topology {
    // Declared in drop order: device and proxy processes die with their namespaces.
    pub client: Netns,
    pub proxy: Netns,
    pub device: Netns,
    tag: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds the topology; `tag` (a short test name) makes the namespace names unique.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let unique = format!(
            "dl-{}-{}-{}",
            tag.chars().take(12).collect::<String>(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = Netns::create(&format!("{unique}-c"))?;
        let proxy = Netns::create(&format!("{unique}-p"))?;
        let device = Netns::create(&format!("{unique}-d"))?;
        let topology = Self {
            client,
            proxy,
            device,
            tag: unique,
        };
        topology.wire().context("wiring the topology")?;
        Ok(topology)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (c, p, d) = (&self.client, &self.proxy, &self.device);
        for (iface, peer) in [(PROXY_FRONT_IFACE, c), (PROXY_BACK_IFACE, d)] {
            p.ip(&[
                "link",
                "add",
                iface,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ])?;
        }
        let addr = |ns: &Netns, cidr: String, dev: &str| -> anyhow::Result<()> {
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
            if cidr.contains(':') {
                // No duplicate address detection: the address is usable at once.
                args.push("nodad");
            }
            ns.ip(&args).map(drop)
        };
        addr(c, format!("{CLIENT_V4}/24"), "eth0")?;
        addr(c, format!("{OTHER_CLIENT_V4}/24"), "eth0")?;
        addr(c, format!("{CLIENT_V6}/64"), "eth0")?;
        addr(c, format!("{OTHER_CLIENT_V6}/64"), "eth0")?;
        addr(p, format!("{PROXY_FRONT_V4}/24"), PROXY_FRONT_IFACE)?;
        addr(p, format!("{PROXY_FRONT_V6}/64"), PROXY_FRONT_IFACE)?;
        addr(p, format!("{PROXY_BACK_V4}/24"), PROXY_BACK_IFACE)?;
        addr(p, format!("{PROXY_BACK_V6}/64"), PROXY_BACK_IFACE)?;
        addr(d, format!("{DEVICE_V4}/24"), "eth0")?;
        addr(d, format!("{DEVICE_V6}/64"), "eth0")?;
        for (ns, dev) in [
            (c, "eth0"),
            (p, PROXY_FRONT_IFACE),
            (p, PROXY_BACK_IFACE),
            (d, "eth0"),
        ] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // The proxy namespace also routes between the two sides, so that a "direct" baseline
        // (client -> device, no proxy) crosses the same veths as proxied traffic does.
        c.ip(&[
            "route",
            "add",
            "default",
            "via",
            &PROXY_FRONT_V4.to_string(),
        ])?;
        c.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &PROXY_FRONT_V6.to_string(),
        ])?;
        d.ip(&["route", "add", "default", "via", &PROXY_BACK_V4.to_string()])?;
        d.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &PROXY_BACK_V6.to_string(),
        ])?;
        sh(p.command("sysctl").args([
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]))?;
        Ok(())
    }

    /// The proxy's client-facing address for `port`.
    pub fn front(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), port)
    }

    /// The device's address for `port`.
    pub fn device_addr(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(DEVICE_V4), port)
    }
}

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

/// Kills the child on drop.
pub struct Process {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Process {
    /// Starts `cmd` with stdout and stderr going to a log file (shown by [`Process::log`]).
    pub fn start(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "devicelink-{name}-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            child,
            log,
            name: name.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited, and how.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// User + system CPU time of the process so far, from /proc (clock ticks -> duration).
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id()).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: plain libc query.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// The whole machine's busy CPU time (everything but idle and iowait, softirq included) from
/// `/proc/stat`: the fair measure for a data plane that works in the kernel.
pub fn machine_busy_time() -> Duration {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let busy: u64 = values
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4 | 8 | 9))
        .map(|(_, v)| v)
        .sum();
    // SAFETY: plain libc query.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(busy * 1_000_000_000 / ticks)
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
}

impl Default for ProxyOptions<'_> {
    fn default() -> Self {
        Self {
            data_plane: "ebpf",
            allow: vec![format!("{CLIENT_V4}/32"), format!("{CLIENT_V6}/128")],
            xdp: true,
            extra: Vec::new(),
            launcher: Vec::new(),
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
        let mut cmd = match options.launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = topology.proxy.command(program);
                cmd.args(args).arg(proxy_binary()?);
                cmd
            }
            None => topology.proxy.command(proxy_binary()?),
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
            netns: PathBuf::from(format!("/run/netns/{}", topology.proxy.name())),
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
        let netns = self.netns.clone();
        let addr = self.metrics;
        let path = path.to_string();
        thread::spawn(move || -> anyhow::Result<(u16, String)> {
            enter(&netns)?;
            http_get(addr, &path)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
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

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Connects from a given local address (the ACL tests' allowed and disallowed sources).
pub fn connect_from(
    local: IpAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let domain = if remote.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls; the fd is owned by the TcpStream right after.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (storage, len) = sockaddr(SocketAddr::new(local, 0));
    // SAFETY: valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&raw const storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Non-blocking connect bounded by `timeout`.
    stream.set_nonblocking(true)?;
    let (storage, len) = sockaddr(remote);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if ready == 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A deterministic, non-repeating byte pattern (xorshift), so that a lost, duplicated or
/// reordered chunk shows up as a mismatch rather than as equal bytes.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// FNV-1a over a stream of chunks: a cheap checksum that sees order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub hash: u64,
    pub len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
        }
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.len += bytes.len() as u64;
    }
}

/// Writes `len` pattern bytes (seeded) to `stream` and returns their checksum.
pub fn send_pattern(
    stream: &mut impl std::io::Write,
    seed: u64,
    len: u64,
) -> std::io::Result<Checksum> {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sum.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(sum)
}

/// Reads `stream` to EOF and returns the checksum of what arrived.
pub fn receive_all(stream: &mut impl std::io::Read) -> std::io::Result<Checksum> {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(sum);
        }
        sum.update(&buf[..n]);
    }
}
