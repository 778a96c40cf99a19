//! A new connection's opening, carried by the userspace copy: under `--data-plane auto` a
//! connection enters the splice only once it shows it is more than a short exchange.
//!
//! Entering and leaving the splice (its sockets' options, the maps, the watcher, its link's
//! trial membership) costs a connection a fifth of its set-up time: connections that open, ask,
//! get their answer and close (a health check, an API call to the device) were set up at 0.77x
//! the copy's rate through the splice, and gain nothing from it. So the copy carries a
//! connection until it has moved [`OPENING_BYTES`] or stayed open [`OPENING_TIME`], whichever
//! comes first; then it stops between a write and the next read (nothing held in user space,
//! nothing half-read) and the connection enters the splice like one coming back from a spell in
//! the copy. A bulk stream enters within its first milliseconds; an interactive session after
//! [`OPENING_TIME`].

use std::{net::TcpStream as StdTcpStream, time::Duration};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::hold::hold_rcvbuf;
use crate::{
    copy::{self, CarryLimits, Copied, CopyProgress, Outcome},
    session::ConnectionCounters,
    sockopt,
};

/// Bytes (both directions together) after which a connection enters the splice: a few of the
/// copy's reads, well past any request and answer, well under a bulk stream's first
/// millisecond.
pub(super) const OPENING_BYTES: u64 = 256 << 10;

/// How long a connection stays in the copy at most before it enters the splice: an
/// interactive session (SSH, a VNC viewer between frames) is carried by the kernel from here,
/// with the splice's shorter round trips (64 bytes on the bench, p99: about 105 µs in the
/// splice, 130 in the opening's copy). A request and its answer on a near network take well
/// under this; a connection open longer has paid for entering (about 70 µs of the machine's
/// time) many times over.
pub(super) const OPENING_TIME: Duration = Duration::from_millis(20);

/// How a connection's opening ended.
pub(super) enum Opened {
    /// The connection ended in it (or the copy could not stop and carried it to its end).
    Ended(Outcome),
    /// Ready for the splice: the sockets, and what the copy read from each (client, device).
    Enter {
        client: StdTcpStream,
        device: StdTcpStream,
        read: [u64; 2],
        /// What ended the opening: `"bytes"` or `"time"`.
        after: &'static str,
    },
}

/// Copies the connection's opening (see the module's documentation).
pub(super) async fn opening(
    client: TcpStream,
    device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> Opened {
    // The buffers the splice will keep, from the first byte: one shrunk under a window already
    // advertised makes the kernel prune the queue and the sender back off.
    for socket in [&client, &device] {
        let _ = sockopt::set_rcvbuf(socket, hold_rcvbuf(limits.splice_max_queued));
    }
    let progress = CopyProgress::stopping_after(OPENING_BYTES);
    let stop = CancellationToken::new();
    let copied = copy::carry_until(
        client,
        device,
        limits,
        metrics,
        cancel,
        &stop,
        &progress,
        copy::Buffers::Keep,
    );
    tokio::pin!(copied);
    // The copy stops by itself once it moved OPENING_BYTES.
    let copied = tokio::select! {
        copied = &mut copied => copied,
        () = tokio::time::sleep(OPENING_TIME) => {
            stop.cancel();
            (&mut copied).await
        }
    };
    let after = if progress.moved_enough() {
        "bytes"
    } else {
        "time"
    };
    match copied {
        Copied::Ended(outcome) => Opened::Ended(outcome),
        Copied::Stopped {
            client,
            device,
            read,
        } => match (client.into_std(), device.into_std()) {
            (Ok(client), Ok(device)) => Opened::Enter {
                client,
                device,
                read,
                after,
            },
            (Err(err), _) | (_, Err(err)) => Opened::Ended(Outcome::from_io(err)),
        },
    }
}
