//! What a result was measured on: the machine (kernel, CPU, cores, memory, the peers'
//! versions) and the commit the proxy was built from. Every report starts with these.

use crate::workspace;

/// The commit the measured proxy was built from, and whether the tree had changes on top.
pub fn source_revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(workspace::root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    match (commit.is_empty(), dirty) {
        (true, _) => "an unknown commit".into(),
        (false, false) => format!("commit {commit}"),
        (false, true) => format!("commit {commit} with uncommitted changes"),
    }
}

/// Kernel, CPU, cores, memory and peer versions: docs/benchmarks.md shows the table with these.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / f64::from(1u32 << 20));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| -> String {
        let out = std::process::Command::new(cmd).arg(arg).output();
        let text = out
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        text.lines().next().unwrap_or("?").trim().to_string()
    };
    // The proxy's container image, when `cargo xtask image` built one here.
    let image = crate::image::size_of("devicelink-proxy").map_or_else(String::new, |bytes| {
        format!("; proxy image {:.1} MB", bytes as f64 / 1e6)
    });
    format!(
        "Linux {}, {cpu}, {cores} cores, {mem_gib:.0} GiB; {}; {}; {}; {}{image}",
        kernel.trim(),
        version("haproxy", "-v"),
        version("nginx", "-v"),
        version("socat", "-V").replace(
            "socat by Gerhard Rieger and contributors - see www.dest-unreach.org",
            "socat"
        ),
        version("iperf3", "--version"),
    )
}
