//! The whole machine's CPU, minus what other people's processes used meanwhile. The eBPF path
//! works in kernel threads and softirq, so only a whole-machine figure is fair to it; but the
//! machine is shared (builds, other tests), and their CPU is not the data plane's.

use std::{collections::HashSet, os::unix::fs::MetadataExt as _};

use devicelink_testbed::{Topology, machine_busy_time};

/// A point in time to measure CPU from.
pub struct Snapshot {
    busy: f64,
    foreign: f64,
}

impl Snapshot {
    pub fn take(topology: &Topology) -> Self {
        Self {
            busy: machine_busy_time().as_secs_f64(),
            foreign: foreign_cpu_seconds(&bench_namespaces(topology)),
        }
    }

    /// Busy CPU seconds of the whole machine since `self`, without other users' processes:
    /// the endpoints (iperf3, the bench's own clients and servers), the contender, and every
    /// kernel thread and softirq.
    pub fn bench_cpu_since(&self, topology: &Topology) -> f64 {
        let now = Self::take(topology);
        let busy = now.busy - self.busy;
        let foreign = (now.foreign - self.foreign).max(0.0);
        (busy - foreign).max(0.0)
    }
}

/// Network-namespace inodes of the bench's namespaces.
fn bench_namespaces(topology: &Topology) -> HashSet<u64> {
    [&topology.client, &topology.proxy, &topology.device]
        .iter()
        .filter_map(|ns| std::fs::metadata(format!("/run/netns/{}", ns.name())).ok())
        .map(|m| m.ino())
        .collect()
}

/// CPU seconds (with reaped children, so a compiler that exited still counts through its
/// parent) of every user-space process that is neither the bench nor in its namespaces.
fn foreign_cpu_seconds(bench: &HashSet<u64>) -> f64 {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(fields) = stat_fields(&stat) else {
            continue;
        };
        if is_kernel_thread(pid, &fields) {
            continue;
        }
        let in_bench = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|link| namespace_inode(&link.to_string_lossy()))
            .is_some_and(|inode| bench.contains(&inode));
        if !in_bench {
            total += cpu_with_children(&fields);
        }
    }
    total
}

/// The fields after the command name (which may hold spaces and parentheses).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 2..].split_whitespace().collect())
}

/// Kernel threads are the children of kthreadd (pid 2), and kthreadd itself.
fn is_kernel_thread(pid: u32, fields: &[&str]) -> bool {
    pid == 2 || fields.get(1) == Some(&"2")
}

fn cpu_with_children(fields: &[&str]) -> f64 {
    let ticks: u64 = fields
        .get(11..15)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf takes no pointers and only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// `net:[4026532281]` -> 4026532281
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "1234 (a) b (c)) S 2 0 0 0 -1 0 0 0 0 0 10 20 30 40 20 0";
        let fields = stat_fields(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert!(is_kernel_thread(1234, &fields), "parent 2 is kthreadd");
        // SAFETY: sysconf takes no pointers and only reads a system constant.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_with_children(&fields), 100.0 / ticks_per_second);
    }

    #[test]
    fn namespace_links_give_their_inode() {
        assert_eq!(namespace_inode("net:[4026532281]"), Some(4026532281));
        assert_eq!(namespace_inode("mnt:[1]"), None);
    }

    #[test]
    fn processes_outside_the_bench_are_counted() {
        // With no namespace counted as the bench's, every user-space process but this one is
        // foreign, and init at least has used some CPU by now.
        assert!(foreign_cpu_seconds(&HashSet::new()) > 0.0);
    }
}
