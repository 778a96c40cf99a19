//! A memory cgroup for one process under test, child of the test's own cgroup: a limit the
//! proxy reads as its budget (`--memory-budget auto`), and what the kernel charged to it.
//! cgroup v2 (`memory.max`, `memory.current`, sockets included) or, on a host whose memory
//! controller is on a v1 hierarchy, v1 (`memory.limit_in_bytes`; TCP buffers are charged to a
//! separate counter, switched on by giving it a limit: `memory.kmem.tcp.*`).

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

const ROOT: &str = "/sys/fs/cgroup";

/// Which hierarchy the memory controller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A child memory cgroup with a limit; removed on drop once its processes are gone.
pub struct MemoryCgroup {
    pub dir: PathBuf,
    pub version: CgroupVersion,
    pub limit: u64,
}

impl MemoryCgroup {
    /// Creates `name` under this process's own memory cgroup with `limit` bytes.
    pub fn create(name: &str, limit: u64) -> anyhow::Result<Self> {
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let v1 = own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        let (version, parent) = match v1 {
            Some(path) => (
                CgroupVersion::V1,
                Path::new(ROOT)
                    .join("memory")
                    .join(path.trim_start_matches('/')),
            ),
            None => {
                let path = own
                    .lines()
                    .find_map(|line| line.strip_prefix("0::"))
                    .context("no cgroup v2 line in /proc/self/cgroup")?;
                (
                    CgroupVersion::V2,
                    Path::new(ROOT).join(path.trim_start_matches('/')),
                )
            }
        };
        let dir = parent.join(name);
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = Self {
            dir,
            version,
            limit,
        };
        match version {
            CgroupVersion::V1 => {
                cgroup.write("memory.limit_in_bytes", limit)?;
                cgroup.write("memory.kmem.tcp.limit_in_bytes", limit)?;
            }
            CgroupVersion::V2 => cgroup.write("memory.max", limit)?,
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: u64) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value.to_string()).with_context(|| format!("writing {}", path.display()))
    }

    fn read(&self, file: &str) -> anyhow::Result<u64> {
        let path = self.dir.join(file);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", path.display()))
    }

    /// The file a process writes its pid to, to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// What the kernel charges to the cgroup now: v2 `memory.current` (pages, kernel memory and
    /// socket buffers); v1 `memory.usage_in_bytes` plus the TCP counter beside it.
    pub fn charged(&self) -> anyhow::Result<u64> {
        match self.version {
            CgroupVersion::V2 => self.read("memory.current"),
            CgroupVersion::V1 => Ok(self.read("memory.usage_in_bytes")?
                + self.read("memory.kmem.tcp.usage_in_bytes")?),
        }
    }

    /// Of [`Self::charged`], the socket buffers: v2 `memory.stat`'s `sock`, v1's TCP counter.
    pub fn charged_sockets(&self) -> anyhow::Result<u64> {
        match self.version {
            CgroupVersion::V1 => self.read("memory.kmem.tcp.usage_in_bytes"),
            CgroupVersion::V2 => {
                let path = self.dir.join("memory.stat");
                let text = fs::read_to_string(&path)?;
                let Some(value) = text
                    .lines()
                    .find_map(|line| line.strip_prefix("sock "))
                    .and_then(|v| v.trim().parse().ok())
                else {
                    bail!("no sock line in {}", path.display());
                };
                Ok(value)
            }
        }
    }
}

impl Drop for MemoryCgroup {
    /// Waits briefly for the processes to leave (they are killed with their namespace), then
    /// removes the directory; never panics.
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            if let Ok(procs) = fs::read_to_string(self.procs()) {
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill takes no pointers; the pid is a member of this test's own
                    // cgroup, which is being removed.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Resident memory of a process (`VmRSS`), in bytes.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}
