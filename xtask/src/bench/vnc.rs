//! Full-frame VNC updates per second (1920x1080, raw, non-incremental requests) through a
//! contender, with one viewer and with several at once.

use std::{
    net::SocketAddr,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use devicelink_testbed::{
    Topology,
    rfb::{Frame, RfbClient},
};

pub const PORT: u16 = 5900;

/// Frames per second, summed over `clients` viewers that each pull full frames for `duration`,
/// and whether each viewer's last frame equals `reference` (the screen seen on the direct path).
pub fn frames_per_second(
    topology: &Topology,
    target: SocketAddr,
    clients: usize,
    duration: Duration,
    reference: &Frame,
) -> anyhow::Result<(f64, bool)> {
    // Every viewer connects and pulls one frame first, then all start the clock together.
    let start_together = Arc::new(Barrier::new(clients));
    let viewers: Vec<_> = (0..clients)
        .map(|_| {
            let start_together = Arc::clone(&start_together);
            topology
                .client
                .spawn(move || -> anyhow::Result<(u64, f64, Frame)> {
                    let connected = RfbClient::connect(target, Duration::from_secs(10));
                    let mut viewer = match connected {
                        Ok(viewer) => viewer,
                        Err(e) => {
                            // Let the others go on rather than wait for this one forever.
                            start_together.wait();
                            return Err(e);
                        }
                    };
                    let warm_up = viewer.full_frame().map(drop);
                    start_together.wait();
                    warm_up?;
                    let start = Instant::now();
                    let mut frames = 0;
                    while start.elapsed() < duration {
                        viewer.full_frame()?;
                        frames += 1;
                    }
                    let elapsed = start.elapsed().as_secs_f64();
                    Ok((frames, elapsed, viewer.full_frame()?.clone()))
                })
        })
        .collect();
    let mut total = 0.0;
    let mut intact = true;
    for viewer in viewers {
        let (frames, elapsed, last) = viewer
            .join()
            .map_err(|_| anyhow::anyhow!("a VNC viewer thread panicked"))?
            .context("VNC viewer")?;
        total += frames as f64 / elapsed;
        intact &= &last == reference;
    }
    Ok((total, intact))
}

/// One full frame pulled straight from the device: the reference the others must match.
pub fn reference_frame(topology: &Topology) -> anyhow::Result<Frame> {
    let device = Topology::device_addr(PORT);
    topology.client.run(move || -> anyhow::Result<Frame> {
        let mut viewer = RfbClient::connect(device, Duration::from_secs(10))?;
        Ok(viewer.full_frame()?.clone())
    })
}
