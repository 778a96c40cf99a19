//! Every connection leaves one line when it closes, saying who, when, how long and how much, in
//! both log formats; refusals are rate-limited per cause, never silenced. Needs root.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, OTHER_CLIENT_V4, PROXY_FRONT_V4, Proxy, ProxyOptions, Topology,
    connect_from,
    peers::{self, Behavior},
};

const DEVICE_PORT: u16 = 7970;
const PROXY_PORT: u16 = 2970;

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), PROXY_PORT)
}

fn device() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), DEVICE_PORT)
}

fn audit_line_has_the_right_counts(data_plane: &str) {
    let topology = Topology::new(&format!("audit-{data_plane}"))
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let _device = peers::serve(&topology.device, device(), Behavior::SinkThenReply);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane,
            extra: vec![
                "--log-format".into(),
                "json".into(),
                "--name".into(),
                "pump-17".into(),
            ],
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    const LEN: u64 = 3_000_000;
    let client_port = topology.client.run(|| {
        let mut stream =
            connect_from(IpAddr::V4(CLIENT_V4), front(), Duration::from_secs(3)).expect("connect");
        let port = stream.local_addr().unwrap().port();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        peers::upload_and_check(&mut stream, 4, LEN, None).expect("checksummed transfer");
        port
    });
    proxy.wait_idle();
    let log = proxy.process.log();
    let line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "connection closed")
        .unwrap_or_else(|| panic!("no audit line in:\n{log}"));
    let fields = &line["fields"];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(fields["link"], "pump-17", "{line}");
    assert_eq!(
        fields["client"],
        format!("{CLIENT_V4}:{client_port}"),
        "the client's address and port: {line}"
    );
    assert_eq!(fields["device"], device().to_string(), "{line}");
    assert_eq!(fields["bytes_to_device"], LEN, "{line}");
    assert_eq!(
        fields["bytes_from_device"],
        16 + peers::reply_len(LEN),
        "the device's checksum and reply: {line}"
    );
    assert_eq!(fields["close_reason"], "completed", "{line}");
    let expected_plane = if data_plane == "ebpf" {
        "kernel"
    } else {
        "userspace"
    };
    assert_eq!(fields["data_plane"], expected_plane, "{line}");
    assert!(fields["start"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(fields["duration_ms"].as_u64().is_some(), "{line}");
}

#[test]
fn the_audit_line_has_the_right_counts_ebpf() {
    audit_line_has_the_right_counts("ebpf");
}

#[test]
fn the_audit_line_has_the_right_counts_userspace() {
    audit_line_has_the_right_counts("userspace");
}

/// Twenty refusals of one cause make one log line at once (the rest are counted); a refusal is
/// never silenced for good (the next line after the quiet spell says how many were left out,
/// checked in the unit tests of the rate limiter).
#[test]
fn refusals_are_logged_once_per_spell_and_all_counted() {
    let topology = Topology::new("audit-refuse")
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: "userspace",
            xdp: false,
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    topology.client.run(|| {
        for _ in 0..20 {
            // The accept-time check resets it, maybe before connect() returns (no XDP here).
            if let Ok(mut stream) =
                connect_from(IpAddr::V4(OTHER_CLIENT_V4), front(), Duration::from_secs(3))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = stream.read(&mut [0u8; 8]);
                drop::<TcpStream>(stream);
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proxy.metric("devicelink_connections_total{result=\"rejected_acl\"}") < 20.0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proxy.metric("devicelink_connections_total{result=\"rejected_acl\"}"),
        20.0,
        "every refusal is counted"
    );
    let log = proxy.process.log();
    assert_eq!(
        log.matches("refusing client").count(),
        1,
        "one line for the spell, not one per client:\n{log}"
    );
}
