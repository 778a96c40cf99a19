//! The kernel path for one connection: the client and device sockets enter the splice hash and
//! the verdict program moves every byte; user space only steps in where the kernel cannot keep
//! bytes whole and in order, bounds what the proxy queues, and passes the end of each direction
//! on once every byte has moved.
//!
//! - `connection`: a connection's life, from [`carry`] to the maps left clean.
//! - `opening`: under `--data-plane auto`, a new connection's first bytes in the copy, so a
//!   short exchange never pays for entering the splice.
//! - `enter`: the sockets entering the hash without losing or reordering a byte.
//! - `hold`: forwarding the bytes the verdict program held on a source socket.
//! - `pace`: flow control, slowing a sender before its queue limit.
//! - `integrity`: resetting a direction the kernel passed bytes twice on.
//! - `finish`: passing a direction's FIN on once every byte before it moved.
//! - `trial`: measuring on a busy connection whether user space carries it faster.
//! - `carry`: carrying such a connection in user space for a while, sockets still in the hash.
//! - `leave`: taking it out of the hash for the userspace copy, where the kernel allows.
//! - `watcher`: the wake-ups (FINs, errors, the verdict program's notices) of all connections.
//! - `socket`, `direction`, `drain`, `nonblocking`: the sockets and their byte counts, typed
//!   directions, drain-rate timing of looks, and socket I/O that never waits.

mod carry;
mod connection;
mod copy_spell;
mod direction;
mod drain;
mod enter;
mod finish;
mod hold;
mod integrity;
mod leave;
mod nonblocking;
mod opening;
mod pace;
mod quick_acks;
mod socket;
mod trial;
mod watcher;

pub use connection::{Spliced, carry};
pub use trial::{CarryMode, CarryPolicy, LinkTrials};
pub use watcher::SpliceWatcher;
