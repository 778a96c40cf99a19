//! Which source ACL programs sit on an interface: XDP (which `ip link` shows) and tcx ingress
//! programs (which only `BPF_PROG_QUERY` lists), so a test can tell that the proxy's ACL is on
//! the wire while it runs and gone once it exits.

use aya::programs::{SchedClassifier, tc::TcAttachType};

use crate::netns::Netns;

/// The hooks the proxy's ACL uses on `interface` in `netns`, as `xdp` and the names of the tcx
/// ingress programs (`source_acl_tc` for the proxy's).
pub fn acl_hooks(netns: &Netns, interface: &str) -> anyhow::Result<Vec<String>> {
    let mut hooks = Vec::new();
    if netns.ip(&["link", "show", interface])?.contains("xdp") {
        hooks.push("xdp".to_string());
    }
    let name = interface.to_string();
    let (_, programs) = netns
        .run(move || SchedClassifier::query_tcx(&name, TcAttachType::Ingress))
        .map_err(|e| anyhow::anyhow!("querying the tcx ingress programs of {interface}: {e}"))?;
    hooks.extend(
        programs
            .iter()
            .map(|program| program.name_as_str().unwrap_or("?").to_string()),
    );
    Ok(hooks)
}
