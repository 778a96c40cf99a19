//! The memory budget the proxy sizes its connections to (`--memory-budget`): given, or the
//! memory limit of the cgroup it runs in (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`,
//! the smallest along the path to the root). The arithmetic is `devicelink_spec::memory`'s, so
//! the operator computes the same connection limit for the same pod limit.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use devicelink_spec::memory::DEFAULT_BUDGET_WITHOUT_LIMIT;

/// `--memory-budget`: a size, or `auto` (the cgroup's limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetChoice {
    Auto,
    Bytes(u64),
}

/// The budget in force and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: BudgetSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// `--memory-budget BYTES`.
    Flag,
    /// The limit file that set it.
    Cgroup(PathBuf),
    /// No cgroup limit found: the machine's memory (`MemTotal`), or
    /// [`DEFAULT_BUDGET_WITHOUT_LIMIT`] if that cannot be read.
    NoLimit,
}

impl fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => write!(f, "--memory-budget"),
            Self::Cgroup(path) => write!(f, "the cgroup limit in {}", path.display()),
            Self::NoLimit => write!(f, "the machine's memory (no cgroup memory limit found)"),
        }
    }
}

/// Where cgroup hierarchies are mounted; v2 alone, or v2 beside v1 controllers ("hybrid").
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Limits at or above this mean "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages).
const UNLIMITED: u64 = 1 << 60;

impl Budget {
    /// The budget for `choice`, reading this process's cgroup for `auto`.
    pub fn resolve(choice: BudgetChoice) -> Self {
        match choice {
            BudgetChoice::Bytes(bytes) => Self {
                bytes,
                source: BudgetSource::Flag,
            },
            BudgetChoice::Auto => {
                let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                match cgroup_limit(&own, Path::new(CGROUP_ROOT), |path| {
                    std::fs::read_to_string(path).ok()
                }) {
                    Some((bytes, path)) => Self {
                        bytes,
                        source: BudgetSource::Cgroup(path),
                    },
                    None => Self {
                        bytes: std::fs::read_to_string("/proc/meminfo")
                            .ok()
                            .and_then(|text| mem_total(&text))
                            .unwrap_or(DEFAULT_BUDGET_WITHOUT_LIMIT),
                        source: BudgetSource::NoLimit,
                    },
                }
            }
        }
    }
}

/// The smallest memory limit on the way from this process's cgroup (`proc_self_cgroup`, the
/// text of `/proc/self/cgroup`) to the root, and the file that set it. cgroup v2 first (the
/// `0::` line, under `root` or `root/unified`), then v1's memory controller. `read` returns a
/// file's text.
pub fn cgroup_limit(
    proc_self_cgroup: &str,
    root: &Path,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<(u64, PathBuf)> {
    let mut v2 = None;
    let mut v1 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    let smallest = |mounts: &[PathBuf], cgroup: &str, file: &str| {
        mounts.iter().find_map(|mount| {
            let mut best: Option<(u64, PathBuf)> = None;
            let mut dir = Some(Path::new(cgroup.trim_start_matches('/')));
            let mut seen_any = false;
            while let Some(relative) = dir {
                let path = mount.join(relative).join(file);
                if let Some(text) = read(&path) {
                    seen_any = true;
                    let text = text.trim();
                    if let Ok(bytes) = text.parse::<u64>()
                        && bytes < UNLIMITED
                        && best.as_ref().is_none_or(|(b, _)| bytes < *b)
                    {
                        best = Some((bytes, path));
                    }
                }
                dir = relative.parent();
            }
            // A mount where the process's cgroup is visible answers, limited or not.
            seen_any.then_some(best)
        })
    };
    if let Some(path) = v2
        && let Some(found) = smallest(
            &[root.to_path_buf(), root.join("unified")],
            path,
            "memory.max",
        )
    {
        return found;
    }
    if let Some(path) = v1
        && let Some(found) = smallest(&[root.join("memory")], path, "memory.limit_in_bytes")
    {
        return found;
    }
    None
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `--memory-budget`'s value: `auto` or a size (K/M/G/T, binary).
pub fn parse_budget(value: &str) -> Result<BudgetChoice, String> {
    if value == "auto" {
        return Ok(BudgetChoice::Auto);
    }
    let hint = "expected `auto` or a size such as 512M, 2G or 268435456";
    let (digits, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, ""), |at| value.split_at(at));
    let base: u64 = digits.parse().map_err(|_| hint.to_string())?;
    let multiplier: u64 = match unit.trim_end_matches(['i', 'B']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(hint.into()),
    };
    base.checked_mul(multiplier)
        .filter(|bytes| *bytes > 0)
        .map(BudgetChoice::Bytes)
        .ok_or_else(|| hint.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_string()))
            .collect();
        move |path| map.get(path).cloned()
    }

    #[test]
    fn cgroup_v2_limit_is_the_smallest_on_the_way_to_the_root() {
        let read = files(&[
            ("/cg/kubepods/pod1/ctr/memory.max", "max\n"),
            ("/cg/kubepods/pod1/memory.max", "268435456\n"),
            ("/cg/kubepods/memory.max", "8589934592\n"),
        ]);
        let found = cgroup_limit("0::/kubepods/pod1/ctr\n", Path::new("/cg"), read);
        assert_eq!(
            found,
            Some((268435456, PathBuf::from("/cg/kubepods/pod1/memory.max")))
        );
    }

    #[test]
    fn cgroup_v2_in_a_cgroup_namespace_reads_the_root_files() {
        let read = files(&[("/cg/memory.max", "134217728\n")]);
        assert_eq!(
            cgroup_limit("0::/\n", Path::new("/cg"), read).map(|(b, _)| b),
            Some(134217728)
        );
    }

    #[test]
    fn cgroup_v2_max_everywhere_is_no_limit() {
        let read = files(&[("/cg/a/memory.max", "max\n")]);
        assert_eq!(cgroup_limit("0::/a\n", Path::new("/cg"), read), None);
    }

    #[test]
    fn cgroup_v1_memory_controller_is_read_on_a_hybrid_host() {
        let own = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let read = files(&[
            (
                "/cg/memory/process_api/abc/memory.limit_in_bytes",
                "536870912\n",
            ),
            ("/cg/memory/memory.limit_in_bytes", "9223372036854771712\n"),
        ]);
        assert_eq!(
            cgroup_limit(own, Path::new("/cg"), read).map(|(b, _)| b),
            Some(536870912)
        );
    }

    #[test]
    fn without_a_limit_the_machine_memory_is_the_budget() {
        assert_eq!(
            mem_total("MemTotal:       24684096 kB\nMemFree: 1 kB\n"),
            Some(24684096 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn budget_sizes() {
        assert_eq!(parse_budget("auto"), Ok(BudgetChoice::Auto));
        assert_eq!(parse_budget("256Mi"), Ok(BudgetChoice::Bytes(256 << 20)));
        assert_eq!(parse_budget("2G"), Ok(BudgetChoice::Bytes(2 << 30)));
        assert!(parse_budget("0").is_err());
        assert!(parse_budget("lots").is_err());
    }
}
