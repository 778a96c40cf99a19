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

/// The ranges a change asks for (`patched`, or the `current` ones with the caller's address
/// added), checked; `None` when they come out as they are.
pub fn changed_ranges(
    patched: Option<Vec<String>>,
    current: &[String],
    my_address: Option<IpAddr>,
) -> Result<Option<Vec<String>>, ApiError> {
    if patched.is_none() && my_address.is_none() {
        return Ok(None);
    }
    let ranges = patched.unwrap_or_else(|| current.to_vec());
    let ranges = ranges_with("allowedSourceRanges", ranges, my_address)?;
    Ok((ranges != current).then_some(ranges))
}

/// The lifetime a change asks for, if it names one: a ttl or an instant, never both.
pub fn changed_lifetime(
    ttl: Option<&str>,
    expires_at: Option<&str>,
    now: Timestamp,
) -> Result<Option<Lifetime>, ApiError> {
    match (ttl, expires_at) {
        (None, None) => Ok(None),
        _ => lifetime(ttl, expires_at, now).map(Some),
    }
}

/// A link enabled again with a fixed end needs that end still ahead.
pub fn end_still_ahead(end: Option<Timestamp>, now: Timestamp) -> Result<(), ApiError> {
    match end {
        Some(at) if at <= now => Err(FieldError::new(
            "expiresAt",
            format!("{at} has passed"),
            "extend the link first (POST .../extend with {\"by\": \"1h\"})",
        )
        .into()),
        _ => Ok(()),
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

    #[test]
    fn a_change_names_new_ranges_only_when_they_differ_and_a_lifetime_only_when_given() {
        let now = at("2026-12-04T10:00:00Z");
        let current = vec!["203.0.113.0/24".to_owned()];
        assert_eq!(changed_ranges(None, &current, None).unwrap(), None);
        assert_eq!(
            changed_ranges(Some(current.clone()), &current, None).unwrap(),
            None
        );
        assert_eq!(
            changed_ranges(None, &current, Some("198.51.100.7".parse().unwrap())).unwrap(),
            Some(vec![
                "203.0.113.0/24".to_owned(),
                "198.51.100.7/32".to_owned()
            ])
        );
        assert!(changed_ranges(Some(vec!["nonsense".to_owned()]), &current, None).is_err());
        assert_eq!(changed_lifetime(None, None, now).unwrap(), None);
        assert_eq!(
            changed_lifetime(Some("1h"), None, now).unwrap(),
            Some(Lifetime::Ttl(Duration::from_secs(3600)))
        );
        assert!(changed_lifetime(Some("1h"), Some("2026-12-05T00:00:00Z"), now).is_err());
    }
}
