//! VNC and RDP through devicelink-proxy, with the real servers and clients from Debian.
//!
//! VNC's server speaks first and then streams ~8 MB framebuffer updates; RDP's client speaks
//! first and wraps everything in TLS. Both run in the eBPF and the userspace data plane, and a
//! disallowed source must get neither.

use std::{
    io::Read as _,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use devicelink_testbed::{
    CLIENT_V4, OTHER_CLIENT_V4, Process, Proxy, ProxyOptions, Topology, connect_from,
    rfb::{
        Frame, RfbClient,
        xvnc::{self, Xvnc},
    },
    sh,
};

const VNC_PORT: u16 = 5900;
const RDP_PORT: u16 = 3389;
/// Viewers pulling frames at once through the link, and frames each: 3 x 8 = 24 per mode.
const VIEWERS: usize = 3;
const FRAMES_PER_VIEWER: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(20);

fn start_proxy(topology: &Topology, mode: &str, device_port: u16) -> Proxy {
    Proxy::start(
        topology,
        Topology::front(device_port),
        Topology::device_addr(device_port),
        ProxyOptions {
            data_plane: mode,
            // The XDP ACL belongs to the eBPF mode; userspace refuses at accept.
            xdp: mode == "ebpf",
            ..ProxyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("starting devicelink-proxy in {mode} mode: {e:#}"))
}

/// Two full frames straight from the device: they must be equal (else comparing frames
/// through the link would prove nothing) and show the pattern, not a uniform screen.
fn direct_reference(topology: &Topology) -> Frame {
    let device = Topology::device_addr(VNC_PORT);
    let (first, second) = topology.client.run(move || {
        let mut viewer =
            RfbClient::connect(device, TIMEOUT).unwrap_or_else(|e| panic!("direct VNC: {e:#}"));
        let first = viewer.full_frame().expect("direct frame").clone();
        let second = viewer.full_frame().expect("direct frame").clone();
        (first, second)
    });
    assert_eq!(
        (first.width, first.height),
        (xvnc::WIDTH, xvnc::HEIGHT),
        "the device's screen size"
    );
    assert_eq!(
        first.pixels.len(),
        1920 * 1080 * 4,
        "a raw 32-bit 1920x1080 frame is about 8 MB"
    );
    assert!(
        first == second,
        "two direct frames of a still screen should be byte-identical"
    );
    assert!(
        first.distinct_colours() >= 2,
        "the xsetroot pattern should give a non-uniform screen"
    );
    first
}

fn vnc_frames_match_the_direct_path(mode: &str) {
    vnc_frames_match_the_direct_path_pulling(mode, FRAMES_PER_VIEWER);
}

fn vnc_frames_match_the_direct_path_pulling(mode: &str, frames_per_viewer: usize) {
    let topology = Topology::new(&format!("vnc{mode}")).expect("topology");
    let _xvnc = Xvnc::start(&topology.device, Topology::device_addr(VNC_PORT))
        .unwrap_or_else(|e| panic!("starting Xvnc: {e:#}"));
    let reference = Arc::new(direct_reference(&topology));
    let proxy = start_proxy(&topology, mode, VNC_PORT);

    // All viewers connected before any pulls, so the frames really cross the link at once.
    let together = Arc::new(Barrier::new(VIEWERS));
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|viewer| {
            let (reference, together) = (Arc::clone(&reference), Arc::clone(&together));
            topology.client.spawn(move || {
                let connected = RfbClient::connect(Topology::front(VNC_PORT), TIMEOUT);
                together.wait();
                let mut client =
                    connected.unwrap_or_else(|e| panic!("viewer {viewer} through the link: {e:#}"));
                let mut differing = Vec::new();
                for frame in 0..frames_per_viewer {
                    let got = client
                        .full_frame()
                        .unwrap_or_else(|e| panic!("viewer {viewer}, frame {frame}: {e:#}"));
                    if got != &*reference {
                        differing.push(frame);
                    }
                }
                differing
            })
        })
        .collect();
    for (viewer, handle) in viewers.into_iter().enumerate() {
        let differing = handle.join().expect("viewer thread");
        assert!(
            differing.is_empty(),
            "{mode}: viewer {viewer}'s frames {differing:?} differ from the direct path's"
        );
    }

    let frame_bytes = (1920 * 1080 * 4 * VIEWERS * frames_per_viewer) as f64;
    let from_device = proxy.metric("devicelink_bytes_total{direction=\"from_device\"}");
    assert!(
        from_device >= frame_bytes,
        "{mode}: the proxy should have carried every frame ({frame_bytes} bytes), reports {from_device}"
    );
    if mode == "auto" {
        // Out of the splice to the copy where this kernel lets sockets leave it, else carried
        // in user space in place.
        let moved = ["userspace", "copy"]
            .into_iter()
            .flat_map(|to| ["trial", "link_trial", "link"].map(move |reason| (to, reason)))
            .map(|(to, reason)| {
                proxy.metric(&format!(
                    "devicelink_splice_moves_total{{to=\"{to}\",reason=\"{reason}\"}}"
                ))
            })
            .sum::<f64>();
        let won = proxy.metric("devicelink_splice_trials_total{faster=\"userspace\"}");
        eprintln!("auto: {moved} moves out of the kernel splice, {won} trials won by user space");
        assert!(
            moved >= 1.0,
            "busy VNC viewers through the default data plane should have been measured in user space"
        );
    }
    if mode == "ebpf" {
        // Each viewer's connection is counted by the path that carried it once it is over.
        let deadline = Instant::now() + TIMEOUT;
        while proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}") < VIEWERS as f64
        {
            assert!(
                Instant::now() < deadline,
                "in eBPF mode every VNC session (server speaks first) should be spliced in the \
                 kernel:\n{}",
                proxy.get("/metrics").map(|(_, m)| m).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            proxy.metric("devicelink_connections_carried_total{path=\"userspace\"}"),
            0.0,
            "no VNC session should have fallen back to the userspace copy"
        );
    }
}

#[test]
fn vnc_full_frames_through_the_ebpf_splice_match_the_direct_path() {
    vnc_frames_match_the_direct_path("ebpf");
}

/// The default data plane (`auto`): the busy viewers are measured on both paths (and may leave
/// the splice for the copy mid-session, which of the two wins depends on where the CPUs are
/// busy); every frame must still match the direct path's.
#[test]
fn vnc_full_frames_through_the_default_data_plane_match_the_direct_path() {
    // Enough frames (about 3 x 240 MB) for each viewer's trial to finish mid-session.
    vnc_frames_match_the_direct_path_pulling("auto", 30);
}

#[test]
fn vnc_full_frames_through_the_userspace_copy_match_the_direct_path() {
    vnc_frames_match_the_direct_path("userspace");
}

/// `xrdp` as the device: TLS only (a fallback to RDP's own encryption would fail the test),
/// its log in a file of its own. Without a session manager it serves its login screen, which
/// is the first screen a client receives.
struct Xrdp {
    process: Process,
    config: PathBuf,
    log: PathBuf,
}

impl Xrdp {
    fn start(topology: &Topology) -> Self {
        let unique = format!("{}-{}", std::process::id(), topology.tag());
        let config = std::env::temp_dir().join(format!("devicelink-xrdp-{unique}.ini"));
        let log = std::env::temp_dir().join(format!("devicelink-xrdp-{unique}.log"));
        let stock = std::fs::read_to_string("/etc/xrdp/xrdp.ini")
            .expect("/etc/xrdp/xrdp.ini (Debian package xrdp)");
        let device = Topology::device_addr(RDP_PORT);
        let ini: String = stock
            .lines()
            .map(|line| match line.split_once('=').map(|(k, _)| k) {
                Some("port") => format!("port=tcp://{}:{}", device.ip(), device.port()),
                Some("security_layer") => "security_layer=tls".into(),
                Some("LogFile") => format!("LogFile={}", log.display()),
                Some("EnableSyslog") => "EnableSyslog=false".into(),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&config, ini).expect("writing xrdp.ini");
        let mut cmd = topology.device.command("xrdp");
        cmd.arg("--nodaemon").arg("--config").arg(&config);
        let process = Process::start("xrdp", cmd).expect("starting xrdp");
        let deadline = Instant::now() + TIMEOUT;
        while !topology.device.run(move || {
            std::net::TcpStream::connect_timeout(&device, Duration::from_millis(200)).is_ok()
        }) {
            assert!(
                Instant::now() < deadline,
                "xrdp not listening:\n{}",
                process.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Self {
            process,
            config,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Xrdp {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- xrdp log ---\n{}", self.log());
        }
        self.process.signal(libc::SIGKILL);
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Xvfb in the client namespace: the X server FreeRDP's client draws into. Its screen is also
/// a file (`-fbdir`, XWD format), so the test sees what a user would have seen.
struct Xvfb {
    _process: Process,
    display: u32,
    fbdir: PathBuf,
}

impl Xvfb {
    fn start(topology: &Topology) -> Self {
        let display = xvnc::free_display();
        let fbdir = std::env::temp_dir().join(format!("devicelink-xvfb-{display}"));
        std::fs::create_dir_all(&fbdir).expect("Xvfb's screen directory");
        let mut cmd = topology.client.command("Xvfb");
        cmd.arg(format!(":{display}"))
            .args(["-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-fbdir"])
            .arg(&fbdir);
        let process = Process::start("xvfb", cmd).expect("starting Xvfb");
        let socket = format!("/tmp/.X11-unix/X{display}");
        let deadline = Instant::now() + TIMEOUT;
        while !std::path::Path::new(&socket).exists() {
            assert!(Instant::now() < deadline, "Xvfb :{display} did not start");
            thread::sleep(Duration::from_millis(50));
        }
        Self {
            _process: process,
            display,
            fbdir,
        }
    }

    /// How many pixels of the screen have `rgb`.
    fn pixels_of(&self, rgb: [u8; 3]) -> usize {
        let xwd = std::fs::read(self.fbdir.join("Xvfb_screen0")).expect("Xvfb's screen file");
        let field = |at: usize| u32::from_be_bytes(xwd[at..at + 4].try_into().unwrap()) as usize;
        // XWD header: its size, then (among others) width, height, bits per pixel, bytes per
        // line and the number of colour-map entries (12 bytes each) that precede the pixels.
        let (header, width, height) = (field(0), field(16), field(20));
        let (bits_per_pixel, bytes_per_line, colours) = (field(44), field(48), field(76));
        assert_eq!(
            bits_per_pixel, 32,
            "Xvfb with depth 24 stores 32-bit pixels"
        );
        let pixels = &xwd[header + colours * 12..];
        let bgr = [rgb[2], rgb[1], rgb[0]];
        (0..height)
            .flat_map(|y| (0..width).map(move |x| y * bytes_per_line + x * 4))
            .filter(|&at| pixels.get(at..at + 3) == Some(&bgr[..]))
            .count()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.display));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.display));
        let _ = std::fs::remove_dir_all(&self.fbdir);
    }
}

/// FreeRDP's client to the proxy, under `xvfb`, in the client namespace.
fn xfreerdp(topology: &Topology, xvfb: &Xvfb, wrapper: &[&str], flags: &[&str]) -> Command {
    let target = Topology::front(RDP_PORT);
    let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
    let mut cmd = topology.client.command(program);
    cmd.args(wrapper_args)
        .arg("xfreerdp")
        .arg(format!("/v:{}:{}", target.ip(), target.port()))
        // The device's certificate is xrdp's self-signed one.
        .args(["/cert:ignore", "/sec:tls"])
        .args(flags)
        .env("DISPLAY", format!(":{}", xvfb.display))
        .stdin(std::process::Stdio::null());
    cmd
}

/// One RDP connection through the negotiation, TLS and the client's info packet, then a
/// clean exit (`+auth-only`), given up after `limit`. Returns whether it succeeded, and its
/// output.
fn rdp_handshake(topology: &Topology, xvfb: &Xvfb, limit: Duration) -> (bool, String) {
    let limit = limit.as_secs().to_string();
    let output = xfreerdp(
        topology,
        xvfb,
        &["timeout", &limit],
        &[
            "+auth-only",
            "/u:devicelink",
            "/p:devicelink",
            "/log-level:DEBUG",
        ],
    )
    .output()
    .expect("running xfreerdp");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let negotiated = text.contains("Negotiated TLS security")
        && text.contains("CONNECTION_STATE_NEGO --> CONNECTION_STATE_MCS_CONNECT");
    (output.status.success() && negotiated, text)
}

/// The colours of xrdp's login screen (`blue` and `ls_bg_color` in the stock xrdp.ini): its
/// background and its login box.
const XRDP_BACKGROUND: [u8; 3] = [0x00, 0x9c, 0xb5];
const XRDP_LOGIN_BOX: [u8; 3] = [0xde, 0xde, 0xde];

/// A full session: waits until the client is active and its window on the Xvfb screen shows
/// xrdp's login screen (the server's first screen), then ends it.
fn rdp_first_screen(topology: &Topology, xvfb: &Xvfb) {
    // No credentials: xrdp then shows its login screen. Line-buffered, so that the log file
    // has every line when the client is killed.
    let cmd = xfreerdp(
        topology,
        xvfb,
        &["stdbuf", "-oL", "-eL"],
        &["/log-level:DEBUG"],
    );
    let session = Process::start("xfreerdp", cmd).expect("starting xfreerdp");
    let deadline = Instant::now() + TIMEOUT;
    // The login box alone is 350x430 pixels; a screen a tenth of that wide is no accident.
    let enough = 10_000;
    loop {
        let active = session.log().contains("--> CONNECTION_STATE_ACTIVE");
        let seen = (
            xvfb.pixels_of(XRDP_BACKGROUND),
            xvfb.pixels_of(XRDP_LOGIN_BOX),
        );
        if active && seen.0 >= enough && seen.1 >= enough {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no first screen within {TIMEOUT:?} (active: {active}, background and login-box \
             pixels: {seen:?}):\n{}",
            session.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn rdp_through_the_link(mode: &str) {
    let topology = Topology::new(&format!("rdp{mode}")).expect("topology");
    let xrdp = Xrdp::start(&topology);
    let xvfb = Xvfb::start(&topology);
    let proxy = start_proxy(&topology, mode, RDP_PORT);

    const HANDSHAKES: usize = 4;
    for attempt in 0..HANDSHAKES {
        let (ok, output) = rdp_handshake(&topology, &xvfb, TIMEOUT);
        assert!(
            ok,
            "{mode}: RDP negotiation + TLS, attempt {attempt}, did not complete:\n{output}"
        );
    }
    assert_eq!(
        (
            xvfb.pixels_of(XRDP_BACKGROUND),
            xvfb.pixels_of(XRDP_LOGIN_BOX)
        ),
        (0, 0),
        "{mode}: before the session, nothing on the client's screen has xrdp's colours"
    );
    rdp_first_screen(&topology, &xvfb);

    let tls_sessions = xrdp.log().matches("TLS connection established").count();
    assert_eq!(
        tls_sessions,
        HANDSHAKES + 1,
        "{mode}: xrdp should report one TLS session per connection:\n{}",
        xrdp.log()
    );
    // xrdp's answers (its certificate, capabilities, the screen) came through the proxy.
    for direction in ["to_device", "from_device"] {
        let bytes = proxy.metric(&format!(
            "devicelink_bytes_total{{direction=\"{direction}\"}}"
        ));
        assert!(
            bytes > 0.0,
            "{mode}: no bytes {direction} counted by the proxy"
        );
    }
}

#[test]
fn rdp_negotiation_tls_and_first_screen_through_the_ebpf_splice() {
    rdp_through_the_link("ebpf");
}

/// The default data plane: the copy carries the negotiation's opening, the splice the rest.
#[test]
fn rdp_negotiation_tls_and_first_screen_through_the_default_data_plane() {
    rdp_through_the_link("auto");
}

#[test]
fn rdp_negotiation_tls_and_first_screen_through_the_userspace_copy() {
    rdp_through_the_link("userspace");
}

/// Reads what a connection yields within `within`: empty when closed or silent.
fn first_bytes(stream: &mut std::net::TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

fn disallowed_source_gets_neither(mode: &str) {
    let topology = Topology::new(&format!("deny{mode}")).expect("topology");
    let _xvnc = Xvnc::start(&topology.device, Topology::device_addr(VNC_PORT))
        .unwrap_or_else(|e| panic!("starting Xvnc: {e:#}"));
    let _xrdp = Xrdp::start(&topology);
    let xvfb = Xvfb::start(&topology);

    // VNC: the server speaks first, so any byte at all would be a leak.
    {
        let proxy = start_proxy(&topology, mode, VNC_PORT);
        let front = Topology::front(VNC_PORT);
        let (allowed, denied) = topology.client.run(move || {
            let mut allowed = connect_from(IpAddr::V4(CLIENT_V4), front, Duration::from_secs(5))
                .expect("the allowed source connects");
            let allowed = first_bytes(&mut allowed, Duration::from_secs(5));
            let denied =
                match connect_from(IpAddr::V4(OTHER_CLIENT_V4), front, Duration::from_secs(2)) {
                    Err(_) => None,
                    Ok(mut stream) => Some(first_bytes(&mut stream, Duration::from_secs(2))),
                };
            (allowed, denied)
        });
        assert!(
            allowed.starts_with(b"RFB 003."),
            "{mode}: the allowed source should get the server's greeting, got {allowed:?}"
        );
        match mode {
            "ebpf" => {
                assert_eq!(
                    denied, None,
                    "eBPF mode: XDP should drop the disallowed source's SYN, so connect times out"
                );
                assert!(
                    proxy.metric(
                        "devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"}"
                    ) >= 1.0,
                    "the XDP drop is counted"
                );
            }
            _ => {
                assert!(
                    denied.as_ref().is_none_or(|bytes| bytes.is_empty()),
                    "userspace mode: the disallowed source should be refused at accept, got {denied:?}"
                );
                assert!(
                    proxy.metric("devicelink_connections_total{result=\"rejected_acl\"}") >= 1.0,
                    "the refusal at accept is counted"
                );
            }
        }
    }

    // RDP: the client speaks first; from the disallowed address it must not get through.
    let _proxy = start_proxy(&topology, mode, RDP_PORT);
    let (ok, output) = rdp_handshake(&topology, &xvfb, TIMEOUT);
    assert!(ok, "{mode}: the allowed source's RDP handshake:\n{output}");
    // Make the client namespace use the disallowed address as its source towards the proxy.
    let subnet = "10.77.1.0/24";
    let use_source = |source: std::net::Ipv4Addr| {
        sh(topology.client.command("ip").args([
            "route",
            "replace",
            subnet,
            "dev",
            "eth0",
            "src",
            &source.to_string(),
        ]))
        .expect("ip route replace");
    };
    use_source(OTHER_CLIENT_V4);
    let (ok, output) = rdp_handshake(&topology, &xvfb, Duration::from_secs(8));
    use_source(CLIENT_V4);
    assert!(
        !ok,
        "{mode}: the disallowed source completed an RDP handshake:\n{output}"
    );
    assert!(
        !output.contains("Negotiated TLS security"),
        "{mode}: the disallowed source got an RDP negotiation answer:\n{output}"
    );
}

#[test]
fn disallowed_source_gets_neither_vnc_nor_rdp_ebpf() {
    disallowed_source_gets_neither("ebpf");
}

#[test]
fn disallowed_source_gets_neither_vnc_nor_rdp_userspace() {
    disallowed_source_gets_neither("userspace");
}
