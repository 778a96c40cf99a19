//! A link behind a load balancer (`--proxy-protocol`): each connection starts with a PROXY
//! protocol header, v1 or v2, and the client it names is the one the ACL and the audit line
//! judge, while the balancer's own address is in no allowed range (and XDP lets it through).
//! Bad headers are refused and counted by reason; a LOCAL header is a health check. Also
//! HAProxy itself in front with `send-proxy-v2`. Needs root (namespaces, BPF).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    CLIENT_V4, CLIENT_V6, DEVICE_V4, OTHER_CLIENT_V4, OTHER_CLIENT_V6, PROXY_FRONT_V4,
    PROXY_FRONT_V6, Process, Proxy, ProxyOptions, Topology, connect_from,
    peers::{self, Behavior},
    proxy_protocol,
};

const DEVICE_PORT: u16 = 7990;
const PROXY_PORT: u16 = 2990;
const HAPROXY_PORT: u16 = 2991;

fn device() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), DEVICE_PORT)
}

fn front(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, PROXY_PORT)
}

fn start(topology: &Topology, data_plane: &str, extra: &[&str]) -> Proxy {
    let mut flags = vec!["--proxy-protocol", "--log-format", "json"];
    flags.extend_from_slice(extra);
    Proxy::start(
        topology,
        SocketAddr::new("::".parse().unwrap(), PROXY_PORT),
        device(),
        ProxyOptions {
            data_plane,
            extra: flags.iter().map(ToString::to_string).collect(),
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"))
}

/// A writer that puts `header` in front of the first bytes written, in one `write`: a balancer
/// that has the client's first bytes when it connects sends them in the header's segment, and
/// the proxy must pass on the payload that shares a segment with the header, not the header.
struct HeaderFirst<'a> {
    stream: &'a mut TcpStream,
    header: Option<Vec<u8>>,
}

impl std::io::Write for HeaderFirst<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.header.take() {
            Some(mut first) => {
                first.extend_from_slice(buf);
                self.stream.write_all(&first)?;
                Ok(buf.len())
            }
            None => self.stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// From `balancer`, a connection whose header is `header`, sent in one segment with the start
/// of a checksummed transfer.
fn relayed_transfer(
    topology: &Topology,
    balancer: IpAddr,
    to: SocketAddr,
    header: Vec<u8>,
    seed: u64,
) -> Result<(), String> {
    topology.client.run(move || {
        let mut stream = connect_from(balancer, to, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let len = 3 << 20;
        let sent = devicelink_testbed::send_pattern(
            &mut HeaderFirst {
                stream: &mut stream,
                header: Some(header),
            },
            seed,
            len,
        )
        .map_err(|e| format!("upload: {e}"))?;
        peers::check_device_sum(&mut stream, sent, len)
    })
}

/// From `balancer`, a connection that sends `header` and nothing after it (so that a refusal's
/// reset is what the read sees, not a write's error); what the proxy did: `Ok(0)` for a close,
/// `Err` for a reset.
fn answer_to(
    topology: &Topology,
    balancer: IpAddr,
    to: SocketAddr,
    header: Vec<u8>,
) -> std::io::Result<usize> {
    topology.client.run(move || {
        let mut stream = connect_from(balancer, to, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&header)?;
        stream.read(&mut [0u8; 64])
    })
}

fn wait_for(proxy: &Proxy, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric(series) < value && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.metric(series), value, "{series}");
}

fn audit_clients(proxy: &Proxy) -> Vec<String> {
    proxy
        .process
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "connection closed")
        .map(|line| line["fields"]["client"].as_str().unwrap_or("").to_string())
        .collect()
}

fn headers_name_the_client(data_plane: &str) {
    let topology = Topology::new(&format!("pp-{data_plane}"))
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let _device = peers::serve(&topology.device, device(), Behavior::SinkThenReply);
    // XDP attached: the balancer (the other client address) is in no allowed range, yet it
    // must not be dropped on the wire.
    let proxy = start(&topology, data_plane, &[]);
    let v4 = front(IpAddr::V4(PROXY_FRONT_V4));
    let v6 = front(IpAddr::V6(PROXY_FRONT_V6));
    let client4 = SocketAddr::new(IpAddr::V4(CLIENT_V4), 40001);
    let client6 = SocketAddr::new(IpAddr::V6(CLIENT_V6), 40002);
    let cases = [
        (
            "v1 over IPv4",
            IpAddr::V4(OTHER_CLIENT_V4),
            v4,
            proxy_protocol::v1(client4, v4),
        ),
        (
            "v2 over IPv4",
            IpAddr::V4(OTHER_CLIENT_V4),
            v4,
            proxy_protocol::v2(client4, v4),
        ),
        (
            "v1 over IPv6",
            IpAddr::V6(OTHER_CLIENT_V6),
            v6,
            proxy_protocol::v1(client6, v6),
        ),
        (
            "v2 over IPv6",
            IpAddr::V6(OTHER_CLIENT_V6),
            v6,
            proxy_protocol::v2(client6, v6),
        ),
    ];
    for (seed, (name, balancer, to, header)) in (1..).zip(cases) {
        relayed_transfer(&topology, balancer, to, header, seed)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", proxy.process.log()));
    }
    proxy.wait_idle();
    assert_eq!(
        proxy.metric("devicelink_connections_total{result=\"completed\"}"),
        4.0
    );
    let clients = audit_clients(&proxy);
    assert_eq!(
        clients,
        [client4, client4, client6, client6].map(|c| c.to_string()),
        "the audit line names the client the header carries, not the balancer"
    );
}

#[test]
fn v1_and_v2_headers_over_ipv4_and_ipv6_name_the_client_ebpf() {
    headers_name_the_client("ebpf");
}

/// The default data plane: the copy carries each relayed transfer's opening, header read off.
#[test]
fn v1_and_v2_headers_over_ipv4_and_ipv6_name_the_client_auto() {
    headers_name_the_client("auto");
}

#[test]
fn v1_and_v2_headers_over_ipv4_and_ipv6_name_the_client_userspace() {
    headers_name_the_client("userspace");
}

/// Every bad header is refused with a reset and counted by its reason; a client the header
/// names outside the ranges is refused like a direct one; LOCAL is closed without a device
/// connection; a silent connection is refused at the deadline.
#[test]
fn bad_headers_and_disallowed_clients_are_refused_and_counted() {
    let topology = Topology::new("pp-refuse")
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let device_server = peers::serve(&topology.device, device(), Behavior::SinkThenReply);
    let proxy = start(&topology, "userspace", &[]);
    let v4 = front(IpAddr::V4(PROXY_FRONT_V4));
    let balancer = IpAddr::V4(OTHER_CLIENT_V4);
    // The deadline is 5 s: start the silent connection first and check it last.
    let silent = topology.client.spawn(move || {
        let mut stream = connect_from(balancer, v4, Duration::from_secs(3)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let started = Instant::now();
        let answer = stream.read(&mut [0u8; 8]);
        (answer.map_err(|e| e.kind()), started.elapsed())
    });

    let stranger = SocketAddr::new(IpAddr::V4(OTHER_CLIENT_V4), 40003);
    let refused = answer_to(&topology, balancer, v4, proxy_protocol::v2(stranger, v4));
    assert!(
        refused.is_err(),
        "a client outside the ranges is reset: {refused:?}"
    );
    wait_for(
        &proxy,
        "devicelink_connections_total{result=\"rejected_acl\"}",
        1.0,
    );

    let mut oversized_v1 = b"PROXY TCP4 ".to_vec();
    oversized_v1.extend(std::iter::repeat_n(b'1', 200));
    let bad: [(&str, Vec<u8>); 6] = [
        (
            "malformed",
            b"PROXY TCP4 10.77.1.2 not-an-address 1 2\r\n".to_vec(),
        ),
        ("malformed", proxy_protocol::v2_raw(0x31, 0x11, &[0; 12])),
        ("oversized", proxy_protocol::v2_raw(0x21, 0x11, &[0; 1000])),
        ("oversized", oversized_v1),
        ("missing", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        (
            "unsupported",
            b"PROXY UDP4 10.77.1.2 10.77.1.1 1 2\r\n".to_vec(),
        ),
    ];
    for (reason, header) in bad {
        let shown = String::from_utf8_lossy(&header).into_owned();
        let answer = answer_to(&topology, balancer, v4, header);
        assert!(answer.is_err(), "{reason} ({shown:?}) is reset: {answer:?}");
    }
    for (reason, count) in [
        ("malformed", 2.0),
        ("oversized", 2.0),
        ("missing", 1.0),
        ("unsupported", 1.0),
    ] {
        wait_for(
            &proxy,
            &format!("devicelink_proxy_protocol_refused_total{{reason=\"{reason}\"}}"),
            count,
        );
    }

    let accepted_before = device_server
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let local = answer_to(&topology, balancer, v4, proxy_protocol::v2_local());
    assert_eq!(local.ok(), Some(0), "a health check is closed, not reset");
    wait_for(&proxy, "devicelink_proxy_protocol_local_total", 1.0);
    assert_eq!(
        device_server
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        accepted_before,
        "a health check never reaches the device"
    );

    let (answer, waited) = silent.join().expect("silent connection");
    assert!(answer.is_err(), "a silent connection is reset: {answer:?}");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&waited),
        "at the 5 s deadline, not {waited:?}"
    );
    wait_for(
        &proxy,
        "devicelink_proxy_protocol_refused_total{reason=\"timeout\"}",
        1.0,
    );

    // Refusals are logged per reason, not once per connection.
    let log = proxy.process.log();
    let lines = log
        .lines()
        .filter(|line| line.contains("refusing connection") && line.contains("\"malformed\""))
        .count();
    assert_eq!(lines, 1, "two malformed headers, one log line:\n{log}");
}

/// HAProxy in the proxy's namespace relays clients with `send-proxy-v2`: the proxy carries
/// them and judges the client HAProxy names, allowed or not.
#[test]
fn haproxy_with_send_proxy_v2_in_front() {
    let topology = Topology::new("pp-haproxy")
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let _device = peers::serve(&topology.device, device(), Behavior::SinkThenReply);
    // The proxy listens on loopback only: HAProxy is its one peer.
    let proxy = Proxy::start(
        &topology,
        SocketAddr::new("127.0.0.1".parse().unwrap(), PROXY_PORT),
        device(),
        ProxyOptions {
            data_plane: "ebpf",
            xdp: false,
            extra: ["--proxy-protocol", "--log-format", "json"]
                .map(String::from)
                .to_vec(),
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let config = std::env::temp_dir().join(format!("devicelink-haproxy-{}.cfg", topology.tag()));
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend clients\n  bind {PROXY_FRONT_V4}:{HAPROXY_PORT}\n  default_backend devicelink\nbackend devicelink\n  server proxy 127.0.0.1:{PROXY_PORT} send-proxy-v2\n"
        ),
    )
    .expect("haproxy config");
    let mut command = topology.proxy.command("haproxy");
    command.arg("-db").arg("-f").arg(&config);
    let _haproxy = Process::start("haproxy", command).expect("haproxy starts");
    let through = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), HAPROXY_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let transfer = loop {
        let result = topology.client.run(move || {
            let mut stream = connect_from(IpAddr::V4(CLIENT_V4), through, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let port = stream.local_addr().unwrap().port();
            peers::upload_and_check(&mut stream, 11, 3 << 20, None).map(|()| port)
        });
        // HAProxy may not listen yet.
        if result.is_ok() || Instant::now() > deadline {
            break result;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let port = transfer.unwrap_or_else(|e| panic!("through HAProxy: {e}\n{}", proxy.process.log()));
    // A client HAProxy names outside the ranges is refused.
    let refused = topology
        .client
        .run(move || -> Result<usize, std::io::Error> {
            let mut stream: TcpStream =
                connect_from(IpAddr::V4(OTHER_CLIENT_V4), through, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let _ = stream.write_all(b"hello");
            stream.read(&mut [0u8; 8])
        });
    assert!(
        !matches!(refused, Ok(n) if n > 0),
        "a disallowed client gets nothing from the device: {refused:?}"
    );
    // HAProxy retries a server connection that fails before it has sent the client's bytes
    // (`retry-on conn-failure`), which a refusal right after the header may look like: one
    // refusal or a few.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric("devicelink_connections_total{result=\"rejected_acl\"}") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the disallowed client is refused"
        );
        thread::sleep(Duration::from_millis(20));
    }
    proxy.wait_idle();
    assert!(
        audit_clients(&proxy).contains(&format!("{CLIENT_V4}:{port}")),
        "the audit line names the client HAProxy relayed"
    );
    let _ = std::fs::remove_file(&config);
}
