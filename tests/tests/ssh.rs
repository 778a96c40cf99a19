//! A real OpenSSH session and real `scp` transfers through `devicelink-proxy`, in eBPF and in
//! userspace mode: the server speaks first, the session is interactive, the files are checked
//! by SHA-256. Needs root and OpenSSH (installed by `cargo xtask setup`).

use std::net::{IpAddr, SocketAddr};

use devicelink_testbed::{
    DEVICE_V4, PROXY_FRONT_V4, Proxy, ProxyOptions, Topology,
    ssh::{SshDevice, random_file, sha256},
};

fn ssh_through_proxy(mode: &str) {
    let topology = Topology::new(&format!("ssh{mode}")).expect("topology (needs root)");
    let sshd_addr = SocketAddr::new(IpAddr::V4(DEVICE_V4), 2200);
    let device = SshDevice::start(&topology.device, sshd_addr).expect("sshd as the device");
    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 2222);
    let proxy = Proxy::start(
        &topology,
        front,
        sshd_addr,
        ProxyOptions {
            data_plane: mode,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("proxy: {e:#}"));

    let hello = device
        .ssh(
            &topology.client,
            front,
            "echo hello from $(hostname) && uname -s",
            None,
        )
        .expect("ssh session");
    assert!(
        hello.contains("hello from") && hello.contains("Linux"),
        "unexpected session output: {hello}"
    );

    let dir = device.dir.clone();
    let upload = dir.join("upload.bin");
    random_file(&upload, 48 << 20).unwrap();
    let want = sha256(&upload).unwrap();
    // Upload with scp, then download it back with scp, then hash it remotely over ssh stdin.
    let on_device = dir.join("on-device.bin");
    device
        .scp(
            &topology.client,
            front,
            &upload.display().to_string(),
            &format!("remote:{}", on_device.display()),
        )
        .expect("scp upload");
    assert_eq!(sha256(&on_device).unwrap(), want, "uploaded file differs");
    let back = dir.join("downloaded.bin");
    device
        .scp(
            &topology.client,
            front,
            &format!("remote:{}", on_device.display()),
            &back.display().to_string(),
        )
        .expect("scp download");
    assert_eq!(sha256(&back).unwrap(), want, "downloaded file differs");
    let remote_hash = device
        .ssh(&topology.client, front, "sha256sum", Some(&upload))
        .expect("ssh with stdin");
    assert!(
        remote_hash.starts_with(&want),
        "hash over ssh stdin: {remote_hash}"
    );

    proxy.wait_idle();
    let carried = proxy.metric("devicelink_bytes_total{direction=\"to_device\"}");
    assert!(
        carried > 2.0 * (48 << 20) as f64,
        "the proxy should have carried both uploads, counted {carried}"
    );
    if mode == "ebpf" {
        let kernel = proxy.metric("devicelink_connections_carried_total{path=\"kernel\"}");
        assert_eq!(
            kernel, 4.0,
            "every ssh connection should be spliced in the kernel"
        );
    }
}

#[test]
fn ssh_and_scp_through_the_ebpf_splice() {
    ssh_through_proxy("ebpf");
}

/// The default data plane: a 48 MiB scp is busy enough to be measured on both paths
/// mid-transfer (and may leave the splice); both files must arrive whole.
#[test]
fn ssh_and_scp_through_the_default_data_plane() {
    ssh_through_proxy("auto");
}

#[test]
fn ssh_and_scp_through_the_userspace_copy() {
    ssh_through_proxy("userspace");
}
