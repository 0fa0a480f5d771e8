//! Consumer groups over pull: RocketMQ's POP is broken in the Rust port
//! (spike, §4), so the backend pulls, and tracks what it delivered itself.
//!
//! Durable, in RocketMQ:
//! - a group's progress: the committed offset of each queue, the offset
//!   below which every message is done (acked, dead-lettered or filtered
//!   out), written with `updateConsumerOffset` whenever it moves;
//! - retries: a nacked message is sent again, with the same id, to the
//!   group's retry topic for that topic, [`retry_topic`], delayed by the
//!   back-off of its attempt (the broker's timer); the original is done;
//! - dead letters: after the last attempt, a copy goes to `%DLQ%<group>`
//!   with `__ORIGIN_TOPIC`, `__ORIGIN_MESSAGE_ID`, `__DELIVERY_ATTEMPTS`.
//!
//! - which delivered messages are invisible until when, and which are done
//!   above the committed offset: held here, and journaled to a topic of the
//!   subscription's own (`journal.rs`), from which a restarted gateway, or
//!   another one, picks the state up. Gateways may serve one group at
//!   once: the journal orders their deliveries, the first claim of an
//!   offset wins, and a gateway that finds another's records before its
//!   own reloads and withholds the deliveries it lost. Affinity
//!   (docs/deployment.md) still pays: every such conflict costs a reload.
//!
//! Ordered topics: at most one message of a queue in flight; a nacked one
//! stays at the head of its queue, invisible for its back-off, until it is
//! acked or dead-lettered (RocketMQ's orderly semantics).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{
    broker::{dlq_topic, mark_dead, DELIVERY_ATTEMPTS},
    nonce, ConsumeMode, Error, Message, QueueSelect, Result, StoredMessage,
};
use tokio::time::Instant;

use crate::send::Outgoing;

/// The retry topic of a group for one topic. Per topic, so that a receive
/// for one topic never has to hold another topic's retries. Not RocketMQ's
/// `%RETRY%<group>`: the broker gives topics with that prefix its own
/// retry semantics, and delayed messages sent there never appeared.
pub fn retry_topic(group: &str, topic: &str) -> String {
    format!("{group}%RETRY%{topic}")
}

/// On a retry copy: the topic it was published to, and its attempts so far.
pub(crate) const RETRY_OF: &str = "__RETRY_OF";

/// The group a mode's progress is kept under in RocketMQ: broadcast
/// consumers each keep their own.
pub(crate) fn offset_group(group: &str, mode: &ConsumeMode) -> String {
    match mode {
        ConsumeMode::Clustering => group.to_owned(),
        ConsumeMode::Broadcast { consumer_id } => format!("{group}%{consumer_id}"),
    }
}

/// A message delivered and not yet settled.
#[derive(Debug)]
pub(crate) struct Held {
    /// `None` when known from the journal only: read again when needed.
    pub msg: Option<StoredMessage>,
    /// Delivered again (attempt + 1) from this instant on.
    pub visible_at: Instant,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// In the receipt; a redelivery changes it, voiding older receipts.
    pub nonce: u64,
    /// The nonce of the delivery this one replaced (0: the first). The
    /// journal orders gateways' claims by it (`journal.rs`).
    pub prev: u64,
    /// The backend that made this delivery ([`Sub::me`] of its writer; 0
    /// when unknown: a journal written before owners were recorded).
    pub owner: u64,
}

// === impl Held ===

impl Held {
    /// Replaces this delivery with a new one by backend `me` (a
    /// redelivery, a nack that keeps it in place, a settle's claim)
    /// invisible until `visible_at`: a new nonce, naming the one it
    /// replaces. Returns the new nonce.
    pub fn replace(&mut self, me: u64, visible_at: Instant) -> u64 {
        self.prev = self.nonce;
        self.nonce = nonce();
        self.owner = me;
        self.visible_at = visible_at;
        self.nonce
    }

    /// Whether backend `me` delivers it again at `now`: its own deliveries
    /// at their deadline, another's [`FOREIGN_GRACE`] after it.
    pub fn due(&self, me: u64, now: Instant) -> bool {
        let grace = match self.owner == me {
            true => Duration::ZERO,
            false => FOREIGN_GRACE,
        };
        self.visible_at + grace <= now
    }
}

/// How much later than its own a gateway redelivers another's expired
/// delivery: the other's ack may still be in its journal linger (10 ms),
/// and clocks differ; 1 s is far above both.
const FOREIGN_GRACE: Duration = Duration::from_secs(1);

/// One queue of one pulled topic, for one group.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    /// Everything below is done, as committed to the broker.
    pub committed: u64,
    /// The next offset to pull.
    pub next: u64,
    /// Done at or above `committed`.
    pub done: BTreeSet<u64>,
    pub inflight: BTreeMap<u64, Held>,
}

impl QueueState {
    pub fn at(offset: u64) -> QueueState {
        QueueState {
            committed: offset,
            next: offset,
            ..QueueState::default()
        }
    }

    /// Marks `offset` done; returns the new committed offset if it moved.
    pub fn finish(&mut self, offset: u64) -> Option<u64> {
        self.inflight.remove(&offset);
        if offset < self.committed {
            return None;
        }
        self.done.insert(offset);
        let before = self.committed;
        while self.done.remove(&self.committed) {
            self.committed += 1;
        }
        (self.committed != before).then_some(self.committed)
    }

    /// Moves to `offset`, forgetting what was in flight.
    pub fn jump_to(&mut self, offset: u64) {
        *self = QueueState::at(offset);
    }
}

/// Which of a receive's two topics a queue belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Main,
    Retry,
}

impl Source {
    fn tag(self) -> char {
        match self {
            Source::Main => 'm',
            Source::Retry => 'r',
        }
    }
}

/// A receipt handle: `<m|r>:<queue>:<offset>:<nonce>`.
pub(crate) fn receipt(source: Source, queue: usize, offset: u64, nonce: u64) -> String {
    format!("{}:{queue}:{offset}:{nonce:x}", source.tag())
}

pub(crate) fn parse_receipt(r: &str) -> Result<(Source, usize, u64, u64)> {
    let mut it = r.split(':');
    let source = match it.next() {
        Some("m") => Source::Main,
        Some("r") => Source::Retry,
        _ => return Err(Error::BadReceipt),
    };
    let queue = it
        .next()
        .and_then(|q| q.parse().ok())
        .ok_or(Error::BadReceipt)?;
    let offset = it
        .next()
        .and_then(|o| o.parse().ok())
        .ok_or(Error::BadReceipt)?;
    let nonce = it
        .next()
        .and_then(|n| u64::from_str_radix(n, 16).ok())
        .ok_or(Error::BadReceipt)?;
    if it.next().is_some() {
        return Err(Error::BadReceipt);
    }
    Ok((source, queue, offset, nonce))
}

/// A group's state for one topic: its queues and its retry topic's.
#[derive(Debug)]
pub(crate) struct Sub {
    pub group: String,
    pub topic: String,
    pub main: Vec<QueueState>,
    /// Empty for broadcast consumers (they never retry through the broker).
    pub retry: Vec<QueueState>,
    /// As the last receive said: a nacked message then retries in place.
    pub ordered: bool,
    /// The durable copy of the state above (`journal.rs`).
    pub journal: crate::journal::Journal,
    /// This backend's id, random per process and backend: the owner of
    /// the deliveries it makes. It outlives reloads (the journal records
    /// each delivery's owner), so a gateway tells its own deliveries from
    /// another's after one too.
    pub me: u64,
}

impl Sub {
    pub fn queues(&self, s: Source) -> &[QueueState] {
        match s {
            Source::Main => &self.main,
            Source::Retry => &self.retry,
        }
    }

    /// The delivery of `offset` in queue `q` of source `s`, if in flight.
    pub fn held(&self, s: Source, q: usize, offset: u64) -> Option<&Held> {
        self.queues(s).get(q)?.inflight.get(&offset)
    }

    /// Every queue, main then retry, with its source and index.
    pub fn all_queues(&self) -> impl Iterator<Item = (Source, usize, &QueueState)> {
        [Source::Main, Source::Retry]
            .into_iter()
            .flat_map(move |s| {
                self.queues(s)
                    .iter()
                    .enumerate()
                    .map(move |(q, st)| (s, q, st))
            })
    }

    /// The delivery a receipt names: `offset`'s, if its nonce is still
    /// `nonce` (a redelivery since voids the receipt).
    pub fn held_with(&self, (s, q, offset): (Source, usize, u64), nonce: u64) -> Option<&Held> {
        self.held(s, q, offset).filter(|h| h.nonce == nonce)
    }

    pub fn held_mut(&mut self, s: Source, q: usize, offset: u64) -> Option<&mut Held> {
        self.queues_mut(s).get_mut(q)?.inflight.get_mut(&offset)
    }

    pub fn queues_mut(&mut self, s: Source) -> &mut Vec<QueueState> {
        match s {
            Source::Main => &mut self.main,
            Source::Retry => &mut self.retry,
        }
    }

    /// Moves the messages `old` held into the same offsets' deliveries
    /// here, which a reload knows from the journal without their messages:
    /// a redelivery then need not read them again. An offset names one
    /// message for good, whoever delivered it since.
    pub fn keep_bodies(&mut self, old: &mut Sub) {
        for s in [Source::Main, Source::Retry] {
            for (q, st) in old.queues_mut(s).iter_mut().enumerate() {
                for (offset, h) in &mut st.inflight {
                    if let Some(new) = self.held_mut(s, q, *offset) {
                        new.msg = new.msg.take().or_else(|| h.msg.take());
                    }
                }
            }
        }
    }

    /// The pulled topic of a source.
    pub fn topic_of(&self, s: Source) -> String {
        match s {
            Source::Main => self.topic.clone(),
            Source::Retry => retry_topic(&self.group, &self.topic),
        }
    }

    /// Registers a delivery and returns its receipt.
    pub fn hold(
        &mut self,
        s: Source,
        q: usize,
        msg: StoredMessage,
        attempt: u32,
        invisible: std::time::Duration,
    ) -> Option<String> {
        let offset = msg.queue_offset;
        let n = nonce();
        let owner = self.me;
        let st = self.queues_mut(s).get_mut(q)?;
        st.inflight.insert(
            offset,
            Held {
                msg: Some(msg),
                visible_at: Instant::now() + invisible,
                attempt,
                nonce: n,
                prev: 0,
                owner,
            },
        );
        Some(receipt(s, q, offset, n))
    }
}

/// A retried or dead-lettered message (`m`, held as `held`) as it is sent
/// again.
pub(crate) fn resend(
    m: &StoredMessage,
    held: &Held,
    group: &str,
    topic: &str,
    dead: bool,
    due_ms: i64,
) -> Outgoing {
    let mut properties = m.properties.clone();
    properties.remove(RETRY_OF);
    properties.insert(DELIVERY_ATTEMPTS.into(), held.attempt.to_string());
    let target = if dead {
        mark_dead(&mut properties, topic, &m.id, held.attempt);
        dlq_topic(group)
    } else {
        properties.insert(RETRY_OF.into(), topic.to_owned());
        retry_topic(group, topic)
    };
    Outgoing {
        msg: Message {
            topic: target,
            body: m.body.clone(),
            tag: m.tag.clone(),
            keys: m.keys.clone(),
            properties,
            born_ms: m.born_ms,
        },
        select: QueueSelect::RoundRobin,
        id: m.id,
        deliver_at_ms: (!dead).then_some(due_ms),
    }
}

/// A retry copy as its consumer sees it: under its topic, with its
/// attempt number (the attempts before it, plus this one).
pub(crate) fn unwrap_retry(mut m: StoredMessage) -> (StoredMessage, u32) {
    let attempts = m
        .properties
        .remove(DELIVERY_ATTEMPTS)
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(0);
    if let Some(t) = m.properties.remove(RETRY_OF) {
        m.topic = t;
    }
    (m, attempts + 1)
}

/// Subscriptions by (offset group, topic). Each has its own async mutex,
/// held across the broker calls of one receive or settle: two receives of
/// one group must not pull the same offsets.
pub(crate) type Subs = std::sync::Mutex<
    std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<Option<Sub>>>>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_garbage_is_refused() {
        let r = receipt(Source::Retry, 3, 42, 0xdead);
        let (s, q, o, n) = parse_receipt(&r).unwrap();
        assert_eq!((s, q, o, n), (Source::Retry, 3, 42, 0xdead));
        for bad in ["", "x:1:2:3", "m:1:2", "m:a:2:3", "m:1:2:3:4", "m:1:2:zz"] {
            assert!(
                matches!(parse_receipt(bad), Err(Error::BadReceipt)),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_committed_offset_moves_over_contiguous_done_offsets_only() {
        let mut q = QueueState::at(10);
        assert_eq!(q.finish(11), None);
        assert_eq!(q.finish(12), None);
        assert_eq!(q.finish(10), Some(13));
        assert_eq!(q.finish(5), None);
        assert_eq!(q.committed, 13);
        assert!(q.done.is_empty());
    }

    #[test]
    fn another_backends_delivery_falls_due_a_grace_later() {
        let (me, other) = (0xA1, 0xB1);
        let t0 = Instant::now();
        let mut h = Held {
            msg: None,
            visible_at: t0,
            attempt: 1,
            nonce: 7,
            prev: 0,
            owner: other,
        };
        assert!(!h.due(me, t0));
        assert!(!h.due(me, t0 + FOREIGN_GRACE - Duration::from_millis(1)));
        assert!(h.due(me, t0 + FOREIGN_GRACE));
        assert!(h.due(other, t0), "its owner's own, at the deadline");
        // Replaced by `me` (a redelivery, after a reload or not): its own.
        let n = h.replace(me, t0);
        assert_eq!((h.prev, h.nonce, h.owner), (7, n, me));
        assert!(h.due(me, t0));
    }
}
