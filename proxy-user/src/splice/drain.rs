//! Timing the looks at a direction that waits for its receiver to drain: from the drain rate
//! seen between two looks, when the next one should come.

use std::time::Duration;

use tokio::time::Instant;

/// A direction's last look while it waits for its target to drain: when, and how many bytes
/// were still to drain then. `None` before the first look.
pub(super) type LastLook = Option<(Instant, u64)>;

/// When to look again at a direction waiting for its target to drain `excess` more bytes:
/// when the drain rate seen since the last look says it will have, within 1-50 ms. A fast
/// receiver is looked at often enough that its queue never runs dry; a slow one (a device on
/// LTE) costs a few looks a second.
pub(super) fn next_drain_look(last: LastLook, now: Instant, excess: u64) -> Duration {
    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(50);
    match (last, drain_eta(last, now, excess)) {
        (_, Some(eta)) => eta.clamp(MIN, MAX),
        (None, None) => MIN,
        // Nothing drained since the last look: back off.
        (Some((at, _)), None) => (now.duration_since(at) * 2).clamp(MIN, MAX),
    }
}

/// How long until `excess` more bytes have drained, at the rate seen since the look `last`;
/// `None` without a look before or without any drain since.
pub(super) fn drain_eta(last: LastLook, now: Instant, excess: u64) -> Option<Duration> {
    let (at, last_excess) = last?;
    let elapsed = now.duration_since(at).as_secs_f64();
    let drained = last_excess.saturating_sub(excess) as f64;
    (drained > 0.0 && elapsed > 0.0)
        .then(|| Duration::from_secs_f64(excess as f64 * elapsed / drained))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_drain_estimate_follows_the_rate_seen_since_the_last_look() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // 4 MiB drained in 2 ms, 6 MiB to go: 3 ms.
        let last = Some((now - ms(2), 10 * MIB));
        assert_eq!(drain_eta(last, now, 6 * MIB), Some(ms(3)));
        assert_eq!(next_drain_look(last, now, 6 * MIB), ms(3));
        // Growing, not draining: no estimate.
        assert_eq!(drain_eta(Some((now - ms(2), MIB)), now, 2 * MIB), None);
    }

    #[test]
    fn a_direction_that_does_not_drain_is_looked_at_less_and_less_often() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_drain_look(None, now, MIB), ms(1));
        assert_eq!(next_drain_look(Some((now - ms(4), MIB)), now, MIB), ms(8));
        assert_eq!(next_drain_look(Some((now - ms(40), MIB)), now, MIB), ms(50));
    }
}
