//! What the bench measures, named for the table and the chart, and one measured value.

use serde::Serialize;

/// What is measured, in the order the table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    ThroughputUp,
    ThroughputDown,
    ThroughputUp8,
    ThroughputBidir8,
    MachineCpuPerGib,
    ProxyCpuPerGib,
    LatencyP50,
    LatencyP99,
    SetupRate,
    IdleRss,
    IdlePss,
    VncFps1,
    VncFpsMany,
    VncFps1RemoteDevice,
    VncFpsManyRemoteDevice,
}

impl Measure {
    pub const ALL: [Measure; 15] = [
        Measure::ThroughputUp,
        Measure::ThroughputDown,
        Measure::ThroughputUp8,
        Measure::ThroughputBidir8,
        Measure::MachineCpuPerGib,
        Measure::ProxyCpuPerGib,
        Measure::LatencyP50,
        Measure::LatencyP99,
        Measure::SetupRate,
        Measure::IdleRss,
        Measure::IdlePss,
        Measure::VncFps1,
        Measure::VncFpsMany,
        Measure::VncFps1RemoteDevice,
        Measure::VncFpsManyRemoteDevice,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Measure::ThroughputUp => "throughput, 1 stream client->device (Gbit/s)",
            Measure::ThroughputDown => "throughput, 1 stream device->client (Gbit/s)",
            Measure::ThroughputUp8 => "throughput, 8 streams client->device (Gbit/s)",
            Measure::ThroughputBidir8 => {
                "throughput, 8 streams each way at once (Gbit/s, both ways summed)"
            }
            Measure::MachineCpuPerGib => "whole-machine CPU per GiB (s)",
            Measure::ProxyCpuPerGib => "proxy process CPU per GiB (s)",
            Measure::LatencyP50 => "64-byte round trip p50 (µs)",
            Measure::LatencyP99 => "64-byte round trip p99 (µs)",
            Measure::SetupRate => "connect + round trip + close (per s)",
            Measure::IdleRss => "RSS with idle connections (MiB, summed over its processes)",
            Measure::IdlePss => "PSS with idle connections (MiB, shared pages split)",
            Measure::VncFps1 => "VNC 1920x1080 raw frames/s, 1 viewer",
            Measure::VncFpsMany => "VNC 1920x1080 raw frames/s, all viewers summed",
            Measure::VncFps1RemoteDevice => {
                "VNC frames/s, 1 viewer, device on its own CPU (a remote device's placement)"
            }
            Measure::VncFpsManyRemoteDevice => {
                "VNC frames/s, all viewers summed, device on its own CPU"
            }
        }
    }

    /// A short name for the chart's panels.
    pub fn short(self) -> &'static str {
        match self {
            Measure::ThroughputUp => "Gbit/s, 1 stream up",
            Measure::ThroughputDown => "Gbit/s, 1 stream down",
            Measure::ThroughputUp8 => "Gbit/s, 8 streams up",
            Measure::ThroughputBidir8 => "Gbit/s, 8 streams both ways",
            Measure::MachineCpuPerGib => "machine CPU s/GiB (lower better)",
            Measure::ProxyCpuPerGib => "proxy CPU s/GiB (lower better)",
            Measure::LatencyP50 => "RTT p50 µs (lower better)",
            Measure::LatencyP99 => "RTT p99 µs (lower better)",
            Measure::SetupRate => "connections/s",
            Measure::IdleRss => "RSS MiB, idle conns (lower better)",
            Measure::IdlePss => "PSS MiB, idle conns (lower better)",
            Measure::VncFps1 => "VNC frames/s, 1 viewer",
            Measure::VncFpsMany => "VNC frames/s, many viewers",
            Measure::VncFps1RemoteDevice => "VNC frames/s, 1 viewer, device own CPU",
            Measure::VncFpsManyRemoteDevice => "VNC frames/s, many viewers, device own CPU",
        }
    }

    /// Decimals the table prints.
    pub fn decimals(self) -> usize {
        match self {
            Measure::ThroughputUp
            | Measure::ThroughputDown
            | Measure::ThroughputUp8
            | Measure::ThroughputBidir8 => 2,
            Measure::MachineCpuPerGib | Measure::ProxyCpuPerGib => 3,
            Measure::VncFps1
            | Measure::VncFpsMany
            | Measure::VncFps1RemoteDevice
            | Measure::VncFpsManyRemoteDevice
            | Measure::IdlePss
            | Measure::IdleRss => 1,
            _ => 0,
        }
    }
}

/// One measured value of one repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: u32,
    /// A contender's label, or a variant of one (the send-buffer sweep).
    pub row: String,
    pub measure: Measure,
    pub value: f64,
}

/// A sample for the report's unit tests.
#[cfg(test)]
pub fn sample(round: u32, row: &str, measure: Measure, value: f64) -> Sample {
    Sample {
        round,
        row: row.into(),
        measure,
        value,
    }
}
