//! One connection's life on the kernel path: it enters the splice (or is handed back to the
//! userspace copy), is watched until both directions ended, one side failed, it idled out or
//! was cancelled, and leaves the maps again.

use std::{net::TcpStream as StdTcpStream, time::Duration};

use devicelink_proxy_common::Direction;
use tokio::{net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{
    carry::Carrying,
    copy_spell::{AfterSpell, LeftFor, copy_spell},
    direction::{BOTH, PerDirection},
    enter::{EnterError, enter},
    finish::{FinState, pass_on_fin},
    hold::Holds,
    integrity::IntegrityChecks,
    leave::{Departure, Leaving},
    opening::{Opened, opening},
    pace::{Pacer, link_share},
    quick_acks::{self, Reader},
    socket::Sockets,
    trial::{CarriedLook, CarryMode, KernelLook, LinkMember, MoveReason, ReturnReason, Trials},
    watcher::SpliceWatcher,
};
use crate::{
    copy::{self, CarryLimits, Outcome},
    kernel::KernelPlane,
    session::ConnectionCounters,
    sockopt,
};

/// How soon a connection on its way out of the splice looks again whether the psock queues
/// are empty.
const LEAVE_LOOK: Duration = Duration::from_millis(1);

/// What becomes of a connection offered to the kernel path.
pub enum Spliced {
    /// Carried to the end in the kernel.
    Done(Outcome),
    /// Carried to its end by the userspace copy within its opening, before it entered the
    /// splice (see the `opening` module).
    Copied(Outcome),
    /// Could not enter the kernel path (for example the client already sent its FIN: a socket
    /// that is no longer ESTABLISHED cannot enter a sockmap); carry it in user space from here.
    /// No byte was lost or reordered: the kernel forwarded nothing.
    Fallback {
        client: TcpStream,
        device: TcpStream,
        reason: String,
    },
    /// Left the splice mid-stream because user space carries it faster (see the `trial` and
    /// `leave` modules): every byte so far moved, the sockets are out of the hash; the copy
    /// carries it to its end.
    Left {
        client: TcpStream,
        device: TcpStream,
    },
}

/// How a connection's watch ended.
enum Watched {
    Ended(Outcome),
    /// It left the splice (see [`Spliced::Left`]), for that reason.
    Left(LeftFor),
}

/// How one stay of a connection in the splice ended.
enum Episode {
    /// As the connection's offer to the kernel path ends.
    Over(Spliced),
    /// Out of the splice for a spell in the copy, which may bring it back; what was consumed
    /// from each socket so far (client, device): read before, redirected and read by user space.
    Left {
        client: TcpStream,
        device: TcpStream,
        left_for: LeftFor,
        consumed: [u64; 2],
    },
}

impl From<Outcome> for Watched {
    fn from(outcome: Outcome) -> Self {
        Self::Ended(outcome)
    }
}

/// Carries one connection in the kernel, or hands it back for the userspace path.
/// `client_read_before`: bytes the proxy read from the client before (a PROXY protocol header),
/// which the end-of-stream and integrity counts must leave out.
#[expect(
    clippy::too_many_arguments,
    reason = "the connection's two sockets, the plane and watcher, and its per-connection settings"
)]
pub async fn carry(
    plane: &KernelPlane,
    watcher: &SpliceWatcher,
    client: TcpStream,
    device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
    client_read_before: u64,
) -> Spliced {
    let (mut client, mut device, mut read_before) = match limits.splice_carry.mode {
        CarryMode::Measure => match opening(client, device, limits, metrics, cancel).await {
            Opened::Ended(outcome) => return Spliced::Copied(outcome),
            Opened::Enter {
                client,
                device,
                read,
                after,
            } => {
                debug!(after, "the connection's opening is over: into the splice");
                (client, device, [client_read_before + read[0], read[1]])
            }
        },
        CarryMode::Never | CarryMode::Always | CarryMode::Leave => {
            match at_once(client, device, metrics, client_read_before).await {
                Ok(entering) => entering,
                Err(spliced) => return spliced,
            }
        }
    };
    let mut again = false;
    // Counted in its link's trials for as long as it may come back into the splice; only
    // trials read it, so without them no descriptors are duplicated on the way in.
    let member = match limits.splice_carry.mode {
        CarryMode::Measure => match metrics.link.trials.join(&client, &device) {
            Ok(member) => Some(member),
            Err(err) => {
                debug!(%err, "this connection's bytes are left out of its link's trials");
                None
            }
        },
        CarryMode::Never | CarryMode::Always | CarryMode::Leave => None,
    };
    loop {
        let episode = splice_once(
            plane,
            watcher,
            client,
            device,
            limits,
            metrics,
            member.as_ref(),
            cancel,
            read_before,
        )
        .await;
        let (left_client, left_device, left_for, consumed) = match episode {
            // Back from the copy and refused by the splice now: the copy carries it on.
            Episode::Over(Spliced::Fallback { client, device, .. }) if again => {
                return Spliced::Left { client, device };
            }
            Episode::Over(Spliced::Done(outcome)) if again => {
                debug!(?outcome, "the connection ended back in the splice");
                return Spliced::Done(outcome);
            }
            Episode::Over(spliced) => return spliced,
            Episode::Left {
                client,
                device,
                left_for,
                consumed,
            } => (client, device, left_for, consumed),
        };
        metrics.count_splice_move("copy", left_for.label());
        match copy_spell(left_client, left_device, left_for, limits, metrics, cancel).await {
            AfterSpell::Ended(outcome) => {
                debug!(?outcome, "the connection ended in a spell in the copy");
                return Spliced::Done(outcome);
            }
            AfterSpell::Stay { client, device } => return Spliced::Left { client, device },
            AfterSpell::Back {
                client: back_client,
                device: back_device,
                read,
                reason,
            } => {
                metrics.count_splice_move("kernel", reason);
                read_before = [consumed[0] + read[0], consumed[1] + read[1]];
                client = back_client;
                device = back_device;
                again = true;
            }
        }
    }
}

/// The sockets of a connection that enters the splice at once, and what was read from each
/// before (client, device); or how it is carried instead.
async fn at_once(
    client: TcpStream,
    mut device: TcpStream,
    metrics: &ConnectionCounters,
    client_read_before: u64,
) -> Result<(StdTcpStream, StdTcpStream, [u64; 2]), Spliced> {
    let mut client_read_before = client_read_before;
    if client_read_before > 0 {
        // A header read off the client may have ended inside an skb whose rest is payload.
        match copy::copy_queued(&client, &mut device, Direction::ToDevice, metrics).await {
            Ok((copied, false)) => client_read_before += copied,
            Ok((_, true)) => {
                return Err(Spliced::Fallback {
                    client,
                    device,
                    reason: "the client ended its stream with its first bytes".into(),
                });
            }
            Err(err) => return Err(Spliced::Done(Outcome::from_io(err))),
        }
    }
    // Out of tokio's reactor: it would wake the proxy for every skb the kernel moves.
    match (client.into_std(), device.into_std()) {
        (Ok(client), Ok(device)) => Ok((client, device, [client_read_before, 0])),
        (Err(err), _) | (_, Err(err)) => Err(Spliced::Done(Outcome::from_io(err))),
    }
}

/// One stay in the splice: enters it, watches it, and leaves the maps again.
#[expect(
    clippy::too_many_arguments,
    reason = "the connection's two sockets, the plane and watcher, and its per-connection settings"
)]
async fn splice_once(
    plane: &KernelPlane,
    watcher: &SpliceWatcher,
    client: StdTcpStream,
    device: StdTcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    member: Option<&LinkMember<'_>>,
    cancel: &CancellationToken,
    read_before: [u64; 2],
) -> Episode {
    let mut sockets = match enter(
        plane,
        client,
        device,
        limits.splice_sndbuf,
        limits.splice_max_queued,
        limits.splice_carry.first_look_mark(),
    ) {
        Ok(sockets) => sockets,
        Err(EnterError::Refused {
            client,
            device,
            reason,
        }) => {
            return Episode::Over(
                match (TcpStream::from_std(client), TcpStream::from_std(device)) {
                    (Ok(client), Ok(device)) => Spliced::Fallback {
                        client,
                        device,
                        reason,
                    },
                    (Err(err), _) | (_, Err(err)) => Spliced::Done(Outcome::from_io(err)),
                },
            );
        }
        Err(EnterError::Io(err)) => return Episode::Over(Spliced::Done(Outcome::from_io(err))),
    };
    sockets.client.read_before = read_before[0];
    sockets.device.read_before = read_before[1];
    metrics.session.set_path("kernel");
    quick_acks::follow(&sockets, limits.spliced_device_mark, Reader::Kernel);
    metrics.spliced(sockets.client.cookie, sockets.device.cookie);
    let watched = watch(
        plane,
        watcher,
        &mut sockets,
        limits,
        metrics,
        member,
        cancel,
    )
    .await;
    // The kernel's counts go with the link entries below: keep them for the session's record.
    // Each socket's count is what it redirected: client to device first.
    let redirected = sockets
        .both()
        .map(|socket| plane.link_bytes(socket.cookie).0);
    metrics.splice_ended(redirected);
    for socket in sockets.both() {
        // Closing the socket (below) takes it out of the hash.
        plane.unlink(socket.cookie, socket.credit_written);
    }
    let outcome = match watched {
        Watched::Ended(outcome) => outcome,
        Watched::Left(left_for) => {
            let consumed = [
                sockets.client.read_before + redirected[0] + sockets.client.user_read,
                sockets.device.read_before + redirected[1] + sockets.device.user_read,
            ];
            let Sockets { client, device } = sockets;
            return match (
                TcpStream::from_std(client.stream),
                TcpStream::from_std(device.stream),
            ) {
                (Ok(client), Ok(device)) => Episode::Left {
                    client,
                    device,
                    left_for,
                    consumed,
                },
                (Err(err), _) | (_, Err(err)) => {
                    Episode::Over(Spliced::Done(Outcome::from_io(err)))
                }
            };
        }
    };
    if outcome.aborts() {
        // Pass the reset on, or cut a connection the proxy closes: closing with a zero linger
        // sends RST to whichever side is still up.
        for socket in sockets.both() {
            let _ = sockopt::set_linger_reset(&socket.stream);
        }
    }
    Episode::Over(Spliced::Done(outcome))
}

/// The connection's life once in the splice: forward held bytes, pace senders, pass FINs on,
/// and end at an error, idleness or cancellation. Sleeps between looks until a wake-up from the
/// watcher or the earliest time something is due.
async fn watch(
    plane: &KernelPlane,
    watcher: &SpliceWatcher,
    sockets: &mut Sockets,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    member: Option<&LinkMember<'_>>,
    cancel: &CancellationToken,
) -> Watched {
    let registration = match watcher.register(sockets) {
        Ok(registration) => registration,
        Err(err) => return Outcome::from_io(err).into(),
    };

    // Set once the direction's FIN is passed on.
    let mut finished = PerDirection::<bool>::default();
    let mut last_bytes = u64::MAX;
    let mut last_activity = Instant::now();
    let idle_check = limits
        .idle_timeout
        .map(|idle| (idle / 8).clamp(Duration::from_millis(20), Duration::from_secs(5)));
    let mut drain_wait = Duration::from_millis(1);
    let mut holds = Holds::new(Instant::now());
    let mut pacer = Pacer::default();
    let mut integrity = IntegrityChecks::new(Instant::now());
    let mut trials = Trials::default();
    // Set while user space carries the connection, with when it goes back to the kernel (none
    // during a trial, whose end decides).
    let mut carrying: Option<Carrying> = None;
    let mut carry_until: Option<Instant> = None;
    // Set once the connection is on its way out of the splice to the copy (on a kernel where
    // sockets can leave it), and why.
    let mut leaving: Option<LeftFor> = None;
    let mut departure = Departure::default();
    let policy = &limits.splice_carry;
    let full_queue = u64::from(limits.splice_max_queued);
    loop {
        let now = Instant::now();
        // Where the link's connections may move between paths, the busier the link, the less
        // each may have queued (see `pace::link_share`).
        let queue_limit = member.map_or(full_queue, |member| {
            link_share(full_queue, member.busy_connections(now))
        });
        let mut drain_wake = None;
        let mut pace_wake = None;
        let mut trial_wake = None;
        // Out of the splice only before either FIN was passed on (the copy passes its own).
        let can_leave = plane.sockets_can_leave()
            && departure.may_leave()
            && !finished.to_device
            && !finished.from_device;
        if let Some(carry) = carrying.as_mut() {
            if let Err(err) = carry.pump(plane, sockets, metrics) {
                return Outcome::from_io(err).into();
            }
            if let Some(left_for) = leaving {
                match departure.try_leave(carry, plane, sockets, now) {
                    Ok(Leaving::Left) => {
                        debug!(
                            client = %peer_name(&sockets.client.stream),
                            reason = left_for.label(),
                            took_ms = departure
                                .first_try
                                .map_or(0, |at| now.duration_since(at).as_millis()),
                            waits_kernel_sending = departure.waits.kernel_sending,
                            waits_writing = departure.waits.writing,
                            waits_reading_held = departure.waits.reading_held,
                            "left the splice for the userspace copy"
                        );
                        return Watched::Left(left_for);
                    }
                    // A psock still queues bytes (the kernel gives no wake-up for that).
                    Ok(Leaving::NotYet) => trial_wake = Some(now + LEAVE_LOOK),
                    Ok(Leaving::Cannot) => {
                        // Its FIN came: it ends in the splice, carried there for now.
                        debug!(
                            client = %peer_name(&sockets.client.stream),
                            reason = left_for.label(),
                            "a socket of the connection is no longer established: it stays in the splice"
                        );
                        if matches!(left_for, LeftFor::Trial { .. }) {
                            metrics.link.trials.abandon_trial();
                        }
                        leaving = None;
                        carry_until = None;
                        trial_wake = Some(now);
                    }
                    Err(err) => {
                        return Outcome::Reset {
                            side: "proxy",
                            error: format!("leaving the splice: {err}"),
                        }
                        .into();
                    }
                }
            } else {
                match trials.look_in_user_space(
                    plane,
                    sockets,
                    policy,
                    &metrics.link.trials,
                    carry_until,
                    now,
                ) {
                    Err(err) => return Outcome::from_io(err).into(),
                    Ok(CarriedLook::Carry { next }) => trial_wake = next,
                    Ok(CarriedLook::Won {
                        until,
                        kernel_rate,
                        user_rate,
                    }) => {
                        metrics.count_splice_trial(true);
                        if can_leave {
                            leaving = Some(LeftFor::Good);
                            trial_wake = Some(now);
                            info!(
                                client = %peer_name(&sockets.client.stream),
                                kernel_mb_s = (kernel_rate / 1e6).round(),
                                user_space_mb_s = (user_rate / 1e6).round(),
                                "user space carries this connection faster than the kernel splice (the kernel's sending work shares a busy CPU); the userspace copy carries it from here"
                            );
                        } else {
                            carry_until = Some(until);
                            trial_wake = Some(until);
                            info!(
                                client = %peer_name(&sockets.client.stream),
                                kernel_mb_s = (kernel_rate / 1e6).round(),
                                user_space_mb_s = (user_rate / 1e6).round(),
                                stay = ?until.duration_since(now),
                                "user space carries this connection faster than the kernel splice (the kernel's sending work shares a busy CPU); it is carried there, its sockets still in the splice, for a while"
                            );
                        }
                    }
                    Ok(CarriedLook::LinkWon { until }) => {
                        if can_leave {
                            leaving = Some(LeftFor::Good);
                            trial_wake = Some(now);
                        } else {
                            carry_until = Some(until);
                            trial_wake = Some(until);
                        }
                        info!(
                            client = %peer_name(&sockets.client.stream),
                            "the link's trial, which this connection was carried for, found user space faster than the kernel splice: {}",
                            if can_leave {
                                "the userspace copy carries it from here"
                            } else {
                                "it stays carried there, its sockets still in the splice, for a while"
                            }
                        );
                    }
                    Ok(CarriedLook::Return(why)) if carry.empty() => {
                        carry_until = None;
                        let reason = match why {
                            ReturnReason::StayOver => "stay_over",
                            ReturnReason::TrialLost => {
                                metrics.count_splice_trial(false);
                                "kernel_as_fast"
                            }
                            ReturnReason::LinkTrialLost => "kernel_as_fast",
                        };
                        if let Some(carry) = carrying.take()
                            && let Err(err) = carry.finish(plane, sockets)
                        {
                            return Outcome::from_io(err).into();
                        }
                        quick_acks::follow(sockets, limits.spliced_device_mark, Reader::Kernel);
                        trials.returned(plane, sockets);
                        holds.recheck_soon(now);
                        metrics.count_splice_move("kernel", reason);
                        if reason == "stay_over" {
                            debug!(
                                client = %peer_name(&sockets.client.stream),
                                "handing the connection back to the kernel splice to measure it again"
                            );
                        }
                    }
                    // Bytes read and not yet written would be overtaken: the pump moves them first.
                    Ok(CarriedLook::Return(_)) => {}
                }
            }
        } else {
            drain_wake = match holds.forward(plane, sockets, queue_limit, metrics, now) {
                Ok(wake) => wake,
                Err(err) => {
                    return Outcome::Reset {
                        side: "proxy",
                        error: format!("forwarding held bytes: {err}"),
                    }
                    .into();
                }
            };
            pace_wake = match pacer.look(plane, sockets, limits, queue_limit, &finished, now) {
                Ok(wake) => wake,
                Err(err) => return Outcome::from_io(err).into(),
            };
            holds.advance_recheck(now);
            match trials.look_in_kernel(plane, sockets, policy, &metrics.link.trials, member, now) {
                Ok(KernelLook::Stay { next }) => trial_wake = next,
                Ok(KernelLook::Move(reason)) => {
                    let started = pacer
                        .release(sockets, limits)
                        .and_then(|()| Carrying::start(plane, sockets));
                    match started {
                        Ok(carry) => carrying = Some(carry),
                        Err(err) => return Outcome::from_io(err).into(),
                    }
                    quick_acks::follow(sockets, limits.spliced_device_mark, Reader::UserSpace);
                    let label = match reason {
                        // The copy is measured outside the splice where sockets can leave it
                        // (see `copy_spell`); elsewhere user space carries them in place.
                        MoveReason::Trial => {
                            if can_leave {
                                leaving = trials
                                    .take_kernel_rate()
                                    .map(|kernel_rate| LeftFor::Trial { kernel_rate });
                            }
                            "trial"
                        }
                        MoveReason::JoinTrial => {
                            if can_leave {
                                leaving = Some(LeftFor::LinkTrial);
                            }
                            "link_trial"
                        }
                        MoveReason::Link => {
                            if can_leave {
                                leaving = Some(LeftFor::Good);
                            } else {
                                carry_until = Some(now + policy.stay_after(trials.wins));
                            }
                            info!(
                                client = %peer_name(&sockets.client.stream),
                                "another busy connection of this link was carried faster in user space than by the kernel splice: this one follows"
                            );
                            "link"
                        }
                        MoveReason::Forced => {
                            if policy.mode == CarryMode::Leave && can_leave {
                                leaving = Some(LeftFor::Forced);
                            } else {
                                carry_until = Some(now + policy.stay);
                            }
                            "forced"
                        }
                    };
                    if leaving.is_none() {
                        // Counted as a move to the copy once out of the splice.
                        metrics.count_splice_move("userspace", label);
                    }
                    debug!(
                        client = %peer_name(&sockets.client.stream),
                        reason = label,
                        "carrying the connection in user space"
                    );
                    // Move what is there at once.
                    continue;
                }
                Err(err) => return Outcome::from_io(err).into(),
            }
        }
        if let Some(outcome) = integrity.check_if_due(plane, sockets, &finished, metrics, now) {
            return outcome.into();
        }
        let mut draining = false;
        for direction in BOTH {
            match pass_on_fin(plane, sockets, direction, finished[direction], metrics) {
                Ok(FinState::NotYet) => {}
                Ok(FinState::Draining) => draining = true,
                Ok(FinState::PassedOn) => {
                    finished[direction] = true;
                    drain_wait = Duration::from_millis(1);
                }
                Err(outcome) => return outcome.into(),
            }
        }
        if finished.all(|done| *done) {
            holds.discard_all_forwarded(sockets);
            return Outcome::Completed.into();
        }

        if let Some(idle) = limits.idle_timeout {
            let bytes = sockets
                .both()
                .iter()
                .map(|socket| plane.link_bytes(socket.cookie).0 + socket.user_read)
                .sum();
            if bytes != last_bytes {
                last_bytes = bytes;
                last_activity = now;
            } else if now.duration_since(last_activity) >= idle {
                return Outcome::IdleTimeout.into();
            }
        }
        let mut wake_at = idle_check.map(|every| now + every);
        let mut sooner = |at: Instant| wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        if draining {
            // Bytes are still on their way through a psock: look again shortly.
            sooner(now + drain_wait);
            drain_wait = (drain_wait * 2).min(Duration::from_millis(50));
        }
        if let Some(at) = holds.recheck_at() {
            sooner(at);
        }
        if let Some(at) = drain_wake {
            sooner(at);
        }
        if let Some(at) = trial_wake {
            sooner(at);
        }
        // A paced direction looks every few milliseconds whether its receiver caught up (see
        // the `pace` module). Until something else is due those looks do only that, two
        // syscalls each, not the whole look above.
        let mut pace_at = pace_wake;
        loop {
            let deadline = match (wake_at, pace_at) {
                (Some(other), Some(pace)) => Some(other.min(pace)),
                (other, pace) => other.or(pace),
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let carried = async {
                match &carrying {
                    Some(carry) => carry.ready().await,
                    None => std::future::pending().await,
                }
            };
            // In the kernel, a win on the link is a reason to look now.
            let link_won = async {
                match (member, &carrying) {
                    (Some(member), None) => member.link_won().await,
                    _ => std::future::pending().await,
                }
            };
            let mut moved = false;
            tokio::select! {
                () = registration.notified() => break,
                () = link_won => break,
                () = carried => moved = true,
                () = sleep => {}
                () = cancel.cancelled() => return Outcome::Cancelled.into(),
            }
            if moved && let Some(carry) = carrying.as_mut() {
                // A socket of a carried connection is ready: move its bytes and wait again.
                // The whole look (a dozen syscalls) runs when something else is due, or once
                // a source has ended, for its FIN: eight VNC viewers carried with a whole look
                // per wake-up got 43 frames/s, 77 without.
                if let Err(err) = carry.pump(plane, sockets, metrics) {
                    return Outcome::from_io(err).into();
                }
                if carry.source_ended() || wake_at.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
                continue;
            }
            let now = Instant::now();
            if pace_at.is_none() || wake_at.is_some_and(|at| now >= at) {
                break;
            }
            pace_at = match pacer.look(plane, sockets, limits, queue_limit, &finished, now) {
                Ok(wake) => wake,
                Err(err) => return Outcome::from_io(err).into(),
            };
            if pace_at.is_none() {
                // Running at full speed again: a whole look moves everything else on.
                break;
            }
        }
    }
}

/// The client's address, for log lines about one connection.
fn peer_name(stream: &std::net::TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |addr| addr.to_string())
}
