//! Many links in one proxy, changed while it runs (`--config FILE`), end to end in namespaces,
//! on both data planes: every link carries at once; the XDP ACL judges each link's port by its
//! own ranges; each kind of change keeps the sessions it should and closes the ones it should;
//! a file that does not validate is refused whole; a thousand links start and stop cleanly; the
//! control socket lists and closes sessions. Needs root.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64},
    thread,
    time::{Duration, Instant, SystemTime},
};

use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, OTHER_CLIENT_V4, PROXY_FRONT_IFACE, PROXY_FRONT_V4, Process, Topology,
    connect_from, http_get_in, parse_metric,
    peers::{self, Behavior},
    proxy_binary,
};
use serde_json::{Value, json};

const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

fn topology(tag: &str) -> Topology {
    Topology::new(tag).unwrap_or_else(|e| panic!("topology {tag}: {e:#} (these tests need root)"))
}

fn front(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), port)
}

fn device(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DEVICE_V4), port)
}

fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    // Civil date from days since the epoch (Howard Hinnant's algorithm), to keep the test bed
    // free of a date crate.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One link of the config file.
fn link(name: &str, port: u16, device_port: u16, ranges: &[String]) -> Value {
    json!({
        "name": name,
        "listen": front(port).to_string(),
        "device": device(device_port).to_string(),
        "allowedSourceRanges": ranges,
    })
}

fn host(addr: Ipv4Addr) -> String {
    format!("{addr}/32")
}

/// A proxy started with `--config`, its file, and its control socket.
struct LinksProxy {
    process: Process,
    dir: PathBuf,
    file: PathBuf,
    socket: PathBuf,
    topology_proxy: String,
}

impl Drop for LinksProxy {
    fn drop(&mut self) {
        if self.process.try_wait().is_none() {
            self.process.signal(libc::SIGTERM);
            let _ = self.process.wait_timeout(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LinksProxy {
    fn start(topology: &Topology, data_plane: &str, links: &[Value]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "devicelink-links-{}-{}",
            topology.tag(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("links.yaml");
        let socket = dir.join("control.sock");
        write_atomically(&file, &json!({ "links": links }).to_string());
        let mut cmd = topology
            .proxy
            .command(proxy_binary().expect("proxy binary"));
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .arg("--config")
        .arg(&file)
        .arg("--control-socket")
        .arg(&socket)
        .args([
            "--metrics",
            &METRICS.to_string(),
            "--data-plane",
            data_plane,
        ]);
        if data_plane == "ebpf" {
            cmd.args(["--xdp-interface", PROXY_FRONT_IFACE]);
        }
        let process = Process::start("devicelink-proxy", cmd).expect("proxy starts");
        let mut proxy = Self {
            process,
            dir,
            file,
            socket,
            topology_proxy: topology.proxy.name().to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while proxy.http("GET", "/v1/links").0 != 200 {
            if let Some(status) = proxy.process.try_wait() {
                panic!(
                    "proxy exited ({status}) before ready:\n{}",
                    proxy.process.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "proxy not ready:\n{}",
                proxy.process.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// An HTTP request on the control socket: `(status, body)`; `(0, "")` when it cannot connect.
    fn http(&self, method: &str, path: &str) -> (u16, String) {
        let Ok(mut stream) = UnixStream::connect(&self.socket) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.http("GET", path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Replaces the file (as editors and ConfigMaps do, by a rename) and waits until the proxy
    /// has read it: applied (the generation moved on) or refused.
    fn change(&self, links: &[Value]) -> Value {
        self.write_raw(&json!({ "links": links }).to_string())
    }

    fn write_raw(&self, text: &str) -> Value {
        let before = self.json("/v1/links");
        write_atomically(&self.file, text);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.json("/v1/links");
            if now["generation"] != before["generation"]
                || now["configError"] != before["configError"]
            {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not read the changed file within 5 s:\n{}",
                self.process.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn metrics(&self) -> String {
        let netns = PathBuf::from(format!("/run/netns/{}", self.topology_proxy));
        http_get_in(&netns, METRICS, "/metrics")
            .expect("the metrics listener answers")
            .1
    }

    fn metric(&self, series: &str) -> f64 {
        parse_metric(&self.metrics(), series).unwrap_or(0.0)
    }

    fn link_state(&self, name: &str) -> String {
        let links = self.json("/v1/links");
        links["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|link| link["name"] == name)
            .map(|link| link["state"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "absent".into())
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.process.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Connects from `source` to `port` and says whether the proxy carried the connection to the
/// device: `Ok` after an echo round trip, `Err` with what happened otherwise.
fn echo_from(source: Ipv4Addr, port: u16) -> Result<TcpStream, String> {
    let mut stream = connect_from(IpAddr::V4(source), front(port), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream
        .write_all(b"ping")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 4];
    stream
        .read_exact(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    Ok(stream)
}

/// Whether the proxy closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Whether `stream` ends with a reset within `within` (not with a FIN: a connection the proxy
/// cuts must not look complete to its peer).
fn reset_within(stream: &mut TcpStream, within: Duration) -> Result<(), String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Err("it ended with a FIN".into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err("still open".into());
            }
            Err(e) => return Err(format!("ended with {e}")),
        }
        if Instant::now() > deadline {
            return Err("still open".into());
        }
    }
}

/// A checksummed upload through `port` from `source` to a slow device, on its own thread; the
/// handle says whether every byte arrived and the reply came back intact.
fn slow_transfer(
    topology: &Topology,
    source: Ipv4Addr,
    port: u16,
    seed: u64,
    len: u64,
) -> thread::JoinHandle<Result<(), String>> {
    topology.client.spawn(move || {
        let mut stream = connect_from(IpAddr::V4(source), front(port), Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        peers::upload_and_check_counted(&mut stream, seed, len, None, &AtomicU64::new(0))
    })
}

/// A device that reads at 2 MiB/s: an 8 MiB upload lasts about four seconds, long enough for
/// changes to land while it runs.
const SLOW: Behavior = Behavior::SlowSinkThenReply {
    bytes_per_sec: 2 << 20,
    slow_for: u64::MAX,
};
const SLOW_LEN: u64 = 8 << 20;

fn twenty_links_carry_at_once(data_plane: &str) {
    let topology = topology(&format!("links20-{data_plane}"));
    let mut devices = Vec::new();
    let mut links = Vec::new();
    for i in 0..20u16 {
        devices.push(peers::serve(
            &topology.device,
            device(7300 + i),
            Behavior::SinkThenReply,
        ));
        // Link 0 lets only the client in; every other link lets the other client in too.
        let mut ranges = vec![host(CLIENT_V4)];
        if i > 0 {
            ranges.push(host(OTHER_CLIENT_V4));
        }
        links.push(link(&format!("link-{i}"), 3300 + i, 7300 + i, &ranges));
    }
    let proxy = LinksProxy::start(&topology, data_plane, &links);
    let transfers: Vec<_> = (0..20u16)
        .map(|i| {
            topology.client.spawn(move || {
                let mut stream = connect_from(
                    IpAddr::V4(CLIENT_V4),
                    front(3300 + i),
                    Duration::from_secs(5),
                )
                .map_err(|e| format!("link-{i}: connect: {e}"))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                peers::upload_and_check(&mut stream, u64::from(i), 4 << 20, None)
                    .map_err(|e| format!("link-{i}: {e}"))
            })
        })
        .collect();
    for transfer in transfers {
        transfer.join().expect("transfer thread").unwrap();
    }
    // The same source: refused on link 0, carried on link 1.
    let (on_link_0, on_link_1) = topology.client.run(|| {
        let refused = connect_from(
            IpAddr::V4(OTHER_CLIENT_V4),
            front(3300),
            Duration::from_millis(800),
        );
        let carried = connect_from(
            IpAddr::V4(OTHER_CLIENT_V4),
            front(3301),
            Duration::from_secs(3),
        );
        (refused.map(|_| ()), carried.map(|_| ()))
    });
    on_link_1.expect("the other client is allowed on link-1");
    if data_plane == "ebpf" {
        // XDP drops its SYNs on link 0's port: the connect times out.
        let err = on_link_0.expect_err("the other client is not allowed on link-0");
        assert_eq!(
            err.kind(),
            ErrorKind::TimedOut,
            "XDP should drop the disallowed SYN on link-0's port, not let the proxy reset it"
        );
        assert!(
            proxy.metric("devicelink_link_xdp_drops_total{link=\"link-0\"}") > 0.0,
            "link-0's XDP drops are counted"
        );
        assert_eq!(
            proxy.metric("devicelink_link_xdp_drops_total{link=\"link-1\"}"),
            0.0,
            "nothing was dropped on link-1"
        );
    } else {
        // No XDP: the accept-time check resets it.
        let refused = on_link_0.is_err()
            || topology.client.run(|| {
                let mut stream = connect_from(
                    IpAddr::V4(OTHER_CLIENT_V4),
                    front(3300),
                    Duration::from_secs(2),
                )
                .expect("connect");
                closed_within(&mut stream, Duration::from_secs(2))
            });
        assert!(refused, "the other client is refused on link-0");
    }
    assert!(
        proxy.metric("devicelink_link_bytes_total{link=\"link-7\",direction=\"to_device\"}")
            >= (4 << 20) as f64,
        "bytes are counted per link:\n{}",
        proxy.metrics()
    );
    drop(devices);
}

#[test]
fn twenty_links_carry_at_once_ebpf() {
    twenty_links_carry_at_once("ebpf");
}

#[test]
fn twenty_links_carry_at_once_userspace() {
    twenty_links_carry_at_once("userspace");
}

fn live_changes_keep_the_sessions_they_should(data_plane: &str) {
    let topology = topology(&format!("livechg-{data_plane}"));
    let _device_a = peers::serve(&topology.device, device(7400), SLOW);
    let _device_b = peers::serve(&topology.device, device(7401), SLOW);
    let _echo_a = peers::serve(&topology.device, device(7402), Behavior::Echo);
    let both = vec![host(CLIENT_V4), host(OTHER_CLIENT_V4)];
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let mut a = link("a", 3400, 7400, &both);
    a["expiresAt"] = json!(rfc3339(in_an_hour));
    let b = link("b", 3401, 7401, &both);
    let proxy = LinksProxy::start(&topology, data_plane, &[a.clone(), b.clone()]);

    // Expiry extended, and a range added, while transfers run on a and b: all kept.
    let on_a = slow_transfer(&topology, CLIENT_V4, 3400, 1, SLOW_LEN);
    let on_b = slow_transfer(&topology, CLIENT_V4, 3401, 2, SLOW_LEN);
    thread::sleep(Duration::from_millis(500));
    let mut a2 = a.clone();
    a2["expiresAt"] = json!(rfc3339(in_an_hour + Duration::from_secs(3600)));
    a2["allowedSourceRanges"] = json!([host(CLIENT_V4), host(OTHER_CLIENT_V4), "192.0.2.0/24"]);
    a2["maxConnections"] = json!(1);
    let applied = proxy.change(&[a2.clone(), b.clone()]);
    assert_eq!(applied["configError"], Value::Null, "{applied}");
    // Max connections lowered below what is open: the open one is kept, a new one refused.
    let refused = topology.client.run(|| echo_from(OTHER_CLIENT_V4, 3400));
    assert!(
        refused.is_err(),
        "a second connection over maxConnections 1 is refused"
    );
    on_a.join()
        .unwrap()
        .expect("a's transfer survives the extension, the added range and the lower limit");
    on_b.join().unwrap().expect("b's transfer is untouched");

    // A source removed from a: its session ends within a second, the other source's session on
    // a and the session on b finish byte-exact.
    let mut a3 = a2.clone();
    a3["maxConnections"] = json!(64);
    proxy.change(&[a3.clone(), b.clone()]);
    let kept_a = slow_transfer(&topology, CLIENT_V4, 3400, 3, SLOW_LEN);
    let kept_b = slow_transfer(&topology, OTHER_CLIENT_V4, 3401, 4, SLOW_LEN);
    let mut removed = topology
        .client
        .run(|| {
            connect_from(
                IpAddr::V4(OTHER_CLIENT_V4),
                front(3400),
                Duration::from_secs(3),
            )
        })
        .expect("the other client connects to a while allowed");
    thread::sleep(Duration::from_millis(500));
    assert!(
        !closed_within(&mut removed, Duration::from_millis(100)),
        "its session is open before the change"
    );
    let mut a4 = a3.clone();
    a4["allowedSourceRanges"] = json!([host(CLIENT_V4)]);
    let b_closed_before =
        proxy.metric("devicelink_link_connections_total{link=\"b\",result=\"closed_by_proxy\"}");
    let changed_at = Instant::now();
    proxy.change(&[a4.clone(), b.clone()]);
    reset_within(&mut removed, Duration::from_secs(1))
        .expect("the removed source's session is reset within a second of the reload");
    assert!(changed_at.elapsed() < Duration::from_secs(3));
    assert!(
        topology
            .client
            .run(|| echo_from(OTHER_CLIENT_V4, 3400))
            .is_err(),
        "the removed source cannot connect again"
    );
    kept_a
        .join()
        .unwrap()
        .expect("the allowed source's session on a finishes byte-exact");
    kept_b
        .join()
        .unwrap()
        .expect("b sees nothing of a's change");
    assert_eq!(
        proxy.metric("devicelink_link_connections_total{link=\"b\",result=\"closed_by_proxy\"}"),
        b_closed_before,
        "no session of b was closed"
    );

    // Disabled: a's listener closes and its sessions end; b keeps working.
    let on_b = slow_transfer(&topology, CLIENT_V4, 3401, 5, SLOW_LEN);
    let mut open_on_a = topology
        .client
        .run(|| connect_from(IpAddr::V4(CLIENT_V4), front(3400), Duration::from_secs(3)))
        .expect("a is open");
    thread::sleep(Duration::from_millis(300));
    let mut a5 = a4.clone();
    a5["enabled"] = json!(false);
    proxy.change(&[a5.clone(), b.clone()]);
    assert!(
        closed_within(&mut open_on_a, Duration::from_secs(1)),
        "disabling closes a's sessions"
    );
    let err = topology
        .client
        .run(|| connect_from(IpAddr::V4(CLIENT_V4), front(3400), Duration::from_secs(2)))
        .expect_err("a's listener is closed");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(proxy.link_state("a"), "disabled");
    on_b.join()
        .unwrap()
        .expect("b is untouched by a being disabled");

    // Enabled again with an expiry shortened into the past: closed at once, shown expired.
    let mut a6 = a4.clone();
    a6["device"] = json!(device(7402).to_string());
    proxy.change(&[a6.clone(), b.clone()]);
    let mut echo = topology
        .client
        .run(|| echo_from(CLIENT_V4, 3400))
        .expect("a is open again, to its new device");
    let mut a7 = a6.clone();
    a7["expiresAt"] = json!(rfc3339(SystemTime::now() - Duration::from_secs(60)));
    proxy.change(&[a7, b.clone()]);
    assert!(
        closed_within(&mut echo, Duration::from_secs(1)),
        "an expiry moved into the past closes the link now"
    );
    assert_eq!(proxy.link_state("a"), "expired");
    assert_eq!(proxy.link_state("b"), "active");

    // Removed: gone from the links, its listener closed; b still carries.
    proxy.change(std::slice::from_ref(&b));
    assert_eq!(proxy.link_state("a"), "absent");
    slow_transfer(&topology, CLIENT_V4, 3401, 6, 1 << 20)
        .join()
        .unwrap()
        .expect("b carries after a was removed");
}

#[test]
fn live_changes_keep_the_sessions_they_should_ebpf() {
    live_changes_keep_the_sessions_they_should("ebpf");
}

#[test]
fn live_changes_keep_the_sessions_they_should_userspace() {
    live_changes_keep_the_sessions_they_should("userspace");
}

fn bad_files_are_refused_whole(data_plane: &str) {
    let topology = topology(&format!("badfile-{data_plane}"));
    let _echo = peers::serve(&topology.device, device(7500), Behavior::Echo);
    let good = link("good", 3500, 7500, &[host(CLIENT_V4)]);
    let proxy = LinksProxy::start(&topology, data_plane, std::slice::from_ref(&good));
    let generation = proxy.json("/v1/links")["generation"].clone();
    for (what, text, expect) in [
        ("broken YAML", "links: [ {name: x".to_string(), ""),
        (
            "a duplicate port",
            json!({"links": [good.clone(), link("other", 3500, 7500, &[host(CLIENT_V4)])]})
                .to_string(),
            "3500",
        ),
        (
            "an unknown field",
            json!({"links": [{
                "name": "good", "listen": front(3500).to_string(),
                "device": device(7500).to_string(),
                "allowedSourceRanges": [host(CLIENT_V4)], "maxConnectoins": 3,
            }]})
            .to_string(),
            "maxConnectoins",
        ),
    ] {
        let after = proxy.write_raw(&text);
        let error = after["configError"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: the file must be refused, got {after}"));
        assert!(
            error.contains(expect),
            "{what}: the error names it: {error}"
        );
        assert_eq!(after["generation"], generation, "{what}: nothing applied");
        topology
            .client
            .run(|| echo_from(CLIENT_V4, 3500))
            .unwrap_or_else(|e| panic!("{what}: the running link still carries: {e}"));
        assert_eq!(proxy.metric("devicelink_config_refused"), 1.0);
        let (status, readyz) = topology.proxy.run(|| {
            let mut stream = TcpStream::connect(METRICS).unwrap();
            write!(stream, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            (text.contains(" 200 "), text)
        });
        assert!(
            status && readyz.contains("refused"),
            "{what}: /readyz says so: {readyz}"
        );
    }
    // A good file applies again and clears the refusal.
    let after = proxy.change(&[good, link("second", 3501, 7500, &[host(CLIENT_V4)])]);
    assert_eq!(after["configError"], Value::Null);
    topology
        .client
        .run(|| echo_from(CLIENT_V4, 3501))
        .expect("the second link carries");
    assert_eq!(proxy.metric("devicelink_config_refused"), 0.0);
    assert_eq!(
        proxy.metric("devicelink_config_reloads_total{result=\"refused\"}"),
        3.0
    );
}

#[test]
fn bad_files_are_refused_whole_ebpf() {
    bad_files_are_refused_whole("ebpf");
}

#[test]
fn bad_files_are_refused_whole_userspace() {
    bad_files_are_refused_whole("userspace");
}

/// A port another program holds fails that link alone, visibly; the others apply.
#[test]
fn a_port_in_use_fails_its_link_alone() {
    let topology = topology("portinuse");
    let _echo = peers::serve(&topology.device, device(7600), Behavior::Echo);
    let _squatter = peers::serve(&topology.proxy, front(3600), Behavior::Hold);
    let proxy = LinksProxy::start(
        &topology,
        "ebpf",
        &[
            link("taken", 3600, 7600, &[host(CLIENT_V4)]),
            link("free", 3601, 7600, &[host(CLIENT_V4)]),
        ],
    );
    let links = proxy.json("/v1/links");
    let taken = links["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "taken")
        .unwrap()
        .clone();
    assert_eq!(taken["state"], "failed", "{links}");
    assert!(
        taken["error"].as_str().unwrap().contains("3600"),
        "the error names the address: {taken}"
    );
    assert_eq!(proxy.link_state("free"), "active");
    topology
        .client
        .run(|| echo_from(CLIENT_V4, 3601))
        .expect("the other link carries");
}

/// The default data plane carries a connection's opening in the copy, then the splice: one
/// exchange and a close end in the copy (counted `userspace`); a connection still open past the
/// opening's 100 ms is in the kernel (its session says so), carries on there and is counted
/// `kernel` when it ends.
#[test]
fn a_connection_opens_in_the_copy_and_goes_on_in_the_splice_auto() {
    let topology = topology("opening");
    let _echo = peers::serve(&topology.device, device(7701), Behavior::Echo);
    let proxy = LinksProxy::start(
        &topology,
        "auto",
        &[link("vnc", 3701, 7701, &[host(CLIENT_V4)])],
    );
    let carried = |path: &str| {
        proxy.metric(&format!(
            "devicelink_connections_carried_total{{path=\"{path}\"}}"
        ))
    };
    let wait_for = |path: &str, count: f64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while carried(path) < count {
            assert!(Instant::now() < deadline, "no connection counted on {path}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    drop(
        topology
            .client
            .run(|| echo_from(CLIENT_V4, 3701))
            .expect("a short exchange"),
    );
    wait_for("userspace", 1.0);
    assert_eq!(
        carried("kernel"),
        0.0,
        "the short exchange never entered the splice"
    );

    let mut stream = topology
        .client
        .run(|| echo_from(CLIENT_V4, 3701))
        .expect("carried");
    thread::sleep(Duration::from_millis(400));
    let sessions = proxy.json("/v1/sessions?link=vnc");
    assert_eq!(
        sessions["sessions"][0]["dataPlane"], "kernel",
        "past its opening the connection is in the splice: {sessions}"
    );
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut reader = stream.try_clone().unwrap();
    let expected = payload.len();
    let echoed = thread::spawn(move || {
        let mut back = vec![0u8; expected];
        reader.read_exact(&mut back).map(|()| back)
    });
    stream
        .write_all(&payload)
        .expect("write through the splice");
    let back = echoed.join().unwrap().expect("echo through the splice");
    assert!(back == payload, "every byte back once, in order");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(3)));
    wait_for("kernel", 1.0);
    assert_eq!(carried("userspace"), 1.0);
}

/// The control socket lists a link's sessions with their bytes, closes one on request, and
/// records it among the events; SIGHUP re-reads the file.
#[test]
fn the_control_socket_lists_and_closes_sessions() {
    let topology = topology("control-sock");
    let _echo = peers::serve(&topology.device, device(7700), Behavior::Echo);
    let proxy = LinksProxy::start(
        &topology,
        "ebpf",
        &[link("ssh", 3700, 7700, &[host(CLIENT_V4)])],
    );
    let mut stream = topology
        .client
        .run(|| echo_from(CLIENT_V4, 3700))
        .expect("carried");
    let sessions = proxy.json("/v1/sessions?link=ssh");
    let session = &sessions["sessions"][0];
    assert_eq!(session["link"], "ssh");
    assert!(
        session["client"]
            .as_str()
            .unwrap()
            .starts_with(&CLIENT_V4.to_string()),
        "{session}"
    );
    assert!(
        session["bytesToDevice"].as_u64().unwrap() >= 4,
        "the echo's bytes are counted: {session}"
    );
    let id = session["id"].as_str().unwrap().to_string();
    assert_eq!(proxy.http("DELETE", &format!("/v1/sessions/{id}")).0, 204);
    reset_within(&mut stream, Duration::from_secs(1))
        .expect("a session closed on request is cut with a reset");
    assert_eq!(proxy.http("DELETE", "/v1/sessions/999999").0, 404);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = proxy.json("/v1/events?after=0");
        let closed = events["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "session_closed"
                && e["reason"] == "closed_by_request"
                && e["link"] == "ssh"
        });
        if closed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no session_closed event: {events}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // SIGHUP: the file is read again even though it did not change.
    let generation = proxy.json("/v1/links")["generation"].as_u64().unwrap();
    proxy.process.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.json("/v1/links")["generation"].as_u64().unwrap() == generation {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        thread::sleep(Duration::from_millis(20));
    }
}

fn a_thousand_links_start_change_and_stop(data_plane: &str) {
    let topology = topology(&format!("links1k-{data_plane}"));
    let _echo = peers::serve(&topology.device, device(7800), Behavior::Echo);
    let one = [link("first", 10_000, 7800, &[host(CLIENT_V4)])];
    let proxy = Arc::new(LinksProxy::start(&topology, data_plane, &one));
    let baseline_fds = proxy.open_fds();
    let many: Vec<Value> = (0..1000u16)
        .map(|i| {
            link(
                &format!("l{i}"),
                10_000 + i,
                7800,
                &[host(CLIENT_V4), format!("198.51.{}.0/24", i % 200)],
            )
        })
        .collect();
    let started = Instant::now();
    let applied = proxy.change(&many);
    assert_eq!(applied["configError"], Value::Null);
    let active = applied["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "active")
        .count();
    assert_eq!(active, 1000, "every link is active");
    assert!(
        proxy.open_fds() >= baseline_fds + 990,
        "a listener per link: {} descriptors open, {baseline_fds} with one link",
        proxy.open_fds()
    );
    eprintln!("1000 links applied in {:?}", started.elapsed());
    topology
        .client
        .run(|| echo_from(CLIENT_V4, 10_999))
        .expect("the last link carries");
    // One change: the last link loses a range.
    let mut changed = many.clone();
    changed[999]["allowedSourceRanges"] = json!([host(CLIENT_V4)]);
    proxy.change(&changed);
    topology
        .client
        .run(|| echo_from(CLIENT_V4, 10_999))
        .expect("the changed link carries");
    // Back to one link: descriptors back to where they were.
    proxy.change(&one);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.open_fds() > baseline_fds {
        assert!(
            Instant::now() < deadline,
            "descriptors back to baseline: {} now, {baseline_fds} before",
            proxy.open_fds()
        );
        thread::sleep(Duration::from_millis(50));
    }
    if data_plane == "ebpf" {
        assert_eq!(
            proxy.metric("devicelink_xdp_acl_entries"),
            1.0,
            "one link's one range left in the XDP ACL:\n{}",
            proxy.metrics()
        );
    }
}

#[test]
fn a_thousand_links_start_change_and_stop_ebpf() {
    a_thousand_links_start_change_and_stop("ebpf");
}

#[test]
fn a_thousand_links_start_change_and_stop_userspace() {
    a_thousand_links_start_change_and_stop("userspace");
}

fn a_shutdown_mid_transfer_is_a_reset(data_plane: &str) {
    let topology = topology(&format!("rst-{data_plane}"));
    let _device = peers::serve(&topology.device, device(7950), SLOW);
    let proxy = LinksProxy::start(
        &topology,
        data_plane,
        &[link("slow", 3950, 7950, &[host(CLIENT_V4)])],
    );
    let transfer = slow_transfer(&topology, CLIENT_V4, 3950, 9, SLOW_LEN);
    thread::sleep(Duration::from_millis(700));
    proxy.process.signal(libc::SIGTERM);
    let err = transfer
        .join()
        .unwrap()
        .expect_err("a transfer cut by the proxy's shutdown cannot complete");
    assert!(
        err.contains("reset") || err.contains("Connection reset"),
        "the client sees a reset, not a truncated stream that looks complete: {err}"
    );
}

#[test]
fn a_shutdown_mid_transfer_is_a_reset_ebpf() {
    a_shutdown_mid_transfer_is_a_reset("ebpf");
}

#[test]
fn a_shutdown_mid_transfer_is_a_reset_userspace() {
    a_shutdown_mid_transfer_is_a_reset("userspace");
}

/// One allowed source cannot take a link from the others: past its share of open connections
/// or its rate of new ones it is refused (and counted by reason), while another source still
/// gets in.
#[test]
fn one_source_cannot_take_every_slot() {
    let topology = topology("fairness");
    let _echo = peers::serve(&topology.device, device(7960), Behavior::Echo);
    let both = vec![host(CLIENT_V4), host(OTHER_CLIENT_V4)];
    let mut shares = link("shares", 3960, 7960, &both);
    shares["maxConnections"] = json!(8);
    shares["maxConnectionsPerSource"] = json!(2);
    shares["connectRatePerSource"] = json!(0);
    let mut rate = link("rate", 3961, 7960, &both);
    rate["connectRatePerSource"] = json!(2);
    let proxy = LinksProxy::start(&topology, "ebpf", &[shares, rate]);

    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            topology
                .client
                .run(|| echo_from(CLIENT_V4, 3960))
                .expect("within its share")
        })
        .collect();
    assert!(
        topology.client.run(|| echo_from(CLIENT_V4, 3960)).is_err(),
        "a third connection from the same source is refused"
    );
    topology
        .client
        .run(|| echo_from(OTHER_CLIENT_V4, 3960))
        .expect("another source still gets in");
    assert_eq!(
        proxy.metric(
            "devicelink_link_connections_total{link=\"shares\",result=\"rejected_source_limit\"}"
        ),
        1.0
    );
    drop(held);

    // A burst of twice the rate (4) passes, the rest of a quick series is refused.
    let results: Vec<bool> = (0..8)
        .map(|_| topology.client.run(|| echo_from(CLIENT_V4, 3961).is_ok()))
        .collect();
    let carried = results.iter().filter(|ok| **ok).count();
    assert!(
        (4..=6).contains(&carried),
        "the burst passes, the rest waits for the rate: {results:?}"
    );
    assert!(
        proxy.metric(
            "devicelink_link_connections_total{link=\"rate\",result=\"rejected_source_rate\"}"
        ) >= 2.0
    );
}
