//! Instants as the console stores and shows them: UTC, to the second, RFC 3339.

use jiff::Timestamp;

pub fn now() -> Timestamp {
    truncate(Timestamp::now())
}

pub fn truncate(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

pub fn now_rfc3339() -> String {
    now().to_string()
}
