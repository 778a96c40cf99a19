//! A network namespace the test bed made: commands and threads inside it, its own
//! `/etc/hosts`, and its removal (with everything still running in it) on drop.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::Context as _;

use crate::process::sh;

fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh(Command::new("ip").args(args))
}

/// A network namespace made by the test bed; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        // A namespace left over by a killed run of the same name would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Gives processes started with [`Netns::command`] their own `/etc/hosts` (`ip netns exec`
    /// bind-mounts `/etc/netns/<name>/hosts` over it), so a test can name the device as a user
    /// would without touching the machine's resolver. Removed with the namespace.
    pub fn set_hosts(&self, contents: &str) -> anyhow::Result<()> {
        let dir = Path::new("/etc/netns").join(&self.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("hosts"), contents).context("writing the namespace's hosts file")
    }

    /// Runs `f` on a new thread that has entered this namespace (a namespace belongs to a
    /// thread), and returns its handle.
    pub fn spawn<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = PathBuf::from(format!("/run/netns/{}", self.name));
        thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("entering {}: {e:#}", path.display()));
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then remove the namespace; never panic here.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill takes no pointers; the pid is one `ip netns pids` listed in
                    // this test's own namespace, about to be deleted.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/<name>`).
pub(crate) fn enter(path: &Path) -> anyhow::Result<()> {
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns takes no pointers; the descriptor is a namespace file held open by `file`
    // for the call, and the switch affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}
