//! What the console's test-bed tests share: the console run in the proxy namespace of a real
//! topology, its tokens, and a thread that works inside a namespace while borrowing the test's
//! state. Each test crate uses some of these, so the rest are unused there.
#![allow(dead_code)]

pub mod console;
pub mod netns;
