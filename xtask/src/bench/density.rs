//! The density measure: what links cost one proxy process. Resident memory and CPU with 1, 100
//! and 1,000 idle links; the time from a change of the links file to the change being in force
//! (median, p99); and one stream's throughput through one link with 1,000 links loaded against
//! the same with that link alone, measured in the same run.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use devicelink_testbed::{CLIENT_V4, PROXY_FRONT_IFACE, PROXY_FRONT_V4, Process, Topology};
use serde::Serialize;

use super::{
    iperf::{self, Flow},
    traffic::quantile,
};

/// First listen port of the generated links.
const FIRST_PORT: u16 = 20_000;
/// Link counts whose idle cost is measured.
const COUNTS: [usize; 3] = [1, 100, 1000];
/// Changes timed per run.
const CHANGES: usize = 40;

#[derive(Debug, Default, Serialize)]
pub struct Density {
    /// Per link count: resident MiB and CPU share (% of one core) while idle, one value per round.
    pub idle: Vec<IdleCost>,
    /// Milliseconds from renaming a changed file into place to the proxy reporting it applied.
    pub change_ms: Vec<f64>,
    /// One stream client -> device through the first link, Gbit/s per round.
    pub alone_gbps: Vec<f64>,
    pub loaded_gbps: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct IdleCost {
    pub links: usize,
    pub rss_mib: Vec<f64>,
    pub cpu_percent: Vec<f64>,
}

/// A proxy run with `--config`, in the bench topology's proxy namespace.
struct ConfigProxy {
    process: Process,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for ConfigProxy {
    fn drop(&mut self) {
        if self.process.try_wait().is_none() {
            self.process.signal(libc::SIGTERM);
            let _ = self.process.wait_timeout(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn links_file(count: usize, device: SocketAddr, extra_range: Option<&str>) -> String {
    let links: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let mut ranges = vec![format!("{CLIENT_V4}/32")];
            if i == count / 2
                && let Some(extra) = extra_range
            {
                ranges.push(extra.to_string());
            }
            serde_json::json!({
                "name": format!("link-{i}"),
                "listen": SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), FIRST_PORT + i as u16).to_string(),
                "device": device.to_string(),
                "allowedSourceRanges": ranges,
            })
        })
        .collect();
    serde_json::json!({ "links": links }).to_string()
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl ConfigProxy {
    fn start(
        topology: &Topology,
        text: &str,
        proxy_binary: &Path,
        flags: &[String],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("devicelink-density-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("links.json");
        write_atomically(&file, text)?;
        let socket = dir.join("control.sock");
        let mut cmd = topology.proxy.command(proxy_binary);
        cmd.env("RUST_LOG", "warn")
            .arg("--config")
            .arg(&file)
            .arg("--control-socket")
            .arg(&socket)
            .args(["--xdp-interface", PROXY_FRONT_IFACE])
            .args(flags);
        let process = Process::start("devicelink-proxy-density", cmd)?;
        let mut proxy = Self {
            process,
            dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while proxy.generation().is_err() {
            if let Some(status) = proxy.process.try_wait() {
                bail!("proxy exited ({status}):\n{}", proxy.process.log());
            }
            if Instant::now() > deadline {
                bail!("proxy not ready:\n{}", proxy.process.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    fn file(&self) -> PathBuf {
        self.dir.join("links.json")
    }

    /// The applied configuration's generation, from the control socket.
    fn generation(&self) -> anyhow::Result<u64> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /v1/links HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .context("no HTTP body")?;
        let value: serde_json::Value = serde_json::from_str(body)?;
        value["generation"].as_u64().context("no generation")
    }

    /// Resident memory (MiB) and CPU ticks so far (user + system).
    fn usage(&self) -> anyhow::Result<(f64, u64)> {
        let pid = self.process.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after_comm = stat.rsplit_once(')').context("stat")?.1;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; after the command name, 12 and 13.
        let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok((rss_kib / 1024.0, ticks))
    }
}

/// Clock ticks per second, for /proc's CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// One round of the density measure: the iperf3 server must listen on the device.
pub fn measure_round(
    topology: &Topology,
    proxy_binary: &Path,
    flags: &[String],
    throughput_seconds: u64,
    density: &mut Density,
) -> anyhow::Result<()> {
    let device = Topology::device_addr(iperf::PORT);
    let first_link = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), FIRST_PORT);
    for count in COUNTS {
        let proxy = ConfigProxy::start(
            topology,
            &links_file(count, device, None),
            proxy_binary,
            flags,
        )?;
        // Let the start's allocations and work settle before watching it idle.
        std::thread::sleep(Duration::from_millis(500));
        let (_, before) = proxy.usage()?;
        let window = Duration::from_secs(2);
        std::thread::sleep(window);
        let (rss, after) = proxy.usage()?;
        let cpu = (after - before) as f64 / ticks_per_second() / window.as_secs_f64() * 100.0;
        match density.idle.iter_mut().find(|c| c.links == count) {
            Some(cost) => {
                cost.rss_mib.push(rss);
                cost.cpu_percent.push(cpu);
            }
            None => density.idle.push(IdleCost {
                links: count,
                rss_mib: vec![rss],
                cpu_percent: vec![cpu],
            }),
        }
        if count == 1 {
            let transfer = iperf::run(topology, first_link, Flow::Upload, throughput_seconds)?;
            density.alone_gbps.push(transfer.bits_per_second / 1e9);
        }
        if count == 1000 {
            let transfer = iperf::run(topology, first_link, Flow::Upload, throughput_seconds)?;
            density.loaded_gbps.push(transfer.bits_per_second / 1e9);
            for change in 0..CHANGES {
                // Alternately add and remove a range on one link in the middle.
                let extra = (change % 2 == 0).then_some("198.51.100.0/24");
                let text = links_file(count, device, extra);
                let generation = proxy.generation()?;
                let started = Instant::now();
                write_atomically(&proxy.file(), &text)?;
                while proxy.generation()? == generation {
                    if started.elapsed() > Duration::from_secs(10) {
                        bail!("a change was not applied within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                density
                    .change_ms
                    .push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(())
}

fn median_and_spread(values: &[f64]) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "{:.2} ({:.2}–{:.2})",
        quantile(&sorted, 0.5),
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

impl Density {
    /// The density section of the report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Links in one proxy (devicelink, `--data-plane auto`)\n"
        );
        let _ = writeln!(out, "| idle links | RSS (MiB) | CPU (% of a core) |");
        let _ = writeln!(out, "|---:|---:|---:|");
        for cost in &self.idle {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cost.links,
                median_and_spread(&cost.rss_mib),
                median_and_spread(&cost.cpu_percent)
            );
        }
        let mut change = self.change_ms.clone();
        change.sort_by(f64::total_cmp);
        if !change.is_empty() {
            let _ = writeln!(
                out,
                "\nA change of the links file in force (1,000 links, one link's ranges changed; \
                 from the rename to the control API reporting it applied), {} changes: median \
                 {:.1} ms, p99 {:.1} ms.",
                change.len(),
                quantile(&change, 0.5),
                quantile(&change, 0.99)
            );
        }
        let _ = writeln!(
            out,
            "\nOne stream client->device through one link: alone {} Gbit/s; with 1,000 links \
             loaded {} Gbit/s (median, min–max).",
            median_and_spread(&self.alone_gbps),
            median_and_spread(&self.loaded_gbps)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_links_file_has_one_port_per_link_and_the_extra_range_on_one() {
        let device: SocketAddr = "10.0.0.2:5201".parse().unwrap();
        let text = links_file(3, device, Some("198.51.100.0/24"));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let links = value["links"].as_array().unwrap();
        assert_eq!(links.len(), 3);
        assert_eq!(links[2]["listen"], format!("{PROXY_FRONT_V4}:20002"));
        assert_eq!(links[1]["allowedSourceRanges"].as_array().unwrap().len(), 2);
        assert_eq!(links[0]["allowedSourceRanges"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_section_reports_medians_and_spread() {
        let density = Density {
            idle: vec![IdleCost {
                links: 100,
                rss_mib: vec![10.0, 12.0, 11.0],
                cpu_percent: vec![0.0, 0.5, 0.0],
            }],
            change_ms: vec![5.0, 7.0, 6.0],
            alone_gbps: vec![9.0],
            loaded_gbps: vec![8.8],
        };
        let text = density.markdown();
        assert!(text.contains("| 100 | 11.00 (10.00–12.00) |"), "{text}");
        assert!(text.contains("median 6.0 ms"), "{text}");
    }
}
