//! devicelink's proxy as a library: a data plane that carries a set of links, each from allowed
//! clients to one device, and takes changes to that set while it runs.
//!
//! - `config`: flags into a validated [`config::Config`] (pure); `links_file`: the `--config`
//!   file of links.
//! - `table`: the link table, handed the desired links, makes the running state match;
//!   `link`: one link's listener, accept checks and connections; `session`: open connections.
//! - `dataplane`: the eBPF splice (`kernel`, `splice`, `xdp_acl`) or the userspace copy (`copy`).
//! - `reload`, `control`, `metrics`, `events`: keeping the file in force, the control API on a
//!   Unix socket, Prometheus metrics and probes, and the event log they read.
//!
//! `devicelink-proxy` (src/main.rs) is the command line around it.
pub mod acl;
mod btf;
pub mod config;
pub mod control;
mod copy;
pub mod dataplane;
mod errors;
pub mod events;
pub mod kernel;
pub mod link;
pub mod links_file;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod session;
mod sockopt;
mod splice;
pub mod table;
pub mod xdp;
pub mod xdp_acl;

pub use errors::causes;
