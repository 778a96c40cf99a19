//! What can go wrong in the CLI, each with what to do about it, and the exit code scripts see.

/// Exit codes that scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Anything not listed below.
    Error = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// The link is Failed (invalid spec) or the API server rejected it.
    LinkFailed = 3,
    /// The link did not become ready (or closed) within --timeout.
    TimedOut = 4,
    /// No DeviceLink of that name in the namespace.
    NotFound = 5,
    /// No cluster reachable with the kubeconfig.
    NoCluster = 6,
    /// The DeviceLink CRD is not installed in the cluster.
    CrdMissing = 7,
    /// RBAC does not allow the request.
    Forbidden = 8,
}

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 link failed or rejected, 4 timed out, \
5 no such link, 6 no cluster reachable, 7 DeviceLink CRD not installed, 8 forbidden by RBAC.";

/// Everything that can go wrong, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach a Kubernetes cluster: {0}\n  check your kubeconfig and context (kubectl cluster-info), or pass --kubeconfig/--context"
    )]
    NoCluster(String),
    #[error(
        "the DeviceLink CRD is not installed in this cluster\n  install it (and the operator): kubectl apply -k deploy/   (see the README)"
    )]
    CrdMissing,
    #[error(
        "no DeviceLink {name:?} in namespace {namespace}\n  `devicelink list -n {namespace}` shows what exists; `devicelink open` creates one"
    )]
    NotFound { name: String, namespace: String },
    #[error(
        "not allowed: {0}\n  ask your cluster admin for access to devicelinks.devicelink.io in this namespace"
    )]
    Forbidden(String),
    #[error("link {name} failed: {message}")]
    LinkFailed { name: String, message: String },
    #[error("the API server rejected link {name}: {message}")]
    Rejected { name: String, message: String },
    #[error(
        "link {name} was not {goal} within {timeout}: {last}\n  `devicelink status {name}` shows its conditions and events; raise --timeout to wait longer"
    )]
    TimedOut {
        name: String,
        goal: &'static str,
        timeout: String,
        last: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::NoCluster(_) => Exit::NoCluster,
            CliError::CrdMissing => Exit::CrdMissing,
            CliError::NotFound { .. } => Exit::NotFound,
            CliError::Forbidden(_) => Exit::Forbidden,
            CliError::LinkFailed { .. } | CliError::Rejected { .. } => Exit::LinkFailed,
            CliError::TimedOut { .. } => Exit::TimedOut,
            CliError::Usage(_) => Exit::Usage,
            CliError::Other(_) => Exit::Error,
        }
    }

    /// Translates an API error about link `name` into what the user should do.
    pub fn from_kube(error: kube::Error, name: &str, namespace: &str) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 404 => {
                // A missing object names itself in the details; a missing resource type does not.
                let names_object = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
                if names_object {
                    CliError::NotFound {
                        name: name.to_owned(),
                        namespace: namespace.to_owned(),
                    }
                } else {
                    CliError::CrdMissing
                }
            }
            kube::Error::Api(status) if status.code == 403 => CliError::Forbidden(status.message),
            kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                CliError::Rejected {
                    name: name.to_owned(),
                    message: status.message,
                }
            }
            kube::Error::Api(status) => {
                CliError::Other(format!("Kubernetes API: {}", status.message))
            }
            kube::Error::HyperError(error) => CliError::NoCluster(error.to_string()),
            kube::Error::Service(error) => CliError::NoCluster(error.to_string()),
            other => CliError::Other(other.to_string()),
        }
    }
}
