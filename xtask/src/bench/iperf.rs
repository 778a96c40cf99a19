//! Bulk throughput with iperf3: the server on the device, the client in the client namespace.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use devicelink_testbed::{Process, Topology, sh};

pub const PORT: u16 = 5201;

/// Which way the bytes flow, and over how many connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    /// One stream, client -> device (through the XDP program's side).
    Upload,
    /// One stream, device -> client.
    Download,
    /// Eight parallel streams, client -> device.
    Upload8,
}

impl Flow {
    pub const ALL: [Flow; 3] = [Flow::Upload, Flow::Download, Flow::Upload8];

    pub fn label(self) -> &'static str {
        match self {
            Flow::Upload => "1 stream up",
            Flow::Download => "1 stream down",
            Flow::Upload8 => "8 streams up",
        }
    }
}

/// `iperf3 -s` on the device; killed on drop.
pub struct Server {
    _process: Process,
}

impl Server {
    pub fn start(topology: &Topology) -> anyhow::Result<Self> {
        let mut cmd = topology.device.command("iperf3");
        cmd.args(["-s", "-p", &PORT.to_string()]);
        let process = Process::start("iperf3-server", cmd)?;
        // iperf3 prints nothing machine-readable when ready; its port is enough.
        let addr = Topology::device_addr(PORT);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !topology.device.run(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        }) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "iperf3 server not listening: {}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { _process: process })
    }
}

/// What one iperf3 run moved.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub bits_per_second: f64,
    pub bytes: f64,
}

/// Runs one iperf3 client against `target` for `seconds`.
pub fn run(
    topology: &Topology,
    target: SocketAddr,
    flow: Flow,
    seconds: u64,
) -> anyhow::Result<Transfer> {
    let mut cmd = topology.client.command("timeout");
    cmd.arg((seconds + 30).to_string())
        .args(["iperf3", "-J", "-c", &target.ip().to_string()])
        .args(["-p", &target.port().to_string(), "-t", &seconds.to_string()])
        .args(["--connect-timeout", "5000"]);
    match flow {
        Flow::Upload => {}
        Flow::Download => {
            cmd.arg("-R");
        }
        Flow::Upload8 => {
            cmd.args(["-P", "8"]);
        }
    }
    let json = sh(&mut cmd).context("iperf3 client")?;
    parse(&json)
}

/// The receiver's view of a run: what actually arrived.
pub fn parse(json: &str) -> anyhow::Result<Transfer> {
    let value: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {error}");
    }
    let received = &value["end"]["sum_received"];
    Ok(Transfer {
        bits_per_second: received["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second")?,
        bytes: received["bytes"]
            .as_f64()
            .context("no end.sum_received.bytes")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_the_receivers_sum() {
        let json = r#"{"end": {"sum_sent": {"bytes": 200, "bits_per_second": 9e9},
                       "sum_received": {"bytes": 100, "bits_per_second": 8e9}}}"#;
        let t = parse(json).unwrap();
        assert_eq!((t.bytes, t.bits_per_second), (100.0, 8e9));
        assert!(parse(r#"{"error": "unable to connect"}"#).is_err());
    }
}
