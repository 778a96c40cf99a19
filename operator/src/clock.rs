//! Time as the operator and the CLI read it: the clock they ask for "now", and the wait until
//! an instant. Shared by the controller (expiry requeues, status times) and the CLI (time left).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// Where "now" comes from: the system clock, or a fixed instant in tests.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Fixed(Timestamp),
}

impl Clock {
    /// Whole seconds: status times are stored to the second (metav1.Time), so a status
    /// computed from a finer clock would never compare equal to what was read back, and
    /// every reconcile would patch it again.
    pub fn now(self) -> Timestamp {
        match self {
            Clock::System => {
                Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range")
            }
            Clock::Fixed(at) => at,
        }
    }
}

/// Time left until `at`, zero once it has passed: the requeue that closes a link exactly on
/// time.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_whole_seconds_as_status_times_are_stored() {
        assert_eq!(Clock::System.now().subsec_nanosecond(), 0);
    }

    #[test]
    fn the_wait_until_a_past_instant_is_zero() {
        let now: Timestamp = "2026-11-25T10:00:01Z".parse().unwrap();
        let past: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        assert_eq!(until(now, past), Duration::ZERO);
        assert_eq!(until(past, now), Duration::from_secs(1));
    }
}
