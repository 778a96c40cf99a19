//! What devicelink's proxy and operator (and a console) both read, checked one way: source
//! ranges, device addresses, listen addresses, durations, instants, connection limits, link
//! names, and the links file a proxy carries. Every check returns a [`SpecError`] naming the
//! field and the fix, so the same mistake reads the same whether it was made in a flag, a
//! links file or a DeviceLink. Pulls in neither Kubernetes nor the data plane.

mod duration;
mod endpoint;
mod error;
mod instant;
mod limits;
mod links_file;
pub mod memory;
mod name;
pub mod pod_security;
mod source_range;

pub use duration::{MAX_DURATION, format_duration, parse_duration};
pub use endpoint::{
    DeviceAddress, parse_device_address, parse_listen, validate_device, validate_port,
};
pub use error::SpecError;
pub use instant::{format_instant, parse_instant};
pub use limits::{
    MAX_CONNECT_RATE, MAX_CONNECTIONS, parse_max_connections, validate_connect_rate,
    validate_max_connections,
};
pub use links_file::{LinkEntry, LinkSpec, LinksFile, parse_links_file, render_links_file};
pub use name::{MAX_LINK_NAME_LEN, validate_link_name};
pub use source_range::{parse_source_host_or_range, parse_source_range, parse_source_ranges};
