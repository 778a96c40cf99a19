//! What the console's tests share: the console run in the proxy namespace of a real topology,
//! its tokens, a thread that works inside a namespace while borrowing the test's state, and a
//! request straight into the router. Each test crate uses some of these, so the rest are unused there.
#![allow(dead_code)]

pub mod console;
pub mod netns;
pub mod router;
