//! devicelink's proxy as a library: the flags and their validation, the data planes (the eBPF
//! splice and the userspace copy), the accept loop with its limits and expiry, and the metrics.
//! `devicelink-proxy` (src/main.rs) is the command line around it.
pub mod acl;
mod btf;
pub mod config;
mod copy;
mod errors;
pub mod kernel;
pub mod metrics;
pub mod proxy;
pub mod route;
mod sockopt;
mod splice;

pub use errors::causes;
