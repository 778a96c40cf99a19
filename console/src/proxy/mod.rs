//! The local backend's side of the multi-link proxy: the config file it renders for it and the
//! client of the proxy's control socket.

pub mod config_file;
pub mod control;
