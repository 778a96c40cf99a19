//! The rules both backends apply to what a caller writes: which lifetime a new link gets, how an
//! extension is counted, how "allow my address" joins the ranges. Pure: the clock is passed in.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

use crate::{
    clock,
    model::Extend,
    problem::ApiError,
    validate::{self, FieldError},
};

/// `at + by`, refused (never wrapped) past the end of time.
pub fn after(at: Timestamp, by: Duration) -> Result<Timestamp, ApiError> {
    SignedDuration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by).ok())
        .ok_or_else(|| ApiError::internal("instant out of range"))
}

/// The allowed ranges, checked and normalised, with the caller's own address added (once).
pub fn ranges_with(
    field: &str,
    mut ranges: Vec<String>,
    my_address: Option<IpAddr>,
) -> Result<Vec<String>, ApiError> {
    if let Some(addr) = my_address {
        let mine = IpNet::from(addr).to_string();
        if !ranges.contains(&mine) {
            ranges.push(mine);
        }
    }
    let parsed = validate::source_ranges(field, &ranges)?;
    Ok(parsed.iter().map(ToString::to_string).collect())
}

/// An instant the caller gives as an end: valid and still ahead.
pub fn future_instant(field: &str, value: &str, now: Timestamp) -> Result<Timestamp, ApiError> {
    let at = clock::truncate(validate::instant(field, value)?);
    if at <= now {
        return Err(FieldError::new(
            field,
            format!("{value:?} has passed"),
            "give a time in the future, or a ttl such as 2h",
        )
        .into());
    }
    Ok(at)
}

/// How a link's end is given: exactly one of a ttl and an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Ttl(Duration),
    Until(Timestamp),
}

/// The lifetime of a new link, from its `ttl` and `expiresAt` fields.
pub fn lifetime(
    ttl: Option<&str>,
    expires_at: Option<&str>,
    now: Timestamp,
) -> Result<Lifetime, ApiError> {
    match (ttl, expires_at) {
        (Some(ttl), None) => Ok(Lifetime::Ttl(validate::duration("ttl", ttl)?)),
        (None, Some(at)) => Ok(Lifetime::Until(future_instant("expiresAt", at, now)?)),
        (Some(_), Some(_)) => Err(FieldError::new(
            "ttl",
            "and expiresAt are both set",
            "keep only one: ttl (e.g. 2h, counted from when the link is enabled) or expiresAt (an RFC 3339 instant)",
        )
        .into()),
        (None, None) => Err(FieldError::new(
            "ttl",
            "and expiresAt are both missing, and a link never stays open forever",
            "set ttl (e.g. 2h) or expiresAt (e.g. 2026-11-25T10:00:00Z)",
        )
        .into()),
    }
}

/// The new end of a link extended at `now` whose end is `current`: "by" counts from the later
/// of now and the current end, so extending an open link never shortens it.
pub fn extended_until(
    extend: &Extend,
    current: Option<Timestamp>,
    now: Timestamp,
) -> Result<Timestamp, ApiError> {
    match (&extend.by, &extend.to) {
        (Some(by), None) => {
            let by = validate::duration("by", by)?;
            let from = current.filter(|at| *at > now).unwrap_or(now);
            after(from, by)
        }
        (None, Some(to)) => future_instant("to", to, now),
        _ => Err(FieldError::new(
            "by",
            "and to: exactly one must be set",
            "send {\"by\": \"1h\"} or {\"to\": \"2026-11-25T10:00:00Z\"}",
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn extending_by_counts_from_the_later_of_now_and_the_current_end() {
        let now = at("2026-12-04T10:00:00Z");
        let by = Extend {
            by: Some("1h".to_owned()),
            to: None,
        };
        assert_eq!(
            extended_until(&by, Some(at("2026-12-04T10:30:00Z")), now).unwrap(),
            at("2026-12-04T11:30:00Z")
        );
        assert_eq!(
            extended_until(&by, Some(at("2026-12-04T09:00:00Z")), now).unwrap(),
            at("2026-12-04T11:00:00Z")
        );
        assert_eq!(
            extended_until(&by, None, now).unwrap(),
            at("2026-12-04T11:00:00Z")
        );
    }

    #[test]
    fn a_lifetime_is_exactly_one_of_ttl_and_expires_at() {
        let now = at("2026-12-04T10:00:00Z");
        assert!(lifetime(Some("2h"), Some("2026-12-05T00:00:00Z"), now).is_err());
        assert!(lifetime(None, None, now).is_err());
        assert!(lifetime(None, Some("2026-12-04T09:00:00Z"), now).is_err());
        assert_eq!(
            lifetime(Some("2h"), None, now).unwrap(),
            Lifetime::Ttl(Duration::from_secs(7200))
        );
    }
}
