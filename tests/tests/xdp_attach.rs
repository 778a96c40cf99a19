//! The XDP ACL as a plane of its own: it attaches for the userspace copy too (whose buffers
//! default larger behind skb mode, and which is told at start when they are small), a failed
//! attach in `auto` mode leaves the splice running (and says so), and an interface without
//! Ethernet framing is refused with a clear error. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, OTHER_CLIENT_V4, PROXY_FRONT_V4, Proxy, ProxyOptions, Topology,
    connect_from,
    peers::{self, Behavior},
};

const DEVICE_PORT: u16 = 7900;
const PROXY_PORT: u16 = 2900;

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), PROXY_PORT)
}

fn device() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), DEVICE_PORT)
}

fn topology(tag: &str) -> Topology {
    Topology::new(tag).unwrap_or_else(|e| panic!("topology {tag}: {e:#} (these tests need root)"))
}

#[test]
fn the_userspace_copy_gets_the_xdp_acl_too() {
    let topology = topology("xdp-user");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: "userspace",
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    assert_eq!(proxy.metric("devicelink_xdp_attached"), 1.0);
    assert_eq!(
        proxy.metric("devicelink_data_plane_info{mode=\"userspace\"}"),
        1.0
    );
    let (allowed, denied) = topology.client.run(|| {
        (
            connect_from(IpAddr::V4(CLIENT_V4), front(), Duration::from_secs(3)).map(drop),
            connect_from(
                IpAddr::V4(OTHER_CLIENT_V4),
                front(),
                Duration::from_millis(800),
            )
            .map(drop),
        )
    });
    allowed.expect("the allowed source connects");
    let err = denied.expect_err("the disallowed source does not");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "XDP drops its SYNs on the wire: {err}"
    );
    assert!(proxy.metric("devicelink_link_xdp_drops_total{link=\"link\"}") >= 1.0);
    let log = proxy.process.log();
    assert!(
        log.contains("--copy-socket-buffer 4194304") && !log.contains("give --copy-socket-buffer"),
        "behind skb-mode XDP the copy's buffers default to 4 MiB:\n{log}"
    );
}

#[test]
fn the_copy_with_small_buffers_behind_skb_mode_xdp_is_told_at_start() {
    let topology = topology("xdp-small");
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: "userspace",
            extra: vec!["--copy-socket-buffer".into(), "1M".into()],
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let log = proxy.process.log();
    assert!(
        log.contains("skb mode") && log.contains("give --copy-socket-buffer 4M or more"),
        "1 MiB buffers behind skb-mode XDP are called out at start:\n{log}"
    );
}

#[test]
fn a_failed_xdp_attach_in_auto_mode_keeps_the_splice() {
    let topology = topology("xdp-auto");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: "auto",
            xdp: false,
            extra: vec!["--xdp-interface".into(), "no-such-if".into()],
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    assert_eq!(
        proxy.metric("devicelink_data_plane_info{mode=\"ebpf\"}"),
        1.0,
        "the splice is unaffected by the XDP failure"
    );
    assert_eq!(proxy.metric("devicelink_xdp_attached"), 0.0);
    let log = proxy.process.log();
    assert!(
        log.contains("XDP ACL not attached") && log.contains("no interface no-such-if"),
        "the log says so and why:\n{log}"
    );
    topology
        .client
        .run(|| connect_from(IpAddr::V4(CLIENT_V4), front(), Duration::from_secs(3)))
        .expect("the link carries");
}

#[test]
fn an_interface_without_ethernet_framing_is_refused() {
    let topology = topology("xdp-l3");
    topology
        .proxy
        .ip(&["tuntap", "add", "dev", "tun9", "mode", "tun"])
        .expect("a tun device");
    topology
        .proxy
        .ip(&["link", "set", "tun9", "up"])
        .expect("tun up");
    let err = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: "ebpf",
            xdp: false,
            extra: vec!["--xdp-interface".into(), "tun9".into()],
            ..ProxyOptions::default()
        },
    )
    .err()
    .expect("--data-plane ebpf with an L3 interface does not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("--xdp-interface tun9") && text.contains("not Ethernet"),
        "the error names the interface and why: {text}"
    );
}
