//! Bulk throughput with iperf3: the server on the device, the client in the client namespace.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use devicelink_testbed::{Process, Topology, sh};

use super::measure::Measure;

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
    /// Eight parallel streams each way at once (`--bidir`): every socket of the proxy both
    /// receives and sends, and every receiver is an iperf3 process that also sends.
    Bidir8,
}

impl Flow {
    pub const ALL: [Flow; 4] = [Flow::Upload, Flow::Download, Flow::Upload8, Flow::Bidir8];

    pub fn label(self) -> &'static str {
        match self {
            Flow::Upload => "1 stream up",
            Flow::Download => "1 stream down",
            Flow::Upload8 => "8 streams up",
            Flow::Bidir8 => "8 streams both ways",
        }
    }

    /// The iperf3 client's flags for this flow.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Flow::Upload => &[],
            Flow::Download => &["-R"],
            Flow::Upload8 => &["-P", "8"],
            Flow::Bidir8 => &["-P", "8", "--bidir"],
        }
    }

    /// The table row its throughput goes to.
    pub fn measure(self) -> Measure {
        match self {
            Flow::Upload => Measure::ThroughputUp,
            Flow::Download => Measure::ThroughputDown,
            Flow::Upload8 => Measure::ThroughputUp8,
            Flow::Bidir8 => Measure::ThroughputBidir8,
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
        .args(["--connect-timeout", "5000"])
        .args(flow.args());
    let json = sh(&mut cmd).context("iperf3 client")?;
    parse(&json)
}

/// The receivers' view of a run: what actually arrived (both ways summed for `--bidir`).
pub fn parse(json: &str) -> anyhow::Result<Transfer> {
    let value: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {error}");
    }
    let mut transfer = Transfer {
        bits_per_second: 0.0,
        bytes: 0.0,
    };
    for key in ["sum_received", "sum_received_bidir_reverse"] {
        let received = &value["end"][key];
        if key != "sum_received" && received.is_null() {
            continue;
        }
        transfer.bits_per_second += received["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no end.{key}.bits_per_second"))?;
        transfer.bytes += received["bytes"]
            .as_f64()
            .with_context(|| format!("no end.{key}.bytes"))?;
    }
    Ok(transfer)
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
        let bidir = r#"{"end": {"sum_received": {"bytes": 100, "bits_per_second": 8e9},
                        "sum_received_bidir_reverse": {"bytes": 50, "bits_per_second": 4e9}}}"#;
        let t = parse(bidir).unwrap();
        assert_eq!((t.bytes, t.bits_per_second), (150.0, 12e9));
    }
}
