//! A small RFB (VNC) client, protocol 3.8, no authentication, raw encoding: what the VNC tests
//! and `cargo xtask bench` use to pull full framebuffers through the link, and what the demo
//! uses to show the device's screen. [`xvnc`] runs TigerVNC's `Xvnc` as the device.
//!
//! Only what a viewer needs to receive frames is implemented: the handshake, `SetPixelFormat`
//! (32 bits per pixel, depth 24, little-endian, red at bit 16: the bytes of a pixel are
//! B, G, R, padding), `SetEncodings` (raw only) and non-incremental update requests, so that
//! every update carries the whole screen (about 8 MB at 1920x1080).

pub mod xvnc;

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

/// Bytes per pixel of the format the client asks for.
pub const BYTES_PER_PIXEL: usize = 4;

/// One full screen as the client assembled it: `width * height` pixels, 4 bytes each in the
/// order B, G, R, padding, exactly as the server sent them.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never dump 8 MB of pixels into a test failure.
        write!(
            f,
            "Frame {{ {}x{}, {} bytes }}",
            self.width,
            self.height,
            self.pixels.len()
        )
    }
}

impl Frame {
    fn blank(width: u16, height: u16) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; usize::from(width) * usize::from(height) * BYTES_PER_PIXEL],
        }
    }

    /// The pixel at (x, y) as (red, green, blue).
    pub fn rgb(&self, x: u16, y: u16) -> (u8, u8, u8) {
        let at = (usize::from(y) * usize::from(self.width) + usize::from(x)) * BYTES_PER_PIXEL;
        let p = &self.pixels[at..at + BYTES_PER_PIXEL];
        (p[2], p[1], p[0])
    }

    /// The pixels as packed RGB rows (what image encoders take).
    pub fn to_rgb(&self) -> Vec<u8> {
        self.pixels
            .chunks_exact(BYTES_PER_PIXEL)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect()
    }

    /// How many distinct colours the frame has: a cheap check that a screen is not uniform.
    pub fn distinct_colours(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for p in self.pixels.chunks_exact(BYTES_PER_PIXEL) {
            seen.insert([p[0], p[1], p[2]]);
            if seen.len() > 1024 {
                break;
            }
        }
        seen.len()
    }
}

/// A connected, initialised RFB session.
pub struct RfbClient {
    stream: TcpStream,
    /// The desktop name the server announced.
    pub name: String,
    frame: Frame,
    /// Bytes of framebuffer updates received so far (rectangle headers included).
    pub update_bytes: u64,
}

impl RfbClient {
    /// Connects over TCP and runs the handshake.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to VNC server {addr}"))?;
        Self::handshake(stream, timeout)
    }

    /// Runs the 3.8 handshake on an open stream (e.g. one made by
    /// [`crate::connect_from`]); every later read fails after `timeout` without data.
    pub fn handshake(mut stream: TcpStream, timeout: Duration) -> anyhow::Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;

        let mut version = [0u8; 12];
        stream
            .read_exact(&mut version)
            .context("reading the server's protocol version (the server speaks first)")?;
        ensure!(
            version.starts_with(b"RFB 003."),
            "not an RFB server: {:?}",
            String::from_utf8_lossy(&version)
        );
        stream.write_all(b"RFB 003.008\n")?;

        let count = read_u8(&mut stream)?;
        if count == 0 {
            bail!(
                "server refused the connection: {}",
                read_reason(&mut stream)?
            );
        }
        let mut types = vec![0u8; usize::from(count)];
        stream.read_exact(&mut types)?;
        const SECURITY_NONE: u8 = 1;
        ensure!(
            types.contains(&SECURITY_NONE),
            "server offers security types {types:?} but not None (1); start it with -SecurityTypes None"
        );
        stream.write_all(&[SECURITY_NONE])?;
        if read_u32(&mut stream)? != 0 {
            bail!("security handshake failed: {}", read_reason(&mut stream)?);
        }

        // Shared: several viewers at once (the multi-client tests and bench) must not evict
        // each other.
        stream.write_all(&[1])?;
        let width = read_u16(&mut stream)?;
        let height = read_u16(&mut stream)?;
        let mut server_format = [0u8; 16];
        stream.read_exact(&mut server_format)?;
        let name_len = read_u32(&mut stream)? as usize;
        ensure!(name_len < 1 << 16, "desktop name of {name_len} bytes");
        let mut name = vec![0u8; name_len];
        stream.read_exact(&mut name)?;

        stream.write_all(&set_pixel_format_message())?;
        // SetEncodings: type 2, padding, one encoding: 0 = raw.
        stream.write_all(&[2, 0, 0, 1, 0, 0, 0, 0])?;

        Ok(Self {
            stream,
            name: String::from_utf8_lossy(&name).into_owned(),
            frame: Frame::blank(width, height),
            update_bytes: 0,
        })
    }

    pub fn width(&self) -> u16 {
        self.frame.width
    }

    pub fn height(&self) -> u16 {
        self.frame.height
    }

    /// Asks for the whole screen (non-incremental) and returns it once the update that
    /// answers arrived.
    pub fn full_frame(&mut self) -> anyhow::Result<&Frame> {
        let (w, h) = (self.frame.width, self.frame.height);
        let mut request = [3u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        request[6..8].copy_from_slice(&w.to_be_bytes());
        request[8..10].copy_from_slice(&h.to_be_bytes());
        self.stream.write_all(&request)?;
        self.read_update()?;
        Ok(&self.frame)
    }

    /// Reads server messages until one framebuffer update has been applied.
    fn read_update(&mut self) -> anyhow::Result<()> {
        loop {
            match read_u8(&mut self.stream).context("reading a server message type")? {
                0 => break,
                // SetColourMapEntries: never sent for a true-colour format, but skip it.
                1 => {
                    let mut head = [0u8; 5];
                    self.stream.read_exact(&mut head)?;
                    let colours = u16::from_be_bytes([head[3], head[4]]);
                    skip(&mut self.stream, u64::from(colours) * 6)?;
                }
                // Bell.
                2 => {}
                // ServerCutText.
                3 => {
                    let mut pad = [0u8; 3];
                    self.stream.read_exact(&mut pad)?;
                    let len = read_u32(&mut self.stream)?;
                    skip(&mut self.stream, u64::from(len))?;
                }
                other => bail!("unknown server message type {other}"),
            }
        }
        let mut head = [0u8; 3];
        self.stream.read_exact(&mut head)?;
        let rects = u16::from_be_bytes([head[1], head[2]]);
        self.update_bytes += 4;
        for _ in 0..rects {
            let mut rect = [0u8; 12];
            self.stream.read_exact(&mut rect)?;
            let x = usize::from(u16::from_be_bytes([rect[0], rect[1]]));
            let y = usize::from(u16::from_be_bytes([rect[2], rect[3]]));
            let w = usize::from(u16::from_be_bytes([rect[4], rect[5]]));
            let h = usize::from(u16::from_be_bytes([rect[6], rect[7]]));
            let encoding = i32::from_be_bytes([rect[8], rect[9], rect[10], rect[11]]);
            ensure!(
                encoding == 0,
                "server sent encoding {encoding}, but the client asked for raw (0) only"
            );
            let (fw, fh) = (
                usize::from(self.frame.width),
                usize::from(self.frame.height),
            );
            ensure!(
                x + w <= fw && y + h <= fh,
                "rectangle {w}x{h}+{x}+{y} outside the {fw}x{fh} screen"
            );
            let row = w * BYTES_PER_PIXEL;
            for line in y..y + h {
                let at = (line * fw + x) * BYTES_PER_PIXEL;
                self.stream
                    .read_exact(&mut self.frame.pixels[at..at + row])
                    .with_context(|| format!("reading row {line} of a {w}x{h} rectangle"))?;
            }
            self.update_bytes += 12 + (row * h) as u64;
        }
        Ok(())
    }
}

fn set_pixel_format_message() -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0] = 0; // SetPixelFormat
    m[4] = 32; // bits per pixel
    m[5] = 24; // depth
    m[6] = 0; // little-endian
    m[7] = 1; // true colour
    m[8..10].copy_from_slice(&255u16.to_be_bytes()); // red max
    m[10..12].copy_from_slice(&255u16.to_be_bytes()); // green max
    m[12..14].copy_from_slice(&255u16.to_be_bytes()); // blue max
    m[14] = 16; // red shift
    m[15] = 8; // green shift
    m[16] = 0; // blue shift
    m
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_reason(r: &mut impl Read) -> anyhow::Result<String> {
    let len = read_u32(r)? as usize;
    ensure!(len < 1 << 16, "reason of {len} bytes");
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn skip(r: &mut impl Read, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_format_asks_for_bgrx_true_colour() {
        let m = set_pixel_format_message();
        assert_eq!(
            (m[4], m[5], m[6], m[7]),
            (32, 24, 0, 1),
            "32 bpp, depth 24, little-endian, true colour"
        );
        assert_eq!(
            (m[14], m[15], m[16]),
            (16, 8, 0),
            "red at bit 16 makes the bytes B, G, R, pad"
        );
    }

    use std::net::TcpListener;

    /// A scripted RFB 3.8 server on localhost: `script` runs against the accepted connection.
    fn fake_server<T: Send + 'static>(
        script: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<T>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || script(listener.accept().unwrap().0));
        (addr, handle)
    }

    fn exact<const N: usize>(s: &mut TcpStream) -> [u8; N] {
        let mut buf = [0u8; N];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    /// Runs `f` in a network namespace of its own, removed afterwards: tests send traffic only
    /// in namespaces they made, never on the machine's own loopback.
    fn in_own_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "dl-rfb-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let ns = crate::netns::Netns::create(&name).expect("a throwaway network namespace");
        ns.run(f)
    }

    #[test]
    fn full_frame_assembles_rectangles_and_skips_other_messages() {
        in_own_netns(check_full_frame_assembly);
    }

    fn check_full_frame_assembly() {
        let (addr, server) = fake_server(|mut s| {
            s.write_all(b"RFB 003.008\n").unwrap();
            assert_eq!(&exact::<12>(&mut s), b"RFB 003.008\n");
            s.write_all(&[2, 2, 1]).unwrap(); // VNC auth and None offered
            assert_eq!(exact::<1>(&mut s), [1], "the client picks None");
            s.write_all(&0u32.to_be_bytes()).unwrap();
            assert_eq!(
                exact::<1>(&mut s),
                [1],
                "ClientInit asks for a shared session"
            );
            let mut init = vec![0, 4, 0, 2]; // 4x2
            init.extend([0u8; 16]);
            init.extend(4u32.to_be_bytes());
            init.extend(b"fake");
            s.write_all(&init).unwrap();
            let pixel_format = exact::<20>(&mut s);
            let encodings = exact::<8>(&mut s);
            let request = exact::<10>(&mut s);
            // Bell, then ServerCutText "hi", then the update in two rows.
            s.write_all(&[2, 3, 0, 0, 0, 0, 0, 0, 2, b'h', b'i'])
                .unwrap();
            s.write_all(&[0, 0, 0, 2]).unwrap();
            for row in 0u8..2 {
                s.write_all(&[0, 0, 0, row, 0, 4, 0, 1, 0, 0, 0, 0])
                    .unwrap();
                let pixels: Vec<u8> = (0..16).map(|i| row * 16 + i).collect();
                s.write_all(&pixels).unwrap();
            }
            (pixel_format, encodings, request)
        });
        let mut client = RfbClient::connect(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(
            (client.width(), client.height(), client.name.as_str()),
            (4, 2, "fake")
        );
        let frame = client.full_frame().unwrap().clone();
        let (pixel_format, encodings, request) = server.join().unwrap();
        assert_eq!(pixel_format, set_pixel_format_message());
        assert_eq!(encodings, [2, 0, 0, 1, 0, 0, 0, 0], "raw encoding only");
        assert_eq!(
            request,
            [3, 0, 0, 0, 0, 0, 0, 4, 0, 2],
            "a non-incremental request for the whole 4x2 screen"
        );
        assert_eq!(
            frame.pixels,
            (0..32).collect::<Vec<u8>>(),
            "both rows in place"
        );
        assert_eq!(client.update_bytes, 4 + 2 * (12 + 16));
    }

    #[test]
    fn a_server_without_security_none_is_refused_with_a_hint() {
        in_own_netns(check_refusal_without_security_none);
    }

    fn check_refusal_without_security_none() {
        let (addr, server) = fake_server(|mut s| {
            s.write_all(b"RFB 003.008\n").unwrap();
            let _ = exact::<12>(&mut s);
            s.write_all(&[1, 2]).unwrap(); // VNC authentication only
        });
        let error = RfbClient::connect(addr, Duration::from_secs(5))
            .err()
            .expect("no common security type");
        server.join().unwrap();
        assert!(
            format!("{error:#}").contains("-SecurityTypes None"),
            "says how to start the server: {error:#}"
        );
    }

    #[test]
    fn frame_reads_rgb_from_bgrx_bytes() {
        let mut frame = Frame::blank(2, 1);
        frame.pixels[4..8].copy_from_slice(&[3, 2, 1, 0]);
        assert_eq!(frame.rgb(1, 0), (1, 2, 3));
        assert_eq!(frame.to_rgb(), vec![0, 0, 0, 1, 2, 3]);
        assert_eq!(frame.distinct_colours(), 2);
    }
}
