//! A subscription's delivery state, made durable in RocketMQ: which
//! delivered messages are invisible until when (with their attempt and
//! receipt nonce), and which are done above the committed offset.
//!
//! The journal of subscription (offset group `G`, topic `T`) is the topic
//! `G%STATE%T`, one queue. Each journal message is a JSON array of
//! [`Rec`]s:
//! - `Held`: delivered (again), or kept in flight with a new visible time
//!   and nonce (a nack on an ordered queue or a broadcast consumer);
//! - `Done`: finished offsets (acked, retried, dead-lettered; filtered out
//!   above the committed offset);
//! - `Snapshot`: the whole state at that point.
//!
//! Invariants:
//! - Replay starts at the journal's *start*, the committed offset of group
//!   `G%STATE` on the journal topic, and always at a `Snapshot` (or at the
//!   journal's beginning). Records about offsets below a queue's committed
//!   offset are ignored: the committed offset is the truth below it.
//! - Wall-clock times: a replaying process turns `at` (ms since the epoch)
//!   back into its own monotonic clock.
//! - A process that loads a subscription replays the journal and writes a
//!   snapshot; after [`SNAPSHOT_EVERY`] appends it writes another, and moves
//!   the start to it, so replay stays short.
//! - A receive appends its `Held` record before it returns the deliveries;
//!   every settled offset's `Done` record (also one that moves the
//!   committed offset: the append is how a stale process notices) is
//!   appended within [`LINGER`] by a flusher task, batched. A crash loses at most that window's acks: those
//!   messages come again (at least once, as RocketMQ's own consumers after
//!   a crash before their offset commit).
//! - Each process knows the offset its next append should get. Another
//!   offset means another gateway appended meanwhile (the load balancer
//!   moved the group): the subscription is marked stale and reloaded at its
//!   next call. Until then duplicates are possible, never loss.

use std::sync::{Arc, Weak};
use std::time::Duration;

use cellgate_broker_core::{now_ms, Message, Result};
use rocketmq_client_rust::DefaultMQProducer;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::consume::{Held, QueueState, Source, Sub, Subs};
use crate::convert::to_rocketmq;
use crate::error::sent;

/// Appends between snapshots.
pub(crate) const SNAPSHOT_EVERY: u32 = 256;
/// How long acks wait for others to share their journal append.
pub(crate) const LINGER: Duration = Duration::from_millis(10);
/// A snapshot larger than this is not written (the start stays put, and
/// replay is longer): the broker's 4 MiB message limit.
const MAX_SNAPSHOT_BYTES: usize = 3 << 20;

/// The journal topic of a subscription.
pub(crate) fn journal_topic(offset_group: &str, topic: &str) -> String {
    format!("{offset_group}%STATE%{topic}")
}

/// The group whose committed offset is the journal's start.
pub(crate) fn journal_group(offset_group: &str) -> String {
    format!("{offset_group}%STATE")
}

/// A message in flight: source (0 main, 1 retry), queue, offset, visible
/// again at (ms since the epoch), attempt, receipt nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldRec(pub u8, pub u16, pub u64, pub i64, pub u32, pub u64);

/// A finished offset: source, queue, offset.
pub(crate) type DoneRec = (u8, u16, u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rec {
    Held(Vec<HeldRec>),
    Done(Vec<DoneRec>),
    Snapshot {
        held: Vec<HeldRec>,
        done: Vec<DoneRec>,
    },
}

/// A subscription's journal bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// The offset this process's next append should get.
    pub next: u64,
    /// Records not yet appended.
    pub pending: Vec<Rec>,
    /// Appends since the last snapshot.
    pub since_snapshot: u32,
    /// Another process appended: reload before the next call.
    pub stale: bool,
}

fn src(s: Source) -> u8 {
    match s {
        Source::Main => 0,
        Source::Retry => 1,
    }
}

fn source(b: u8) -> Source {
    if b == 0 {
        Source::Main
    } else {
        Source::Retry
    }
}

/// The record of a delivery, as held now.
pub(crate) fn held_rec(s: Source, q: usize, offset: u64, h: &Held) -> HeldRec {
    let left = h.visible_at.saturating_duration_since(Instant::now());
    let at = now_ms() + left.as_millis() as i64;
    HeldRec(src(s), q as u16, offset, at, h.attempt, h.nonce)
}

pub(crate) fn done_rec(s: Source, q: usize, offset: u64) -> DoneRec {
    (src(s), q as u16, offset)
}

// === impl Sub: the journal's view ===

impl Sub {
    /// The whole state as one record.
    pub fn snapshot(&self) -> Rec {
        let (mut held, mut done) = (Vec::new(), Vec::new());
        for s in [Source::Main, Source::Retry] {
            for (q, st) in self.queues(s).iter().enumerate() {
                held.extend(st.inflight.iter().map(|(o, h)| held_rec(s, q, *o, h)));
                done.extend(st.done.iter().map(|o| done_rec(s, q, *o)));
            }
        }
        Rec::Snapshot { held, done }
    }

    /// Applies one replayed record.
    pub fn apply(&mut self, rec: Rec) {
        match rec {
            Rec::Held(hs) => hs.into_iter().for_each(|h| self.apply_held(h)),
            Rec::Done(ds) => ds.into_iter().for_each(|d| self.apply_done(d)),
            Rec::Snapshot { held, done } => {
                for st in self.main.iter_mut().chain(self.retry.iter_mut()) {
                    let c = st.committed;
                    st.jump_to(c);
                }
                held.into_iter().for_each(|h| self.apply_held(h));
                done.into_iter().for_each(|d| self.apply_done(d));
            }
        }
    }

    fn queue_at(&mut self, s: u8, q: u16) -> &mut QueueState {
        let queues = self.queues_mut(source(s));
        let q = usize::from(q);
        if queues.len() <= q {
            queues.resize_with(q + 1, QueueState::default);
        }
        &mut queues[q]
    }

    fn apply_held(&mut self, HeldRec(s, q, offset, at, attempt, nonce): HeldRec) {
        let st = self.queue_at(s, q);
        if offset < st.committed || st.done.contains(&offset) {
            return;
        }
        st.next = st.next.max(offset + 1);
        let left = Duration::from_millis((at - now_ms()).max(0) as u64);
        st.inflight.insert(
            offset,
            Held {
                msg: None,
                visible_at: Instant::now() + left,
                attempt,
                nonce,
            },
        );
    }

    fn apply_done(&mut self, (s, q, offset): DoneRec) {
        let st = self.queue_at(s, q);
        st.next = st.next.max(offset + 1);
        st.finish(offset);
    }
}

/// The body of the journal message holding `recs`; `None` past the size
/// limit.
pub(crate) fn encode(recs: &[Rec]) -> Result<Option<Vec<u8>>> {
    let body = serde_json::to_vec(recs).map_err(|e| cellgate_broker_core::Error::Remote {
        op: "encode a journal record",
        detail: e.to_string(),
    })?;
    Ok((body.len() <= MAX_SNAPSHOT_BYTES).then_some(body))
}

/// Appends `sub`'s pending records as one journal message; marks the
/// subscription stale if another process appended since this one did.
pub(crate) async fn flush(producer: &DefaultMQProducer, sub: &mut Sub) -> Result<()> {
    if sub.journal.pending.is_empty() {
        return Ok(());
    }
    let recs = std::mem::take(&mut sub.journal.pending);
    let topic = journal_topic(&sub.group, &sub.topic);
    let Some(body) = encode(&recs)? else {
        tracing::warn!(
            topic,
            "a journal record over the size limit was not written"
        );
        return Ok(());
    };
    let offset = append(producer, &topic, body).await?;
    if offset != sub.journal.next {
        sub.journal.stale = true;
    }
    sub.journal.next = offset + 1;
    sub.journal.since_snapshot += 1;
    Ok(())
}

/// Sends one journal message; its queue offset.
pub(crate) async fn append(
    producer: &DefaultMQProducer,
    topic: &str,
    body: Vec<u8>,
) -> Result<u64> {
    let m = Message {
        topic: topic.to_owned(),
        body,
        tag: None,
        keys: Vec::new(),
        properties: Default::default(),
        born_ms: now_ms(),
    };
    let id = cellgate_broker_core::message_id(m.born_ms);
    let res = sent(
        "append to a journal",
        producer.send(to_rocketmq(m, &id, None)?).await,
    )?;
    Ok(res.queue_offset)
}

/// The flusher task: woken by `wake` after an ack or nack, it waits
/// [`LINGER`] and appends every subscription's pending records. Ends with
/// the broker (its `subs` dropped).
pub(crate) async fn flusher(
    subs: Weak<Subs>,
    producer: DefaultMQProducer,
    wake: Arc<tokio::sync::Notify>,
) {
    loop {
        wake.notified().await;
        tokio::time::sleep(LINGER).await;
        let Some(subs) = subs.upgrade() else { return };
        let slots: Vec<_> = subs
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        drop(subs);
        for slot in slots {
            let mut guard = slot.lock().await;
            if let Some(sub) = guard.as_mut() {
                if let Err(e) = flush(&producer, sub).await {
                    tracing::warn!(error = %e, group = sub.group, "acks not journaled; they may be delivered again");
                }
            }
        }
    }
}
