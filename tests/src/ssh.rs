//! A real OpenSSH server as the device, and a real `ssh`/`scp` client, for the tests and the
//! demo. Keys and configuration live in a temporary folder removed on drop.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    netns::Netns,
    pattern::send_pattern,
    process::{Process, sh},
};

/// `sshd` running in a namespace, with a client key it accepts.
pub struct SshDevice {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    _sshd: Process,
}

impl SshDevice {
    /// Starts `sshd` on `addr` inside `ns`, accepting a fresh client key for root.
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("devicelink-ssh-{}-{}", ns.name(), addr.port()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        // sshd's privilege separation needs this directory.
        fs::create_dir_all("/run/sshd")?;
        for key in ["host_key", "client_key"] {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)))?;
        }
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let config = format!(
            "ListenAddress {addr}\nHostKey {host}\nAuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PidFile none\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
            host = dir.join("host_key").display(),
            auth = dir.join("authorized_keys").display(),
        );
        fs::write(dir.join("sshd_config"), config)?;
        let mut cmd = ns.command("/usr/sbin/sshd");
        cmd.arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"));
        let sshd = Process::start("sshd", cmd)?;
        let device = Self {
            dir,
            addr,
            _sshd: sshd,
        };
        device.wait_listening(ns)?;
        Ok(device)
    }

    fn wait_listening(&self, ns: &Netns) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = self.addr;
        while Instant::now() < deadline {
            if ns.run(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("sshd did not listen on {addr}")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    /// Options every client command takes: the key, no host-key prompts, no passwords.
    fn client_options(&self) -> Vec<String> {
        [
            "-i",
            &self.client_key().display().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        .map(String::from)
        .to_vec()
    }

    /// `ssh -p PORT root@HOST <remote>` run from `ns`, with `input` on its stdin.
    pub fn ssh(
        &self,
        ns: &Netns,
        via: SocketAddr,
        remote: &str,
        input: Option<&Path>,
    ) -> anyhow::Result<String> {
        let mut cmd = ns.command("ssh");
        cmd.args(self.client_options()).args([
            "-p",
            &via.port().to_string(),
            &format!("root@{}", via.ip()),
            remote,
        ]);
        if let Some(input) = input {
            cmd.stdin(fs::File::open(input)?);
            let output = cmd.output().context("running ssh")?;
            if !output.status.success() {
                bail!(
                    "ssh failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        sh(&mut cmd)
    }

    /// `scp -P PORT from to` run from `ns`; `remote:` paths name the device.
    pub fn scp(&self, ns: &Netns, via: SocketAddr, from: &str, to: &str) -> anyhow::Result<()> {
        let remote = |p: &str| match p.strip_prefix("remote:") {
            Some(path) => format!("root@{}:{path}", via.ip()),
            None => p.to_string(),
        };
        let mut cmd = ns.command("scp");
        cmd.args(self.client_options()).args([
            "-q",
            "-P",
            &via.port().to_string(),
            &remote(from),
            &remote(to),
        ]);
        sh(&mut cmd).map(drop)
    }
}

impl Drop for SshDevice {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// SHA-256 of a file, with `sha256sum`.
pub fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = sh(Command::new("sha256sum").arg(path))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A file of `len` pseudo-random bytes.
pub fn random_file(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut file = fs::File::create(path)?;
    send_pattern(&mut file, len, len)?;
    Ok(())
}
