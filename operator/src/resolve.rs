//! Names to addresses, for the policy's device networks: the system resolver in the operator,
//! a fixed table in tests.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

/// How long one lookup may take before the reconcile gives up and retries.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum Resolver {
    /// The operator pod's resolver (the cluster's DNS, as the proxy pods use it).
    System,
    /// Names and their addresses; any other name does not resolve.
    Fixed(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Resolver {
    /// Every address `host` resolves to, deduplicated, in the resolver's order.
    pub async fn addresses(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        let found: Vec<IpAddr> = match self {
            Resolver::System => {
                let lookup = tokio::net::lookup_host((host, port));
                tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "lookup timed out")
                    })??
                    .map(|address| address.ip())
                    .collect()
            }
            Resolver::Fixed(table) => table.get(host).cloned().unwrap_or_default(),
        };
        let mut unique = Vec::with_capacity(found.len());
        for address in found {
            if !unique.contains(&address) {
                unique.push(address);
            }
        }
        Ok(unique)
    }
}
