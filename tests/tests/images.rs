//! The container images, run as the cluster runs them. The proxy image runs under podman (runc)
//! with exactly the privileges of the proxy pod (`devicelink_spec::pod_security`: the added
//! capabilities, uid, read-only root, no new privileges, the seccomp profile) in the test bed's
//! proxy namespace: it loads the XDP ACL and the splice and carries a real SSH session and
//! checksummed copies. With any one of its capabilities taken away, `--data-plane ebpf` refuses
//! to start and `auto` falls back to the userspace copy. The operator and console images start
//! as their Deployments run them. Needs root, podman, buildah and runc (`cargo xtask setup`
//! installs them); skipped, loudly, without them. The images are built once per run, and not at
//! all when the local ones carry the current binaries' hashes.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use devicelink_spec::pod_security::{
    IMAGE_USER, PROXY_CAPABILITIES, PROXY_DROPPED_CAPABILITIES, PROXY_NO_NEW_PRIVILEGES,
    PROXY_READ_ONLY_ROOT, PROXY_RUN_AS_GROUP, PROXY_RUN_AS_USER, PROXY_SECCOMP, SeccompProfile,
};
use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, Netns, PROXY_FRONT_IFACE, PROXY_FRONT_V4, Process, Topology, acl_hooks,
    http_get_in,
    image::{self, CONSOLE, ImageSpec, OPERATOR, PROXY},
    parse_metric,
    ssh::{SshDevice, random_file, sha256},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// podman, buildah and runc are all here; otherwise says loudly that nothing was tested.
fn container_tools_available() -> bool {
    let missing: Vec<&str> = ["podman", "buildah", "runc"]
        .into_iter()
        .filter(|tool| {
            !Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        let banner = "=".repeat(78);
        let _ = writeln!(
            std::io::stderr(),
            "\n{banner}\nSKIPPED: {} not installed, so the container images were NOT tested.\n\
             Install them with `cargo xtask setup` (Debian packages podman, buildah, runc).\n{banner}\n",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

/// The directory holding the newest complete set of an image's binaries: the release build
/// (what `cargo xtask image` ships), or the debug build `cargo test` just made when it is newer.
fn binaries_dir(spec: &ImageSpec) -> PathBuf {
    let newest = |dir: &Path| -> Option<std::time::SystemTime> {
        spec.binaries
            .iter()
            .map(|binary| {
                std::fs::metadata(dir.join(binary))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    };
    if spec.name == PROXY.name
        && let Ok(proxy) = devicelink_testbed::proxy_binary()
    {
        return proxy.parent().expect("a directory").to_path_buf();
    }
    let release = target_dir().join("release");
    let debug = target_dir().join("debug");
    match (newest(&release), newest(&debug)) {
        (Some(r), Some(d)) if d > r => debug,
        (None, Some(_)) => debug,
        _ => release,
    }
}

/// The images this run uses: built once, and only if the local image's binary hash differs.
fn images() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(workspace())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into());
        for spec in [PROXY, OPERATOR, CONSOLE] {
            let dir = binaries_dir(&spec);
            if image::is_current(&spec, &reference(&spec), &dir) {
                continue;
            }
            image::build(&spec, &dir, env!("CARGO_PKG_VERSION"), &commit)
                .map_err(|e| format!("building {}: {e:#}", spec.name))?;
        }
        Ok(())
    })
}

fn reference(spec: &ImageSpec) -> String {
    format!("localhost/{}:{}", spec.name, env!("CARGO_PKG_VERSION"))
}

/// Tests that need the images start here: false (skip) without the tools; panics when the
/// images cannot be built.
fn ready() -> bool {
    if !container_tools_available() {
        return false;
    }
    if let Err(e) = images() {
        panic!("{e}");
    }
    true
}

/// `podman run` as this machine needs it: runc (crun refuses its hybrid cgroups), and
/// descriptor and process limits no higher than the machine's own.
fn podman_run(name: &str) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args([
        "run",
        "--rm",
        "--name",
        name,
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        // Kubernetes mounts no tmpfs over a read-only root; podman would, by default.
        "--read-only-tmpfs=false",
    ]);
    cmd
}

/// The proxy pod's security context as podman options, from the shared module, with
/// `without` taken out of the added capabilities.
fn proxy_pod_security(without: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--user".to_owned(),
        format!("{PROXY_RUN_AS_USER}:{PROXY_RUN_AS_GROUP}"),
    ];
    for drop in PROXY_DROPPED_CAPABILITIES {
        args.extend(["--cap-drop".to_owned(), (*drop).to_owned()]);
    }
    for add in PROXY_CAPABILITIES.iter().filter(|c| Some(**c) != without) {
        args.extend(["--cap-add".to_owned(), (*add).to_owned()]);
    }
    if PROXY_READ_ONLY_ROOT {
        args.push("--read-only".to_owned());
    }
    if PROXY_NO_NEW_PRIVILEGES {
        args.extend(["--security-opt".to_owned(), "no-new-privileges".to_owned()]);
    }
    match PROXY_SECCOMP {
        // podman's own default applies when none is named.
        SeccompProfile::RuntimeDefault => {}
        SeccompProfile::Localhost(file) => {
            let path = workspace().join("deploy/seccomp").join(file);
            assert!(
                path.is_file(),
                "the pod's seccomp profile {}",
                path.display()
            );
            args.extend([
                "--security-opt".to_owned(),
                format!("seccomp={}", path.display()),
            ]);
        }
    }
    args
}

/// A container started by a test, removed (with whatever it still runs) on drop.
struct Container {
    name: String,
    process: Process,
}

impl Container {
    fn start(name: &str, cmd: Command) -> Self {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", name])
            .output();
        let process = Process::start(name, cmd).unwrap_or_else(|e| panic!("podman run: {e:#}"));
        Self {
            name: name.to_owned(),
            process,
        }
    }

    /// Waits until `GET path` at `addr` in `netns` answers 200; panics with the log if the
    /// container exits first or it never does.
    fn wait_http_ok(&mut self, netns: &Path, addr: SocketAddr, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.process.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.process.log());
            }
            if let Ok((200, _)) = http_get_in(netns, addr, path) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer {path} within 30 s:\n{}",
                self.name,
                self.process.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for it to exit by itself; its status and log.
    fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let status = self
            .process
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{} still runs:\n{}", self.name, self.process.log()));
        (status, self.process.log())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM first, so the proxy takes its XDP program and route out of the namespace.
        let _ = Command::new("podman")
            .args(["stop", "-t", "5", &self.name])
            .output();
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

/// The proxy image in the topology's proxy namespace with the podman options `security`, for
/// the device at `device`.
fn start_proxy(
    topology: &Topology,
    tag: &str,
    security: Vec<String>,
    data_plane: &str,
    front: SocketAddr,
    device: SocketAddr,
) -> Container {
    let name = format!("dl-{tag}-{}", std::process::id());
    let mut cmd = podman_run(&name);
    cmd.arg("--network")
        .arg(format!("ns:/run/netns/{}", topology.proxy.name()))
        .args(security)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .args(["--env", "RUST_LOG"])
        .arg(reference(&PROXY))
        .args(["--listen", &front.to_string()])
        .args(["--device", &device.to_string()])
        .args(["--metrics", &METRICS.to_string()])
        .args(["--data-plane", data_plane])
        .args(["--allow", &format!("{CLIENT_V4}/32")])
        .args(["--xdp-interface", PROXY_FRONT_IFACE]);
    Container::start(&name, cmd)
}

fn metric(topology: &Topology, series: &str) -> f64 {
    let netns = PathBuf::from(format!("/run/netns/{}", topology.proxy.name()));
    let (_, text) = http_get_in(&netns, METRICS, "/metrics").expect("GET /metrics");
    parse_metric(&text, series).unwrap_or(0.0)
}

fn proxy_netns(topology: &Topology) -> PathBuf {
    PathBuf::from(format!("/run/netns/{}", topology.proxy.name()))
}

/// An SSH session through the proxy, then a file copied up and back with scp, checked by
/// SHA-256 both ways.
fn ssh_session_and_checksummed_copies(topology: &Topology, device: &SshDevice, front: SocketAddr) {
    let hello = device
        .ssh(&topology.client, front, "echo hello from $(hostname)", None)
        .expect("ssh session");
    assert!(hello.contains("hello from"), "session output: {hello}");
    let upload = device.dir.join("upload.bin");
    random_file(&upload, 16 << 20).unwrap();
    let want = sha256(&upload).unwrap();
    let on_device = device.dir.join("on-device.bin");
    device
        .scp(
            &topology.client,
            front,
            &upload.display().to_string(),
            &format!("remote:{}", on_device.display()),
        )
        .expect("scp upload");
    assert_eq!(sha256(&on_device).unwrap(), want, "uploaded file differs");
    let back = device.dir.join("downloaded.bin");
    device
        .scp(
            &topology.client,
            front,
            &format!("remote:{}", on_device.display()),
            &back.display().to_string(),
        )
        .expect("scp download");
    assert_eq!(sha256(&back).unwrap(), want, "downloaded file differs");
}

fn wait_idle(topology: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(topology, "devicelink_connections_active") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "connections still open after 20 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_proxy_image_with_exactly_the_pods_privileges_loads_the_acl_and_the_splice_and_carries_ssh() {
    if !ready() {
        return;
    }
    let topology = Topology::new("imgebpf").expect("topology (needs root)");
    let sshd = SocketAddr::new(IpAddr::V4(DEVICE_V4), 2200);
    let device = SshDevice::start(&topology.device, sshd).expect("sshd as the device");
    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 2222);
    let mut proxy = start_proxy(
        &topology,
        "img-ebpf",
        proxy_pod_security(None),
        "ebpf",
        front,
        sshd,
    );
    proxy.wait_http_ok(&proxy_netns(&topology), METRICS, "/readyz");

    assert_eq!(
        metric(&topology, "devicelink_data_plane_info{mode=\"ebpf\"}"),
        1.0,
        "the eBPF data plane, not the copy:\n{}",
        proxy.process.log()
    );
    assert_eq!(
        metric(&topology, "devicelink_xdp_attached"),
        1.0,
        "the XDP ACL"
    );
    let hooks = acl_hooks(&topology.proxy, PROXY_FRONT_IFACE).unwrap();
    assert_eq!(
        hooks,
        ["source_acl_tc"],
        "the ACL at TC ingress on {PROXY_FRONT_IFACE}"
    );

    ssh_session_and_checksummed_copies(&topology, &device, front);
    wait_idle(&topology);
    assert_eq!(
        metric(
            &topology,
            "devicelink_connections_carried_total{path=\"kernel\"}"
        ),
        3.0,
        "the session and both copies spliced in the kernel"
    );
    let log = proxy.process.log();
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "errors logged:\n{log}"
    );
}

/// Each capability the pod adds is needed: without it the eBPF data plane refuses to start, and
/// the error says what is missing.
#[test]
fn without_any_one_of_its_capabilities_the_proxy_image_refuses_the_ebpf_data_plane() {
    if !ready() {
        return;
    }
    for capability in PROXY_CAPABILITIES {
        let topology = Topology::new("imgnocap").expect("topology (needs root)");
        let device = Topology::device_addr(2200);
        let front = Topology::front(2222);
        let tag = format!("img-no-{}", capability.to_lowercase().replace('_', "-"));
        let mut proxy = start_proxy(
            &topology,
            &tag,
            proxy_pod_security(Some(capability)),
            "ebpf",
            front,
            device,
        );
        let (status, log) = proxy.wait_exit();
        assert!(
            !status.success(),
            "without {capability}: started anyway:\n{log}"
        );
        assert!(
            log.contains("--data-plane ebpf: the") && log.contains("cannot start"),
            "without {capability}: {log}"
        );
        // Each names the capability missing from the effective set: BPF and NET_ADMIN when the
        // object fails to load; PERFMON when the maps load and the verifier refuses the XDP
        // program's packet pointer arithmetic, which only CAP_PERFMON (or root) allows.
        let named = format!("missing: CAP_{capability}");
        assert!(
            log.contains(&named),
            "without {capability}: the error says `{named}`:\n{log}"
        );
        let hooks = acl_hooks(&topology.proxy, PROXY_FRONT_IFACE).unwrap();
        assert!(
            hooks.is_empty(),
            "without {capability}: nothing left attached: {hooks:?}"
        );
    }
}

/// With a capability missing, `--data-plane auto` still serves, with the userspace copy.
#[test]
fn without_cap_bpf_the_proxy_image_falls_back_to_the_userspace_copy_and_still_carries_ssh() {
    if !ready() {
        return;
    }
    let topology = Topology::new("imgauto").expect("topology (needs root)");
    let sshd = SocketAddr::new(IpAddr::V4(DEVICE_V4), 2200);
    let device = SshDevice::start(&topology.device, sshd).expect("sshd as the device");
    let front = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 2222);
    let mut proxy = start_proxy(
        &topology,
        "img-auto",
        proxy_pod_security(Some("BPF")),
        "auto",
        front,
        sshd,
    );
    proxy.wait_http_ok(&proxy_netns(&topology), METRICS, "/readyz");
    assert_eq!(
        metric(&topology, "devicelink_data_plane_info{mode=\"userspace\"}"),
        1.0,
        "the userspace copy:\n{}",
        proxy.process.log()
    );
    assert_eq!(metric(&topology, "devicelink_xdp_attached"), 0.0);
    ssh_session_and_checksummed_copies(&topology, &device, front);
    wait_idle(&topology);
    assert_eq!(
        metric(
            &topology,
            "devicelink_connections_carried_total{path=\"userspace\"}"
        ),
        3.0
    );
}

/// Why the pod names its own seccomp profile: podman's default (containers-common's, as CRI-O's)
/// allows `bpf()` only with CAP_SYS_ADMIN, so the same privileges under it refuse the eBPF data
/// plane, and the proxy points at seccomp.
#[test]
fn under_podmans_default_seccomp_profile_the_proxy_image_refuses_ebpf_and_blames_seccomp() {
    if !ready() {
        return;
    }
    let topology = Topology::new("imgsecc").expect("topology (needs root)");
    let mut security = proxy_pod_security(None);
    if let Some(at) = security.iter().position(|a| a.starts_with("seccomp=")) {
        // Drop `--security-opt seccomp=<file>`: podman applies its default.
        security.drain(at - 1..=at);
    }
    let mut proxy = start_proxy(
        &topology,
        "img-default-seccomp",
        security,
        "ebpf",
        Topology::front(2222),
        Topology::device_addr(2200),
    );
    let (status, log) = proxy.wait_exit();
    assert!(
        !status.success(),
        "started under the default profile:\n{log}"
    );
    assert!(
        log.contains("a seccomp profile that denies bpf() is the likely cause"),
        "the error points at seccomp:\n{log}"
    );
}

/// The operator's and console's Deployments: the image's own non-root user, every capability
/// dropped, read-only root, no new privileges, the runtime's default seccomp profile.
fn unprivileged(cmd: &mut Command) {
    cmd.args([
        "--user",
        &format!("{IMAGE_USER}:{IMAGE_USER}"),
        "--cap-drop",
        "ALL",
        "--read-only",
        "--security-opt",
        "no-new-privileges",
    ]);
}

/// The operator serves /healthz only once it reached an API server (it installs or checks its
/// CRD first), and there is none here; so the image is proven by what runs without one: the
/// CRD it prints is deploy/crd.yaml, the CLI answers, and `run` fails naming the missing API
/// server rather than a missing library.
#[test]
fn the_operator_image_runs_unprivileged_prints_its_crd_and_names_the_missing_api_server() {
    if !ready() {
        return;
    }
    let image = reference(&OPERATOR);
    let run = |name: &str, entrypoint: Option<&str>, args: &[&str]| {
        let mut cmd = podman_run(&format!("{name}-{}", std::process::id()));
        unprivileged(&mut cmd);
        cmd.args(["--network", "none"]);
        if let Some(entrypoint) = entrypoint {
            cmd.args(["--entrypoint", entrypoint]);
        }
        cmd.arg(&image).args(args);
        cmd.output().expect("podman run")
    };
    let crd = run("dl-img-op-crd", None, &["crd"]);
    assert!(crd.status.success(), "crd: {crd:?}");
    let shipped = std::fs::read_to_string(workspace().join("deploy/crd.yaml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&crd.stdout),
        shipped,
        "the image's CRD is deploy/crd.yaml"
    );
    let cli = run(
        "dl-img-op-cli",
        Some("/usr/local/bin/devicelink"),
        &["--help"],
    );
    assert!(cli.status.success(), "devicelink --help: {cli:?}");
    let controller = run("dl-img-op-run", None, &["run", "--log-format", "json"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&controller.stdout),
        String::from_utf8_lossy(&controller.stderr)
    );
    assert!(
        !controller.status.success(),
        "run without a cluster: {said}"
    );
    assert!(
        said.contains("Kubernetes API server"),
        "run names the missing API server: {said}"
    );
}

#[test]
fn the_console_image_runs_unprivileged_with_a_data_volume_and_answers_healthz() {
    if !ready() {
        return;
    }
    let netns = Netns::create(&format!("dl-imgcon-{}", std::process::id())).expect("netns");
    let data =
        std::env::temp_dir().join(format!("devicelink-image-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    // The volume belongs to the image's user, as a pod's fsGroup would make it.
    let chown = Command::new("chown")
        .arg(format!("{IMAGE_USER}:{IMAGE_USER}"))
        .arg(&data)
        .status()
        .unwrap();
    assert!(chown.success());
    let name = format!("dl-img-console-{}", std::process::id());
    let mut cmd = podman_run(&name);
    unprivileged(&mut cmd);
    cmd.arg("--network")
        .arg(format!("ns:/run/netns/{}", netns.name()))
        .arg("--volume")
        .arg(format!("{}:/data", data.display()))
        .arg(reference(&CONSOLE))
        .args(["serve", "--data", "/data", "--listen", "127.0.0.1:8080"])
        // Its proxy runs in its own image; this one is the API alone.
        .arg("--without-proxy");
    let mut console = Container::start(&name, cmd);
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
    let path = PathBuf::from(format!("/run/netns/{}", netns.name()));
    console.wait_http_ok(&path, addr, "/healthz");
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_some(),
        "the console wrote its database to the volume"
    );
    drop(console);
    let _ = std::fs::remove_dir_all(&data);
}

/// Every file under `root`, relative to it, with its SHA-256.
fn files_with_hashes(root: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let hash = sha256(&path).unwrap();
                files.push((path.strip_prefix(root).unwrap().to_path_buf(), hash));
            }
        }
    }
    files.sort();
    files
}

/// The Dockerfiles are never built here (no registry to pull their build image from), so the
/// script they assemble their root filesystem with is checked instead: from the same binaries
/// it makes exactly the files, byte for byte, of the image `cargo xtask image` built.
#[test]
fn the_dockerfiles_rootfs_script_assembles_exactly_the_files_of_the_built_images() {
    if !ready() {
        return;
    }
    for spec in [PROXY, OPERATOR, CONSOLE] {
        let scratch = std::env::temp_dir().join(format!(
            "devicelink-rootfs-{}-{}",
            spec.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        let (from_script, from_image) = (scratch.join("script"), scratch.join("image"));
        std::fs::create_dir_all(&from_image).unwrap();
        let dir = binaries_dir(&spec);
        let status = Command::new(workspace().join("deploy/image/rootfs.sh"))
            .arg(&from_script)
            .args(spec.binaries.iter().map(|binary| dir.join(binary)))
            .status()
            .expect("deploy/image/rootfs.sh");
        assert!(status.success(), "rootfs.sh for {}", spec.name);
        let container = String::from_utf8(
            Command::new("podman")
                .args(["create", &reference(&spec)])
                .output()
                .expect("podman create")
                .stdout,
        )
        .unwrap();
        let container = container.trim();
        let exported = scratch.join("image.tar");
        let export = Command::new("podman")
            .args(["export", "-o"])
            .arg(&exported)
            .arg(container)
            .status()
            .unwrap();
        let _ = Command::new("podman").args(["rm", container]).output();
        assert!(export.success(), "podman export {}", spec.name);
        let untar = Command::new("tar")
            .arg("-xf")
            .arg(&exported)
            .arg("-C")
            .arg(&from_image)
            .status()
            .unwrap();
        assert!(untar.success());
        assert_eq!(
            files_with_hashes(&from_script),
            files_with_hashes(&from_image),
            "{}: rootfs.sh and the image differ",
            spec.name
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }
}

/// `curl -k` inside `netns`: the status code of an HTTPS GET (000 when nothing answers).
fn https_status_in(netns: &Netns, url: &str) -> String {
    let out = netns
        .command("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The console as deploy/console.yaml runs it: the Kubernetes backend, HTTPS on 0.0.0.0:8443
/// from a mounted certificate. `/healthz` answers; `/readyz` says 503 because the API server
/// its configuration names is not there (a cluster supplies it in-cluster).
#[test]
fn the_console_image_serves_the_clusters_command_over_https_with_healthz_and_an_honest_readyz() {
    if !ready() {
        return;
    }
    let netns = Netns::create(&format!("dl-imgtls-{}", std::process::id())).expect("netns");
    let dir = std::env::temp_dir().join(format!("devicelink-image-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=devicelink-console"])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .output()
        .expect("openssl");
    assert!(openssl.status.success(), "openssl: {openssl:?}");
    // An API server address where none listens, as a kubeconfig names it (its CA: any
    // certificate will do, nothing answers).
    let ca = Command::new("base64")
        .arg("-w0")
        .arg(dir.join("tls.crt"))
        .output()
        .expect("base64");
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {}\n\
             contexts:\n- name: none\n  context: {{cluster: none, user: none}}\ncurrent-context: none\nusers:\n- name: none\n  user: {{token: none}}\n",
            String::from_utf8_lossy(&ca.stdout)
        ),
    )
    .unwrap();
    // Readable by the image's user, as a Secret volume is.
    for file in ["tls.key", "tls.crt", "kubeconfig"] {
        std::fs::set_permissions(
            dir.join(file),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    let name = format!("dl-img-console-tls-{}", std::process::id());
    let mut cmd = podman_run(&name);
    unprivileged(&mut cmd);
    cmd.arg("--network")
        .arg(format!("ns:/run/netns/{}", netns.name()))
        .arg("--volume")
        .arg(format!("{}:/etc/devicelink-console/tls:ro", dir.display()))
        .args(["--env", "KUBECONFIG=/etc/devicelink-console/tls/kubeconfig"])
        .arg(reference(&CONSOLE))
        .args([
            "serve",
            "--backend",
            "kubernetes",
            "--listen",
            "0.0.0.0:8443",
        ])
        .args(["--tls-cert", "/etc/devicelink-console/tls/tls.crt"])
        .args(["--tls-key", "/etc/devicelink-console/tls/tls.key"]);
    let mut console = Container::start(&name, cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while https_status_in(&netns, "https://127.0.0.1:8443/healthz") != "200" {
        if let Some(status) = console.process.try_wait() {
            panic!("the console exited ({status}):\n{}", console.process.log());
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz over HTTPS within 30 s:\n{}",
            console.process.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        https_status_in(&netns, "https://127.0.0.1:8443/readyz"),
        "503",
        "not ready without its API server"
    );
    drop(console);
    let _ = std::fs::remove_dir_all(&dir);
}
