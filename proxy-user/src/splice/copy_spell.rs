//! A spell in the userspace copy for a connection that left the splice, after which it stays in
//! the copy or comes back into the splice.
//!
//! Where sockets can leave the splice, a trial measures the copy itself rather than user space
//! carrying the sockets in place: the two differ most where the choice matters (eight streams
//! each way: carried in place at 0.3-0.6x the kernel's rate, copied at 1.6x; each skb handed to
//! a psock costs the receiving CPU either way). So the connection leaves, the copy carries it
//! for a window, and then it either stays there or comes back, with no byte lost or reordered:
//! the copy stops between a write and the next read, so nothing is held in user space.

use std::{net::TcpStream as StdTcpStream, time::Duration};

use tokio::{net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::trial::{CopyVerdict, CopyWindow, LinkTrials};
use crate::{
    copy::{self, CarryLimits, Copied, CopyProgress, Outcome},
    session::ConnectionCounters,
};

/// Why a connection left the splice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum LeftFor {
    /// For good: user space won (a trial carried in place, or the link's lately).
    Good,
    /// A trial: the copy is measured against the kernel's rate.
    Trial { kernel_rate: f64 },
    /// Another connection of the link is on trial: copied until that trial ends.
    LinkTrial,
    /// `--splice-carry leave`: copied for `--splice-carry-for`, then back.
    Forced,
}

impl LeftFor {
    /// The `reason` of the `to="copy"` move in `devicelink_splice_moves_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Good => "faster",
            Self::Trial { .. } => "trial",
            Self::LinkTrial => "link_trial",
            Self::Forced => "forced",
        }
    }
}

/// How a spell in the copy ended.
pub(super) enum AfterSpell {
    /// The connection ended during it.
    Ended(Outcome),
    /// The copy carries it to its end.
    Stay {
        client: TcpStream,
        device: TcpStream,
    },
    /// Back into the splice: the sockets, what the copy read from each (client, device), and
    /// the `reason` of the `to="kernel"` move.
    Back {
        client: StdTcpStream,
        device: StdTcpStream,
        read: [u64; 2],
        reason: &'static str,
    },
}

/// How often a spell looks whether its window is over or its link's trial ended.
const SPELL_LOOK: Duration = Duration::from_millis(10);

/// Copies the connection that left the splice `left_for` a reason that may bring it back, until
/// that reason is settled.
pub(super) async fn copy_spell(
    client: TcpStream,
    device: TcpStream,
    left_for: LeftFor,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> AfterSpell {
    let link: &LinkTrials = &metrics.link.trials;
    let policy = &limits.splice_carry;
    let peer = client
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |addr| addr.to_string());
    if left_for == LeftFor::Good {
        return AfterSpell::Stay { client, device };
    }
    let progress = CopyProgress::default();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut window = match left_for {
        LeftFor::Trial { kernel_rate } => Some(CopyWindow::new(
            kernel_rate,
            started,
            link.moved(),
            link.busy_connections(started),
        )),
        _ => None,
    };
    // Settled: whether the copy stays (`Some(true)`), or the connection goes back.
    let mut settled: Option<bool> = None;
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
    let copied = loop {
        tokio::select! {
            copied = &mut copied => break copied,
            () = tokio::time::sleep(SPELL_LOOK), if settled.is_none() => {
                let now = Instant::now();
                settled = match (left_for, window.as_mut()) {
                    (LeftFor::Trial { .. }, Some(window)) => match window.judge(now, link.moved(), policy, link) {
                        CopyVerdict::Measuring => None,
                        CopyVerdict::CopyFaster { kernel_rate, copy_rate } => {
                            metrics.count_splice_trial(true);
                            info!(
                                client = %peer,
                                kernel_mb_s = (kernel_rate / 1e6).round(),
                                copy_mb_s = (copy_rate / 1e6).round(),
                                "the userspace copy carries this connection faster than the kernel splice (the kernel's sending work shares a busy CPU); the copy carries it from here"
                            );
                            Some(true)
                        }
                        CopyVerdict::KernelAsFast { kernel_rate, copy_rate } => {
                            metrics.count_splice_trial(false);
                            debug!(
                                client = %peer,
                                kernel_mb_s = (kernel_rate / 1e6).round(),
                                copy_mb_s = (copy_rate / 1e6).round(),
                                "the kernel splice carries this connection as fast as the copy: back into the splice"
                            );
                            Some(false)
                        }
                    },
                    (LeftFor::LinkTrial, _) if !link.trial_running(now) => {
                        let won = link.user_space_won_within(now, policy.stay);
                        if won {
                            info!(
                                client = %peer,
                                "the link's trial, which this connection was copied for, found the copy faster than the kernel splice: the copy carries it from here"
                            );
                        }
                        Some(won)
                    }
                    (LeftFor::Forced, _) if now >= started + policy.stay => Some(false),
                    _ => None,
                };
                if settled == Some(false) {
                    stop.cancel();
                }
            }
        }
    };
    if matches!(left_for, LeftFor::Trial { .. }) && settled.is_none() {
        // Ended (or cancelled) mid-trial: the link's other connections need not wait for it.
        link.abandon_trial();
    }
    match copied {
        Copied::Ended(outcome) => AfterSpell::Ended(outcome),
        Copied::Stopped {
            client,
            device,
            read,
        } if settled == Some(false) => match (client.into_std(), device.into_std()) {
            (Ok(client), Ok(device)) => AfterSpell::Back {
                client,
                device,
                read,
                reason: if left_for == LeftFor::Forced {
                    "stay_over"
                } else {
                    "kernel_as_fast"
                },
            },
            (Err(err), _) | (_, Err(err)) => AfterSpell::Ended(Outcome::from_io(err)),
        },
        // Only a verdict for the splice stops the copy.
        Copied::Stopped { client, device, .. } => AfterSpell::Stay { client, device },
    }
}
