//! iperf3, a real client and server, through the proxy: upload, download (-R) and both at once
//! (--bidir), in eBPF and userspace modes. iperf3's client speaks first on its control
//! connection and opens a second connection for data, so this also covers a multi-connection
//! protocol. Throughput is not asserted here (see `cargo xtask bench`); completion and byte
//! counts are. Needs root and iperf3 (installed by `cargo xtask setup`).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use devicelink_testbed::{DEVICE_V4, PROXY_FRONT_V4, Process, Proxy, ProxyOptions, Topology, sh};

fn iperf3_through(mode: &str) {
    let topology = Topology::new(&format!("iperf{mode}")).expect("topology (needs root)");
    let device = SocketAddr::new(IpAddr::V4(DEVICE_V4), 5201);
    let mut server = topology.device.command("iperf3");
    server.args(["-s", "-B", &DEVICE_V4.to_string(), "-p", "5201"]);
    let _server = Process::start("iperf3-server", server).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 5201);
    let proxy = Proxy::start(
        &topology,
        front,
        device,
        ProxyOptions {
            data_plane: mode,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));
    for extra in [&[][..], &["-R"][..], &["--bidir"][..]] {
        // A run may be reset by the splice's integrity check (a kernel fault under
        // retransmissions with traffic both ways, see the README); that is counted, and the
        // run is tried again. Any other failure fails the test.
        for attempt in 1..=3 {
            let errors_before = proxy.metric("devicelink_splice_integrity_errors_total");
            let mut client = topology.client.command("iperf3");
            client
                .args([
                    "-c",
                    &PROXY_FRONT_V4.to_string(),
                    "-p",
                    "5201",
                    "-t",
                    "2",
                    "-J",
                ])
                .args(extra);
            let result = sh(&mut client);
            let reset_by_check = || {
                proxy.wait_idle();
                proxy.metric("devicelink_splice_integrity_errors_total") > errors_before
            };
            let out = match result {
                Ok(out) => out,
                Err(_) if attempt < 3 && reset_by_check() => continue,
                Err(e) => panic!("iperf3 {extra:?} through the {mode} proxy: {e:#}"),
            };
            let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
            if report.get("error").is_some() && attempt < 3 && reset_by_check() {
                continue;
            }
            assert!(
                report.get("error").is_none(),
                "iperf3 {extra:?}: {}",
                report["error"]
            );
            let received = report["end"]["sum_received"]["bytes"]
                .as_f64()
                .unwrap_or(0.0);
            if received == 0.0 && attempt < 3 {
                // Seen once with --bidir through the userspace copy (stop 9): iperf3 3.12
                // reported no bytes for the forward stream of a run that otherwise ended
                // cleanly. Tried again, up to three runs in all.
                eprintln!("iperf3 {extra:?}: a run reported 0 bytes received; trying again");
                continue;
            }
            assert!(
                received > 1e6,
                "iperf3 {extra:?} moved only {received} bytes"
            );
            break;
        }
    }
    proxy.wait_idle();
    let moved = proxy.metric("devicelink_bytes_total{direction=\"to_device\"}")
        + proxy.metric("devicelink_bytes_total{direction=\"from_device\"}");
    assert!(
        moved > 3e6,
        "the proxy should have counted the transfers, saw {moved}"
    );
    if mode == "ebpf" {
        let kernel = proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}");
        assert!(
            kernel >= 6.0,
            "control and data connections should be spliced, saw {kernel}"
        );
    }
}

#[test]
fn iperf3_through_the_ebpf_splice() {
    iperf3_through("ebpf");
}

#[test]
fn iperf3_through_the_userspace_copy() {
    iperf3_through("userspace");
}
