//! devicelink-console: the Web API for links, over a local SQLite backend (one host, one proxy)
//! or DeviceLink resources on Kubernetes.

pub mod api;
pub mod backend;
pub mod caller;
pub mod clock;
pub mod cluster;
pub mod local;
pub mod metrics;
pub mod model;
pub mod panel;
pub mod problem;
pub mod proxy;
pub mod rules;
pub mod serve;
pub mod tls;
pub mod tokens;
pub mod validate;
