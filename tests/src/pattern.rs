//! Traffic whose loss, duplication or reordering shows: a deterministic byte pattern, an
//! order-sensitive checksum, and sending or receiving a whole stream of them.

/// A deterministic, non-repeating byte pattern (xorshift), so that a lost, duplicated or
/// reordered chunk shows up as a mismatch rather than as equal bytes.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// FNV-1a over a stream of chunks: a cheap checksum that sees order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub hash: u64,
    pub len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
        }
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.len += bytes.len() as u64;
    }
}

/// Writes `len` pattern bytes (seeded) to `stream` and returns their checksum.
pub fn send_pattern(
    stream: &mut impl std::io::Write,
    seed: u64,
    len: u64,
) -> std::io::Result<Checksum> {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sum.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(sum)
}

/// Reads `stream` to EOF and returns the checksum of what arrived.
pub fn receive_all(stream: &mut impl std::io::Read) -> std::io::Result<Checksum> {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(sum);
        }
        sum.update(&buf[..n]);
    }
}
