//! The privileges of a proxy pod, in one place: the operator renders them into every proxy
//! Deployment, and the container tests run the proxy image with exactly these (and with one
//! capability less, to show that each is needed). Nothing else grants the proxy a privilege.

/// Linux capabilities the proxy container adds after dropping every other one (Kubernetes
/// names, without `CAP_`):
/// - `BPF` creates the maps and loads the XDP ACL and the sk_skb splice;
/// - `NET_ADMIN` attaches XDP to the pod's interface and the verdict program to the sockhash;
/// - `PERFMON` lets the verifier accept the pointer arithmetic and helpers the programs use.
pub const PROXY_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];

/// What the container drops before adding [`PROXY_CAPABILITIES`].
pub const PROXY_DROPPED_CAPABILITIES: &[&str] = &["ALL"];

/// The proxy runs as root inside its pod: Kubernetes gives added capabilities to uid 0 only
/// (no ambient capabilities for other users), and with no new privileges a non-root process
/// cannot gain them from file capabilities either. Root is confined to the capabilities above.
pub const PROXY_RUN_AS_USER: i64 = 0;

/// The proxy's group inside its pod (root's, for the same reason as [`PROXY_RUN_AS_USER`]).
pub const PROXY_RUN_AS_GROUP: i64 = 0;

/// The unprivileged user (and group) every devicelink image declares (`nonroot` in its
/// `/etc/passwd`, laid out by `deploy/image/rootfs.sh`), which the operator and the console run
/// as. The proxy runs as [`PROXY_RUN_AS_USER`].
pub const IMAGE_USER: u32 = 65_532;

/// The container's root filesystem is mounted read-only: the proxy writes nothing to disk.
pub const PROXY_READ_ONLY_ROOT: bool = true;

/// `no_new_privs` (Kubernetes: `allowPrivilegeEscalation: false`): nothing the proxy executes
/// can gain a privilege the container lacks.
pub const PROXY_NO_NEW_PRIVILEGES: bool = true;

/// Which seccomp profile a container runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompProfile {
    /// The container runtime's own default profile.
    RuntimeDefault,
    /// A profile file in the kubelet's seccomp directory (`/var/lib/kubelet/seccomp/`), named
    /// relative to it.
    Localhost(&'static str),
}

impl SeccompProfile {
    /// The Kubernetes `seccompProfile.type` value.
    pub fn kubernetes_type(self) -> &'static str {
        match self {
            Self::RuntimeDefault => "RuntimeDefault",
            Self::Localhost(_) => "Localhost",
        }
    }

    /// The Kubernetes `seccompProfile.localhostProfile` value, for a Localhost profile.
    pub fn localhost_profile(self) -> Option<&'static str> {
        match self {
            Self::RuntimeDefault => None,
            Self::Localhost(name) => Some(name),
        }
    }
}

/// The file name (in the repository's `deploy/seccomp/` and on each node in the kubelet's
/// seccomp directory) of the profile the proxy runs under.
pub const PROXY_SECCOMP_FILE: &str = "devicelink-proxy.json";

/// The proxy's seccomp profile: the shipped one, because the default profiles of podman and
/// CRI-O (containers-common) allow `bpf()` and `perf_event_open()` only with `CAP_SYS_ADMIN`,
/// which the proxy must not have; this profile allows them with the capabilities above. It is
/// the same file on every runtime, so what the container tests prove is what runs.
pub const PROXY_SECCOMP: SeccompProfile = SeccompProfile::Localhost(PROXY_SECCOMP_FILE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_adds_exactly_the_three_data_plane_capabilities_after_dropping_all() {
        assert_eq!(PROXY_CAPABILITIES, ["BPF", "NET_ADMIN", "PERFMON"]);
        assert_eq!(PROXY_DROPPED_CAPABILITIES, ["ALL"]);
        assert!(
            PROXY_CAPABILITIES
                .iter()
                .all(|cap| !cap.starts_with("CAP_") && *cap != "SYS_ADMIN"),
            "Kubernetes names, and never SYS_ADMIN"
        );
    }

    #[test]
    fn the_seccomp_profile_names_the_shipped_file_as_kubernetes_spells_it() {
        assert_eq!(PROXY_SECCOMP.kubernetes_type(), "Localhost");
        assert_eq!(
            PROXY_SECCOMP.localhost_profile(),
            Some("devicelink-proxy.json")
        );
        assert_eq!(SeccompProfile::RuntimeDefault.localhost_profile(), None);
    }

    /// The shipped profile is where [`PROXY_SECCOMP`] says, and allows the two calls the
    /// runtimes' defaults tie to `CAP_SYS_ADMIN` without a capability condition.
    #[test]
    fn the_shipped_seccomp_profile_allows_bpf_and_perf_event_open_without_sys_admin() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/seccomp")
            .join(PROXY_SECCOMP_FILE);
        let profile: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("the shipped profile"))
                .expect("JSON");
        for call in ["bpf", "perf_event_open"] {
            let rules: Vec<&serde_json::Value> = profile["syscalls"]
                .as_array()
                .expect("syscalls")
                .iter()
                .filter(|rule| {
                    rule["names"]
                        .as_array()
                        .is_some_and(|names| names.iter().any(|n| n == call))
                })
                .collect();
            assert_eq!(rules.len(), 1, "{call}: one rule, no CAP_SYS_ADMIN pair");
            assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW", "{call}");
            let unconditional = |key: &str| {
                rules[0]
                    .get(key)
                    .is_none_or(|v| v.get("caps").is_none() && v.get("minKernel").is_none())
            };
            assert!(
                unconditional("includes") && unconditional("excludes"),
                "{call}"
            );
        }
    }
}
