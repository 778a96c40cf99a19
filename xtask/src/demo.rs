//! `cargo xtask demo`: three network namespaces (client, proxy, device), a real OpenSSH server
//! as the device, and `devicelink-console` on the proxy's host, which runs `devicelink-proxy`
//! (eBPF mode) for it: a link opened through the Web API, a real SSH session and an scp through
//! it, an ACL drop from a disallowed source, the link extended and disabled, its audit trail and
//! what the proxy counted. With `--vnc`: a VNC device's screen fetched through the splice (one
//! proxy, no console) and saved as a PNG.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, OTHER_CLIENT_V4, PROXY_FRONT_IFACE, PROXY_FRONT_V4, Process, Proxy,
    ProxyOptions, Topology, connect_from,
    http::{http_get_in, request_in},
    parse_metric,
    rfb::Frame,
    ssh::{SshDevice, random_file, sha256},
};
use serde_json::{Value, json};

const FILE_MB: u64 = 256;

pub fn run(proxy_binary: &Path, console_binary: &Path) -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the test bed reads this variable.
    unsafe { std::env::set_var("DEVICELINK_PROXY_BIN", proxy_binary) };
    step("building the topology: client, proxy and device namespaces joined by veth");
    let topology = Topology::new("demo").context("creating namespaces (run as root)")?;
    let device_addr = SocketAddr::new(IpAddr::V4(DEVICE_V4), 22);
    let device =
        SshDevice::start(&topology.device, device_addr).context("starting sshd as the device")?;
    println!("   device: OpenSSH on {device_addr} (reachable only from the proxy namespace)");

    step("the console on this host: a token, then the API, which runs the proxy for the host");
    let data = std::env::temp_dir().join(format!("devicelink-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let token = Command::new(console_binary)
        .args(["token", "create", "demo-admin", "--role", "admin", "--data"])
        .arg(&data)
        .output()
        .context("devicelink-console token create")?;
    if !token.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&token.stderr));
    }
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    println!(
        "   $ devicelink-console token create demo-admin --role admin --data {}",
        data.display()
    );
    println!("   {}...", &token[..token.len().min(12)]);
    let mut serve = topology.proxy.command(console_binary);
    serve
        .env("RUST_LOG", "warn")
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--listen", &CONSOLE_API.to_string()])
        .arg("--proxy-binary")
        .arg(proxy_binary)
        .args(["--data-plane", "ebpf", "--xdp-interface", PROXY_FRONT_IFACE])
        .args(["--proxy-metrics", &PROXY_METRICS.to_string()])
        .args(["--public-host", &PROXY_FRONT_V4.to_string()]);
    let console = Process::start("devicelink-console", serve)?;
    println!(
        "   $ devicelink-console serve --data {} --listen {CONSOLE_API} --data-plane ebpf --xdp-interface {PROXY_FRONT_IFACE} --public-host {PROXY_FRONT_V4}",
        data.display()
    );
    let api = Api {
        netns: PathBuf::from(format!("/run/netns/{}", topology.proxy.name())),
        token,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while api
        .call("GET", "/healthz", None)
        .map(|(s, _)| s)
        .unwrap_or(0)
        != 200
    {
        if Instant::now() > deadline {
            bail!("the console did not come up:\n{}", console.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    step("opening a link to the device through the API, for the client's address, for 2 hours");
    let create = json!({
        "name": "pump-17-ssh",
        "device": {"host": DEVICE_V4.to_string(), "port": 22},
        "port": 2222,
        "allowedSourceRanges": [format!("{CLIENT_V4}/32")],
        "ttl": "2h",
        "description": "the demo's device",
    });
    println!("   $ curl -H \"Authorization: Bearer $TOKEN\" -X POST {LINKS} -d '{create}'");
    let (status, created) = api.call("POST", LINKS, Some(&create))?;
    if status != 201 {
        bail!("creating the link: {status} {created}");
    }
    let link = wait_ready(&api, &console)?;
    println!(
        "   state {}, endpoint {}, {} s left",
        link["status"]["state"], link["status"]["endpoint"], link["status"]["secondsLeft"]
    );
    println!(
        "   connect with: {}",
        link["status"]["connect"]["ssh"].as_str().unwrap_or("")
    );

    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 2222);
    step("an SSH session from the client, through the link, to the device");
    let out = device.ssh(
        &topology.client,
        front,
        "echo \"hello from $(hostname) on $(uname -sr)\"",
        None,
    )?;
    println!(
        "   $ ssh -p 2222 root@{} ...\n   {}",
        front.ip(),
        out.trim()
    );

    step(&format!(
        "copying a {FILE_MB} MiB file with scp, and checking it arrived intact"
    ));
    let upload = device.dir.join("demo-upload.bin");
    random_file(&upload, FILE_MB << 20)?;
    let on_device = device.dir.join("demo-on-device.bin");
    let started = Instant::now();
    device.scp(
        &topology.client,
        front,
        &upload.display().to_string(),
        &format!("remote:{}", on_device.display()),
    )?;
    let took = started.elapsed();
    let (sent, arrived) = (sha256(&upload)?, sha256(&on_device)?);
    if sent != arrived {
        bail!("the file arrived damaged: {sent} vs {arrived}");
    }
    println!("   sha256 {sent}: identical on both ends");
    println!(
        "   {FILE_MB} MiB in {:.2} s ({:.0} Mbit/s, bounded by scp's encryption)",
        took.as_secs_f64(),
        (FILE_MB << 23) as f64 / took.as_secs_f64() / 1e6,
    );

    step("a client at a disallowed address (10.77.1.3) tries to connect");
    let denied = topology
        .client
        .run(move || connect_from(IpAddr::V4(OTHER_CLIENT_V4), front, Duration::from_secs(2)));
    match denied {
        Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
            println!("   {OTHER_CLIENT_V4} -> {front}: no answer (its SYNs were dropped by XDP)")
        }
        Err(err) => println!("   {OTHER_CLIENT_V4} -> {front}: refused ({err})"),
        Ok(_) => bail!("a disallowed source got a connection"),
    }

    step("extending the link by an hour, then disabling it");
    let extend = json!({"by": "1h"});
    println!("   $ curl ... -X POST {LINKS}/pump-17-ssh/extend -d '{extend}'");
    let (_, extended) = api.call(
        "POST",
        &format!("{LINKS}/pump-17-ssh/extend"),
        Some(&extend),
    )?;
    println!("   expires at {}", extended["status"]["expiresAt"]);
    println!("   $ curl ... -X POST {LINKS}/pump-17-ssh/disable");
    api.call("POST", &format!("{LINKS}/pump-17-ssh/disable"), None)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while topology
        .client
        .run(move || connect_from(IpAddr::V4(CLIENT_V4), front, Duration::from_secs(1)).is_ok())
    {
        if Instant::now() > deadline {
            bail!("the disabled link still listens");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("   {front}: nothing listens any more");

    step("the link's audit trail (GET .../links/pump-17-ssh/events)");
    let (_, events) = api.call("GET", &format!("{LINKS}/pump-17-ssh/events"), None)?;
    for event in events["items"].as_array().into_iter().flatten() {
        println!(
            "   {}  {:<15} {:<11} {}",
            event["at"].as_str().unwrap_or(""),
            event["kind"].as_str().unwrap_or(""),
            event["actor"].as_str().unwrap_or(""),
            event["detail"].as_str().unwrap_or("")
        );
    }

    step("what the proxy counted (from its /metrics)");
    let (_, metrics) = http_get_in(&api.netns, PROXY_METRICS, "/metrics")?;
    for (label, series) in [
        (
            "connections spliced in the kernel",
            "devicelink_connections_carried_total{path=\"kernel\"}",
        ),
        (
            "bytes to the device",
            "devicelink_bytes_total{direction=\"to_device\"}",
        ),
        (
            "XDP packets dropped (source not allowed)",
            "devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"}",
        ),
    ] {
        println!(
            "   {label:<42} {}",
            parse_metric(&metrics, series).unwrap_or(0.0)
        );
    }
    step("cleaning up: the console stops its proxy, the namespaces go away");
    drop(console);
    drop(device);
    drop(topology);
    let _ = std::fs::remove_dir_all(&data);
    println!("done.");
    Ok(())
}

const CONSOLE_API: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
const PROXY_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
const LINKS: &str = "/api/v1/namespaces/demo/links";

/// The console's API, called as curl would from the host it runs on.
struct Api {
    netns: PathBuf,
    token: String,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let authorization = format!("Bearer {}", self.token);
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Content-Type", "application/json"),
        ];
        let body = body.map(Value::to_string);
        let (status, text) = request_in(
            &self.netns,
            CONSOLE_API,
            method,
            path,
            &headers,
            body.as_deref(),
        )?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

fn wait_ready(api: &Api, console: &Process) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, link) = api.call("GET", &format!("{LINKS}/pump-17-ssh"), None)?;
        if link["status"]["state"] == "ready" {
            return Ok(link);
        }
        if Instant::now() > deadline {
            bail!("the link never became ready: {link}\n{}", console.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask demo --vnc`: a TigerVNC server as the device, one full 1920x1080 frame fetched
/// through the eBPF splice by a small RFB viewer, saved as a PNG: the device's screen, arrived
/// through devicelink.
pub fn run_vnc(proxy_binary: &Path, png: &Path) -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the test bed reads this variable.
    unsafe { std::env::set_var("DEVICELINK_PROXY_BIN", proxy_binary) };
    step("building the topology: client, proxy and device namespaces joined by veth");
    let topology = Topology::new("demovnc").context("creating namespaces (run as root)")?;
    let device_addr = SocketAddr::new(IpAddr::V4(DEVICE_V4), 5900);
    let _xvnc = devicelink_testbed::rfb::xvnc::Xvnc::start(&topology.device, device_addr)
        .context("starting Xvnc as the device")?;
    println!("   device: TigerVNC Xvnc on {device_addr}, its root window drawn with a pattern");
    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 5900);
    let proxy = Proxy::start(&topology, front, device_addr, ProxyOptions::default())?;
    println!(
        "   proxy: devicelink-proxy --listen {front} --device {device_addr} --data-plane ebpf"
    );

    step("a VNC viewer in the client namespace asks for the whole screen");
    let frame = topology.client.run(move || -> anyhow::Result<_> {
        let mut viewer =
            devicelink_testbed::rfb::RfbClient::connect(front, Duration::from_secs(10))?;
        let started = Instant::now();
        let frame = viewer.full_frame()?.clone();
        Ok((frame, started.elapsed()))
    });
    let (frame, took) = frame?;
    println!(
        "   {}x{} raw frame ({} bytes, {} colours) in {:?}",
        frame.width,
        frame.height,
        frame.pixels.len(),
        frame.distinct_colours(),
        took
    );
    save_frame_png(&frame, png)?;
    println!("   saved what the viewer saw: {}", png.display());
    println!(
        "   spliced in the kernel: {} connection(s), {} bytes from the device",
        proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}"),
        proxy.metric("devicelink_bytes_total{direction=\"from_device\"}")
    );
    step("cleaning up");
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// Saves what a VNC viewer received as an 8-bit RGB PNG (the README's picture of the device's
/// screen arriving through devicelink).
fn save_frame_png(frame: &Frame, path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        u32::from(frame.width),
        u32::from(frame.height),
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header()?;
    writer
        .write_image_data(&frame.to_rgb())
        .with_context(|| format!("writing {}", path.display()))?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_png_decodes_to_the_frame_colours() {
        let frame = Frame {
            width: 2,
            height: 1,
            // B, G, R, pad: red then blue.
            pixels: vec![0, 0, 255, 0, 255, 0, 0, 0],
        };
        let path = std::env::temp_dir().join(format!("demo-frame-{}.png", std::process::id()));
        save_frame_png(&frame, &path).unwrap();
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(
            &pixels[..6],
            &[255, 0, 0, 0, 0, 255],
            "red then blue, as RGB"
        );
    }
}
