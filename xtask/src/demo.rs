//! `cargo xtask demo`: three network namespaces (client, proxy, device), a real OpenSSH server
//! as the device, `devicelink-proxy` in eBPF mode between them; a real SSH session and an scp
//! through the splice, an ACL drop from a disallowed source, and what the proxy counted. With
//! `--vnc`: a VNC device's screen fetched through the splice and saved as a PNG.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use devicelink_testbed::{
    DEVICE_V4, OTHER_CLIENT_V4, PROXY_FRONT_V4, Proxy, ProxyOptions, Topology, connect_from,
    rfb::Frame,
    ssh::{SshDevice, random_file, sha256},
};

const FILE_MB: u64 = 256;

pub fn run(proxy_binary: &Path) -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the test bed reads this variable.
    unsafe { std::env::set_var("DEVICELINK_PROXY_BIN", proxy_binary) };
    step("building the topology: client, proxy and device namespaces joined by veth");
    let topology = Topology::new("demo").context("creating namespaces (run as root)")?;
    let device_addr = SocketAddr::new(IpAddr::V4(DEVICE_V4), 22);
    let device =
        SshDevice::start(&topology.device, device_addr).context("starting sshd as the device")?;
    println!("   device: OpenSSH on {device_addr} (reachable only from the proxy namespace)");

    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 2222);
    let proxy = Proxy::start(&topology, front, device_addr, ProxyOptions::default())?;
    println!(
        "   proxy: devicelink-proxy --listen {front} --device {device_addr} --allow 10.77.1.2/32 --data-plane ebpf --xdp-interface to-client"
    );
    let mode = if proxy.metric("devicelink_data_plane_info{mode=\"ebpf\"}") == 1.0 {
        "eBPF splice"
    } else {
        "userspace copy"
    };
    println!("   data plane: {mode}");

    step("an SSH session from the client, through the proxy, to the device");
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
    let cpu_before = proxy.process.cpu_time();
    let started = Instant::now();
    device.scp(
        &topology.client,
        front,
        &upload.display().to_string(),
        &format!("remote:{}", on_device.display()),
    )?;
    let took = started.elapsed();
    let cpu = proxy.process.cpu_time() - cpu_before;
    let (sent, arrived) = (sha256(&upload)?, sha256(&on_device)?);
    if sent != arrived {
        bail!("the file arrived damaged: {sent} vs {arrived}");
    }
    println!("   sha256 {sent}: identical on both ends");
    println!(
        "   {FILE_MB} MiB in {:.2} s ({:.0} Mbit/s, bounded by scp's encryption); proxy process CPU: {:?}",
        took.as_secs_f64(),
        (FILE_MB << 23) as f64 / took.as_secs_f64() / 1e6,
        cpu
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

    step("what the proxy counted (from its /metrics)");
    for (label, series) in [
        (
            "data plane eBPF",
            "devicelink_data_plane_info{mode=\"ebpf\"}",
        ),
        (
            "connections spliced in the kernel",
            "devicelink_connections_carried_total{path=\"kernel\"}",
        ),
        (
            "connections completed",
            "devicelink_connections_total{result=\"completed\"}",
        ),
        (
            "bytes to the device",
            "devicelink_bytes_total{direction=\"to_device\"}",
        ),
        (
            "bytes from the device",
            "devicelink_bytes_total{direction=\"from_device\"}",
        ),
        (
            "XDP packets passed (allowed source)",
            "devicelink_xdp_packets_total{verdict=\"pass\",reason=\"allowed\"}",
        ),
        (
            "XDP packets dropped (source not allowed)",
            "devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"}",
        ),
    ] {
        println!("   {label:<42} {}", proxy.metric(series));
    }
    step("cleaning up: the proxy detaches its programs, the namespaces go away");
    drop(proxy);
    drop(device);
    drop(topology);
    println!("done.");
    Ok(())
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
