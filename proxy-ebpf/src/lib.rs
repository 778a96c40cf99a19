//! Present so that `devicelink-proxy` can name this crate as a build-dependency (cargo then
//! rebuilds the proxy when the kernel programs change). The programs live in `main.rs`.
#![no_std]
