//! `cargo xtask bench`: devicelink side by side with direct and the proxies users would pick
//! instead, on the test bed's client / proxy / device namespaces, in one run. Each round runs
//! every contender once (the start order rotates between rounds), so a slow spell of the
//! machine spreads over all of them instead of one; the report gives medians and min–max.
//! `--kind` runs the throughput measurement in a kind cluster instead (see `bench/kind.rs`).

mod chart;
mod contenders;
mod density;
mod environment;
mod goals;
mod iperf;
mod kind;
mod machine;
mod measure;
mod placement;
mod summary;
mod table;
mod traffic;
mod vnc;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use contenders::Contender;
use devicelink_testbed::{Topology, rfb::xvnc::Xvnc};
use measure::{Measure, Sample};

/// Groups of measures that share a device server and one start of the contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// iperf3, 1 stream each way, 8 streams up and 8 each way at once; CPU per GiB.
    Throughput,
    /// 64-byte request/response p50 and p99.
    Latency,
    /// Connect, one round trip, close, per second.
    Setup,
    /// Memory of the proxy with idle connections open.
    Memory,
    /// VNC full frames per second, 1 viewer and several.
    Vnc,
    /// devicelink eBPF throughput for each `--sndbuf-sizes` value.
    Sndbuf,
    /// Links in one proxy: idle cost of 1, 100 and 1,000 links, time for a change to be in
    /// force, one link's throughput with 1,000 loaded.
    Density,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Contenders, in the order of the first round.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Contender::ALL)]
    contenders: Vec<Contender>,
    /// Which measures to take.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Group::Throughput, Group::Latency, Group::Setup, Group::Memory, Group::Vnc, Group::Sndbuf, Group::Density])]
    measures: Vec<Group>,
    /// Rounds; each runs every contender once.
    #[arg(long, default_value_t = 3)]
    repetitions: u32,
    /// Length of each iperf3 run (whole seconds).
    #[arg(long, default_value_t = 2)]
    throughput_seconds: u64,
    /// Length of the connection setup measure, in seconds.
    #[arg(long, default_value_t = 1.5)]
    setup_seconds: f64,
    /// Clients connecting at once during the setup measure.
    #[arg(long, default_value_t = 4)]
    setup_concurrency: usize,
    /// 64-byte round trips per latency measure (plus a tenth to warm up).
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// Idle connections held open for the memory measure.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Length of each VNC frame-rate measure.
    #[arg(long, default_value_t = 1.0)]
    vnc_seconds: f64,
    /// Viewers at once for the multi-viewer VNC measure.
    #[arg(long, default_value_t = 8)]
    vnc_viewers: usize,
    /// `--splice-sndbuf` values for the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = ["8M".to_string(), "16M".to_string(), "32M".to_string(), "64M".to_string()])]
    sndbuf_sizes: Vec<String>,
    /// An extra flag for devicelink-proxy in every devicelink contender (repeatable), e.g.
    /// `--devicelink-flag=--splice-sndbuf=32M` to try a setting across all measures.
    #[arg(long, allow_hyphen_values = true)]
    devicelink_flag: Vec<String>,
    /// Where latest.md, latest.json and latest.png go (relative to the workspace).
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// Build the images and run the throughput measurement in a kind cluster instead (needs
    /// Docker, kind and kubectl; uses --repetitions and --throughput-seconds).
    #[arg(long)]
    kind: bool,
    /// Check offline what --kind would deploy (manifests, the DeviceLink, deploy/), and print
    /// its plan; no Docker needed.
    #[arg(long, conflicts_with = "kind")]
    kind_check: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.kind_check {
        return kind::check();
    }
    if args.kind {
        return kind::run(
            args.repetitions,
            args.throughput_seconds,
            &crate::workspace::root().join(&args.out_dir),
        );
    }
    let started = Instant::now();
    traffic::raise_fd_limit();
    // SAFETY: set before any thread of ours starts; the test bed's Proxy reads it.
    unsafe { std::env::set_var("DEVICELINK_PROXY_BIN", crate::workspace::proxy_binary()) };

    let topology = Topology::new("bench").context("building the bench topology")?;
    traffic::tune_namespaces(&topology)?;
    let wants = |g: Group| args.measures.contains(&g);
    let _iperf = (wants(Group::Throughput) || wants(Group::Sndbuf) || wants(Group::Density))
        .then(|| iperf::Server::start(&topology))
        .transpose()?;
    let _echo = (wants(Group::Latency) || wants(Group::Setup) || wants(Group::Memory))
        .then(|| traffic::EchoServer::start(&topology, ECHO_PORT))
        .transpose()?;
    let xvnc = wants(Group::Vnc)
        .then(|| Xvnc::start(&topology.device, Topology::device_addr(vnc::PORT)))
        .transpose()?;
    let reference = match &xvnc {
        Some(_) => Some(vnc::reference_frame(&topology).context("reference VNC frame")?),
        None => None,
    };

    let mut bench = Bench {
        topology: &topology,
        args: &args,
        reference,
        vnc_server: xvnc.as_ref().map(Xvnc::pid),
        samples: Vec::new(),
        notes: Vec::new(),
    };
    let mut density = density::Density::default();
    let mut order = args.contenders.clone();
    for round in 0..args.repetitions {
        for &contender in &order {
            println!(
                "bench: round {}/{}: {} ({:.0} s so far)",
                round + 1,
                args.repetitions,
                contender.label(),
                started.elapsed().as_secs_f64()
            );
            bench.contender(round, contender);
        }
        if wants(Group::Sndbuf) && args.contenders.contains(&Contender::DevicelinkEbpf) {
            bench.sndbuf_sweep(round);
        }
        if wants(Group::Density) {
            println!(
                "bench: round {}/{}: links in one proxy",
                round + 1,
                args.repetitions
            );
            if let Err(e) = density::measure_round(
                &topology,
                &crate::workspace::proxy_binary(),
                &args.devicelink_flag,
                args.throughput_seconds,
                &mut density,
            ) {
                let note = format!("round {}: density failed: {e:#}", round + 1);
                eprintln!("bench: {note}");
                bench.notes.push(note);
            }
        }
        order.rotate_left(1);
    }

    let rows: Vec<String> = args
        .contenders
        .iter()
        .map(|c| c.label().to_string())
        .collect();
    let sweep_rows: Vec<String> = args.sndbuf_sizes.iter().map(|s| sweep_row(s)).collect();
    let summaries = summary::summarize(&bench.samples);
    let verdicts = goals::judge(
        &summaries,
        &goals::Rows {
            auto: Contender::DevicelinkAuto.label(),
            ebpf: Contender::DevicelinkEbpf.label(),
            userspace: Contender::DevicelinkUserspace.label(),
            haproxy: Contender::Haproxy.label(),
            socat: Contender::Socat.label(),
        },
    );
    let machine = environment::machine_description();
    let mut notes = bench.notes.clone();
    notes.push(format!(
        "devicelink at {}. {} rounds; iperf3 {} s per run; setup {} s with {} clients; {} round trips; {} idle \
         connections; VNC {} s, {} viewers. Whole-machine CPU counts the kernel (softirq, \
         kworkers) and every process of the bench (iperf3 on both ends, so direct is its floor) \
         while the transfers ran; other processes on the machine are subtracted. \
         Took {:.0} s.",
        environment::source_revision(),
        args.repetitions,
        args.throughput_seconds,
        args.setup_seconds,
        args.setup_concurrency,
        args.round_trips,
        args.idle_connections,
        args.vnc_seconds,
        args.vnc_viewers,
        started.elapsed().as_secs_f64()
    ));
    let present_sweep: Vec<String> = sweep_rows
        .iter()
        .filter(|r| summaries.iter().any(|s| &s.row == *r))
        .cloned()
        .collect();
    let mut markdown = table::markdown(
        &rows,
        &summaries,
        &present_sweep,
        &verdicts,
        &machine,
        &notes,
    );
    if wants(Group::Density) {
        markdown.push_str(&density.markdown());
    }
    println!("\n{markdown}");

    let out_dir = crate::workspace::root().join(&args.out_dir);
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("latest.md"), &markdown)?;
    let json = serde_json::json!({
        "machine": machine,
        "rows": rows,
        "sweep_rows": present_sweep,
        "samples": bench.samples,
        "summaries": summaries,
        "performance_goals": verdicts,
        "notes": notes,
        "density": density,
    });
    std::fs::write(
        out_dir.join("latest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let chart = out_dir.join("latest.png");
    chart::chart(
        &chart,
        &rows,
        &present_sweep,
        &summaries,
        // Kernel, CPU, cores, memory; the peers' versions are in the table's header.
        &format!(
            "devicelink bench — {}",
            machine.split(';').next().unwrap_or_default()
        ),
    )
    .context("drawing the chart")?;
    println!(
        "wrote {}, latest.json and latest.png",
        out_dir.join("latest.md").display()
    );
    Ok(())
}

const ECHO_PORT: u16 = 7000;

fn sweep_row(size: &str) -> String {
    format!("--splice-sndbuf {size}")
}

/// One group's measurement of one contender in one round.
type GroupFn<'a> = fn(&mut Bench<'a>, u32, Contender) -> anyhow::Result<()>;

struct Bench<'a> {
    topology: &'a Topology,
    args: &'a BenchArgs,
    reference: Option<devicelink_testbed::rfb::Frame>,
    /// The VNC device's server, placed on a CPU of its own for the remote-device measures.
    vnc_server: Option<u32>,
    samples: Vec<Sample>,
    notes: Vec<String>,
}

impl Bench<'_> {
    fn push(&mut self, round: u32, row: &str, measure: Measure, value: f64) {
        self.samples.push(Sample {
            round,
            row: row.to_string(),
            measure,
            value,
        });
    }

    /// Every wanted group for one contender; a failure is reported, not fatal: the table
    /// shows what was measured.
    fn contender(&mut self, round: u32, contender: Contender) {
        let groups: &[(Group, GroupFn<'_>)] = &[
            (Group::Throughput, Self::throughput),
            (Group::Latency, Self::latency),
            (Group::Setup, Self::setup),
            (Group::Memory, Self::memory),
            (Group::Vnc, Self::vnc),
        ];
        for (group, measure) in groups {
            if !self.args.measures.contains(group) {
                continue;
            }
            if let Err(e) = measure(self, round, contender) {
                let note = format!(
                    "round {}: {} {group:?} failed: {e:#}",
                    round + 1,
                    contender.label()
                );
                eprintln!("bench: {note}");
                self.notes.push(note);
            }
        }
    }

    fn throughput(&mut self, round: u32, contender: Contender) -> anyhow::Result<()> {
        let running = contenders::start(
            contender,
            self.topology,
            iperf::PORT,
            &self.args.devicelink_flag,
            contenders::Slots::Default,
        )?;
        let (mut bytes, mut machine, mut proxy) = (0.0, 0.0, 0.0);
        for flow in iperf::Flow::ALL {
            let cpu = machine::Snapshot::take(self.topology);
            let usage = contenders::usage_in(self.topology);
            let transfer = iperf::run(
                self.topology,
                running.target,
                flow,
                self.args.throughput_seconds,
            )
            .with_context(|| flow.label())?;
            machine += cpu.bench_cpu_since(self.topology);
            proxy += contenders::usage_in(self.topology).cpu_seconds - usage.cpu_seconds;
            bytes += transfer.bytes;
            self.push(
                round,
                contender.label(),
                flow.measure(),
                transfer.bits_per_second / 1e9,
            );
        }
        let gib = bytes / f64::from(1u32 << 30);
        self.push(
            round,
            contender.label(),
            Measure::MachineCpuPerGib,
            machine / gib,
        );
        if contender.is_proxy() {
            self.push(
                round,
                contender.label(),
                Measure::ProxyCpuPerGib,
                proxy / gib,
            );
        }
        Ok(())
    }

    fn latency(&mut self, round: u32, contender: Contender) -> anyhow::Result<()> {
        let running = contenders::start(
            contender,
            self.topology,
            ECHO_PORT,
            &self.args.devicelink_flag,
            contenders::Slots::Default,
        )?;
        let sorted =
            traffic::latencies(&self.topology.client, running.target, self.args.round_trips)?;
        self.push(
            round,
            contender.label(),
            Measure::LatencyP50,
            traffic::quantile(&sorted, 0.5),
        );
        self.push(
            round,
            contender.label(),
            Measure::LatencyP99,
            traffic::quantile(&sorted, 0.99),
        );
        Ok(())
    }

    fn setup(&mut self, round: u32, contender: Contender) -> anyhow::Result<()> {
        let running = contenders::start(
            contender,
            self.topology,
            ECHO_PORT,
            &self.args.devicelink_flag,
            contenders::Slots::Default,
        )?;
        let (rate, failed) = traffic::setup_rate(
            &self.topology.client,
            running.target,
            Duration::from_secs_f64(self.args.setup_seconds),
            self.args.setup_concurrency,
        );
        if failed > 0 {
            self.notes.push(format!(
                "round {}: {} setup: {failed} attempts failed",
                round + 1,
                contender.label()
            ));
        }
        self.push(round, contender.label(), Measure::SetupRate, rate);
        Ok(())
    }

    fn memory(&mut self, round: u32, contender: Contender) -> anyhow::Result<()> {
        if !contender.is_proxy() {
            return Ok(());
        }
        let running = contenders::start(
            contender,
            self.topology,
            ECHO_PORT,
            &self.args.devicelink_flag,
            contenders::Slots::Many,
        )?;
        let idle = traffic::idle_connections(
            &self.topology.client,
            running.target,
            self.args.idle_connections,
        )?;
        // Let forked or lazily started workers settle before reading their memory.
        std::thread::sleep(Duration::from_millis(300));
        let usage = contenders::usage_in(self.topology);
        drop(idle);
        let mib = f64::from(1u32 << 20);
        self.push(
            round,
            contender.label(),
            Measure::IdleRss,
            usage.rss_bytes as f64 / mib,
        );
        self.push(
            round,
            contender.label(),
            Measure::IdlePss,
            usage.pss_bytes as f64 / mib,
        );
        Ok(())
    }

    fn vnc(&mut self, round: u32, contender: Contender) -> anyhow::Result<()> {
        let reference = self.reference.clone().context("no reference frame")?;
        let running = contenders::start(
            contender,
            self.topology,
            vnc::PORT,
            &self.args.devicelink_flag,
            contenders::Slots::Default,
        )?;
        let duration = Duration::from_secs_f64(self.args.vnc_seconds);
        let measures = [
            (1, Measure::VncFps1),
            (self.args.vnc_viewers, Measure::VncFpsMany),
        ];
        self.vnc_frames(round, contender, &running, &reference, duration, &measures)?;
        // The same with the device where a real one is: not competing for the proxy's CPUs.
        let server = self.vnc_server.context("no VNC server")?;
        let _placed = placement::RemoteDevice::place(self.topology, server)?;
        let measures = [
            (1, Measure::VncFps1RemoteDevice),
            (self.args.vnc_viewers, Measure::VncFpsManyRemoteDevice),
        ];
        self.vnc_frames(round, contender, &running, &reference, duration, &measures)
    }

    fn vnc_frames(
        &mut self,
        round: u32,
        contender: Contender,
        running: &contenders::Running,
        reference: &devicelink_testbed::rfb::Frame,
        duration: Duration,
        measures: &[(usize, Measure)],
    ) -> anyhow::Result<()> {
        for &(viewers, measure) in measures {
            let (fps, intact) = vnc::frames_per_second(
                self.topology,
                running.target,
                viewers,
                duration,
                reference,
            )?;
            if !intact {
                self.notes.push(format!(
                    "round {}: {} VNC with {viewers} viewers: a frame differed from the direct path's",
                    round + 1,
                    contender.label()
                ));
            }
            self.push(round, contender.label(), measure, fps);
        }
        Ok(())
    }

    fn sndbuf_sweep(&mut self, round: u32) {
        for size in self.args.sndbuf_sizes.clone() {
            let row = sweep_row(&size);
            println!("bench: round {}: devicelink eBPF {row}", round + 1);
            if let Err(e) = self.sweep_size(round, &size, &row) {
                self.notes
                    .push(format!("round {}: sweep {row} failed: {e:#}", round + 1));
            }
        }
    }

    fn sweep_size(&mut self, round: u32, size: &str, row: &str) -> anyhow::Result<()> {
        let mut flags = self.args.devicelink_flag.clone();
        flags.push(format!("--splice-sndbuf={size}"));
        let running = contenders::start(
            Contender::DevicelinkEbpf,
            self.topology,
            iperf::PORT,
            &flags,
            contenders::Slots::Default,
        )?;
        for (flow, measure) in [
            (iperf::Flow::Upload, Measure::ThroughputUp),
            (iperf::Flow::Download, Measure::ThroughputDown),
        ] {
            let t = iperf::run(
                self.topology,
                running.target,
                flow,
                self.args.throughput_seconds,
            )?;
            self.push(round, row, measure, t.bits_per_second / 1e9);
        }
        Ok(())
    }
}
