//! The whole life of a link on one machine, for real: the console (local backend) in the test
//! bed's proxy namespace supervising a real `devicelink-proxy`, a real sshd and a checksumming
//! device in the device namespace, clients in the client namespace, and every step driven over
//! the HTTP API as a user with a token and curl would. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::atomic::AtomicU64,
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, OTHER_CLIENT_V4, Topology, connect_from,
    peers::{self, Behavior},
    proxy_binary,
    ssh::SshDevice,
};
use serde_json::json;

mod common;

use common::console::{Console, DATA_PORT, SSH_PORT, closed_within, front, token};

#[test]
fn a_link_lives_its_whole_life_through_the_api() {
    let topology = Topology::new("console")
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let sshd = SshDevice::start(&topology.device, SocketAddr::new(IpAddr::V4(DEVICE_V4), 22))
        .expect("sshd on the device");
    let _sink = peers::serve(
        &topology.device,
        SocketAddr::new(IpAddr::V4(DEVICE_V4), 7100),
        Behavior::SlowSinkThenReply {
            bytes_per_sec: 4 << 20,
            slow_for: u64::MAX,
        },
    );
    let data = std::env::temp_dir().join(format!("devicelink-console-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let token = token(&data);
    let console = Console::start(&topology, &data, &token);

    // Create: SSH through the link.
    let both = json!([format!("{CLIENT_V4}/32"), format!("{OTHER_CLIENT_V4}/32")]);
    for (name, port, device_port) in [("ssh", SSH_PORT, 22), ("data", DATA_PORT, 7100)] {
        let (status, body) = console.call(
            "POST",
            "/api/v1/namespaces/plant-a/links",
            Some(&json!({
                "name": name, "device": {"host": DEVICE_V4.to_string(), "port": device_port},
                "port": port, "allowedSourceRanges": both, "ttl": "1h",
            })),
        );
        assert_eq!(status, 201, "create {name}: {body}");
    }
    console.wait_state("ssh", "ready");
    let said = sshd
        .ssh(
            &topology.client,
            front(SSH_PORT),
            "echo through-the-console",
            None,
        )
        .expect("ssh through the link");
    assert!(said.contains("through-the-console"), "{said}");

    // A checksummed transfer runs while the link is extended: it finishes intact.
    console.wait_state("data", "ready");
    let transfer = topology.client.spawn(|| {
        let mut stream = connect_from(
            IpAddr::V4(CLIENT_V4),
            front(DATA_PORT),
            Duration::from_secs(3),
        )
        .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        peers::upload_and_check_counted(&mut stream, 3, 8 << 20, None, &AtomicU64::new(0))
    });
    thread::sleep(Duration::from_millis(500));
    let before = console.link("data")["expiresAt"].clone();
    let (status, body) = console.call(
        "POST",
        "/api/v1/namespaces/plant-a/links/data/extend",
        Some(&json!({"by": "1h"})),
    );
    assert_eq!(status, 200, "extend: {body}");
    assert_ne!(
        console.link("data")["expiresAt"],
        before,
        "the expiry moved"
    );
    transfer
        .join()
        .unwrap()
        .expect("the transfer survives the extension, byte-exact");

    // The other client's range removed: its open session is closed within a second or two.
    let mut session = topology
        .client
        .run(|| {
            connect_from(
                IpAddr::V4(OTHER_CLIENT_V4),
                front(DATA_PORT),
                Duration::from_secs(3),
            )
        })
        .expect("the other client connects while allowed");
    thread::sleep(Duration::from_millis(300));
    let (status, body) = console.call(
        "PATCH",
        "/api/v1/namespaces/plant-a/links/data",
        Some(&json!({"allowedSourceRanges": [format!("{CLIENT_V4}/32")]})),
    );
    assert_eq!(status, 200, "patch: {body}");
    assert!(
        closed_within(&mut session, Duration::from_secs(2)),
        "the removed source's session is closed"
    );

    // Disable: the listener goes.
    let (status, body) = console.call("POST", "/api/v1/namespaces/plant-a/links/ssh/disable", None);
    assert_eq!(status, 200, "disable: {body}");
    console.wait_state("ssh", "disabled");
    let deadline = Instant::now() + Duration::from_secs(5);
    while topology.client.run(|| {
        connect_from(
            IpAddr::V4(CLIENT_V4),
            front(SSH_PORT),
            Duration::from_secs(1),
        )
        .is_ok()
    }) {
        assert!(Instant::now() < deadline, "the disabled link still listens");
        thread::sleep(Duration::from_millis(100));
    }

    // The proxy killed: the console starts it again and the links come back as they were.
    let pids = Command::new("pgrep")
        .args([
            "-f",
            &format!("{}.*--config", proxy_binary().unwrap().display()),
        ])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    assert!(!pids.trim().is_empty(), "the supervised proxy runs");
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let carried = topology.client.run(|| {
            connect_from(
                IpAddr::V4(CLIENT_V4),
                front(DATA_PORT),
                Duration::from_secs(1),
            )
            .is_ok()
        });
        if carried {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy was not restarted:\n{}",
            console.process.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        console.link("ssh")["status"]["state"],
        "disabled",
        "state kept"
    );

    // The audit trail names what happened.
    let (status, events) =
        console.call("GET", "/api/v1/namespaces/plant-a/links/data/events", None);
    assert_eq!(status, 200);
    let text = events.to_string();
    for what in ["created", "extended"] {
        assert!(text.contains(what), "no {what} event: {text}");
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_link_expires_on_time_and_a_killed_console_and_proxy_come_back_with_every_link() {
    let topology = Topology::new("console-restart")
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let sshd = SshDevice::start(&topology.device, SocketAddr::new(IpAddr::V4(DEVICE_V4), 22))
        .expect("sshd on the device");
    let data =
        std::env::temp_dir().join(format!("devicelink-console-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let token = token(&data);
    let mut console = Console::start(&topology, &data, &token);
    let client = json!([format!("{CLIENT_V4}/32")]);
    for (name, port, ttl) in [("kept", SSH_PORT, "1h"), ("short", DATA_PORT, "4s")] {
        let (status, body) = console.call(
            "POST",
            "/api/v1/namespaces/plant-a/links",
            Some(&json!({
                "name": name, "device": {"host": DEVICE_V4.to_string(), "port": 22},
                "port": port, "allowedSourceRanges": client, "ttl": ttl,
            })),
        );
        assert_eq!(status, 201, "create {name}: {body}");
    }
    let short = console.wait_state("short", "ready");
    let expires_at: jiff::Timestamp = short["status"]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Expiry: the proxy closes the link on time, the console shows when, the trail says so.
    let shown = console.wait_state("short", "expired");
    let late = jiff::Timestamp::now().duration_since(expires_at);
    assert!(
        late < jiff::SignedDuration::from_secs(3),
        "expired {late:?} after its time"
    );
    assert_eq!(shown["status"]["expiredAt"], short["status"]["expiresAt"]);
    assert_eq!(shown["status"]["secondsLeft"], 0);
    assert!(
        topology.client.run(|| {
            connect_from(
                IpAddr::V4(CLIENT_V4),
                front(DATA_PORT),
                Duration::from_secs(1),
            )
            .is_err()
        }),
        "the expired link no longer listens"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, events) =
            console.call("GET", "/api/v1/namespaces/plant-a/links/short/events", None);
        if events.to_string().contains("link_expired") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no expiry in the trail: {events}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The console killed outright (its proxy goes with it): nothing serves until it is back,
    // then every link is as the database says.
    console.process.signal(libc::SIGKILL);
    assert!(
        console
            .process
            .wait_timeout(Duration::from_secs(5))
            .is_some()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while topology.client.run(|| {
        connect_from(
            IpAddr::V4(CLIENT_V4),
            front(SSH_PORT),
            Duration::from_secs(1),
        )
        .is_ok()
    }) {
        assert!(Instant::now() < deadline, "the proxy outlived its console");
        thread::sleep(Duration::from_millis(100));
    }
    drop(console);
    let console = Console::start(&topology, &data, &token);
    console.wait_state("kept", "ready");
    let said = sshd
        .ssh(
            &topology.client,
            front(SSH_PORT),
            "echo after-the-restart",
            None,
        )
        .expect("ssh through the link after the restart");
    assert!(said.contains("after-the-restart"), "{said}");
    let short = console.link("short");
    assert_eq!(short["status"]["state"], "expired", "{short}");
    assert_eq!(short["status"]["expiredAt"], shown["status"]["expiredAt"]);
    let (_, events) = console.call("GET", "/api/v1/namespaces/plant-a/links/short/events", None);
    let text = events.to_string();
    for what in ["created", "link_expired"] {
        assert!(text.contains(what), "the trail lost {what}: {text}");
    }
    let _ = std::fs::remove_dir_all(&data);
}
