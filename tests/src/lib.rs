//! devicelink's test bed: the client / proxy / device topology in real network namespaces, the
//! proxy run as a real process inside it, and small helpers to run code or commands in a
//! namespace. Used by the integration tests in `tests/tests/` and by `cargo xtask bench`.
//!
//! ```text
//!  client ns                      proxy ns                        device ns
//!  eth0 10.77.1.2 (+ .3)  <--veth-->  to-client 10.77.1.1
//!       fd77:1::2 (+ ::3)             fd77:1::1
//!                                     to-device 10.77.2.1  <--veth-->  eth0 10.77.2.2
//!                                               fd77:2::1                   fd77:2::2
//! ```
//! The proxy namespace also routes between both sides, for "direct" (no proxy) baselines.
//! The second client address (`.3` / `::3`) is the "disallowed source" of ACL tests. Namespaces
//! are named after the test and the process, so tests run in parallel; everything is removed on
//! drop, which never panics.

mod acl_hooks;
mod cgroup;
mod connect;
mod cpu;
mod netns;
mod pattern;
mod process;
mod proxy;
mod topology;

pub mod http;
pub mod image;
pub mod peers;
pub mod proxy_protocol;
pub mod rfb;
pub mod ssh;

pub use acl_hooks::acl_hooks;
pub use cgroup::{CgroupVersion, MemoryCgroup, rss_of};
pub use connect::connect_from;
pub use cpu::{cpu_time_of, machine_busy_time};
pub use http::http_get_in;
pub use netns::Netns;
pub use pattern::{Checksum, Pattern, receive_all, send_pattern};
pub use process::{Process, sh};
pub use proxy::{METRICS_PORT, Proxy, ProxyOptions, parse_metric, proxy_binary};
pub use topology::{
    CLIENT_V4, CLIENT_V6, DEVICE_V4, DEVICE_V6, OTHER_CLIENT_V4, OTHER_CLIENT_V6, PROXY_BACK_IFACE,
    PROXY_BACK_V4, PROXY_BACK_V6, PROXY_FRONT_IFACE, PROXY_FRONT_V4, PROXY_FRONT_V6, Topology,
};
