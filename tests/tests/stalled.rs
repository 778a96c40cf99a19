//! Clients that connect to a streaming device and never read cannot make the proxy take more
//! memory than its budget: the proxy runs in a memory cgroup of its own, reads the budget from
//! it (`--memory-budget auto`), sizes its queues and connection limit to it, and 200 stalled
//! connections from one source are bounded by the per-source limit while another source still
//! gets in. Needs root (namespaces, a cgroup, BPF for the eBPF plane).

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, MemoryCgroup, OTHER_CLIENT_V4, PROXY_FRONT_V4, Proxy, ProxyOptions,
    Topology, connect_from,
    peers::{self, Behavior},
    rss_of,
};

const DEVICE_PORT: u16 = 7980;
const PROXY_PORT: u16 = 2980;
/// The proxy's memory limit, and so its budget.
const BUDGET: u64 = 1 << 30;
const STALLED: usize = 200;
/// How long the stalled connections are left to fill every buffer they can.
const FILL_FOR: Duration = Duration::from_secs(8);

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), PROXY_PORT)
}

fn device() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), DEVICE_PORT)
}

fn stalled_clients_stay_within_the_budget(data_plane: &str) {
    let topology = Topology::new(&format!("stall-{data_plane}"))
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let cgroup = MemoryCgroup::create(&format!("devicelink-{}", topology.tag()), BUDGET)
        .unwrap_or_else(|e| panic!("memory cgroup: {e:#}"));
    let _device = peers::serve(&topology.device, device(), Behavior::StreamUnlessSpokenTo);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane,
            allow: vec![format!("{CLIENT_V4}/32"), format!("{OTHER_CLIENT_V4}/32")],
            extra: vec![
                "--memory-budget".into(),
                "auto".into(),
                "--connect-rate-per-source".into(),
                "0".into(),
            ],
            cgroup: Some(cgroup.procs()),
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let log = proxy.process.log();
    assert!(
        log.contains(&format!(
            "memory budget {BUDGET} bytes (from the cgroup limit"
        )),
        "the proxy reads its budget from its cgroup:\n{log}"
    );
    assert_eq!(
        proxy.metric("devicelink_memory_budget_bytes"),
        BUDGET as f64
    );
    let max_connections = proxy.metric("devicelink_memory_max_connections");
    let per_connection = proxy.metric("devicelink_memory_connection_worst_case_bytes");
    assert!(
        max_connections >= 1.0
            && max_connections * per_connection + (48 << 20) as f64 <= BUDGET as f64,
        "{max_connections} connections of {per_connection} bytes at worst must fit {BUDGET}"
    );
    let per_source = (max_connections as usize / 4).max(1);
    let baseline = cgroup.charged().expect("cgroup charge");

    // One source opens 200 connections and never reads; the device streams into each.
    let stalled = topology.client.spawn(|| {
        let mut held: Vec<TcpStream> = Vec::new();
        for _ in 0..STALLED {
            if let Ok(stream) = connect_from(IpAddr::V4(CLIENT_V4), front(), Duration::from_secs(3))
            {
                held.push(stream);
            }
        }
        held
    });
    let held = stalled.join().expect("stalled clients");
    let started = Instant::now();
    let (mut peak_charged, mut peak_sockets, mut peak_rss) = (0u64, 0u64, 0u64);
    while started.elapsed() < FILL_FOR {
        peak_charged = peak_charged.max(cgroup.charged().unwrap_or(0));
        peak_sockets = peak_sockets.max(cgroup.charged_sockets().unwrap_or(0));
        peak_rss = peak_rss.max(rss_of(proxy.process.pid()).unwrap_or(0));
        thread::sleep(Duration::from_millis(200));
    }
    let active = proxy.metric("devicelink_connections_active");
    let refused = proxy.metric("devicelink_connections_total{result=\"rejected_source_limit\"}");
    eprintln!(
        "{data_plane}: budget {BUDGET}, limit {max_connections} x {per_connection} B; {active} stalled carried, {refused} refused by the per-source limit; cgroup charged {baseline} B idle, peak {peak_charged} B (sockets {peak_sockets} B); proxy RSS peak {peak_rss} B"
    );
    assert_eq!(
        active, per_source as f64,
        "one source holds its share of the link ({per_source}) and no more"
    );
    assert_eq!(
        refused,
        (STALLED - per_source) as f64,
        "every connection past the share is refused and counted"
    );
    assert!(
        peak_charged <= BUDGET,
        "the cgroup's charge ({peak_charged}) stays under the budget ({BUDGET})"
    );
    assert!(
        peak_rss <= BUDGET,
        "the proxy's RSS ({peak_rss}) stays under the budget"
    );
    assert!(
        peak_sockets as f64 <= active * per_connection,
        "the socket buffers charged ({peak_sockets}) stay within the worst case of the connections carried"
    );

    // Another source still gets in, and its bytes arrive intact.
    topology.client.run(|| {
        let mut stream = connect_from(IpAddr::V4(OTHER_CLIENT_V4), front(), Duration::from_secs(3))
            .expect("the other source connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        peers::upload_and_check(&mut stream, 5, 4 << 20, None)
            .expect("the other source's checksummed transfer");
    });
    drop(held);
    proxy.wait_idle();
}

#[test]
fn two_hundred_stalled_connections_stay_within_the_memory_budget_ebpf() {
    stalled_clients_stay_within_the_budget("ebpf");
}

#[test]
fn two_hundred_stalled_connections_stay_within_the_memory_budget_userspace() {
    stalled_clients_stay_within_the_budget("userspace");
}
