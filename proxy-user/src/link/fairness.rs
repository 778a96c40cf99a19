//! Fair shares of a link between its allowed sources: at most so many connections open from
//! one source, and new connections from one source at most so fast (a token bucket). The ACL
//! decides who may use a link; this keeps one allowed address (a runaway script, a hostile
//! colleague, a scanner inside an allowed range) from holding every slot or turning its churn
//! into a connect flood on the device.
//!
//! A source is an IPv4 address, or an IPv6 /64: one host picks freely among the addresses of
//! its /64, so counting each would let it take any number of shares.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Mutex,
    time::Instant,
};

/// What a link allows each source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// Connections open at once from one source.
    pub max_open: u32,
    /// New connections per second from one source, sustained; 0: no limit. A burst of twice as
    /// many (at least 4) is allowed at once, as a client that opens a few sessions does.
    pub per_second: u32,
}

impl SourceLimits {
    /// The default share of a link with `max_connections` slots: a quarter of them (at least
    /// one), and 10 new connections a second.
    pub fn default_for(max_connections: u32) -> Self {
        Self {
            max_open: (max_connections / 4).max(1),
            per_second: DEFAULT_PER_SECOND,
        }
    }

    fn burst(self) -> f64 {
        f64::from((self.per_second * 2).max(4))
    }
}

/// New connections a second a source may open by default.
pub const DEFAULT_PER_SECOND: u32 = 10;

/// Why a source was refused its share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverShare {
    /// It already holds its `max_open` connections.
    Open,
    /// It opened connections faster than `per_second`.
    Rate,
}

/// Forgotten sources are pruned when the table grows past this many.
const PRUNE_ABOVE: usize = 4096;

#[derive(Default)]
pub struct SourceShares {
    sources: Mutex<HashMap<IpAddr, Share>>,
}

struct Share {
    open: u32,
    tokens: f64,
    refilled: Instant,
}

/// The key a source is counted under.
pub fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ))
        }
        v4 => v4,
    }
}

impl SourceShares {
    /// Takes a slot for a new connection from `source`, or says why not. A slot taken is given
    /// back with [`SourceShares::release`].
    pub fn admit(&self, source: IpAddr, limits: SourceLimits) -> Result<(), OverShare> {
        self.admit_at(source, limits, Instant::now())
    }

    fn admit_at(
        &self,
        source: IpAddr,
        limits: SourceLimits,
        now: Instant,
    ) -> Result<(), OverShare> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() > PRUNE_ABOVE {
            sources
                .retain(|_, share| share.open > 0 || refilled(share, limits, now) < limits.burst());
        }
        let share = sources.entry(source_key(source)).or_insert(Share {
            open: 0,
            tokens: limits.burst(),
            refilled: now,
        });
        if share.open >= limits.max_open {
            return Err(OverShare::Open);
        }
        if limits.per_second > 0 {
            share.tokens = refilled(share, limits, now);
            share.refilled = now;
            if share.tokens < 1.0 {
                return Err(OverShare::Rate);
            }
            share.tokens -= 1.0;
        }
        share.open += 1;
        Ok(())
    }

    /// A connection from `source` closed.
    pub fn release(&self, source: IpAddr) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = sources.get_mut(&source_key(source)) {
            share.open = share.open.saturating_sub(1);
        }
    }
}

fn refilled(share: &Share, limits: SourceLimits, now: Instant) -> f64 {
    let elapsed = now.duration_since(share.refilled).as_secs_f64();
    (share.tokens + elapsed * f64::from(limits.per_second)).min(limits.burst())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_holds_at_most_its_share_of_open_connections() {
        let shares = SourceShares::default();
        let limits = SourceLimits {
            max_open: 2,
            per_second: 0,
        };
        assert_eq!(shares.admit(ip("192.0.2.1"), limits), Ok(()));
        assert_eq!(shares.admit(ip("192.0.2.1"), limits), Ok(()));
        assert_eq!(shares.admit(ip("192.0.2.1"), limits), Err(OverShare::Open));
        assert_eq!(
            shares.admit(ip("192.0.2.2"), limits),
            Ok(()),
            "another source has its own share"
        );
        shares.release(ip("192.0.2.1"));
        assert_eq!(
            shares.admit(ip("192.0.2.1"), limits),
            Ok(()),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn a_source_opens_a_burst_then_at_its_rate() {
        let shares = SourceShares::default();
        let limits = SourceLimits {
            max_open: 1000,
            per_second: 10,
        };
        let start = Instant::now();
        for _ in 0..20 {
            assert_eq!(shares.admit_at(ip("192.0.2.1"), limits, start), Ok(()));
        }
        assert_eq!(
            shares.admit_at(ip("192.0.2.1"), limits, start),
            Err(OverShare::Rate),
            "past the burst of twice the rate"
        );
        let later = start + Duration::from_millis(250);
        assert_eq!(
            shares.admit_at(ip("192.0.2.1"), limits, later),
            Ok(()),
            "a quarter second later, two more tokens"
        );
    }

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_one_its_ipv4_address() {
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa::1")),
            source_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:2::1")),
            source_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn the_default_share_is_a_quarter_and_at_least_one() {
        assert_eq!(SourceLimits::default_for(1024).max_open, 256);
        assert_eq!(SourceLimits::default_for(2).max_open, 1);
    }
}
