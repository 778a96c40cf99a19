//! How much memory a proxy's connections may take, and how many fit in a budget: the one
//! arithmetic the proxy uses to size its queues and its connection limit, and the operator uses
//! to pass a connection limit consistent with the memory limit it gives the proxy's pod.
//!
//! A connection's worst case is every buffer it may fill full at once: on the splice, each
//! direction's queue (`--splice-max-queued`, bytes redirected and not yet acknowledged by the
//! receiver) plus the receive buffer the proxy fixes on the socket that feeds it; in the
//! userspace copy, a receive and a send buffer on each of the two sockets plus the copy buffers.
//! Socket buffers are limits, not allocations: an idle connection costs almost nothing, and the
//! worst case is what a client that stops reading while its device streams can make the proxy
//! hold (docs/data-plane.md, "Memory: what the kernel charges and where").

use crate::MAX_CONNECTIONS;

/// What the proxy takes apart from its connections: code, heap and runtime, the BPF maps (sized
/// for [`MAX_CONNECTIONS`] connections), the metrics and the control API. The measured resident
/// size of an idle proxy with both planes loaded is well under half of this.
pub const RESERVE_BYTES: u64 = 48 << 20;

/// The budget when the proxy's cgroup sets no memory limit and the machine's memory cannot be
/// read either (with no limit, the proxy takes the machine's memory as its budget).
pub const DEFAULT_BUDGET_WITHOUT_LIMIT: u64 = 2 << 30;

/// Per connection, whatever the plane: the two sockets' own structures, the session, its task
/// and its map entries.
pub const CONNECTION_OVERHEAD_BYTES: u64 = 64 << 10;

/// The kernel keeps bytes in skbs whose size (`truesize`) exceeds the bytes they carry. The
/// splice's queue limit counts bytes carried; its worst case counts them at 5/4 of that (seen:
/// 1.0-1.1x with GRO-merged segments, docs/data-plane.md).
pub const QUEUE_TRUESIZE_PERCENT: u64 = 125;

/// The copy buffer the userspace copy reads into, per direction.
pub const COPY_BUFFER_BYTES: u64 = 128 << 10;

/// Default `--splice-max-queued`: what one direction of a spliced connection may have inside
/// the proxy before its sender waits.
pub const DEFAULT_SPLICE_MAX_QUEUED: u64 = 64 << 20;
/// Default `--splice-sndbuf`: one stream through the splice ran 5-15% faster at 16M-32M than
/// at 8M in every `--splice-sndbuf` sweep, 16M a little ahead of 32M and 64M
/// (docs/benchmarks.md); the send buffer holds part of the queue, so the worst case does not
/// grow.
pub const DEFAULT_SPLICE_SNDBUF: u64 = 16 << 20;
/// Default `--copy-socket-buffer`: the receive and send buffer asked for each socket of a
/// connection the userspace copy carries.
pub const DEFAULT_COPY_SOCKET_BUFFER: u64 = 1 << 20;
/// Default `--copy-socket-buffer` when the copy's sockets receive through an XDP program in skb
/// mode. Skb mode copies every cloned or paged skb into one linear buffer before the program
/// runs, counted at twice its data or more against the receiving socket's buffer: at 1 MiB one
/// upload through the copy ran at 2.5 Gbit/s against 11.4 without the program (2M 6.8, 4M 10.8;
/// docs/data-plane.md, known limits).
pub const DEFAULT_COPY_SOCKET_BUFFER_BEHIND_SKB_XDP: u64 = 4 << 20;

/// How far defaulted sizes shrink when no connection limit is given: below these one bulk
/// transfer slows to a crawl (one stream through the splice, veth: 64M 12.5 Gbit/s, 8M 0.3-0.5,
/// 2M and 512K 0.05, persist-timer stalls), and fewer connections is the better trade.
pub const FLOOR_SPLICE_MAX_QUEUED: u64 = 32 << 20;
pub const FLOOR_COPY_SOCKET_BUFFER: u64 = 256 << 10;

/// The smallest sizes defaulted sizes shrink to when a given connection limit needs it (or not
/// even one connection fits at the floors above): slow, but what was asked for.
pub const MIN_SPLICE_MAX_QUEUED: u64 = 256 << 10;
pub const MIN_COPY_SOCKET_BUFFER: u64 = 64 << 10;

/// The connection limit when none is given, if the budget allows it (per link, and for the
/// process).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;

/// With no connection limit given, defaulted sizes shrink only until this many connections fit:
/// enough sessions for a device link, without giving up a bulk transfer's speed for a thousand
/// connections that rarely come.
pub const SIZED_FOR_CONNECTIONS: u32 = 64;

/// How many connections of `per_connection_bytes` each fit in `budget_bytes` once `reserve`
/// is set aside; at most [`MAX_CONNECTIONS`], 0 when not even the reserve fits.
pub fn connections_within(budget_bytes: u64, per_connection_bytes: u64, reserve: u64) -> u32 {
    let room = budget_bytes.saturating_sub(reserve);
    let fit = room / per_connection_bytes.max(1);
    u32::try_from(fit).unwrap_or(u32::MAX).min(MAX_CONNECTIONS)
}

/// The receive buffer (`SO_RCVBUF` as asked; the kernel keeps twice this) the splice fixes on
/// each socket: it bounds what a hold at the queue limit keeps on the socket.
pub fn splice_receive_buffer(max_queued: u64) -> u64 {
    (max_queued / 8).clamp(256 << 10, 4 << 20)
}

/// One spliced connection's worst case: per direction, its queue at the limit (at
/// [`QUEUE_TRUESIZE_PERCENT`]), the feeding socket's receive buffer full (twice what was
/// asked, as the kernel keeps it) and a copy buffer (while user space carries the connection).
/// The send buffer holds part of the queue, so it adds nothing.
pub fn splice_worst_case(max_queued: u64) -> u64 {
    let per_direction = max_queued * QUEUE_TRUESIZE_PERCENT / 100
        + 2 * splice_receive_buffer(max_queued)
        + COPY_BUFFER_BYTES;
    2 * per_direction + CONNECTION_OVERHEAD_BYTES
}

/// One connection's worst case in the userspace copy: each socket's receive and send buffer
/// full (each twice `socket_buffer`, as the kernel keeps them) and both copy buffers.
pub fn copy_worst_case(socket_buffer: u64) -> u64 {
    2 * (2 * socket_buffer + 2 * socket_buffer) + 2 * COPY_BUFFER_BYTES + CONNECTION_OVERHEAD_BYTES
}

/// Which plane's worst case applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// The eBPF splice: `queue` is `--splice-max-queued`, `socket_buffer` `--splice-sndbuf`.
    Splice,
    /// The userspace copy: `socket_buffer` is `--copy-socket-buffer`; `queue` is unused.
    Copy,
}

/// What the proxy was asked for: `None` where a size or the limit was left to its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRequest {
    pub budget: u64,
    pub reserve: u64,
    pub plane: Plane,
    pub max_connections: Option<u32>,
    pub queue: Option<u64>,
    pub socket_buffer: Option<u64>,
    /// Whether the connections' packets come in through an XDP program in skb mode
    /// (`--xdp-interface` with `--xdp-mode skb`): the copy's defaulted buffers then start at
    /// [`DEFAULT_COPY_SOCKET_BUFFER_BEHIND_SKB_XDP`].
    pub behind_skb_xdp: bool,
}

/// The sizes and the limit that fit the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub max_connections: u32,
    pub queue: u64,
    pub socket_buffer: u64,
    /// One connection's worst case at these sizes.
    pub per_connection: u64,
    /// Whether defaulted sizes were made smaller than their defaults to fit.
    pub shrunk: bool,
}

/// Why no plan fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryPlanError {
    /// The connection limit given, at the smallest sizes allowed (the given ones, or the
    /// smallest the defaults shrink to), needs more than the budget.
    #[error(
        "{connections} connections x {per_connection} bytes each (worst case) + {reserve} bytes reserved = {needed} bytes, over the memory budget of {budget} bytes"
    )]
    Overcommitted {
        connections: u32,
        per_connection: u64,
        reserve: u64,
        needed: u64,
        budget: u64,
    },
}

/// Sizes the connections to the budget. Defaulted sizes are halved until the connection limit
/// fits: a given limit (down to the minimums above, else an error), or, with none given,
/// [`SIZED_FOR_CONNECTIONS`] (down to the floors above; the limit is then what fits, at most
/// [`DEFAULT_MAX_CONNECTIONS`], and at least 1, shrinking further if even one does not fit).
pub fn plan(request: &MemoryRequest) -> Result<MemoryPlan, MemoryPlanError> {
    let given = request.max_connections;
    let (mut queue, mut buffer) = match request.plane {
        Plane::Splice => (
            request.queue.unwrap_or(DEFAULT_SPLICE_MAX_QUEUED),
            request.socket_buffer.unwrap_or(DEFAULT_SPLICE_SNDBUF),
        ),
        Plane::Copy => (
            0,
            request.socket_buffer.unwrap_or(if request.behind_skb_xdp {
                DEFAULT_COPY_SOCKET_BUFFER_BEHIND_SKB_XDP
            } else {
                DEFAULT_COPY_SOCKET_BUFFER
            }),
        ),
    };
    let worst = |queue: u64, buffer: u64| match request.plane {
        Plane::Splice => splice_worst_case(queue),
        Plane::Copy => copy_worst_case(buffer),
    };
    let fit =
        |queue, buffer| connections_within(request.budget, worst(queue, buffer), request.reserve);
    // The size that shrinks (the splice's queue, the copy's buffers), if it was defaulted.
    let shrinkable = match request.plane {
        Plane::Splice => request.queue.is_none(),
        Plane::Copy => request.socket_buffer.is_none(),
    };
    let (floor, min) = match request.plane {
        Plane::Splice => (FLOOR_SPLICE_MAX_QUEUED, MIN_SPLICE_MAX_QUEUED),
        Plane::Copy => (FLOOR_COPY_SOCKET_BUFFER, MIN_COPY_SOCKET_BUFFER),
    };
    let mut shrunk = false;
    let mut halve_until = |wanted: u32, lowest: u64, queue: &mut u64, buffer: &mut u64| {
        while shrinkable && fit(*queue, *buffer) < wanted {
            let size = match request.plane {
                Plane::Splice => &mut *queue,
                Plane::Copy => &mut *buffer,
            };
            if *size / 2 < lowest {
                break;
            }
            *size /= 2;
            shrunk = true;
            if request.plane == Plane::Splice && request.socket_buffer.is_none() {
                // A send buffer larger than the queue could never fill.
                *buffer = (*buffer).min(*queue);
            }
        }
    };
    match given {
        Some(wanted) => halve_until(wanted, min, &mut queue, &mut buffer),
        None => {
            halve_until(SIZED_FOR_CONNECTIONS, floor, &mut queue, &mut buffer);
            halve_until(1, min, &mut queue, &mut buffer);
        }
    }
    let per_connection = worst(queue, buffer);
    let fits = fit(queue, buffer);
    let max_connections = match given {
        Some(wanted) if fits >= wanted => wanted,
        None if fits >= 1 => fits.min(DEFAULT_MAX_CONNECTIONS),
        _ => {
            let connections = given.unwrap_or(1);
            return Err(MemoryPlanError::Overcommitted {
                connections,
                per_connection,
                reserve: request.reserve,
                needed: u64::from(connections) * per_connection + request.reserve,
                budget: request.budget,
            });
        }
    };
    Ok(MemoryPlan {
        max_connections,
        queue,
        socket_buffer: buffer,
        per_connection,
        shrunk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(plane: Plane, budget: u64) -> MemoryRequest {
        MemoryRequest {
            budget,
            reserve: RESERVE_BYTES,
            plane,
            max_connections: None,
            queue: None,
            socket_buffer: None,
            behind_skb_xdp: false,
        }
    }

    #[test]
    fn connections_within_sets_the_reserve_aside_and_caps_at_the_map_size() {
        assert_eq!(connections_within(100, 10, 20), 8);
        assert_eq!(
            connections_within(10, 10, 20),
            0,
            "not even the reserve fits"
        );
        assert_eq!(connections_within(u64::MAX, 1, 0), MAX_CONNECTIONS);
        assert_eq!(connections_within(100, 0, 0), 100, "no division by zero");
    }

    #[test]
    fn worst_cases_count_every_buffer_a_stalled_connection_can_fill() {
        // 64 MiB queue: 2 x (80 MiB + 2 x 4 MiB + a copy buffer) + overhead.
        assert_eq!(
            splice_worst_case(64 << 20),
            2 * ((80 << 20) + (8 << 20) + (128 << 10)) + CONNECTION_OVERHEAD_BYTES
        );
        assert_eq!(splice_receive_buffer(1 << 20), 256 << 10);
        assert_eq!(
            copy_worst_case(1 << 20),
            (8 << 20) + (256 << 10) + CONNECTION_OVERHEAD_BYTES
        );
    }

    #[test]
    fn a_large_budget_keeps_the_defaults() {
        let plan = plan(&request(Plane::Copy, 64 << 30)).unwrap();
        assert_eq!(plan.socket_buffer, DEFAULT_COPY_SOCKET_BUFFER);
        assert_eq!(plan.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(!plan.shrunk);
    }

    #[test]
    fn the_copy_behind_skb_mode_xdp_starts_from_larger_buffers_and_shrinks_to_fit() {
        let mut behind = request(Plane::Copy, 64 << 30);
        behind.behind_skb_xdp = true;
        let roomy = plan(&behind).unwrap();
        assert_eq!(
            roomy.socket_buffer,
            DEFAULT_COPY_SOCKET_BUFFER_BEHIND_SKB_XDP
        );
        assert!(!roomy.shrunk);
        // A pod's 1 GiB: 64 connections fit at 1 MiB, not at 4 or 2.
        behind.budget = 1 << 30;
        let tight = plan(&behind).unwrap();
        assert!(tight.shrunk);
        assert_eq!(tight.socket_buffer, 1 << 20);
        assert_eq!(
            tight.max_connections,
            plan(&request(Plane::Copy, 1 << 30))
                .unwrap()
                .max_connections,
            "the same limit as without XDP once shrunk to the same size"
        );
        let mut splice = request(Plane::Splice, 64 << 30);
        splice.behind_skb_xdp = true;
        assert_eq!(
            plan(&splice).unwrap(),
            plan(&request(Plane::Splice, 64 << 30)).unwrap(),
            "the splice keeps its own buffers"
        );
    }

    #[test]
    fn defaulted_sizes_shrink_to_their_floor_and_the_defaulted_limit_is_what_fits() {
        let plan = plan(&request(Plane::Splice, 256 << 20)).unwrap();
        assert!(plan.shrunk);
        assert_eq!(
            plan.queue, FLOOR_SPLICE_MAX_QUEUED,
            "halved towards 64 connections, not below the floor"
        );
        assert_eq!(plan.max_connections, 2);
        assert!(plan.socket_buffer <= plan.queue);
        let needed = u64::from(plan.max_connections) * plan.per_connection + RESERVE_BYTES;
        assert!(needed <= 256 << 20, "the worst case fits: {needed}");
        assert_eq!(
            plan.max_connections,
            connections_within(256 << 20, plan.per_connection, RESERVE_BYTES)
        );
    }

    #[test]
    fn a_given_limit_shrinks_defaulted_sizes_only_as_far_as_needed() {
        let mut asked = request(Plane::Splice, 4 << 30);
        asked.max_connections = Some(16);
        let plan = plan(&asked).unwrap();
        assert_eq!(plan.max_connections, 16);
        assert!(16 * plan.per_connection + RESERVE_BYTES <= 4 << 30);
        assert!(
            16 * splice_worst_case(plan.queue * 2) + RESERVE_BYTES > 4 << 30,
            "one halving fewer would not fit"
        );
    }

    #[test]
    fn a_given_limit_and_given_sizes_that_cannot_fit_are_refused_with_the_numbers() {
        let mut asked = request(Plane::Splice, 1 << 30);
        asked.max_connections = Some(100);
        asked.queue = Some(64 << 20);
        let err = plan(&asked).unwrap_err();
        let MemoryPlanError::Overcommitted {
            connections,
            per_connection,
            budget,
            ..
        } = err;
        assert_eq!(
            (connections, per_connection, budget),
            (100, splice_worst_case(64 << 20), 1 << 30)
        );
        assert!(
            err.to_string()
                .contains("over the memory budget of 1073741824 bytes")
        );
    }

    #[test]
    fn a_given_limit_shrinks_below_the_floor_and_so_does_a_budget_too_small_for_one() {
        let mut asked = request(Plane::Splice, 256 << 20);
        asked.max_connections = Some(64);
        let plan = plan(&asked).unwrap();
        assert_eq!(plan.queue, 512 << 10, "halved until the 64 asked for fit");
        let small = super::plan(&request(Plane::Splice, 100 << 20)).unwrap();
        assert_eq!((small.queue, small.max_connections), (16 << 20, 1));
    }

    #[test]
    fn a_budget_below_the_reserve_is_refused() {
        assert!(plan(&request(Plane::Copy, 16 << 20)).is_err());
    }
}
