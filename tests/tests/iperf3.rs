//! iperf3, a real client and server, through the proxy: upload, download (-R), both at once
//! (--bidir) and eight streams each way at once (-P 8 --bidir), in eBPF and userspace modes. iperf3's client speaks first on its control
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
    for extra in [
        &[][..],
        &["-R"][..],
        &["--bidir"][..],
        &["-P", "8", "--bidir"][..],
    ] {
        // A run may be reset by the splice's integrity check (a kernel fault under
        // retransmissions with traffic both ways, see docs/data-plane.md); that is counted, and the
        // run is tried again. Any other failure fails the test.
        for attempt in 1..=3 {
            let errors_before = proxy.metric("devicelink_splice_integrity_errors_total");
            let counts_before = direction_counts(&proxy);
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
                // Seen once with --bidir through the userspace copy: iperf3 3.12
                // reported no bytes for the forward stream of a run that otherwise ended
                // cleanly. Tried again, up to three runs in all.
                eprintln!("iperf3 {extra:?}: a run reported 0 bytes received; trying again");
                continue;
            }
            assert!(
                received > 1e6,
                "iperf3 {extra:?} moved only {received} bytes"
            );
            if mode == "ebpf" {
                // Saturated senders reach the queue limit now and then, and each hold has up to
                // a receive buffer of bytes copied; the kernel must get the direction back after
                // that. When it did not, 40% of a --bidir run's download went through user space.
                proxy.wait_idle();
                let after = direction_counts(&proxy);
                for (direction, (before, after)) in ["to_device", "from_device"]
                    .iter()
                    .zip(counts_before.iter().zip(after))
                {
                    let (moved, copied) = (after.0 - before.0, after.1 - before.1);
                    eprintln!("iperf3 {extra:?}: {direction} {moved} bytes, {copied} copied");
                    assert!(
                        moved < 100e6 || copied < moved * 0.15,
                        "iperf3 {extra:?}: the proxy copied {:.1}% of {direction} ({copied} of {moved} bytes)",
                        100.0 * copied / moved
                    );
                }
            }
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

/// Per direction (to the device, from it): bytes carried, and of those copied by the proxy.
fn direction_counts(proxy: &Proxy) -> [(f64, f64); 2] {
    ["to_device", "from_device"].map(|direction| {
        (
            proxy.metric(&format!(
                "devicelink_bytes_total{{direction=\"{direction}\"}}"
            )),
            proxy.metric(&format!(
                "devicelink_user_space_bytes_total{{direction=\"{direction}\"}}"
            )),
        )
    })
}

#[test]
fn iperf3_through_the_ebpf_splice() {
    iperf3_through("ebpf");
}

/// The default data plane: busy streams are measured on both paths mid-transfer (and may leave
/// the splice for the copy); iperf3 must see every stream through.
#[test]
fn iperf3_through_the_default_data_plane() {
    iperf3_through("auto");
}

#[test]
fn iperf3_through_the_userspace_copy() {
    iperf3_through("userspace");
}
