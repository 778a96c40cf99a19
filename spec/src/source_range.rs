//! Source ranges: the address blocks (IPv4 or IPv6 CIDR) allowed to connect to a link.
//!
//! One policy wherever a range is written (a DeviceLink's `allowedSourceRanges`, the links
//! file, the proxy's `--allow`): a block is written exactly, as `network/prefix`.
//! - A bare address is refused with the `/32` or `/128` it needs, so that nobody opens a whole
//!   network by forgetting a prefix or a host by forgetting one. Only a flag typed by a person
//!   (`--allow 203.0.113.7`) may mean the host: [`parse_source_host_or_range`] adds the prefix,
//!   then applies the same check.
//! - Bits set past the prefix (`10.1.2.3/8`) are refused with the network suggested: the writer
//!   meant either the host or the network, and guessing could open the wrong one.
//! - An IPv4-mapped IPv6 block (`::ffff:203.0.113.0/120`, inside `::ffff:0:0/96`) is refused
//!   with the IPv4 block it stands for: IPv4 clients arrive as IPv4 packets, so a load balancer's
//!   source filter and the proxy's XDP ACL match them against IPv4 blocks only; written as IPv6
//!   the block would not do what it says everywhere.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::SpecError;

const EXAMPLES: &str = "write an address block such as 203.0.113.0/24 or 2001:db8::/32";

/// One source range, written exactly (see the module's policy).
pub fn parse_source_range(field: &str, text: &str) -> Result<IpNet, SpecError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        return Err(SpecError::new(
            field,
            format!("{text:?} is an address, not a CIDR block"),
            format!("write {text}/{bits} to allow that one address"),
        ));
    }
    let net: IpNet = text.parse().map_err(|_| malformed(field, text))?;
    if net.trunc() != net {
        return Err(SpecError::new(
            field,
            format!(
                "{text:?} has bits set past its /{} prefix",
                net.prefix_len()
            ),
            format!("did you mean {}?", net.trunc()),
        ));
    }
    if let Some(v4) = ipv4_block_of_mapped(net) {
        return Err(SpecError::new(
            field,
            format!("{text:?} is an IPv4-mapped IPv6 block"),
            format!("write it as the IPv4 block {v4}: IPv4 clients are matched as IPv4"),
        ));
    }
    Ok(net)
}

/// One source range as a person types it on a command line: a bare address means that host
/// (`/32` or `/128`); everything else is [`parse_source_range`].
pub fn parse_source_host_or_range(field: &str, text: &str) -> Result<IpNet, SpecError> {
    let text = text.trim();
    match text.parse::<IpAddr>() {
        Ok(addr) => parse_source_range(field, &IpNet::from(addr).to_string()),
        Err(_) => parse_source_range(field, text),
    }
}

/// A link's list of source ranges: at least one (a link nobody may reach is a mistake), each
/// checked by [`parse_source_range`] and named `field[index]`.
pub fn parse_source_ranges<S: AsRef<str>>(
    field: &str,
    texts: &[S],
) -> Result<Vec<IpNet>, SpecError> {
    if texts.is_empty() {
        return Err(SpecError::new(
            field,
            "is empty, so nobody could connect",
            "list at least one source block, e.g. [203.0.113.0/24] (your office's public range)",
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| parse_source_range(&format!("{field}[{index}]"), text.as_ref()))
        .collect()
}

/// A malformed block, said as precisely as the text allows.
fn malformed(field: &str, text: &str) -> SpecError {
    if let Some((addr, prefix)) = text.split_once('/')
        && let Ok(addr) = addr.parse::<IpAddr>()
    {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        return SpecError::new(
            field,
            format!(
                "{text:?} has prefix length {prefix:?}, not a number from 0 to {bits} (the bits of an {family} address)"
            ),
            format!(
                "write a prefix length from 0 to {bits}, e.g. {}",
                IpNet::new(addr, if addr.is_ipv4() { 24 } else { 64 })
                    .map(|n| n.trunc().to_string())
                    .unwrap_or_default()
            ),
        );
    }
    SpecError::new(field, format!("{text:?} is not a CIDR block"), EXAMPLES)
}

/// The IPv4 block an IPv4-mapped IPv6 block stands for, if it is one.
fn ipv4_block_of_mapped(net: IpNet) -> Option<Ipv4Net> {
    let IpNet::V6(net) = net else { return None };
    let mapped = Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).ok()?;
    if !mapped.contains(&net) {
        return None;
    }
    Ipv4Net::new(net.network().to_ipv4_mapped()?, net.prefix_len() - 96).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<IpNet, SpecError>) -> String {
        result.expect_err("should be refused").reason()
    }

    #[test]
    fn exact_blocks_of_both_families_are_accepted() {
        for text in [
            "203.0.113.0/24",
            "2001:db8::/32",
            "0.0.0.0/0",
            "::/0",
            "203.0.113.7/32",
            "2001:db8::1/128",
            " 10.0.0.0/8 ",
        ] {
            let net = parse_source_range("f", text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(net.to_string(), text.trim());
        }
    }

    #[test]
    fn a_bare_address_is_refused_with_the_prefix_it_needs() {
        let err = parse_source_range("spec.allowedSourceRanges[0]", "203.0.113.9").unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.allowedSourceRanges[0]: \"203.0.113.9\" is an address, not a CIDR block; write 203.0.113.9/32 to allow that one address"
        );
        assert!(reason(parse_source_range("f", "2001:db8::9")).contains("2001:db8::9/128"));
    }

    #[test]
    fn a_typed_flag_may_give_a_bare_address_for_that_host() {
        assert_eq!(
            parse_source_host_or_range("--allow", "203.0.113.7"),
            Ok("203.0.113.7/32".parse().unwrap())
        );
        assert_eq!(
            parse_source_host_or_range("--allow", "2001:db8::7"),
            Ok("2001:db8::7/128".parse().unwrap())
        );
    }

    #[test]
    fn every_other_mistake_reads_the_same_from_a_flag_and_from_a_resource() {
        for text in [
            "10.1.2.3/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.300/24",
            "office",
            "::ffff:203.0.113.0/120",
            "::ffff:203.0.113.7",
        ] {
            let from_flag = parse_source_host_or_range("--allow", text);
            // A flag's bare address is that host: the resource writes the prefix out.
            let written = match text.parse::<IpAddr>() {
                Ok(addr) => IpNet::from(addr).to_string(),
                Err(_) => text.to_owned(),
            };
            let from_resource = parse_source_range("spec.allowedSourceRanges[0]", &written);
            assert_eq!(reason(from_flag), reason(from_resource), "{text}");
        }
    }

    #[test]
    fn host_bits_past_the_prefix_suggest_the_network() {
        assert_eq!(
            reason(parse_source_range("f", "10.1.2.3/8")),
            "\"10.1.2.3/8\" has bits set past its /8 prefix; did you mean 10.0.0.0/8?"
        );
        assert!(
            reason(parse_source_range("f", "2001:db8::1/32"))
                .contains("did you mean 2001:db8::/32?")
        );
    }

    #[test]
    fn a_prefix_too_long_for_the_family_says_the_range_of_lengths() {
        let text = reason(parse_source_range("f", "10.0.0.0/33"));
        assert!(
            text.contains("prefix length \"33\"") && text.contains("from 0 to 32"),
            "{text}"
        );
        let text = reason(parse_source_range("f", "2001:db8::/129"));
        assert!(text.contains("from 0 to 128"), "{text}");
    }

    #[test]
    fn what_is_no_block_at_all_shows_the_form() {
        let text = reason(parse_source_range("f", "10.0.0.300/24"));
        assert!(text.contains("203.0.113.0/24"), "{text}");
    }

    #[test]
    fn an_ipv4_mapped_block_is_refused_with_its_ipv4_form() {
        let text = reason(parse_source_range("f", "::ffff:203.0.113.0/120"));
        assert!(
            text.contains("write it as the IPv4 block 203.0.113.0/24"),
            "{text}"
        );
        let text = reason(parse_source_range("f", "::ffff:0:0/96"));
        assert!(text.contains("0.0.0.0/0"), "{text}");
        assert!(
            parse_source_range("f", "::/0").is_ok(),
            "a block only partly inside the mapped range is plain IPv6"
        );
    }

    #[test]
    fn a_list_needs_one_block_and_names_the_index_of_a_bad_one() {
        let empty: [&str; 0] = [];
        let err = parse_source_ranges("spec.allowedSourceRanges", &empty).unwrap_err();
        assert_eq!(err.field, "spec.allowedSourceRanges");
        assert!(err.problem.contains("nobody could connect"));
        let err = parse_source_ranges("r", &["203.0.113.0/24", "10.0.0.300/24"]).unwrap_err();
        assert_eq!(err.field, "r[1]");
        assert_eq!(
            parse_source_ranges("r", &["203.0.113.0/24", "2001:db8::/32"]).map(|v| v.len()),
            Ok(2)
        );
    }
}
