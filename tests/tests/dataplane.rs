//! The proxy's data plane end to end, in real network namespaces with the real kernel programs:
//! bytes intact both ways, half-close, server-speaks-first, bytes sent before the device
//! connection is up, hundreds of concurrent connections, a fast client held back by a slow
//! device, in eBPF and userspace modes. Needs root.

use std::{
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, PROXY_FRONT_V4, Proxy, ProxyOptions, Topology,
    peers::{self, Behavior},
    receive_all, send_pattern,
};

const DEVICE_PORT: u16 = 7000;
const PROXY_PORT: u16 = 2222;

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), PROXY_PORT)
}

fn device() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), DEVICE_PORT)
}

/// A topology, a device server and a proxy in `mode`.
fn setup(
    tag: &str,
    mode: &str,
    behavior: Behavior,
    extra: &[&str],
) -> (Topology, peers::Server, Proxy) {
    let topology = Topology::new(tag)
        .unwrap_or_else(|e| panic!("topology {tag}: {e:#} (these tests need root)"));
    let server = peers::serve(&topology.device, device(), behavior);
    let proxy = Proxy::start(
        &topology,
        front(),
        device(),
        ProxyOptions {
            data_plane: mode,
            extra: extra.iter().map(ToString::to_string).collect(),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy ({mode}): {e:#}"));
    // `auto` runs the eBPF data plane wherever it loads, as here.
    let running = if mode == "auto" { "ebpf" } else { mode };
    let data_plane = format!("devicelink_data_plane_info{{mode=\"{running}\"}}");
    assert_eq!(
        proxy.metric(&data_plane),
        1.0,
        "proxy should run the {running} data plane"
    );
    (topology, server, proxy)
}

fn connect() -> TcpStream {
    let stream =
        TcpStream::connect_timeout(&front(), Duration::from_secs(5)).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// Both directions at once, large, checksummed: the client uploads while the echo comes back.
///
/// In eBPF mode on this kernel (6.18) an echo under such load sometimes has a TCP retransmission
/// that partly overlaps bytes already received, which the sockmap would pass on twice; the
/// verdict program cuts it (see `repeated_echoes_both_ways_stay_intact_ebpf`). Should a repeat
/// ever get through, the proxy must reset the connection and count it, never let a corrupted
/// stream through: every attempt either arrives intact or ends in a reset the proxy counted as an
/// integrity error, and at least one of a few attempts arrives intact.
fn large_transfer_both_ways(mode: &str, extra: &[&str]) {
    let (topology, _server, proxy) = setup(&format!("big{mode}"), mode, Behavior::Echo, extra);
    const LEN: u64 = 128 << 20;
    const ATTEMPTS: usize = 6;
    let integrity_errors = || proxy.metric("devicelink_splice_integrity_errors_total");
    let mut intact = 0;
    for attempt in 1..=ATTEMPTS {
        let errors_before = integrity_errors();
        let outcome = topology.client.run(move || {
            let mut stream = connect();
            let mut reader = stream.try_clone().unwrap();
            let receiver = thread::spawn(move || receive_all(&mut reader));
            let sent = send_pattern(&mut stream, 42, LEN);
            let _ = stream.shutdown(Shutdown::Write);
            (sent, receiver.join().unwrap())
        });
        proxy.wait_idle();
        match outcome {
            (Ok(sent), Ok(echoed)) => {
                assert_eq!(echoed, sent, "every byte should come back once, in order");
                intact += 1;
                break;
            }
            (sent, echoed) => {
                assert_eq!(
                    integrity_errors(),
                    errors_before + 1.0,
                    "attempt {attempt}: the transfer failed ({sent:?}, {echoed:?}) without the proxy counting an integrity error"
                );
                eprintln!("attempt {attempt}: reset by the proxy's integrity check");
            }
        }
    }
    assert_eq!(intact, 1, "no intact transfer in {ATTEMPTS} attempts");
    if integrity_errors() == 0.0 {
        let [up, down] = ["to_device", "from_device"]
            .map(|d| proxy.metric(&format!("devicelink_bytes_total{{direction=\"{d}\"}}")));
        assert_eq!(
            (up, down),
            (LEN as f64, LEN as f64),
            "byte counters should match what was carried"
        );
    }
    if mode == "ebpf" || mode == "auto" {
        // Under auto, after an opening in the copy.
        assert!(proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}") >= 1.0);
    } else {
        assert_eq!(
            integrity_errors(),
            0.0,
            "the userspace copy never duplicates"
        );
    }
    if extra.contains(&"--splice-max-queued") {
        assert!(
            proxy.metric("devicelink_splice_skbs_total{event=\"held_queue_full\"}") >= 2.0,
            "the queue limit should have stopped the senders"
        );
    }
    if extra.contains(&"always") {
        let (moved, back) = moves(&proxy);
        eprintln!("moved to user space {moved} times, back to the kernel {back} times");
        assert!(
            moved >= 3.0 && back >= 2.0,
            "the transfer should have moved between the planes many times: {moved} to user space, {back} back"
        );
    }
    if extra.contains(&"leave") {
        let (left, back) = left_and_back(&proxy);
        eprintln!("left the splice {left} times, back into it {back} times");
        assert!(
            left >= 2.0 && back >= 1.0,
            "the transfer should have left the splice and come back many times: left {left}, back {back}"
        );
    }
}

/// Takes every spliced connection out of the splice to the userspace copy at its first look,
/// mid-stream, as a trial does, and back into the splice 5 ms later, and out again after 2 MiB
/// more: every transfer crosses between the splice and the copy many times.
const LEAVE_AND_COME_BACK: [&str; 4] = ["--splice-carry", "leave", "--splice-carry-for", "5ms"];

/// `(out of the splice to the copy, back into the splice)` moves the proxy counted.
fn left_and_back(proxy: &Proxy) -> (f64, f64) {
    (
        proxy.metric("devicelink_splice_moves_total{to=\"copy\",reason=\"forced\"}"),
        proxy.metric("devicelink_splice_moves_total{to=\"kernel\",reason=\"stay_over\"}"),
    )
}

/// Moves a spliced connection to user space at every chance and back to the kernel 5 ms later,
/// so that every transfer crosses between the two paths mid-stream, many times.
const MOVE_AT_EVERY_CHANCE: [&str; 4] = ["--splice-carry", "always", "--splice-carry-for", "5ms"];

/// `(to user space, back to the kernel)` moves the proxy counted.
fn moves(proxy: &Proxy) -> (f64, f64) {
    (
        proxy.metric("devicelink_splice_moves_total{to=\"userspace\",reason=\"forced\"}"),
        proxy.metric("devicelink_splice_moves_total{to=\"kernel\",reason=\"stay_over\"}"),
    )
}

/// Echo after echo through the splice, both ways at full speed: on this kernel such load brings
/// TCP retransmissions that partly overlap bytes already received, which the sockmap would pass
/// on twice. The verdict program cuts the repeat by sequence number; every echo must come back
/// intact, with no integrity reset and no overlap left uncut.
#[test]
fn repeated_echoes_both_ways_stay_intact_ebpf() {
    let (topology, _server, proxy) = setup("echoes", "ebpf", Behavior::Echo, &[]);
    const LEN: u64 = 64 << 20;
    for round in 1..=6u64 {
        let (sent, echoed) = topology.client.run(move || {
            let mut stream = connect();
            let mut reader = stream.try_clone().unwrap();
            let receiver = thread::spawn(move || receive_all(&mut reader).expect("echo read"));
            let sent = send_pattern(&mut stream, round, LEN).expect("upload");
            stream.shutdown(Shutdown::Write).unwrap();
            (sent, receiver.join().unwrap())
        });
        assert_eq!(echoed, sent, "round {round}: every byte once, in order");
    }
    proxy.wait_idle();
    let trimmed = proxy.metric("devicelink_splice_skbs_total{event=\"overlap_trimmed\"}");
    eprintln!("overlapping retransmissions cut: {trimmed}");
    assert_eq!(
        proxy.metric("devicelink_splice_integrity_errors_total"),
        0.0
    );
    assert_eq!(
        proxy.metric("devicelink_splice_skbs_total{event=\"overlap_untrimmed\"}"),
        0.0
    );
    assert_eq!(
        proxy.metric("devicelink_splice_skbs_total{event=\"seq_unknown\"}"),
        0.0,
        "the verdict program should read every skb's TCP sequence"
    );
}

#[test]
fn large_transfer_both_ways_ebpf() {
    large_transfer_both_ways("ebpf", &[]);
}

/// The same with a tiny queue limit: both directions keep stopping for flow control, and user
/// space keeps handing held bytes back to the kernel, while the other direction flows.
#[test]
fn large_transfer_both_ways_ebpf_flow_controlled() {
    large_transfer_both_ways("ebpf", &["--splice-max-queued", "256K"]);
}

/// 128 MiB each way at once while the connection moves between the kernel path and user space
/// every few milliseconds: every byte arrives once, in order, in both directions.
#[test]
fn large_transfer_both_ways_moved_between_planes_ebpf() {
    large_transfer_both_ways("ebpf", &MOVE_AT_EVERY_CHANCE);
}

/// 128 MiB each way at once, the connection leaving the splice for the copy and coming back
/// every few milliseconds.
#[test]
fn large_transfer_both_ways_leaving_the_splice_ebpf() {
    large_transfer_both_ways("ebpf", &LEAVE_AND_COME_BACK);
}

/// The default data plane: the copy carries the transfer's opening, then it enters the splice
/// mid-stream, both directions in flight (and may be measured on both paths after).
#[test]
fn large_transfer_both_ways_auto() {
    large_transfer_both_ways("auto", &[]);
}

#[test]
fn large_transfer_both_ways_userspace() {
    large_transfer_both_ways("userspace", &[]);
}

/// Hundreds of half-closed exchanges of every size from 0 bytes up: upload, FIN, the device's
/// answer after the FIN, checked byte for byte. This is where a FIN passed on too early (before
/// the peer's psock queue drained) or a zero-length skb redirected shows up.
fn half_close_many(mode: &str, banner: Option<usize>, extra: &[&str]) {
    let behavior = match banner {
        Some(banner) => Behavior::SpeakFirst { banner },
        None => Behavior::SinkThenReply,
    };
    // One client stands for 300, opening them as fast as it can.
    let mut flags = vec!["--connect-rate-per-source", "0"];
    flags.extend_from_slice(extra);
    let (topology, _server, proxy) = setup(
        &format!("hc{mode}{}{}", banner.is_some() as u8, extra.len()),
        mode,
        behavior,
        &flags,
    );
    const CONNECTIONS: u64 = 300;
    const SIZES: [u64; 8] = [0, 1, 2, 1000, 65_535, 65_536, 300_000, 2_000_000];
    let failures = topology.client.run(move || {
        let workers: Vec<_> = (0..6)
            .map(|worker| {
                thread::spawn(move || {
                    let mut failures = Vec::new();
                    for i in (worker..CONNECTIONS).step_by(6) {
                        let len = SIZES[(i % SIZES.len() as u64) as usize];
                        let mut stream = connect();
                        if let Err(e) = peers::upload_and_check(&mut stream, i, len, banner) {
                            failures.push(format!("connection {i} ({len} bytes): {e}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} exchanges broke:\n{}",
        failures.len(),
        failures.join("\n")
    );
    proxy.wait_idle();
    let completed = proxy.metric("devicelink_connections_total{result=\"completed\"}");
    assert_eq!(
        completed,
        CONNECTIONS as f64,
        "every exchange should end cleanly:\n{}",
        proxy.process.log()
    );
    if mode == "ebpf" || mode == "auto" {
        let kernel = proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}");
        // A client whose whole upload and FIN arrive before the splice is set up is carried in
        // user space (a socket that left ESTABLISHED cannot enter a sockmap): the small sizes.
        // The 2 MB uploads cannot fit in socket buffers, so they must all go through the kernel.
        let big = (0..CONNECTIONS)
            .filter(|i| SIZES[(i % SIZES.len() as u64) as usize] >= 2_000_000)
            .count();
        eprintln!("{kernel} of {CONNECTIONS} exchanges went through the kernel");
        // Under auto a large one may also end in the copy's opening, if its whole upload came
        // between two of the opening's looks; most enter the splice mid-upload.
        let must = if mode == "auto" { big / 2 } else { big };
        assert!(
            kernel >= must as f64,
            "only {kernel} of {CONNECTIONS} went through the kernel; {must} of the {big} large ones must"
        );
        if mode == "auto" {
            // The copy carries a connection's opening: exchanges this small end in it.
            let small = (0..CONNECTIONS)
                .filter(|i| SIZES[(i % SIZES.len() as u64) as usize] <= 65_536)
                .count();
            let userspace =
                proxy.metric("devicelink_connections_carried_total{path=\"userspace\"}");
            assert!(
                userspace >= (small / 2) as f64,
                "only {userspace} of the {small} short exchanges ended in the copy's opening"
            );
        }
        if extra.contains(&"always") {
            let (moved, back) = moves(&proxy);
            eprintln!("moved to user space {moved} times, back to the kernel {back} times");
            assert!(
                moved >= kernel,
                "every spliced exchange should have moved to user space at once: {moved} of {kernel}"
            );
            assert!(back >= 1.0, "no exchange came back to the kernel");
        }
        if extra.contains(&"leave") {
            let (left, back) = left_and_back(&proxy);
            eprintln!("left the splice {left} times, back into it {back} times");
            assert!(left >= 1.0, "no exchange left the splice");
        }
    }
}

#[test]
fn half_close_exchanges_intact_ebpf() {
    half_close_many("ebpf", None, &[]);
}

/// The half-closed exchanges while each connection moves to user space at once and back to
/// the kernel 5 ms later (with 2 MB uploads, mid-transfer): the FIN is passed on after every
/// byte, whichever path carried it.
#[test]
fn half_close_exchanges_intact_moved_between_planes_ebpf() {
    half_close_many("ebpf", None, &MOVE_AT_EVERY_CHANCE);
}

/// The half-closed exchanges, each leaving the splice for the copy at once and coming back 5 ms
/// later (2 MB uploads mid-transfer).
#[test]
fn half_close_exchanges_intact_leaving_the_splice_ebpf() {
    half_close_many("ebpf", None, &LEAVE_AND_COME_BACK);
}

/// The default data plane: the short exchanges end in the copy's opening, the 2 MB uploads
/// enter the splice mid-upload, with the device's answer after the FIN still to come.
#[test]
fn half_close_exchanges_intact_auto() {
    half_close_many("auto", None, &[]);
}

#[test]
fn half_close_exchanges_intact_userspace() {
    half_close_many("userspace", None, &[]);
}

/// SSH, VNC and RDP servers speak first and then wait: bytes that reached the device socket
/// before it entered the splice must still be delivered.
#[test]
fn server_speaks_first_ebpf() {
    half_close_many("ebpf", Some(1500), &[]);
}

#[test]
fn server_speaks_first_userspace() {
    half_close_many("userspace", Some(1500), &[]);
}

/// The device answers slowly (its SYN-ACK is delayed 300 ms by netem), and the client sends
/// a lot before the device connection is up: nothing may be lost.
fn early_bytes(mode: &str) {
    let (topology, _server, proxy) =
        setup(&format!("early{mode}"), mode, Behavior::SinkThenReply, &[]);
    let delayed = topology.device.ip(&["link", "show", "eth0"]).is_ok()
        && devicelink_testbed::sh(topology.device.command("tc").args([
            "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "300ms",
        ]))
        .is_ok();
    if !delayed {
        eprintln!("note: netem unavailable; the device connects at once (bytes still precede it)");
    }
    topology.client.run(move || {
        for (i, len) in [(1u64, 10u64), (2, 100_000), (3, 3_000_000)] {
            let mut stream = connect();
            let start = Instant::now();
            peers::upload_and_check(&mut stream, i, len, None)
                .unwrap_or_else(|e| panic!("{len} bytes sent before the device answered: {e}"));
            if delayed {
                assert!(
                    start.elapsed() >= Duration::from_millis(300),
                    "the device connection should have been delayed"
                );
            }
        }
    });
    drop(proxy);
}

#[test]
fn bytes_before_device_connects_are_kept_ebpf() {
    early_bytes("ebpf");
}

#[test]
fn bytes_before_device_connects_are_kept_userspace() {
    early_bytes("userspace");
}

/// 500 clients at once, each with its own echo exchange, all intact. `extra` flags let the eBPF variant run with a small splice send buffer, so that the psock
/// backlog meets a full send buffer and queues, the case where an end-of-stream skb once broke
/// the reply direction.
fn concurrent(mode: &str, extra: &[&str]) {
    raise_fd_limit();
    // One client stands for 500: it may hold every slot and open them all at once.
    let mut flags = vec![
        "--max-connections",
        "1000",
        "--max-connections-per-source",
        "1000",
        "--connect-rate-per-source",
        "0",
    ];
    flags.extend_from_slice(extra);
    let (topology, _server, proxy) = setup(
        &format!("conc{mode}{}", extra.len()),
        mode,
        Behavior::Echo,
        &flags,
    );
    let clients = 500;
    topology.client.run(move || {
        raise_fd_limit();
        // Open every connection first, so that all 500 are carried at the same time.
        let streams: Vec<TcpStream> = (0..clients).map(|_| connect()).collect();
        let mut handles = Vec::new();
        for (i, mut stream) in streams.into_iter().enumerate() {
            handles.push(thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let receiver = thread::spawn(move || receive_all(&mut reader));
                let sent = send_pattern(&mut stream, i as u64, 64 * 1024 + i as u64).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
                let got = receiver.join().unwrap().unwrap();
                (sent == got)
                    .then_some(())
                    .ok_or(format!("client {i}: sent {sent:?}, got {got:?}"))
            }));
        }
        let failures: Vec<String> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {clients} broke: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
    });
    proxy.wait_idle();
    assert_eq!(
        proxy.metric("devicelink_connections_total{result=\"completed\"}"),
        clients as f64
    );
}

#[test]
fn five_hundred_concurrent_connections_ebpf() {
    concurrent("ebpf", &[]);
}

#[test]
fn five_hundred_concurrent_connections_ebpf_small_send_buffers() {
    concurrent("ebpf", &["--splice-sndbuf", "64K"]);
}

/// Five hundred echoes at once, each moving to user space at once and back 5 ms later.
#[test]
fn five_hundred_concurrent_connections_moved_between_planes_ebpf() {
    concurrent("ebpf", &MOVE_AT_EVERY_CHANCE);
}

/// Five hundred echoes at once, each leaving the splice for the copy at once and coming back
/// 5 ms later.
#[test]
fn five_hundred_concurrent_connections_leaving_the_splice_ebpf() {
    concurrent("ebpf", &LEAVE_AND_COME_BACK);
}

/// The default data plane: 500 echoes opened at once, each in the copy's opening first, the
/// slower ones entering the splice mid-echo.
#[test]
fn five_hundred_concurrent_connections_auto() {
    concurrent("auto", &[]);
}

#[test]
fn five_hundred_concurrent_connections_userspace() {
    concurrent("userspace", &[]);
}

/// The point of the splice: in eBPF mode the proxy process moves no payload. Over a 1 GiB
/// upload (and its 0.5 GiB answer) the bytes it read and wrote itself stay near zero (its own
/// count, `devicelink_user_space_bytes_total`, which also counts the held bytes it forwards) and
/// its CPU time barely moves, while the userspace mode's carries every byte. (Socket reads do not
/// show in /proc/<pid>/io, so CPU time is the outside witness.)
///
/// The CPU bound here is a tenth of the userspace mode's, not the 5% performance goal: that one
/// is judged by the benchmark (`cargo xtask bench`, medians of interleaved runs). CPU time is charged in
/// whole scheduler ticks (4 ms here) to whatever runs when a tick lands, including network
/// softirq work that happens to run in the proxy's context, so on a busy machine a tighter bound
/// in a single run would be a timing assertion. Seen on an idle machine: 10-20 ms against
/// 520-920 ms.
#[test]
fn ebpf_mode_copies_no_payload_in_user_space() {
    const LEN: u64 = 1 << 30;
    let mut cpu = Vec::new();
    for mode in ["ebpf", "userspace"] {
        let (topology, _server, proxy) =
            setup(&format!("nocopy{mode}"), mode, Behavior::SinkThenReply, &[]);
        let pid = proxy.process.pid();
        let before = devicelink_testbed::cpu_time_of(pid).expect("/proc/<pid>/stat");
        topology.client.run(move || {
            let mut stream = connect();
            peers::upload_and_check(&mut stream, 9, LEN, None).expect("1 GiB through the proxy");
        });
        cpu.push(devicelink_testbed::cpu_time_of(pid).unwrap() - before);
        proxy.wait_idle();
        let copied = proxy.metric("devicelink_user_space_bytes_total{direction=\"to_device\"}")
            + proxy.metric("devicelink_user_space_bytes_total{direction=\"from_device\"}");
        let carried = proxy.metric("devicelink_bytes_total{direction=\"to_device\"}")
            + proxy.metric("devicelink_bytes_total{direction=\"from_device\"}");
        eprintln!("{mode}: the proxy process copied {copied} of {carried} bytes");
        assert!(
            carried >= (LEN + LEN / 2) as f64,
            "{mode}: carried {carried} bytes"
        );
        if mode == "ebpf" {
            assert_eq!(
                proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}"),
                1.0
            );
            // The held bytes it forwards are the only copy: 0.1-0.2% of a stream on an idle
            // machine, about 1.2% when the machine is busy enough that the device's reader
            // falls behind and flow control holds more (seen with other builds running). The
            // userspace mode copies 100%.
            assert!(
                copied <= carried / 20.0,
                "eBPF mode copied {copied} of {carried} bytes in user space"
            );
        } else {
            assert_eq!(copied, carried, "the userspace mode copies every byte");
        }
    }
    let (ebpf, userspace) = (cpu[0], cpu[1]);
    eprintln!("proxy process CPU for 1.5 GiB: ebpf {ebpf:?}, userspace {userspace:?}");
    assert!(
        userspace >= Duration::from_millis(100),
        "userspace mode should spend CPU copying, spent {userspace:?}"
    );
    assert!(
        ebpf * 10 <= userspace,
        "eBPF mode spent {ebpf:?} of CPU, more than a tenth of userspace mode's {userspace:?}"
    );
}

/// A connection user space carries (its sockets still in the splice) passes the client's FIN on
/// only once it wrote every byte it read: a slow device keeps the last bytes read waiting in the
/// proxy when the FIN arrives, and passing it on then would end the device's stream short.
#[test]
fn half_close_waits_for_carried_bytes_ebpf() {
    const LEN: u64 = 4 << 20;
    let (topology, _server, proxy) = setup(
        "carryfin",
        "ebpf",
        Behavior::SlowSinkThenReply {
            bytes_per_sec: 16 << 20,
            slow_for: u64::MAX,
        },
        &[
            "--splice-carry",
            "always",
            "--splice-carry-for",
            "60s",
            "--splice-sndbuf",
            "256K",
        ],
    );
    let failures = topology.client.run(|| {
        (0..3)
            .filter_map(|i| {
                let mut stream = connect();
                peers::upload_and_check(&mut stream, i, LEN, None)
                    .err()
                    .map(|e| format!("connection {i}: {e}"))
            })
            .collect::<Vec<_>>()
    });
    assert!(
        failures.is_empty(),
        "uploads carried in user space ended short:\n{}\n{}",
        failures.join("\n"),
        proxy.process.log()
    );
    let (moved, _) = moves(&proxy);
    assert!(
        moved >= 3.0,
        "each upload should have been carried in user space: {moved} moves"
    );
}

/// A connection leaving the splice while its client uploads faster than the device reads: what
/// the splice held meanwhile is read in one go and written at the device's pace, and every
/// byte arrives once, in order, across its leaves and returns.
#[test]
fn leaving_the_splice_toward_a_slow_device_ebpf() {
    const LEN: u64 = 12 << 20;
    let (topology, _server, proxy) = setup(
        "leaveslow",
        "ebpf",
        Behavior::SlowSinkThenReply {
            bytes_per_sec: 3 << 20,
            slow_for: u64::MAX,
        },
        &LEAVE_AND_COME_BACK,
    );
    let result = topology.client.run(|| {
        let mut stream = connect();
        peers::upload_and_check(&mut stream, 0, LEN, None)
    });
    assert!(
        result.is_ok(),
        "an upload leaving the splice toward a slow device: {result:?}\n{}",
        proxy.process.log()
    );
    // Coming back waits for an instant with nothing queued on the way in, which a client
    // faster than the device rarely leaves: how often it comes back is not asserted.
    let (left, back) = left_and_back(&proxy);
    eprintln!("left the splice {left} times, came back {back} times");
    assert!(left >= 1.0, "the upload should have left the splice");
}

/// The most bytes the clients had `sent` beyond what the device `received`, looked at every 5 ms
/// until `finished`: what sat in buffers on the way.
fn most_ahead(sent: &AtomicU64, received: &AtomicU64, finished: impl Fn() -> bool) -> u64 {
    let mut most = 0;
    while !finished() {
        let ahead = sent
            .load(Ordering::Relaxed)
            .saturating_sub(received.load(Ordering::Relaxed));
        most = most.max(ahead);
        thread::sleep(Duration::from_millis(5));
    }
    most
}

/// Eight clients uploading at once through one link faster than its device reads, where the
/// link's connections may move between paths: each keeps its share of the link's queue (a
/// quarter of `--splice-max-queued` with eight busy), not the whole limit, so the kernel has
/// little to send before any of them can move; every byte arrives, in order.
#[test]
fn a_busy_link_queues_a_share_per_connection_ebpf() {
    const CONNECTIONS: u64 = 8;
    const LEN: u64 = 96 << 20;
    const MIB: u64 = 1 << 20;
    let (topology, server, proxy) = setup(
        "share",
        "ebpf",
        Behavior::SlowSinkThenReply {
            bytes_per_sec: 100 << 20,
            slow_for: u64::MAX,
        },
        &["--splice-carry", "measure"],
    );
    let sent = Arc::new(AtomicU64::new(0));
    let uploading = Arc::new(AtomicU64::new(CONNECTIONS));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|seed| {
            let (sent, uploading) = (Arc::clone(&sent), Arc::clone(&uploading));
            topology.client.spawn(move || {
                let mut stream = connect();
                let result = peers::upload_and_check_counted(&mut stream, seed, LEN, None, &sent);
                uploading.fetch_sub(1, Ordering::Relaxed);
                result
            })
        })
        .collect();
    // How far the clients together got ahead of what the device read.
    let ahead_max = most_ahead(&sent, &server.received, || {
        uploading.load(Ordering::Relaxed) == 0
    });
    for client in clients {
        client.join().unwrap().unwrap_or_else(|e| {
            panic!(
                "an upload through a busy link to a slow device: {e}\n{}",
                proxy.process.log()
            )
        });
    }
    eprintln!(
        "{CONNECTIONS} clients got at most {} MiB ahead of the device together",
        ahead_max / MIB
    );
    // Per connection: its 16 MiB share of the queue, the client's send buffer (4 MiB at most
    // here) and the proxy's receive buffers. With the whole 64 MiB limit each, the eight
    // queue more than 512 MiB.
    assert!(
        ahead_max < CONNECTIONS * 40 * MIB,
        "{CONNECTIONS} clients got {} MiB ahead of the device: each queued more than its share",
        ahead_max / MIB
    );
}

/// A client that uploads faster than the device reads (a device on a slow link) must be made to
/// wait: the proxy keeps at most about `--splice-max-queued` of the upload, not all of it (the
/// kernel's own splice queue has no bound), and every byte arrives, in order.
fn fast_client_waits_for_slow_device(mode: &str) {
    const LEN: u64 = 200 << 20;
    const DEVICE_RATE: u64 = 100 << 20;
    let (topology, server, proxy) = setup(
        &format!("slow{mode}"),
        mode,
        Behavior::SlowSinkThenReply {
            bytes_per_sec: DEVICE_RATE,
            slow_for: u64::MAX,
        },
        &["--splice-max-queued", "8M"],
    );
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (sent, done) = (Arc::clone(&sent), Arc::clone(&done));
        topology.client.spawn(move || {
            let mut stream = connect();
            let result = peers::upload_and_check_counted(&mut stream, 11, LEN, None, &sent);
            done.store(true, Ordering::Relaxed);
            result
        })
    };
    // How far the client got ahead of what the device read: what sits in buffers on the way.
    let ahead_max = most_ahead(&sent, &server.received, || done.load(Ordering::Relaxed));
    client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{mode}: upload through a slow device: {e}"));
    eprintln!(
        "{mode}: the client got at most {} MiB ahead of the device",
        ahead_max >> 20
    );
    // The client's send buffer (4 MiB at most here), the proxy's queue limit and its sockets'
    // buffers, and the device's small receive buffer: well under 48 MiB. Without flow control
    // the proxy takes nearly the whole 200 MiB at once.
    assert!(
        ahead_max < 48 << 20,
        "{mode}: the client got {} MiB ahead of the device: the proxy buffers without bound",
        ahead_max >> 20
    );
    if mode == "ebpf" {
        proxy.wait_idle();
        // Slowed by pacing (its window clamped), held at the hard limit, or both.
        let waits = proxy.metric("devicelink_splice_skbs_total{event=\"paced\"}")
            + proxy.metric("devicelink_splice_skbs_total{event=\"held_queue_full\"}");
        assert!(
            waits >= 1.0,
            "the splice should have made the client wait at least once"
        );
        assert_eq!(
            proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}"),
            1.0
        );
        // The device (100 MiB/s) is slower than a clamped client's trickle between namespaces,
        // so the clamp gives way and holds at the hard limit stop the client; each copies what
        // its small receive buffer kept: 2-6.5% copied. (Reading a hold's bytes off round by
        // round would let the client refill the window each time: 13-19%.)
        let copied = proxy.metric("devicelink_user_space_bytes_total{direction=\"to_device\"}");
        eprintln!("{mode}: the proxy copied {copied} of {LEN} bytes");
        assert!(
            copied < LEN as f64 * 0.08,
            "the proxy copied {copied} of {LEN} bytes: holds should hand the direction back"
        );
    }
}

#[test]
fn fast_client_waits_for_slow_device_ebpf() {
    fast_client_waits_for_slow_device("ebpf");
}

#[test]
fn fast_client_waits_for_slow_device_userspace() {
    fast_client_waits_for_slow_device("userspace");
}

/// A direction paced in its first moments gets its whole receive window back once the receiver
/// keeps up. Seen from outside, in the proxy's namespace: the client socket's `rcv_ssthresh`
/// (the window TCP is willing to grow to) once the device reads at full speed.
///
/// What it guards: TCP starts a socket with a 64 KB window clamp and raises it from the receive
/// buffer after a few segments, so restoring the clamp read at accept would keep a saturated
/// upload at a 64 KB window for good (13 -> 9 Gbit/s measured). The kernel also recomputes the
/// clamp when the segments' size to memory ratio changes, which the traffic here does, so this
/// test shows the window back but would not by itself catch that; the restore is never below
/// the receive buffer (`unclamped_window` in `splice/pace.rs`).
#[test]
fn paced_sender_gets_its_window_back_ebpf() {
    const LEN: u64 = 512 << 20;
    const SLOW_FOR: u64 = 24 << 20;
    let (topology, server, proxy) = setup(
        "window",
        "ebpf",
        Behavior::SlowSinkThenReply {
            bytes_per_sec: 50 << 20,
            slow_for: SLOW_FOR,
        },
        // Paced from 2 MiB queued on: within the first milliseconds.
        &["--splice-max-queued", "8M"],
    );
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let done = Arc::clone(&done);
        topology.client.spawn(move || {
            let mut stream = connect();
            let result =
                peers::upload_and_check_counted(&mut stream, 13, LEN, None, &AtomicU64::new(0));
            done.store(true, Ordering::Relaxed);
            result
        })
    };
    let mut window_max = 0u64;
    while !done.load(Ordering::Relaxed) {
        if server.received.load(Ordering::Relaxed) > SLOW_FOR + (8 << 20) {
            let ss = topology
                .proxy
                .command("ss")
                .args(["-tni", "dst", &CLIENT_V4.to_string()])
                .output()
                .expect("ss runs");
            let text = String::from_utf8_lossy(&ss.stdout);
            for value in text.split_whitespace().filter_map(|field| {
                field
                    .strip_prefix("rcv_ssthresh:")
                    .and_then(|v| v.parse::<u64>().ok())
            }) {
                window_max = window_max.max(value);
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("upload through a device that speeds up: {e}"));
    proxy.wait_idle();
    assert!(
        proxy.metric("devicelink_splice_skbs_total{event=\"paced\"}") >= 1.0,
        "the slow start should have paced the client"
    );
    eprintln!("client socket's rcv_ssthresh at full speed: up to {window_max} bytes");
    assert!(
        window_max > 0,
        "no sample of the client socket was taken while the device read at full speed"
    );
    // The receive buffer here is 2 MiB (1 MiB asked, doubled by the kernel): the window may
    // grow to most of it. Stuck at the early clamp it stays at 64 KB.
    assert!(
        window_max > 512 << 10,
        "the client's window stayed at {window_max} bytes after pacing ended"
    );
}

fn raise_fd_limit() {
    // SAFETY: an all-zero rlimit is valid (plain integers); getrlimit and setrlimit only read or
    // write that struct, which lives on this stack frame for the calls.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}
