//! What happened to the proxy's links, in order, for whoever watches from outside (the console
//! reads it through the control socket to keep its audit trail). A bounded ring: a reader that
//! falls behind by more than its capacity is told it lost events, never blocks the proxy.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::Notify;

/// Events kept for readers; about 200 bytes each.
const CAPACITY: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SessionOpened,
    SessionClosed,
    LinkStarted,
    LinkStopped,
    LinkExpired,
    LinkFailed,
    ConfigApplied,
    ConfigRefused,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// The link it concerns; empty for events of the whole configuration.
    pub link: String,
    pub kind: EventKind,
    pub client: Option<SocketAddr>,
    pub bytes_to_device: Option<u64>,
    pub bytes_from_device: Option<u64>,
    pub reason: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

impl Event {
    pub fn new(kind: EventKind, link: &str) -> Self {
        Self {
            seq: 0,
            at: SystemTime::now(),
            link: link.to_string(),
            kind,
            client: None,
            bytes_to_device: None,
            bytes_from_device: None,
            reason: None,
        }
    }

    pub fn client(mut self, client: SocketAddr) -> Self {
        self.client = Some(client);
        self
    }

    pub fn bytes(mut self, [to_device, from_device]: [u64; 2]) -> Self {
        self.bytes_to_device = Some(to_device);
        self.bytes_from_device = Some(from_device);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// A page of events for a reader.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Pass this as `after` to get the events that follow.
    pub next: u64,
    /// Events after the reader's `after` were dropped from the ring before it asked.
    pub lost: bool,
    pub events: Vec<Event>,
}

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    appended: Notify,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    last_seq: u64,
}

impl EventLog {
    pub fn push(&self, mut event: Event) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.last_seq += 1;
        event.seq = ring.last_seq;
        if ring.events.len() == CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(event);
        drop(ring);
        self.appended.notify_waiters();
    }

    /// Events with a sequence number above `after`, at most `limit` of them.
    pub fn after(&self, after: u64, limit: usize) -> Page {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // A mark beyond the last event comes from before a restart of the proxy (numbering
        // starts again): that reader gets everything there is, and is told it lost events.
        let restarted = after > ring.last_seq;
        let after = if restarted { 0 } else { after };
        let oldest = ring.events.front().map_or(ring.last_seq + 1, |e| e.seq);
        let events: Vec<Event> = ring
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect();
        Page {
            next: events.last().map_or(after, |e| e.seq),
            lost: restarted || (after + 1 < oldest && after < ring.last_seq),
            events,
        }
    }

    /// Like [`Self::after`], but waits up to `wait` for a first event when there is none yet.
    pub async fn wait_after(&self, after: u64, limit: usize, wait: Duration) -> Page {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let appended = self.appended.notified();
            let page = self.after(after, limit);
            if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
                return page;
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return self.after(after, limit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_get_what_follows_their_mark() {
        let log = EventLog::default();
        log.push(Event::new(EventKind::LinkStarted, "a"));
        log.push(Event::new(EventKind::LinkStarted, "b"));
        let page = log.after(0, 100);
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.next, 2);
        assert!(!page.lost);
        let page = log.after(page.next, 100);
        assert!(page.events.is_empty());
        assert_eq!(page.next, 2, "an empty page keeps the reader's mark");
    }

    #[test]
    fn a_reader_behind_the_ring_is_told_it_lost_events() {
        let log = EventLog::default();
        for _ in 0..CAPACITY + 5 {
            log.push(Event::new(EventKind::SessionOpened, "a"));
        }
        let page = log.after(0, 10);
        assert!(page.lost);
        assert_eq!(page.events[0].seq, 6);
    }

    #[test]
    fn a_mark_from_before_a_restart_starts_over() {
        let log = EventLog::default();
        log.push(Event::new(EventKind::LinkStarted, "a"));
        let page = log.after(500, 10);
        assert!(page.lost);
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.next, 1);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_the_next_event() {
        let log = std::sync::Arc::new(EventLog::default());
        let writer = std::sync::Arc::clone(&log);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.push(Event::new(EventKind::LinkExpired, "a"));
        });
        let page = log.wait_after(0, 10, Duration::from_secs(5)).await;
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].kind, EventKind::LinkExpired);
    }
}
