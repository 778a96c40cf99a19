//! TigerVNC's `Xvnc` as the device: a 1920x1080 X server whose root window shows a known,
//! non-uniform pattern (an xorshift bitmap tiled by `xsetroot`), served over RFB with no
//! authentication.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    netns::Netns,
    pattern::Pattern,
    process::{Process, sh},
};

/// Screen size of the device: what VNC users of panels and HMIs run.
pub const WIDTH: u16 = 1920;
pub const HEIGHT: u16 = 1080;

/// Tile size of the root-window pattern. Odd sizes, so that a frame shifted by whole bytes or
/// rows does not line up with itself.
const TILE_WIDTH: usize = 61;
const TILE_HEIGHT: usize = 37;
/// The pattern's two colours (X colour names).
const FOREGROUND: &str = "#e07020";
const BACKGROUND: &str = "#1040a0";

static NEXT_DISPLAY: AtomicU32 = AtomicU32::new(0);
static NEXT_BITMAP: AtomicU32 = AtomicU32::new(0);

/// `Xvnc` running in a namespace; killed (and its pattern file removed) on drop.
pub struct Xvnc {
    process: Process,
    display: u32,
    bitmap: PathBuf,
    /// Where viewers reach it, inside its namespace.
    pub addr: SocketAddr,
}

impl Xvnc {
    /// The server's process id (to place it on a CPU of its own).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Starts `Xvnc` in `ns` listening for RFB on `addr` (an address of `ns`), draws the pattern
    /// and returns once a viewer can connect.
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        // One file per server: each removes its own on drop.
        let bitmap = std::env::temp_dir().join(format!(
            "devicelink-xvnc-{}-{}.xbm",
            std::process::id(),
            NEXT_BITMAP.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&bitmap, pattern_xbm()).context("writing the root-window pattern")?;
        let mut last_error = None;
        for _ in 0..20 {
            match Self::start_on(ns, addr, free_display(), &bitmap) {
                Ok(xvnc) => return Ok(xvnc),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free X display number")))
    }

    fn start_on(ns: &Netns, addr: SocketAddr, display: u32, bitmap: &Path) -> anyhow::Result<Self> {
        let mut cmd = ns.command("Xtigervnc");
        cmd.arg(format!(":{display}"))
            .args(["-geometry", &format!("{WIDTH}x{HEIGHT}"), "-depth", "24"])
            .args(["-SecurityTypes", "None", "-AlwaysShared"])
            .args(["-interface", &addr.ip().to_string()])
            .args(["-rfbport", &addr.port().to_string()])
            // The default caps updates at 60 per second per viewer; the benchmark measures the
            // link, not the server's pacing.
            .args(["-FrameRate", "1000"])
            // Many viewers connecting at once from one address (the proxy) count as repeated
            // unauthenticated attempts and would get that address blacklisted.
            .args(["-UseBlacklist", "0"])
            .args(["-nolisten", "tcp", "-ac"]);
        let mut process = Process::start(&format!("xvnc-{display}"), cmd)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = process.try_wait() {
                bail!("Xvnc :{display} exited ({status}):\n{}", process.log());
            }
            let ready = ns
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
            if ready && Path::new(&format!("/tmp/.X11-unix/X{display}")).exists() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "Xvnc :{display} not listening on {addr}:\n{}",
                    process.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        sh(ns
            .command("xsetroot")
            .env("DISPLAY", format!(":{display}"))
            .arg("-bitmap")
            .arg(bitmap)
            .args(["-fg", FOREGROUND, "-bg", BACKGROUND]))
        .context("drawing the root-window pattern with xsetroot")?;
        Ok(Self {
            process,
            display,
            bitmap: bitmap.to_path_buf(),
            addr,
        })
    }

    pub fn display(&self) -> u32 {
        self.display
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        // The process dies with `self.process`; Xvnc removes its lock and socket on SIGKILL
        // only sometimes, so remove them too (a later test may pick the same number).
        self.process.signal(libc::SIGTERM);
        let _ = self.process.wait_timeout(Duration::from_secs(2));
        let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.display));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.display));
        let _ = std::fs::remove_file(&self.bitmap);
    }
}

/// An X display number nobody uses now. Display numbers are global to the machine (the
/// sockets and lock files live in /tmp, which namespaces share), so each test process draws
/// from its own range.
pub fn free_display() -> u32 {
    const FIRST: u32 = 200;
    const COUNT: u32 = 8000;
    let offset = (std::process::id() % 500) * 16 + NEXT_DISPLAY.fetch_add(1, Ordering::Relaxed);
    (0..COUNT)
        .map(|i| FIRST + (offset + i) % COUNT)
        .find(|display| {
            !Path::new(&format!("/tmp/.X{display}-lock")).exists()
                && !Path::new(&format!("/tmp/.X11-unix/X{display}")).exists()
        })
        .expect("a free X display number among 8000")
}

/// An X bitmap of pseudo-random bits (fixed seed): tiled over the root window, it makes a
/// screen in which no row or column repeats within a tile.
pub fn pattern_xbm() -> String {
    let row_bytes = TILE_WIDTH.div_ceil(8);
    let mut bits = vec![0u8; row_bytes * TILE_HEIGHT];
    Pattern::new(7).fill(&mut bits);
    let body: Vec<String> = bits.iter().map(|b| format!("0x{b:02x}")).collect();
    format!(
        "#define devicelink_width {TILE_WIDTH}\n#define devicelink_height {TILE_HEIGHT}\n\
         static unsigned char devicelink_bits[] = {{\n{}}};\n",
        body.join(", ")
    )
}
