//! The kernel's source ACL as a plane of its own: it attaches for the userspace copy too, at
//! TC ingress by default and as XDP in skb mode on request (where the copy's buffers default
//! larger, and it is told at start when they are small), a killed proxy leaves no program on
//! the interface, a failed attach in `auto` mode leaves the splice running (and says so), and
//! an interface without Ethernet framing is refused with a clear error. Needs root.

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

/// A userspace-copy proxy with the ACL attached in `mode` (none: the default), whose disallowed
/// source is dropped on the wire; returns its log.
fn the_copy_behind_the_acl(tag: &str, mode: Option<&str>) -> String {
    let topology = topology(tag);
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: "userspace",
            extra: mode
                .map(|mode| vec!["--xdp-mode".into(), mode.into()])
                .unwrap_or_default(),
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
        "the ACL drops its SYNs on the wire: {err}"
    );
    assert!(proxy.metric("devicelink_link_xdp_drops_total{link=\"link\"}") >= 1.0);
    proxy.process.log()
}

#[test]
fn the_userspace_copy_gets_the_source_acl_at_tc_ingress_by_default() {
    let log = the_copy_behind_the_acl("acl-tc", None);
    assert!(
        log.contains("source ACL attached (TC ingress)"),
        "TC ingress is the default hook:\n{log}"
    );
    assert!(
        log.contains("--copy-socket-buffer 1048576") && !log.contains("give --copy-socket-buffer"),
        "TC copies no segment, so the copy's buffers keep their 1 MiB default:\n{log}"
    );
}

#[test]
fn the_userspace_copy_gets_the_xdp_acl_in_skb_mode_with_larger_buffers() {
    let log = the_copy_behind_the_acl("xdp-user", Some("skb"));
    assert!(
        log.contains("--copy-socket-buffer 4194304") && !log.contains("give --copy-socket-buffer"),
        "behind skb-mode XDP the copy's buffers default to 4 MiB:\n{log}"
    );
}

#[test]
fn a_killed_proxy_leaves_no_acl_on_the_interface() {
    let topology = topology("acl-kill");
    let _device = peers::serve(&topology.device, device(), Behavior::Echo);
    let mut proxy = Proxy::start(&topology, front(), device(), ProxyOptions::default())
        .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let denied = topology.client.run(|| {
        connect_from(
            IpAddr::V4(OTHER_CLIENT_V4),
            front(),
            Duration::from_millis(800),
        )
    });
    assert_eq!(
        denied.expect_err("dropped while the proxy runs").kind(),
        std::io::ErrorKind::TimedOut
    );
    proxy.process.signal(libc::SIGKILL);
    proxy
        .process
        .wait_timeout(Duration::from_secs(5))
        .expect("the proxy dies");
    // With the program gone the port is simply closed: the kernel answers the SYN with a reset.
    let after = topology
        .client
        .run(|| connect_from(IpAddr::V4(OTHER_CLIENT_V4), front(), Duration::from_secs(2)));
    assert_eq!(
        after.expect_err("nothing listens any more").kind(),
        std::io::ErrorKind::ConnectionRefused,
        "a SIGKILLed proxy's tcx link goes with it, so nothing drops the SYN"
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
            extra: vec![
                "--xdp-mode".into(),
                "skb".into(),
                "--copy-socket-buffer".into(),
                "1M".into(),
            ],
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
        log.contains("source ACL not attached") && log.contains("no interface no-such-if"),
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
