//! What the proxy decides, end to end in namespaces: the source ACL (XDP on the wire in eBPF
//! mode, at accept in both), the device being down, limits, idle timeout, expiry, falling back
//! when eBPF cannot load, resets passed on, and a clean SIGTERM. Needs root.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    CLIENT_V4, CLIENT_V6, DEVICE_V4, DEVICE_V6, OTHER_CLIENT_V4, OTHER_CLIENT_V6,
    PROXY_FRONT_IFACE, PROXY_FRONT_V4, PROXY_FRONT_V6, Proxy, ProxyOptions, Topology, acl_hooks,
    connect_from,
    peers::{self, Behavior},
    proxy_binary, receive_all, send_pattern,
};

const DEVICE_PORT: u16 = 7100;
const PROXY_PORT: u16 = 2323;
/// The quick-ACK routes' table and the mark of a spliced device socket, as `ip` and `ss` show
/// them (docs/data-plane.md).
const QUICKACK_TABLE: &str = "2010";
const QUICKACK_MARK: &str = "0x2010";

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), PROXY_PORT)
}

fn device() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), DEVICE_PORT)
}

fn topology(tag: &str) -> Topology {
    Topology::new(tag).unwrap_or_else(|e| panic!("topology {tag}: {e:#} (these tests need root)"))
}

fn start(topology: &Topology, listen: SocketAddr, options: ProxyOptions<'_>) -> Proxy {
    Proxy::start(topology, listen, device(), options).unwrap_or_else(|e| panic!("proxy: {e:#}"))
}

fn extra(flags: &[&str]) -> Vec<String> {
    flags.iter().map(ToString::to_string).collect()
}

/// One echo round trip over `stream`.
fn echo_once(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf)?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// Whether the proxy closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// XDP drops a disallowed source's SYNs (v4 and v6) on the wire, while the allowed source on the
/// same interface connects and talks.
#[test]
fn xdp_drops_disallowed_sources_v4_and_v6() {
    let topology = topology("xdp");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy_v4 = start(&topology, front(), ProxyOptions::default());
    topology.client.run(|| {
        let mut allowed = connect_from(IpAddr::V4(CLIENT_V4), front(), Duration::from_secs(3))
            .expect("allowed v4 source connects");
        echo_once(&mut allowed).expect("allowed v4 source talks to the device");
        let denied = connect_from(
            IpAddr::V4(OTHER_CLIENT_V4),
            front(),
            Duration::from_millis(1500),
        );
        assert_eq!(
            denied.map(drop).map_err(|e| e.kind()),
            Err(ErrorKind::TimedOut),
            "a v4 source outside --allow should get no answer at all (SYN dropped)"
        );
    });
    let dropped = proxy_v4
        .metric("devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"}");
    let allowed =
        proxy_v4.metric("devicelink_xdp_packets_total{verdict=\"pass\",reason=\"allowed\"}");
    assert!(
        dropped >= 1.0,
        "the XDP program should have counted the dropped SYNs, saw {dropped}"
    );
    assert!(
        allowed >= 3.0,
        "the allowed connection's packets should pass XDP, saw {allowed}"
    );
    assert_eq!(proxy_v4.metric("devicelink_xdp_attached"), 1.0);
    drop(proxy_v4);

    let front_v6 = SocketAddr::new(IpAddr::V6(PROXY_FRONT_V6), PROXY_PORT);
    let proxy_v6 = start(&topology, front_v6, ProxyOptions::default());
    topology.client.run(move || {
        let mut allowed = connect_from(IpAddr::V6(CLIENT_V6), front_v6, Duration::from_secs(3))
            .expect("allowed v6 source connects");
        echo_once(&mut allowed).expect("allowed v6 source talks to the device");
        let denied = connect_from(
            IpAddr::V6(OTHER_CLIENT_V6),
            front_v6,
            Duration::from_millis(1500),
        );
        assert_eq!(
            denied.map(drop).map_err(|e| e.kind()),
            Err(ErrorKind::TimedOut),
            "a v6 source outside --allow should get no answer"
        );
    });
    let dropped = proxy_v6
        .metric("devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"}");
    assert!(dropped >= 1.0, "v6 drops should be counted, saw {dropped}");
}

/// `--listen [::]:PORT` (what the operator renders, for dual-stack pods) takes IPv4 and IPv6
/// clients on one socket, both spliced in the kernel. IPv4 clients arrive v4-mapped
/// (`::ffff:a.b.c.d`); the ACL judges them as IPv4, at accept (no XDP) and on the wire (XDP).
#[test]
fn dual_stack_listen_takes_both_families() {
    let topology = topology("dual");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), PROXY_PORT);
    let front_v6 = SocketAddr::new(IpAddr::V6(PROXY_FRONT_V6), PROXY_PORT);
    for xdp in [true, false] {
        let proxy = start(
            &topology,
            any,
            ProxyOptions {
                xdp,
                ..Default::default()
            },
        );
        topology.client.run(move || {
            for (source, to) in [
                (IpAddr::V4(CLIENT_V4), front()),
                (IpAddr::V6(CLIENT_V6), front_v6),
            ] {
                let mut allowed = connect_from(source, to, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("allowed {source} -> {to} (xdp {xdp}): {e}"));
                echo_once(&mut allowed)
                    .unwrap_or_else(|e| panic!("{source} talks to the device (xdp {xdp}): {e}"));
            }
            for (source, to) in [
                (IpAddr::V4(OTHER_CLIENT_V4), front()),
                (IpAddr::V6(OTHER_CLIENT_V6), front_v6),
            ] {
                // With XDP the SYN is dropped; without, the handshake completes in the kernel
                // and the proxy resets it at accept.
                if let Ok(mut denied) = connect_from(source, to, Duration::from_millis(1500)) {
                    assert!(!xdp, "XDP should drop {source}'s SYN");
                    assert!(
                        echo_once(&mut denied).is_err(),
                        "disallowed {source} must not reach the device"
                    );
                }
            }
        });
        proxy.wait_idle();
        assert_eq!(
            proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}"),
            2.0,
            "both families spliced (xdp {xdp})"
        );
        let refused = if xdp {
            proxy.metric(
                "devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"}",
            )
        } else {
            proxy.metric("devicelink_connections_total{result=\"rejected_acl\"}")
        };
        assert!(
            refused >= 2.0,
            "both disallowed sources refused (xdp {xdp}), saw {refused}"
        );
    }
}

/// Clients of both families through one spliced IPv4 or IPv6 device connection each way round:
/// `n` megabytes up and echoed back, checksummed, from each client.
fn both_families_echo_intact(topology: &Topology, megabytes: u64) {
    let front_v6 = SocketAddr::new(IpAddr::V6(PROXY_FRONT_V6), PROXY_PORT);
    topology.client.run(move || {
        for (seed, (source, to)) in [
            (IpAddr::V4(CLIENT_V4), front()),
            (IpAddr::V6(CLIENT_V6), front_v6),
        ]
        .into_iter()
        .enumerate()
        {
            let mut stream = connect_from(source, to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{source} -> {to}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut reader = stream.try_clone().unwrap();
            let receiver = thread::spawn(move || receive_all(&mut reader));
            let sent = send_pattern(&mut stream, seed as u64, megabytes << 20).expect("upload");
            stream.shutdown(Shutdown::Write).unwrap();
            let echoed = receiver.join().unwrap().expect("echo");
            assert_eq!(echoed, sent, "{source}: every byte back once, in order");
        }
    });
}

/// An IPv6 device (`--device [fd77:2::2]:PORT`), and a device named by DNS as users name them,
/// with records a real zone may hold: first an IPv6 address where nothing listens (refused), then
/// one of a host that is gone (no answer at all: its neighbour discovery never resolves), then
/// the device's IPv4 address. The proxy tries them in turn, giving the silent one only its share
/// of `--connect-timeout` (it alone would outlast the whole timeout). Both with IPv4 and IPv6
/// clients: families mixed across the splice, megabytes intact both ways, in the kernel.
#[test]
fn ipv6_device_and_device_by_name_from_both_families() {
    let topology = topology("dev6");
    let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), PROXY_PORT);
    let carried = |proxy: &Proxy| {
        proxy.wait_idle();
        (
            proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}"),
            proxy.metric("devicelink_connections_total{result=\"completed\"}"),
        )
    };

    let device_v6 = SocketAddr::new(IpAddr::V6(DEVICE_V6), DEVICE_PORT);
    let _device_v6 = peers::serve(&topology.device, device_v6, Behavior::Echo);
    let proxy = Proxy::start(&topology, any, device_v6, ProxyOptions::default())
        .unwrap_or_else(|e| panic!("proxy for {device_v6}: {e:#}"));
    both_families_echo_intact(&topology, 16);
    assert_eq!(
        carried(&proxy),
        (2.0, 2.0),
        "both clients spliced to {device_v6}"
    );
    drop(proxy);

    // Another port, where only the device's IPv4 address listens.
    let named_port = DEVICE_PORT + 1;
    let gone_v6 = std::net::Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 0x99);
    let _device_v4 = peers::serve(
        &topology.device,
        SocketAddr::new(IpAddr::V4(DEVICE_V4), named_port),
        Behavior::Echo,
    );
    topology
        .proxy
        .set_hosts(&format!(
            "127.0.0.1 localhost\n{DEVICE_V6} device.test\n{gone_v6} device.test\n{DEVICE_V4} device.test\n"
        ))
        .expect("hosts file");
    let proxy = Proxy::start(
        &topology,
        any,
        format!("device.test:{named_port}"),
        ProxyOptions {
            extra: extra(&["--connect-timeout", "2s"]),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy for device.test: {e:#}"));
    both_families_echo_intact(&topology, 16);
    assert_eq!(
        carried(&proxy),
        (2.0, 2.0),
        "both clients spliced to device.test"
    );
}

/// Without XDP (userspace mode) the same ACL holds at accept: the disallowed source is reset
/// before any byte reaches the device.
#[test]
fn accept_time_acl_refuses_disallowed_sources_without_xdp() {
    let topology = topology("acl");
    let device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = start(
        &topology,
        front(),
        ProxyOptions {
            data_plane: "userspace",
            xdp: false,
            ..Default::default()
        },
    );
    topology.client.run(|| {
        // The handshake completes in the kernel; the proxy then resets it, maybe before the
        // client even looks.
        if let Ok(mut denied) =
            connect_from(IpAddr::V4(OTHER_CLIENT_V4), front(), Duration::from_secs(3))
        {
            assert!(
                echo_once(&mut denied).is_err(),
                "a disallowed source must not reach the device"
            );
        }
        let mut allowed =
            connect_from(IpAddr::V4(CLIENT_V4), front(), Duration::from_secs(3)).unwrap();
        echo_once(&mut allowed).expect("allowed source talks");
    });
    assert_eq!(
        proxy.metric("devicelink_connections_total{result=\"rejected_acl\"}"),
        1.0
    );
    assert_eq!(
        device.accepted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the allowed client reaches the device"
    );
}

/// No `--allow` at all: nobody gets in.
#[test]
fn no_allow_means_nobody_gets_in() {
    let topology = topology("noallow");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = start(
        &topology,
        front(),
        ProxyOptions {
            allow: vec![],
            xdp: false,
            ..Default::default()
        },
    );
    topology.client.run(|| {
        let mut stream = TcpStream::connect(front()).unwrap();
        assert!(
            echo_once(&mut stream).is_err(),
            "with no --allow every client must be refused"
        );
    });
    assert!(
        proxy.process.log().contains("no --allow given"),
        "the proxy should say why everyone is refused"
    );
}

/// Device refusing, or not there at all: the client is closed promptly, the cause counted and
/// logged once.
#[test]
fn device_down_closes_clients_promptly() {
    for (tag, device_addr, result) in [
        ("refused", device(), "device_refused"),
        // No host at .99: ARP gets no answer, the connect times out.
        (
            "absent",
            SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 2, 99)),
                DEVICE_PORT,
            ),
            "device_timeout",
        ),
    ] {
        let topology = topology(tag);
        let proxy = Proxy::start(
            &topology,
            front(),
            device_addr,
            ProxyOptions {
                extra: extra(&["--connect-timeout", "1s"]),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("proxy: {e:#}"));
        topology.client.run(|| {
            for _ in 0..3 {
                let mut stream = TcpStream::connect(front()).unwrap();
                let start = Instant::now();
                assert!(
                    closed_within(&mut stream, Duration::from_secs(4)),
                    "client should be closed when the device is down"
                );
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "closed after {:?}, expected about the connect timeout",
                    start.elapsed()
                );
            }
        });
        assert_eq!(
            proxy.metric(&format!(
                "devicelink_connections_total{{result=\"{result}\"}}"
            )),
            3.0,
            "{tag}"
        );
        let log = proxy.process.log();
        assert_eq!(
            log.matches("cannot reach the device").count(),
            1,
            "one log line per cause, not per client:\n{log}"
        );
    }
}

/// Past `--max-connections`, a client is refused at once; a freed slot is reused.
#[test]
fn max_connections_refuses_excess_promptly() {
    let topology = topology("maxconn");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = start(
        &topology,
        front(),
        ProxyOptions {
            extra: extra(&[
                "--max-connections",
                "2",
                "--max-connections-per-source",
                "2",
            ]),
            ..Default::default()
        },
    );
    topology.client.run(|| {
        let mut first = TcpStream::connect(front()).unwrap();
        let mut second = TcpStream::connect(front()).unwrap();
        echo_once(&mut first).unwrap();
        echo_once(&mut second).unwrap();
        let mut third = TcpStream::connect(front()).unwrap();
        let start = Instant::now();
        assert!(
            closed_within(&mut third, Duration::from_secs(2)),
            "the third client should be refused"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "refusal should be prompt"
        );
        drop(first);
        thread::sleep(Duration::from_millis(300));
        let mut fourth = TcpStream::connect(front()).unwrap();
        echo_once(&mut fourth).expect("a freed slot takes a new client");
    });
    assert_eq!(
        proxy.metric("devicelink_connections_total{result=\"rejected_limit\"}"),
        1.0
    );
}

/// An idle connection is closed after `--idle-timeout`; a busy one is not (eBPF mode judges from
/// the kernel's byte counters, userspace mode from its own).
fn idle_timeout(mode: &str) {
    let topology = topology(&format!("idle{mode}"));
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = start(
        &topology,
        front(),
        ProxyOptions {
            data_plane: mode,
            extra: extra(&["--idle-timeout", "1s"]),
            ..Default::default()
        },
    );
    topology.client.run(|| {
        let mut idle = TcpStream::connect(front()).unwrap();
        let mut busy = TcpStream::connect(front()).unwrap();
        echo_once(&mut idle).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            echo_once(&mut busy).expect("a busy connection must not idle out");
            thread::sleep(Duration::from_millis(200));
        }
        assert!(
            closed_within(&mut idle, Duration::from_secs(2)),
            "the idle connection should be closed after 1s"
        );
        echo_once(&mut busy).expect("still open");
    });
    proxy.wait_idle();
    assert_eq!(
        proxy.metric("devicelink_connections_total{result=\"idle_timeout\"}"),
        1.0
    );
}

#[test]
fn idle_connections_close_ebpf() {
    idle_timeout("ebpf");
}

#[test]
fn idle_connections_close_userspace() {
    idle_timeout("userspace");
}

/// At `--expires-at` the proxy stops accepting, closes every connection and exits 0, even with
/// nobody telling it to.
fn expiry(mode: &str) {
    let topology = topology(&format!("exp{mode}"));
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let expires_at = std::time::SystemTime::now() + Duration::from_secs(3);
    let at = humantime_rfc3339(expires_at);
    let mut proxy = start(
        &topology,
        front(),
        ProxyOptions {
            data_plane: mode,
            extra: extra(&["--expires-at", &at]),
            ..Default::default()
        },
    );
    topology.client.run(move || {
        let mut open = TcpStream::connect(front()).unwrap();
        echo_once(&mut open).unwrap();
        assert!(
            closed_within(&mut open, Duration::from_secs(6)),
            "the open connection should be closed at expiry"
        );
        let late = std::time::SystemTime::now()
            .duration_since(expires_at)
            .unwrap_or_default();
        assert!(
            late < Duration::from_secs(1),
            "closed {late:?} after the expiry instant"
        );
        assert!(
            TcpStream::connect_timeout(&front(), Duration::from_secs(1)).is_err(),
            "no new client after expiry"
        );
    });
    let status = proxy
        .process
        .wait_timeout(Duration::from_secs(5))
        .expect("proxy exits after expiry");
    assert!(status.success(), "exit status {status}");
    assert!(proxy.process.log().contains("link expired"));
}

#[test]
fn expiry_closes_everything_on_time_ebpf() {
    expiry("ebpf");
}

#[test]
fn expiry_closes_everything_on_time_userspace() {
    expiry("userspace");
}

fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Without the capabilities eBPF needs, `auto` falls back to the userspace copy, says so in one
/// line and in metrics, and still carries bytes; `ebpf` refuses to start, naming the fix.
#[test]
fn falls_back_to_userspace_when_ebpf_cannot_load() {
    let topology = topology("fallback");
    let _device = peers::serve(&topology.device, device(), Behavior::SinkThenReply);
    let drop_caps: Vec<String> = [
        "setpriv",
        "--bounding-set",
        "-bpf,-net_admin,-perfmon,-sys_admin",
    ]
    .map(String::from)
    .to_vec();
    let proxy = start(
        &topology,
        front(),
        ProxyOptions {
            data_plane: "auto",
            launcher: drop_caps.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        proxy.metric("devicelink_data_plane_info{mode=\"userspace\"}"),
        1.0
    );
    let log = proxy.process.log();
    let reason = log
        .lines()
        .find(|l| l.contains("data plane: userspace copy, because"))
        .unwrap_or_else(|| panic!("one line should say why:\n{log}"));
    assert!(
        reason.contains("CAP_BPF"),
        "the line should name what is missing: {reason}"
    );
    // One line per plane, and nothing else blamed: missing privileges are not an overlap-cut
    // problem. The XDP ACL is a plane of its own, and says it is off.
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warnings.len(),
        2,
        "two warnings, the data plane's fallback and the XDP ACL's: {warnings:#?}"
    );
    assert!(
        warnings[1].contains("source ACL not attached") && warnings[1].contains("CAP_BPF"),
        "{warnings:#?}"
    );
    topology.client.run(|| {
        let mut stream = TcpStream::connect(front()).unwrap();
        peers::upload_and_check(&mut stream, 5, 5_000_000, None)
            .expect("bytes flow through the fallback");
    });
    drop(proxy);

    let mut cmd = topology.proxy.command(&drop_caps[0]);
    cmd.args(&drop_caps[1..]).arg(proxy_binary().unwrap());
    cmd.args([
        "--listen",
        &front().to_string(),
        "--device",
        &device().to_string(),
        "--allow",
        "10.77.1.2",
        "--data-plane",
        "ebpf",
    ]);
    let output = cmd.output().unwrap();
    assert!(
        !output.status.success(),
        "--data-plane ebpf without privileges must fail at start"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--data-plane ebpf") && stderr.contains("--data-plane auto"),
        "the error should say what to do:\n{stderr}"
    );
}

/// A device that resets has its reset passed on to the client (both modes).
#[test]
fn device_reset_reaches_the_client() {
    for mode in ["ebpf", "userspace"] {
        let topology = topology(&format!("rst{mode}"));
        let _device = peers::serve(&topology.device, device(), Behavior::Reset);
        let _proxy = start(
            &topology,
            front(),
            ProxyOptions {
                data_plane: mode,
                ..Default::default()
            },
        );
        topology.client.run(move || {
            let mut stream = TcpStream::connect(front()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 8];
            let result = stream.read(&mut buf);
            assert!(
                matches!(&result, Err(e) if e.kind() == ErrorKind::ConnectionReset),
                "{mode}: the client should see the device's reset, got {result:?}"
            );
        });
    }
}

/// SIGTERM: stop accepting, close connections, detach the ACL, exit 0; nothing is left attached or
/// pinned.
#[test]
fn sigterm_detaches_everything() {
    let topology = topology("term");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let mut proxy = start(&topology, front(), ProxyOptions::default());
    let hooks = acl_hooks(&topology.proxy, PROXY_FRONT_IFACE).unwrap();
    assert_eq!(
        hooks,
        ["source_acl_tc"],
        "the ACL should be attached at TC ingress while running"
    );
    let client = topology.client.spawn(|| {
        let mut stream = TcpStream::connect(front()).unwrap();
        echo_once(&mut stream).unwrap();
        closed_within(&mut stream, Duration::from_secs(5))
    });
    thread::sleep(Duration::from_millis(300));
    proxy.process.signal(libc::SIGTERM);
    let status = proxy
        .process
        .wait_timeout(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        client.join().unwrap(),
        "the open connection should be closed"
    );
    let hooks = acl_hooks(&topology.proxy, PROXY_FRONT_IFACE).unwrap();
    assert!(
        hooks.is_empty(),
        "the ACL should be detached after exit: {hooks:?}"
    );
    let pinned = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("devicelink"))
        })
        .unwrap_or(false);
    assert!(!pinned, "nothing of devicelink should be pinned");
}

/// The proxy's quick-ACK routes for exactly the device's address (its own table), one per line.
fn device_host_routes(topology: &Topology, device: IpAddr) -> String {
    let family = if device.is_ipv4() { "-4" } else { "-6" };
    topology
        .proxy
        .ip(&[
            family,
            "route",
            "show",
            "table",
            QUICKACK_TABLE,
            "exact",
            &device.to_string(),
        ])
        .unwrap_or_default()
}

/// The rule leading marked sockets to the quick-ACK table, as `ip rule` shows it.
fn quickack_rules(topology: &Topology, family: &str) -> String {
    topology
        .proxy
        .ip(&[family, "rule", "show", "table", QUICKACK_TABLE])
        .unwrap_or_default()
}

/// The route the proxy's namespace takes to `device` for a socket with `mark`.
fn route_used(topology: &Topology, device: IpAddr, mark: &str) -> String {
    topology
        .proxy
        .ip(&["route", "get", &device.to_string(), "mark", mark])
        .unwrap()
}

/// `ss -e` lines of the proxy's TCP sockets connected to the device.
fn device_sockets(topology: &Topology, device: SocketAddr) -> String {
    let out = topology
        .proxy
        .command("ss")
        .args(["-tnHe", "state", "established", "dst", &device.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client connection through the proxy that has echoed `bytes` both ways, held open.
fn echoed_connection(topology: &Topology, bytes: usize) -> TcpStream {
    topology
        .client
        .run(move || {
            let mut stream = TcpStream::connect(front())?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let sent: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
            let writer = {
                let mut stream = stream.try_clone()?;
                let sent = sent.clone();
                std::thread::spawn(move || stream.write_all(&sent))
            };
            let mut echoed = vec![0u8; bytes];
            stream.read_exact(&mut echoed)?;
            writer.join().expect("writer")?;
            assert!(echoed == sent, "echoed intact");
            std::io::Result::Ok(stream)
        })
        .expect("echo through the proxy")
}

/// Kills `proxy` outright (it cannot remove its route), checks the route stays, starts the
/// proxy again for `device`, and checks that run takes the route over and removes it on stop.
fn killed_runs_route_is_taken_over(topology: &Topology, mut proxy: Proxy, device: SocketAddr) {
    proxy.process.signal(libc::SIGKILL);
    let _ = proxy.process.wait_timeout(Duration::from_secs(5));
    drop(proxy);
    let family = if device.is_ipv4() { "-4" } else { "-6" };
    assert!(device_host_routes(topology, device.ip()).contains("quickack 1"));
    assert!(quickack_rules(topology, family).contains(QUICKACK_MARK));
    let proxy = Proxy::start(topology, front(), device, ProxyOptions::default())
        .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let log = proxy.process.log();
    assert!(
        log.contains("took over the quick-ACK route")
            && log.contains("took over the quick-ACK rule"),
        "{log}"
    );
    drop(proxy);
    assert_eq!(device_host_routes(topology, device.ip()).trim(), "");
    assert_eq!(quickack_rules(topology, family).trim(), "");
}

/// In eBPF mode the proxy adds a host route to the device with `quickack 1` to a table of its
/// own, and a rule leading sockets with its mark there (spliced bytes are never read, so TCP
/// would delay its ACKs to the device), for both families; a spliced device socket carries the
/// mark, one user space carries does not. Both go when the proxy stops; what a killed run left
/// is taken over; an administrator's route is copied, never changed. The userspace copy (whose
/// reads ACK promptly) and `--device-quickack off` add none.
#[test]
fn device_quickack_route_lives_with_the_proxy() {
    let topology = topology("qack");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let device_v6 = SocketAddr::new(IpAddr::V6(DEVICE_V6), DEVICE_PORT);
    let _device_v6 = peers::serve(&topology.device, device_v6, Behavior::Echo);
    let v4 = IpAddr::V4(DEVICE_V4);
    let v6 = IpAddr::V6(DEVICE_V6);

    let proxy = start(&topology, front(), ProxyOptions::default());
    let route = device_host_routes(&topology, v4);
    assert!(
        route.contains("quickack 1") && route.contains("proto 201"),
        "a quick-ACK route while running:\n{route}"
    );
    let rule = quickack_rules(&topology, "-4");
    assert!(
        rule.contains(&format!("fwmark {QUICKACK_MARK}")),
        "a rule for marked sockets:\n{rule}"
    );
    let used = route_used(&topology, v4, QUICKACK_MARK);
    assert!(
        used.contains("quickack 1"),
        "marked sockets use it:\n{used}"
    );
    let unmarked = route_used(&topology, v4, "0");
    assert!(
        !unmarked.contains("quickack"),
        "other sockets do not:\n{unmarked}"
    );
    // A spliced connection's device socket carries the mark.
    let spliced = echoed_connection(&topology, 4);
    let sockets = device_sockets(&topology, device());
    assert!(
        sockets.contains(&format!("fwmark:{QUICKACK_MARK}")),
        "a spliced device socket is marked:\n{sockets}"
    );
    drop(spliced);
    drop(proxy);
    assert_eq!(
        device_host_routes(&topology, v4).trim(),
        "",
        "removed when the proxy stops"
    );
    assert_eq!(quickack_rules(&topology, "-4").trim(), "", "the rule too");

    // A connection user space carries (moved there after its first 2 MiB) is not marked.
    let proxy = start(
        &topology,
        front(),
        ProxyOptions {
            extra: extra(&["--splice-carry", "always", "--splice-carry-for", "60s"]),
            ..ProxyOptions::default()
        },
    );
    let carried = echoed_connection(&topology, 8 << 20);
    let sockets = device_sockets(&topology, device());
    assert!(
        !sockets.is_empty() && !sockets.contains("fwmark"),
        "a device socket user space carries is not marked:\n{sockets}\n{}",
        proxy.process.log()
    );
    drop(carried);
    drop(proxy);

    // IPv6 device.
    let proxy = Proxy::start(&topology, front(), device_v6, ProxyOptions::default())
        .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let route = device_host_routes(&topology, v6);
    assert!(route.contains("quickack 1"), "IPv6 too:\n{route}");
    let rule = quickack_rules(&topology, "-6");
    assert!(
        rule.contains(&format!("fwmark {QUICKACK_MARK}")),
        "IPv6 rule:\n{rule}"
    );

    // A proxy killed outright leaves its route; the next run takes it over and removes it.
    killed_runs_route_is_taken_over(&topology, proxy, device_v6);

    // An administrator's route for exactly that address is copied, neither changed nor removed.
    let on_link = format!("{v4}");
    topology
        .proxy
        .ip(&[
            "route",
            "add",
            &on_link,
            "dev",
            devicelink_testbed::PROXY_BACK_IFACE,
            "mtu",
            "1400",
        ])
        .unwrap();
    let main_route = || {
        topology
            .proxy
            .ip(&["-4", "route", "show", "exact", &on_link])
            .unwrap()
    };
    let before = main_route();
    let proxy = start(&topology, front(), ProxyOptions::default());
    let copied = device_host_routes(&topology, v4);
    assert!(
        copied.contains("mtu 1400") && copied.contains("quickack 1"),
        "copied with its metrics:\n{copied}"
    );
    assert_eq!(main_route(), before, "left alone");
    drop(proxy);
    assert_eq!(main_route(), before, "not removed");
    topology.proxy.ip(&["route", "del", &on_link]).unwrap();

    // A device behind a gateway that only an `onlink` route reaches (as some CNIs route pods):
    // the copy says `onlink` too. Nothing listens there; the route is added at start.
    topology
        .proxy
        .ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "169.254.1.1",
            "dev",
            devicelink_testbed::PROXY_BACK_IFACE,
            "onlink",
        ])
        .unwrap();
    let behind: IpAddr = "198.51.100.7".parse().unwrap();
    let behind_device = SocketAddr::new(behind, DEVICE_PORT);
    let proxy = Proxy::start(&topology, front(), behind_device, ProxyOptions::default())
        .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let route = device_host_routes(&topology, behind);
    assert!(
        route.contains("via 169.254.1.1")
            && route.contains("onlink")
            && route.contains("quickack 1"),
        "{route}\n{}",
        proxy.process.log()
    );
    // Killed and started again: the `onlink` route it left is taken over, then removed.
    killed_runs_route_is_taken_over(&topology, proxy, behind_device);

    for options in [
        ProxyOptions {
            data_plane: "userspace",
            ..ProxyOptions::default()
        },
        ProxyOptions {
            extra: extra(&["--device-quickack", "off"]),
            ..ProxyOptions::default()
        },
    ] {
        let proxy = start(&topology, front(), options);
        assert_eq!(
            device_host_routes(&topology, v4).trim(),
            "",
            "no route added"
        );
        drop(proxy);
    }
}

/// Bad flags get an error naming the flag, and the proxy does not start.
#[test]
fn bad_arguments_name_the_flag() {
    for (args, flag) in [
        (vec!["--allow", "10.0.0.0/33"], "--allow"),
        (vec!["--listen", "0.0.0.0:0"], "--listen"),
        (vec!["--expires-at", "2001-01-01T00:00:00Z"], "--expires-at"),
        (vec!["--device", "10.0.0.1"], "--device"),
    ] {
        let mut cmd = Command::new(proxy_binary().unwrap());
        for (name, default) in [("--listen", "127.0.0.1:4000"), ("--device", "127.0.0.1:22")] {
            if !args.contains(&name) {
                cmd.args([name, default]);
            }
        }
        cmd.args(&args);
        let output = cmd.output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} should be refused with exit code 2"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(flag),
            "{args:?}: the error should name {flag}:\n{stderr}"
        );
    }
}
