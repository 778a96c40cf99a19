//! The cluster admin's word on what links may do: the cluster-scoped `DeviceLinkPolicy`
//! resource and the check of a link against every policy in the cluster. Pure but for name
//! resolution, which the caller does (see [`device_addresses_needed`]).
//!
//! The API server refuses at admission what CEL can judge (deploy/policy-admission.yaml reads
//! the same objects as its parameters); the operator checks everything here again, including
//! what admission cannot see: an `expiresAt` against the clock, and the addresses a device's
//! host name resolves to.

use std::{net::IpAddr, time::Duration};

use devicelink_spec::{MAX_CONNECTIONS, parse_duration};
use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::{
    lifecycle::Problem,
    resource::{Lifetime, ValidLink, format_duration},
};

/// Connections a link carries when `spec.maxConnections` is unset: the proxy's default.
pub const PROXY_DEFAULT_MAX_CONNECTIONS: u32 = 1024;

/// The source ranges refused when a policy does not list its own: the whole internet.
pub const WORLD: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// What DeviceLinks in this cluster may do. Every DeviceLinkPolicy applies: a link must
/// satisfy each one. Without any, links are only refused the whole internet as a source.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "devicelink.io",
    version = "v1alpha1",
    kind = "DeviceLinkPolicy",
    plural = "devicelinkpolicies",
    shortname = "dlp",
    derive = "PartialEq",
    doc = "What DeviceLinks in this cluster may do: device networks and host names, source ranges, lifetime and connections. Every DeviceLinkPolicy applies."
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLinkPolicySpec {
    /// Networks (CIDR) a device's address must be in; a host name's resolved addresses are
    /// checked too. Any address when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n))").message("every allowedDeviceNetworks entry must be a CIDR such as 10.20.0.0/16"))]
    pub allowed_device_networks: Option<Vec<String>>,

    /// Host names a device may be given by: exact (pump-17.plant-a.internal) or a suffix
    /// pattern (*.plant-a.internal matches any name under it). Any name when unset; a device
    /// given by address is judged by allowedDeviceNetworks alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub allowed_device_hosts: Option<Vec<String>>,

    /// Source ranges (CIDR) no link may allow, nor any range containing them. The whole
    /// internet (0.0.0.0/0 and ::/0) when unset; an empty list forbids nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r))").message("every forbiddenSourceRanges entry must be a CIDR such as 0.0.0.0/0"))]
    pub forbidden_source_ranges: Option<Vec<String>>,

    /// The longest a link may stay open from when it is (re)opened, e.g. 8h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[smhd])+$"))]
    pub max_ttl: Option<String>,

    /// The most connections a link may carry at once (an unset spec.maxConnections counts as
    /// the proxy's default, 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CONNECTIONS))]
    pub max_connections: Option<i64>,
}

/// Whether `host` (a DNS name) matches `pattern`: the same name, or `*.suffix` for any name
/// with at least one label before the suffix. Case does not matter, nor a final dot.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => host == pattern,
    }
}

/// Whether the link's device is given by a name that some policy's allowed networks need
/// resolved.
pub fn device_addresses_needed(link: &ValidLink, policies: &[DeviceLinkPolicy]) -> bool {
    link.device.host.parse::<IpAddr>().is_err()
        && policies
            .iter()
            .any(|p| p.spec.allowed_device_networks.is_some())
}

/// Checks `link`, opened at `enabled_at`, against every policy. `resolved` holds the device's
/// addresses (its literal address, or what its name resolves to). The first refusal names the
/// link's field, the policy and its rule.
pub fn check(
    link: &ValidLink,
    enabled_at: Timestamp,
    resolved: &[IpAddr],
    policies: &[DeviceLinkPolicy],
) -> Result<(), Problem> {
    if policies.is_empty() {
        let builtin = "the built-in policy (no DeviceLinkPolicy exists)";
        return check_one(
            link,
            enabled_at,
            resolved,
            builtin,
            &DeviceLinkPolicySpec::default(),
        );
    }
    for policy in policies {
        let who = format!("DeviceLinkPolicy {}", policy.name_any());
        check_one(link, enabled_at, resolved, &who, &policy.spec)?;
    }
    Ok(())
}

fn denied(field: &str, problem: String, policy: &str, rule: String, fix: &str) -> Problem {
    Problem::new(
        "PolicyDenied",
        format!("{field}: {problem}, which {policy} refuses ({rule}); {fix}"),
    )
}

fn broken_policy(policy: &str, field: &str, value: &str) -> Problem {
    Problem::new(
        "PolicyDenied",
        format!(
            "{policy} has an invalid spec.{field} entry {value:?}, so no link can be judged against it; ask the cluster admin to fix it"
        ),
    )
}

fn networks(policy: &str, field: &str, values: &[String]) -> Result<Vec<IpNet>, Problem> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .map_err(|_| broken_policy(policy, field, v))
        })
        .collect()
}

fn check_one(
    link: &ValidLink,
    enabled_at: Timestamp,
    resolved: &[IpAddr],
    policy: &str,
    spec: &DeviceLinkPolicySpec,
) -> Result<(), Problem> {
    // Sources: no allowed range may contain a forbidden one (0.0.0.0/0 contains everything).
    let forbidden_text: Vec<String> = match &spec.forbidden_source_ranges {
        Some(ranges) => ranges.clone(),
        None => WORLD.iter().map(|r| (*r).to_owned()).collect(),
    };
    let forbidden = networks(policy, "forbiddenSourceRanges", &forbidden_text)?;
    for (index, range) in link.allowed_source_ranges.iter().enumerate() {
        if let Some(hit) = forbidden.iter().find(|f| range.contains(*f)) {
            return Err(denied(
                &format!("spec.allowedSourceRanges[{index}]"),
                format!("{range} allows every address of {hit}"),
                policy,
                format!("forbiddenSourceRanges contains {hit}"),
                "allow only the ranges your clients connect from, e.g. 203.0.113.0/24",
            ));
        }
    }

    // The device: its name against the patterns, its addresses against the networks.
    let host = link.device.host.as_str();
    let by_address = host.parse::<IpAddr>().is_ok();
    if let Some(patterns) = &spec.allowed_device_hosts
        && !by_address
        && !patterns.iter().any(|p| host_matches(p, host))
    {
        return Err(denied(
            "spec.device.host",
            format!("{host} matches none of the allowed host names"),
            policy,
            format!("allowedDeviceHosts: {}", patterns.join(", ")),
            "use a device name the policy allows, or its address in an allowed network",
        ));
    }
    if let Some(allowed) = &spec.allowed_device_networks {
        let allowed_nets = networks(policy, "allowedDeviceNetworks", allowed)?;
        if resolved.is_empty() {
            return Err(denied(
                "spec.device.host",
                format!("{host} resolves to no address"),
                policy,
                format!("allowedDeviceNetworks: {}", allowed.join(", ")),
                "use a name that resolves, or the device's address",
            ));
        }
        if let Some(outside) = resolved
            .iter()
            .find(|address| !allowed_nets.iter().any(|net| net.contains(*address)))
        {
            let what = if by_address {
                format!("{outside} is outside the allowed device networks")
            } else {
                format!("{host} resolves to {outside}, outside the allowed device networks")
            };
            return Err(denied(
                "spec.device.host",
                what,
                policy,
                format!("allowedDeviceNetworks: {}", allowed.join(", ")),
                "reach only devices in those networks",
            ));
        }
    }

    // Lifetime: a TTL, or an absolute expiry counted from when the link was (re)opened.
    if let Some(max_ttl) = &spec.max_ttl {
        let max = parse_duration("spec.maxTtl", max_ttl)
            .map_err(|_| broken_policy(policy, "maxTtl", max_ttl))?;
        let (field, asked) = match link.lifetime {
            Lifetime::Ttl(ttl) => ("spec.ttl", ttl),
            Lifetime::Until(at) => (
                "spec.expiresAt",
                Duration::try_from(at.duration_since(enabled_at)).unwrap_or(Duration::ZERO),
            ),
        };
        if asked > max {
            return Err(denied(
                field,
                format!("the link would stay open {}", format_duration(asked)),
                policy,
                format!("maxTtl: {max_ttl}"),
                &format!("ask for at most {}", format_duration(max)),
            ));
        }
    }

    if let Some(max) = spec.max_connections {
        let asked = link
            .max_connections
            .unwrap_or(PROXY_DEFAULT_MAX_CONNECTIONS);
        if i64::from(asked) > max {
            let shown = match link.max_connections {
                Some(_) => format!("{asked} connections"),
                None => format!("unset, the proxy's default of {asked} connections"),
            };
            return Err(denied(
                "spec.maxConnections",
                shown,
                policy,
                format!("maxConnections: {max}"),
                &format!("set spec.maxConnections to at most {max}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::DeviceLink;

    fn link(spec: &str) -> ValidLink {
        let yaml = format!(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {{name: pump-17-ssh, namespace: plant-a}}\nspec:\n{spec}"
        );
        serde_yaml::from_str::<DeviceLink>(&yaml)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn policy(spec: &str) -> DeviceLinkPolicy {
        serde_yaml::from_str(&format!(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLinkPolicy\nmetadata: {{name: plants}}\nspec: {spec}\n"
        ))
        .unwrap()
    }

    const SSH: &str = "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n";

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn message(result: Result<(), Problem>) -> String {
        let problem = result.expect_err("refused");
        assert_eq!(problem.reason, "PolicyDenied");
        problem.message
    }

    #[test]
    fn without_a_policy_only_the_whole_internet_is_refused_as_a_source() {
        let now = at("2026-11-25T08:00:00Z");
        let address = ["10.20.30.40".parse().unwrap()];
        assert_eq!(check(&link(SSH), now, &address, &[]), Ok(()));
        let world = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24, '::/0']\n  ttl: 2h\n",
        );
        let text = message(check(&world, now, &address, &[]));
        assert!(
            text.starts_with("spec.allowedSourceRanges[1]: ::/0"),
            "{text}"
        );
        assert!(
            text.contains("forbiddenSourceRanges contains ::/0"),
            "{text}"
        );
    }

    #[test]
    fn a_policy_may_forbid_nothing_or_more_than_the_internet() {
        let now = at("2026-11-25T08:00:00Z");
        let address = ["10.20.30.40".parse().unwrap()];
        let world = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [0.0.0.0/0]\n  ttl: 2h\n",
        );
        assert_eq!(
            check(
                &world,
                now,
                &address,
                &[policy("{forbiddenSourceRanges: []}")]
            ),
            Ok(())
        );
        let wide = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.0.0/8]\n  ttl: 2h\n",
        );
        let text = message(check(
            &wide,
            now,
            &address,
            &[policy("{forbiddenSourceRanges: [203.0.113.0/24]}")],
        ));
        assert!(
            text.contains("203.0.0.0/8 allows every address of 203.0.113.0/24"),
            "{text}"
        );
        assert!(
            text.contains("DeviceLinkPolicy plants"),
            "names the policy: {text}"
        );
    }

    #[test]
    fn a_device_outside_the_allowed_networks_is_refused_by_address_and_by_resolved_name() {
        let now = at("2026-11-25T08:00:00Z");
        let plants = policy("{allowedDeviceNetworks: [10.20.0.0/16]}");
        let inside = ["10.20.30.40".parse().unwrap()];
        assert_eq!(
            check(&link(SSH), now, &inside, std::slice::from_ref(&plants)),
            Ok(())
        );
        let outside = link(
            "  device: {host: 10.99.0.1, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n",
        );
        let text = message(check(
            &outside,
            now,
            &["10.99.0.1".parse().unwrap()],
            std::slice::from_ref(&plants),
        ));
        assert!(
            text.contains("10.99.0.1 is outside the allowed device networks")
                && text.contains("allowedDeviceNetworks: 10.20.0.0/16"),
            "{text}"
        );
        let named = link(
            "  device: {host: pump-17.plant-a.internal, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n",
        );
        assert!(device_addresses_needed(
            &named,
            std::slice::from_ref(&plants)
        ));
        let rebound = [
            "10.20.30.40".parse().unwrap(),
            "169.254.169.254".parse().unwrap(),
        ];
        let text = message(check(&named, now, &rebound, std::slice::from_ref(&plants)));
        assert!(
            text.contains("pump-17.plant-a.internal resolves to 169.254.169.254"),
            "every address counts: {text}"
        );
    }

    #[test]
    fn host_names_must_match_a_pattern() {
        assert!(host_matches(
            "*.plant-a.internal",
            "pump-17.Plant-A.internal."
        ));
        assert!(!host_matches("*.plant-a.internal", "plant-a.internal"));
        assert!(!host_matches("*.plant-a.internal", "evilplant-a.internal"));
        assert!(host_matches("historian.corp", "historian.corp"));
        let now = at("2026-11-25T08:00:00Z");
        let named = link(
            "  device: {host: db.corp.internal, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n",
        );
        let text = message(check(
            &named,
            now,
            &[],
            &[policy("{allowedDeviceHosts: ['*.plant-a.internal']}")],
        ));
        assert!(
            text.starts_with("spec.device.host: db.corp.internal matches none"),
            "{text}"
        );
    }

    #[test]
    fn lifetime_and_connections_are_bounded() {
        let now = at("2026-11-25T08:00:00Z");
        let address = ["10.20.30.40".parse().unwrap()];
        let bounded = policy("{maxTtl: 8h, maxConnections: 64}");
        let long = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 1d\n  maxConnections: 8\n",
        );
        let text = message(check(&long, now, &address, std::slice::from_ref(&bounded)));
        assert!(
            text.starts_with("spec.ttl: the link would stay open 1d")
                && text.contains("maxTtl: 8h")
                && text.contains("at most 8h"),
            "{text}"
        );
        let until = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  expiresAt: '2026-11-25T18:00:00Z'\n  maxConnections: 8\n",
        );
        assert!(
            message(check(&until, now, &address, std::slice::from_ref(&bounded)))
                .starts_with("spec.expiresAt: the link would stay open 10h")
        );
        let text = message(check(
            &link(SSH),
            now,
            &address,
            std::slice::from_ref(&bounded),
        ));
        assert!(
            text.contains("unset, the proxy's default of 1024 connections")
                && text.contains("maxConnections: 64"),
            "{text}"
        );
        let fits = link(
            "  device: {host: 10.20.30.40, port: 22}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 8h\n  maxConnections: 64\n",
        );
        assert_eq!(check(&fits, now, &address, &[bounded]), Ok(()));
    }

    #[test]
    fn every_policy_applies() {
        let now = at("2026-11-25T08:00:00Z");
        let address = ["10.20.30.40".parse().unwrap()];
        let loose = policy("{maxTtl: 1d}");
        let mut strict = policy("{maxTtl: 1h}");
        strict.metadata.name = Some("night-shift".into());
        let text = message(check(&link(SSH), now, &address, &[loose, strict]));
        assert!(text.contains("DeviceLinkPolicy night-shift"), "{text}");
    }
}
