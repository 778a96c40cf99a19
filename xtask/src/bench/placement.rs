//! A remote device's placement, on one machine: the device's server alone on a CPU, and the
//! packets it sends handled on the others (RPS on the proxy's device-facing interface). A real
//! device is another machine, so nothing it does competes with the proxy's host for a CPU; in
//! the bench's default placement the device's server and the kernel's forwarding work for its
//! packets share one, and which plane wins depends on that. Both placements go on record.

use std::process::Command;

use anyhow::{Context as _, bail};
use devicelink_testbed::{PROXY_BACK_IFACE, Topology};

/// The device's server pinned and its packets steered until dropped.
pub struct RemoteDevice {
    pid: u32,
    cpus: usize,
    proxy_ns: String,
}

fn taskset(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset --cpu-list {cpus} for pid {pid} failed");
    }
    Ok(())
}

fn steer(proxy_ns: &str, mask: &str) -> anyhow::Result<()> {
    // `ip netns exec` mounts the namespace's own /sys, where its interfaces are.
    let path = format!("/sys/class/net/{PROXY_BACK_IFACE}/queues/rx-0/rps_cpus");
    let status = Command::new("ip")
        .args(["netns", "exec", proxy_ns, "sh", "-c"])
        .arg(format!("echo {mask} > {path}"))
        .status()
        .context("setting RPS")?;
    if !status.success() {
        bail!("writing {mask} to {path} in {proxy_ns} failed");
    }
    Ok(())
}

impl RemoteDevice {
    /// Pins the process `pid` (every thread) to the last CPU and steers the device's packets
    /// to the others.
    pub fn place(topology: &Topology, pid: u32) -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            bail!("a CPU of the device's own needs at least 2 CPUs; this machine has {cpus}");
        }
        let own = cpus - 1;
        let placed = Self {
            pid,
            cpus,
            proxy_ns: topology.proxy.name().to_string(),
        };
        taskset(pid, &own.to_string())?;
        let others: u64 = (1u64 << own.min(63)) - 1;
        steer(&placed.proxy_ns, &format!("{others:x}"))?;
        Ok(placed)
    }
}

impl Drop for RemoteDevice {
    fn drop(&mut self) {
        let all = format!("0-{}", self.cpus - 1);
        if let Err(e) = taskset(self.pid, &all) {
            eprintln!("bench: restoring the device's CPUs: {e:#}");
        }
        if let Err(e) = steer(&self.proxy_ns, "0") {
            eprintln!("bench: turning RPS off again: {e:#}");
        }
    }
}
