//! The `--config` file: the set of links, read and validated whole by `devicelink_spec` (the
//! format the operator and a console write), then given the proxy's defaults.

use std::path::Path;

use devicelink_spec::LinkSpec;

use crate::{
    acl::SourceAcl,
    link::{DEFAULT_IDLE_TIMEOUT, Link, SourceLimits},
};

/// Reads and validates the links file at `path`; the error names the link and the field. A
/// link without `maxConnections` gets `default_max_connections`: the proxy's default, or fewer
/// when that is all the memory budget fits (so its per-source share is a quarter of what it can
/// really carry).
pub fn read(path: &Path, default_max_connections: u32) -> Result<Vec<Link>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    parse(&text, default_max_connections).map_err(|err| format!("{}: {err}", path.display()))
}

pub fn parse(text: &str, default_max_connections: u32) -> Result<Vec<Link>, String> {
    let links = devicelink_spec::parse_links_file(text).map_err(|err| err.to_string())?;
    Ok(links
        .into_iter()
        .map(|spec| link_of(spec, default_max_connections))
        .collect())
}

/// A checked link with the limits it leaves out set to the proxy's defaults.
fn link_of(spec: LinkSpec, default_max_connections: u32) -> Link {
    let max_connections = spec.max_connections.unwrap_or(default_max_connections);
    let default_share = SourceLimits::default_for(max_connections);
    Link {
        name: spec.name,
        listen: spec.listen,
        device: spec.device,
        acl: SourceAcl::new(spec.allowed_source_ranges),
        expires_at: spec.expires_at,
        max_connections,
        per_source: SourceLimits {
            max_open: spec
                .max_connections_per_source
                .unwrap_or(default_share.max_open),
            per_second: spec
                .connect_rate_per_source
                .unwrap_or(default_share.per_second),
        },
        // A link that says nothing gets the proxy's default, so a forgotten session does not
        // hold a slot for good.
        idle_timeout: Some(spec.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)),
        enabled: spec.enabled,
        proxy_protocol: spec.proxy_protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::DEFAULT_MAX_CONNECTIONS;

    #[test]
    fn limits_left_out_of_the_file_take_the_proxy_defaults() {
        let text = "links: [{name: a, listen: '[::]:2222', device: '10.0.0.2:22', allowedSourceRanges: [203.0.113.0/24]}]";
        let links = parse(text, DEFAULT_MAX_CONNECTIONS).unwrap();
        assert_eq!(links[0].max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            links[0].per_source,
            SourceLimits::default_for(DEFAULT_MAX_CONNECTIONS)
        );
        assert!(links[0].enabled);
        // A budget that fits 10 connections: a source's default share is a quarter of those.
        let links = parse(text, 10).unwrap();
        assert_eq!(
            (links[0].max_connections, links[0].per_source.max_open),
            (10, 2)
        );
    }

    #[test]
    fn a_refusal_names_the_link_and_the_field() {
        let err = parse(
            "links: [{name: a, listen: '[::]:2222', device: '10.0.0.2:22', allowedSourceRanges: [10.0.0.0/33]}]",
            DEFAULT_MAX_CONNECTIONS,
        )
        .unwrap_err();
        assert!(
            err.starts_with("links[0] (a).allowedSourceRanges[0]: "),
            "{err}"
        );
    }
}
