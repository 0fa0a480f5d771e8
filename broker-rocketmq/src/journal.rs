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
//! - A process that loads a subscription replays the journal; once the
//!   journal holds [`SNAPSHOT_EVERY`] appends past its start (counting
//!   those the replay read), or the start is older than
//!   [`SNAPSHOT_AGE_MS`], the process writes a snapshot and moves the
//!   start to it, so replay stays short. A start the broker no longer
//!   retains is replayed from its oldest record (logged).
//! - A receive appends its `Held` record before it returns the deliveries;
//!   every settled offset's `Done` record (also one that moves the
//!   committed offset: the append is how a stale process notices) is
//!   appended within [`LINGER`] by a flusher task, batched. A crash loses at most that window's acks: those
//!   messages come again (at least once, as RocketMQ's own consumers after
//!   a crash before their offset commit).
//! - Each process knows the offset its next append should get. Another
//!   offset means another gateway appended meanwhile: the subscription is
//!   marked stale and reloaded (after appending what it still holds back)
//!   at its next call; a receive reloads at once and withholds the
//!   deliveries whose claims lost.
//! - Claims: a `Held` record names the delivery it replaces (`prev`). In
//!   journal order, a record claiming an offset that another delivery
//!   holds counts only if it names that delivery or that delivery's
//!   invisibility had ended when the record was stored. So when gateways
//!   pull one offset at once, the first claim wins, and every replay (by
//!   any of them) agrees which.
//! - A snapshot records the offset its writer expected it at (`seen`). One
//!   that landed elsewhere missed records: it never becomes the start, and
//!   replay skips it.

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
/// A load whose journal starts longer ago than this writes a snapshot,
/// so that a quiet group's start stays well within the broker's retention
/// (72 h by default).
pub(crate) const SNAPSHOT_AGE_MS: i64 = 3_600_000;
/// How long acks wait for others to share their journal append.
pub(crate) const LINGER: Duration = Duration::from_millis(10);
/// The longest the flusher waits between tries of a failing append: well
/// under the grace another gateway gives a delivery's owner before it
/// redelivers (`consume::FOREIGN_GRACE`, 1 s), so acks held back by a
/// failure still land within it once the append works again.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
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
/// again at (ms since the epoch), attempt, receipt nonce, the nonce of
/// the delivery it replaces (0 for a first delivery; absent in journals
/// written before gateways could share a group), and the backend that
/// delivered it (`Sub::me`; absent, 0, in journals written before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldRec(
    pub u8,
    pub u16,
    pub u64,
    pub i64,
    pub u32,
    pub u64,
    #[serde(default)] pub u64,
    #[serde(default)] pub u64,
);

/// A finished offset: source, queue, offset.
pub(crate) type DoneRec = (u8, u16, u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rec {
    Held(Vec<HeldRec>),
    Done(Vec<DoneRec>),
    /// The group is received as ordered (or no longer): a gateway that only
    /// settles must know, since an ordered nack keeps the message at the
    /// head of its queue.
    Mode {
        ordered: bool,
    },
    Snapshot {
        held: Vec<HeldRec>,
        done: Vec<DoneRec>,
        /// The journal offset its writer expected it at: a snapshot that
        /// landed elsewhere missed the records in between, and replay
        /// skips it (`None`: written before this check).
        #[serde(default)]
        seen: Option<u64>,
        /// Each queue's committed offset as its writer knew it: replay
        /// takes it over the broker's, which a reset may have moved back
        /// since or a gateway with a stale state may have set lower.
        #[serde(default)]
        committed: Vec<DoneRec>,
        /// The subscription was being received as ordered.
        #[serde(default)]
        ordered: bool,
    },
}

/// Where a replayed record sits in the journal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    /// Its journal offset.
    pub offset: u64,
    /// In the first journal message of a replay (the journal's start).
    pub first: bool,
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
    /// The offset of this process's last append.
    pub last_append: Option<u64>,
    /// Where the load's replay ended: every record below it is applied.
    pub replayed_to: u64,
}

// === impl Journal ===

impl Journal {
    /// Where this process's claims of its last append stand in the
    /// journal's order: its offset, or past everything if nothing was
    /// appended (no replay then reaches it, and the claims are withheld).
    pub fn claimed_at(&self) -> u64 {
        self.last_append.unwrap_or(u64::MAX)
    }
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
    HeldRec(
        src(s),
        q as u16,
        offset,
        at,
        h.attempt,
        h.nonce,
        h.prev,
        h.owner,
    )
}

pub(crate) fn done_rec(s: Source, q: usize, offset: u64) -> DoneRec {
    (src(s), q as u16, offset)
}

// === impl Sub: the journal's view ===

impl Sub {
    /// The whole state as one record, to be appended at `seen`.
    pub fn snapshot(&self, seen: u64) -> Rec {
        let (mut held, mut done, mut committed) = (Vec::new(), Vec::new(), Vec::new());
        for (s, q, st) in self.all_queues() {
            held.extend(st.inflight.iter().map(|(o, h)| held_rec(s, q, *o, h)));
            done.extend(st.done.iter().map(|o| done_rec(s, q, *o)));
            committed.push(done_rec(s, q, st.committed));
        }
        Rec::Snapshot {
            held,
            done,
            seen: Some(seen),
            committed,
            ordered: self.ordered,
        }
    }

    /// Applies one replayed record.
    pub fn apply(&mut self, rec: Rec, at: At) {
        match rec {
            Rec::Held(hs) => hs.into_iter().for_each(|h| self.apply_held(h)),
            Rec::Done(ds) => ds.into_iter().for_each(|d| self.apply_done(d)),
            Rec::Mode { ordered } => self.ordered = ordered,
            // Its writer had not seen every record before it: what it
            // holds is in those records and the ones it was built from.
            Rec::Snapshot { seen: Some(s), .. } if !at.first && s != at.offset => {}
            Rec::Snapshot {
                held,
                done,
                committed,
                ordered,
                ..
            } => {
                // The state at that point, committed offsets included: a
                // reset moves them back, and a gateway whose state was
                // behind may have written lower ones to the broker since.
                // (Older snapshots have none: the broker's stand.)
                for st in self.main.iter_mut().chain(self.retry.iter_mut()) {
                    let c = st.committed;
                    st.jump_to(c);
                }
                for (s, q, c) in committed {
                    self.queue_at(s, q).jump_to(c);
                }
                self.ordered = ordered;
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

    /// A delivery claims its offset. Gateways sharing a group may deliver
    /// one offset at once; the journal orders their claims, and the first
    /// wins: a later claim counts only if it replaces the delivery its
    /// writer saw (`prev`). A writer that had not seen the current holder
    /// had not read the whole journal, so its append landed where it did
    /// not expect, and it reloads and withholds what it lost. The rule
    /// reads nothing but the records, so every replay agrees.
    fn apply_held(&mut self, rec: HeldRec) {
        let HeldRec(s, q, offset, visible_ms, attempt, nonce, prev, owner) = rec;
        let st = self.queue_at(s, q);
        if offset < st.committed || st.done.contains(&offset) {
            return;
        }
        st.next = st.next.max(offset + 1);
        let left = Duration::from_millis((visible_ms - now_ms()).max(0) as u64);
        let visible_at = Instant::now() + left;
        if let Some(cur) = st.inflight.get_mut(&offset) {
            if cur.nonce == nonce {
                // The same delivery (a process re-reading its own record).
                cur.visible_at = visible_at;
                return;
            }
            if cur.nonce != prev {
                return;
            }
        }
        st.inflight.insert(
            offset,
            Held {
                msg: None,
                visible_at,
                attempt,
                nonce,
                prev,
                owner,
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
/// Returns whether it did (stale now).
pub(crate) async fn flush(producer: &DefaultMQProducer, sub: &mut Sub) -> Result<bool> {
    if sub.journal.pending.is_empty() {
        return Ok(sub.journal.stale);
    }
    match append_pending(producer, sub, None).await? {
        Some(_) => sub.journal.since_snapshot += 1,
        None => {
            // Retrying could never succeed, and holding them back would
            // hold back every later record.
            sub.journal.pending.clear();
            tracing::warn!(
                topic = journal_topic(&sub.group, &sub.topic),
                "a journal record over the size limit was not written"
            );
        }
    }
    Ok(sub.journal.stale)
}

/// Appends `sub`'s pending records, then `last` if given, as one journal
/// message, and books where it landed ([`noted`]); `None` if the message
/// would be over the size limit (nothing is written). The pending records
/// are taken only once appended: a failed append keeps them for the next
/// flush (they are facts still), while `last` is the caller's to build
/// again.
pub(crate) async fn append_pending(
    producer: &DefaultMQProducer,
    sub: &mut Sub,
    last: Option<Rec>,
) -> Result<Option<u64>> {
    let topic = journal_topic(&sub.group, &sub.topic);
    let body = match last {
        None => encode(&sub.journal.pending)?,
        Some(last) => {
            sub.journal.pending.push(last);
            let body = encode(&sub.journal.pending);
            sub.journal.pending.pop();
            body?
        }
    };
    let Some(body) = body else {
        return Ok(None);
    };
    let offset = append(producer, &topic, body).await?;
    sub.journal.pending.clear();
    noted(sub, offset);
    Ok(Some(offset))
}

/// Books an append of this process at `offset`.
fn noted(sub: &mut Sub, offset: u64) {
    if offset != sub.journal.next {
        sub.journal.stale = true;
    }
    sub.journal.next = offset + 1;
    sub.journal.last_append = Some(offset);
}

/// Sends one journal message; its queue offset.
async fn append(producer: &DefaultMQProducer, topic: &str, body: Vec<u8>) -> Result<u64> {
    let m = Message {
        topic: topic.to_owned(),
        body,
        tag: None,
        keys: Vec::new(),
        properties: Default::default(),
        born_ms: now_ms(),
    };
    let id = cellgate_broker_core::message_id(m.born_ms);
    // A send to a topic: the client retries a busy broker itself.
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
    // After a failed append, the wait before the next try: doubled per
    // failure up to `MAX_BACKOFF`, so a cluster that is down is not asked
    // a hundred times a second; back to `LINGER` once an append lands.
    let mut pause = LINGER;
    loop {
        wake.notified().await;
        tokio::time::sleep(pause).await;
        let Some(subs) = subs.upgrade() else { return };
        let slots: Vec<_> = subs
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        drop(subs);
        let mut failed = false;
        for slot in slots {
            let mut guard = slot.lock().await;
            if let Some(sub) = guard.as_mut() {
                if let Err(e) = flush(&producer, sub).await {
                    tracing::warn!(error = %e, group = sub.group, retry_in = ?(pause * 2).min(MAX_BACKOFF), "acks not journaled yet");
                    failed = true;
                }
            }
        }
        pause = match failed {
            // The records stayed pending: try again.
            true => {
                wake.notify_one();
                (pause * 2).min(MAX_BACKOFF)
            }
            false => LINGER,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Sub {
        Sub {
            group: "G".into(),
            topic: "T".into(),
            main: vec![QueueState::at(0)],
            retry: Vec::new(),
            ordered: false,
            journal: Journal::default(),
            me: 0x5E1F,
        }
    }

    /// A claim of offset 5 of queue 0, invisible for `for_ms` from now.
    fn claim(nonce: u64, prev: u64, for_ms: i64) -> Rec {
        Rec::Held(vec![HeldRec(0, 0, 5, now_ms() + for_ms, 1, nonce, prev, 0)])
    }

    fn holder(s: &Sub) -> Option<u64> {
        s.held(Source::Main, 0, 5).map(|h| h.nonce)
    }

    #[test]
    fn a_reload_keeps_the_messages_it_held() {
        let at = At {
            offset: 1,
            first: false,
        };
        let mut old = sub();
        let body = cellgate_broker_core::StoredMessage {
            id: uuid::Uuid::nil(),
            topic: "T".into(),
            queue: 0,
            queue_offset: 5,
            log_pos: 0,
            body: b"kept".to_vec(),
            tag: None,
            keys: Vec::new(),
            properties: Default::default(),
            born_ms: 0,
            stored_ms: 0,
        };
        old.hold(Source::Main, 0, body, 1, Duration::from_secs(30));
        // The reload knows the delivery (replaced since, by another
        // gateway) from the journal alone.
        let mut new = sub();
        new.apply(claim(0xB, 0, 30_000), at);
        assert!(new.held(Source::Main, 0, 5).unwrap().msg.is_none());
        new.keep_bodies(&mut old);
        let h = new.held(Source::Main, 0, 5).unwrap();
        assert_eq!(h.nonce, 0xB, "the journal's delivery, not the old one");
        assert_eq!(h.msg.as_ref().unwrap().body, b"kept");
    }

    #[test]
    fn the_first_claim_of_an_offset_wins() {
        let mut s = sub();
        let at = |offset| At {
            offset,
            first: false,
        };
        s.apply(claim(0xA, 0, 30_000), at(1));
        // Another gateway delivered it too, not knowing: it lost.
        s.apply(claim(0xB, 0, 30_000), at(2));
        assert_eq!(holder(&s), Some(0xA));
        // A redelivery that saw A's claim replaces it.
        s.apply(claim(0xC, 0xA, -1_000), at(3));
        assert_eq!(holder(&s), Some(0xC));
        // One that did not see C loses, even after C's time ran out:
        // whatever the clocks, every replay decides alike.
        s.apply(claim(0xD, 0xA, 30_000), at(4));
        assert_eq!(holder(&s), Some(0xC));
        // Re-reading one's own record changes nothing.
        s.apply(claim(0xC, 0xA, -1_000), at(5));
        assert_eq!(holder(&s), Some(0xC));
        // Done is done: a late claim does not bring it back.
        s.apply(Rec::Done(vec![(0, 0, 5)]), at(6));
        s.apply(claim(0xE, 0xC, 30_000), at(7));
        assert_eq!(holder(&s), None);
        assert!(s.main[0].done.contains(&5));
    }

    #[test]
    fn a_snapshot_that_missed_records_is_skipped_unless_it_is_the_start() {
        let mut s = sub();
        let at = |offset, first| At { offset, first };
        s.apply(claim(0xA, 0, 30_000), at(1, false));
        let empty = |seen, committed| Rec::Snapshot {
            held: Vec::new(),
            done: Vec::new(),
            seen,
            committed,
            ordered: false,
        };
        // Written by a process that expected offset 2: it missed offset 1
        // and others after it; replay keeps A's claim.
        s.apply(empty(Some(2), vec![]), at(3, false));
        assert_eq!(holder(&s), Some(0xA));
        // One that saw everything before it is the state at that point.
        s.apply(empty(Some(4), vec![]), at(4, false));
        assert_eq!(holder(&s), None);
        // The journal's start is always a snapshot that saw everything.
        s.apply(claim(0xB, 0, 30_000), at(5, false));
        s.apply(empty(Some(1), vec![]), at(6, true));
        assert_eq!(holder(&s), None);
        // A snapshot's committed offsets are the state's, above or below
        // what the broker says (a stale gateway's commit; a reset).
        s.apply(empty(Some(7), vec![(0, 0, 9)]), at(7, false));
        assert_eq!((s.main[0].committed, s.main[0].next), (9, 9));
        s.apply(empty(Some(8), vec![(0, 0, 2)]), at(8, false));
        assert_eq!((s.main[0].committed, s.main[0].next), (2, 2));
        // The ordered mode is a record of its own, and in snapshots.
        s.apply(Rec::Mode { ordered: true }, at(9, false));
        assert!(s.ordered);
        s.apply(empty(Some(10), vec![]), at(10, false));
        assert!(!s.ordered);
    }

    #[test]
    fn replay_keeps_who_delivered_what() {
        let mut s = sub();
        let me = s.me;
        let at = |offset| At {
            offset,
            first: false,
        };
        let by =
            |nonce, prev, owner| Rec::Held(vec![HeldRec(0, 0, 5, now_ms(), 1, nonce, prev, owner)]);
        s.apply(by(0xA, 0, 0xB0B), at(1));
        assert_eq!(s.held(Source::Main, 0, 5).map(|h| h.owner), Some(0xB0B));
        // This backend's redelivery, read back after a reload: still its
        // own, so it falls due without another's grace.
        s.apply(by(0xC, 0xA, me), at(2));
        assert_eq!(s.held(Source::Main, 0, 5).map(|h| h.owner), Some(me));
        // A snapshot carries owners too.
        let snap = s.snapshot(3);
        let mut t = sub();
        t.me = 0xB0B;
        t.apply(
            snap,
            At {
                offset: 3,
                first: true,
            },
        );
        assert_eq!(t.held(Source::Main, 0, 5).map(|h| h.owner), Some(me));
    }

    #[test]
    fn a_record_past_the_broker_limit_is_not_encoded() {
        let small = Rec::Done(vec![(0, 0, 1)]);
        assert!(encode(std::slice::from_ref(&small)).unwrap().is_some());
        // About 14 bytes an offset: well past 3 MiB.
        let big = Rec::Done((0..300_000).map(|o| (0, 0, 1_000_000 + o)).collect());
        assert!(encode(&[big]).unwrap().is_none());
    }

    #[test]
    fn records_written_before_shared_groups_still_read() {
        let old = r#"[{"Held":[[0,0,5,1700000000000,2,171]]},
                      {"Snapshot":{"held":[[1,0,3,1700000000000,1,7]],"done":[[0,0,4]]}}]"#;
        let recs: Vec<Rec> = serde_json::from_str(old).unwrap();
        assert_eq!(
            recs[0],
            Rec::Held(vec![HeldRec(0, 0, 5, 1_700_000_000_000, 2, 171, 0, 0)])
        );
        assert!(matches!(
            &recs[1],
            Rec::Snapshot { seen: None, held, committed, ordered: false, .. }
                if held[0].6 == 0 && held[0].7 == 0 && committed.is_empty()
        ));
        let new = serde_json::to_string(&recs).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Rec>>(&new).unwrap(), recs);
    }
}
