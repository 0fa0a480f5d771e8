//! The delivery calls of the Broker interface (receive, ack, nack) over
//! the state of `consume.rs`; progress (load, commit, lag, reset) is in
//! `offsets.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{
    ConsumeMode, Delivery, Error, Hop, ReceiveOptions, Result, StoredMessage, TagFilter,
};
use tokio::time::Instant;

use crate::client::QueueRef;
use crate::consume::{offset_group, parse_receipt, resend, unwrap_retry, QueueState, Source, Sub};
use crate::error::contended;
use crate::journal::{self, Rec};
use crate::{now_ms, RocketMqBroker};

type Slot = Arc<tokio::sync::Mutex<Option<Sub>>>;

/// A subscription as the calls name it: group, topic, consumption mode.
type SubKey<'a> = (&'a str, &'a str, &'a ConsumeMode);

/// Reloads a receive makes to settle whose claims won before it gives up.
const RESOLVE_TRIES: usize = 3;

/// How long a delivery being settled with a copy stays claimed (invisible)
/// should the gateway die between its claim and the settle's record.
const SETTLE_HOLD: Duration = Duration::from_secs(30);

/// Dead letters one receive sends at most (the rest wait for the next):
/// bounds the claim's journal record and the receive's time.
const DEAD_PER_CALL: usize = 256;

fn tag_expression(t: &TagFilter) -> String {
    match t {
        TagFilter::All => "*".into(),
        TagFilter::Any(tags) => tags
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join("||"),
    }
}

// === impl RocketMqBroker: consumer groups ===

impl RocketMqBroker {
    pub(crate) fn slot(&self, group: &str, topic: &str) -> Slot {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.entry((group.to_owned(), topic.to_owned()))
            .or_default()
            .clone()
    }

    pub(crate) async fn receive_impl(
        &self,
        group: &str,
        topic: &str,
        opts: ReceiveOptions,
    ) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + opts.wait;
        let mut appended = self.appended.subscribe();
        loop {
            appended.borrow_and_update();
            let got = self.receive_once(group, topic, &opts).await?;
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            // Woken by a send through this process, or by the poll tick
            // (sends through other processes are seen at the next tick).
            let _ = tokio::time::timeout_at(deadline, appended.changed()).await;
        }
    }

    async fn receive_once(
        &self,
        group: &str,
        topic: &str,
        opts: &ReceiveOptions,
    ) -> Result<Vec<Delivery>> {
        let slot = self.slot(&offset_group(group, &opts.mode), topic);
        let mut guard = slot.lock().await;
        let sub = self
            .loaded(&mut guard, group, topic, &opts.mode, Reload::IfStale)
            .await?;
        if sub.ordered != opts.ordered {
            // Journaled with this receive's deliveries: another gateway
            // settling this group's nacks needs to know.
            sub.ordered = opts.ordered;
            let ordered = opts.ordered;
            sub.journal.pending.push(Rec::Mode { ordered });
        }
        if sub.journal.since_snapshot >= journal::SNAPSHOT_EVERY {
            self.snapshot(sub).await?;
        }
        let mut out = Vec::new();
        self.redeliver_expired(sub, opts, &mut out).await?;
        self.pull_all(sub, opts, &mut out).await?;
        // Durable before the consumer sees them: a gateway that picks the
        // group up keeps them invisible (`journal.rs`).
        let held: Vec<_> = out
            .iter()
            .filter_map(|d| {
                let (s, q, offset, _) = parse_receipt(&d.receipt).ok()?;
                let h = sub.held(s, q, offset)?;
                Some(journal::held_rec(s, q, offset, h))
            })
            .collect();
        if !held.is_empty() {
            sub.journal.pending.push(Rec::Held(held));
        }
        if journal::flush(&self.client.producer, sub).await? && !out.is_empty() {
            let claimed_at = sub.journal.claimed_at();
            let key = (group, topic, &opts.mode);
            self.resolve_claims(&mut guard, key, claimed_at, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// After another gateway appended to the journal before this one's
    /// claims (appended at `claimed_at`): reloads (replay orders the
    /// claims) and keeps only the deliveries whose claims won. Should no
    /// reload's replay reach the claims, every delivery is withheld: the
    /// claims that won come again when their invisibility ends.
    async fn resolve_claims(
        &self,
        guard: &mut Option<Sub>,
        key: SubKey<'_>,
        claimed_at: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let Some(sub) = self.reload_past(guard, key, claimed_at).await? else {
            out.clear();
            return Ok(());
        };
        out.retain(|d| {
            let Ok((s, q, offset, n)) = parse_receipt(&d.receipt) else {
                return false;
            };
            match sub.held_mut(s, q, offset) {
                Some(h) if h.nonce == n => {
                    // Keep the body: a redelivery need not read it again.
                    h.msg = Some(d.message.clone());
                    true
                }
                _ => false,
            }
        });
        Ok(())
    }

    /// Reloads until the replay has read the journal past `at` (an append
    /// of this process), at most [`RESOLVE_TRIES`] times; `None` if none
    /// did (the journal's tail trails an append briefly). Records after
    /// `at` cannot undo the claims up to it: only the order up to `at`
    /// matters to whoever appended there.
    async fn reload_past<'g>(
        &self,
        guard: &'g mut Option<Sub>,
        (group, topic, mode): SubKey<'_>,
        at: u64,
    ) -> Result<Option<&'g mut Sub>> {
        let mut covered = false;
        for _ in 0..RESOLVE_TRIES {
            let sub = self
                .loaded(guard, group, topic, mode, Reload::Always)
                .await?;
            if sub.journal.replayed_to > at {
                covered = true;
                break;
            }
        }
        Ok(guard.as_mut().filter(|_| covered))
    }

    /// The loaded subscription in `guard`: loaded (journal replayed) on
    /// first use, when another gateway has written its journal, and
    /// whenever `when` says. A reload first appends what the current state
    /// has not journaled yet (acks in their linger), or it would lose them,
    /// and keeps the messages it held (`Sub::keep_bodies`).
    pub(crate) async fn loaded<'g>(
        &self,
        guard: &'g mut Option<Sub>,
        group: &str,
        topic: &str,
        mode: &ConsumeMode,
        when: Reload,
    ) -> Result<&'g mut Sub> {
        let mut old = None;
        match guard {
            Some(sub) if !sub.journal.stale && when == Reload::IfStale => {}
            Some(sub) => {
                journal::flush(&self.client.producer, sub).await?;
                old = guard.take();
            }
            None => {}
        }
        if let Some(sub) = guard {
            return Ok(sub);
        }
        // A load whose snapshot landed after another gateway's records
        // missed them: load again (bounded; a state still stale writes no
        // snapshot, and its next call reloads).
        let mut sub = self.load(group, topic, mode).await?;
        for _ in 1..RESOLVE_TRIES {
            if !sub.journal.stale {
                break;
            }
            sub = self.load(group, topic, mode).await?;
        }
        if let Some(mut old) = old {
            sub.keep_bodies(&mut old);
        }
        Ok(guard.insert(sub))
    }

    /// Pulls the main and retry topics' queues until `out` is full.
    async fn pull_all(
        &self,
        sub: &mut Sub,
        opts: &ReceiveOptions,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let tags = tag_expression(&opts.tags);
        let start = self.pull_rr.fetch_add(1, Ordering::Relaxed);
        for s in [Source::Main, Source::Retry] {
            let pulled_topic = sub.topic_of(s);
            let route = match self.client.route(&pulled_topic).await {
                Ok(r) => r,
                Err(Error::UnknownTopic(_)) => continue,
                Err(e) => return Err(e),
            };
            let n = route.queues.len().max(1);
            for i in 0..route.queues.len() {
                let q = start.wrapping_add(i) % n;
                if out.len() >= opts.max_messages {
                    return Ok(());
                }
                if let Some(qr) = route.queues.get(q) {
                    self.pull_into(sub, s, (q, qr), &tags, opts, out).await?;
                }
            }
        }
        Ok(())
    }

    /// Pulls one queue and holds what the group should see.
    async fn pull_into(
        &self,
        sub: &mut Sub,
        s: Source,
        (q, qr): (usize, &QueueRef),
        tags: &str,
        opts: &ReceiveOptions,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let pulled_topic = sub.topic_of(s);
        if sub.queues_mut(s).len() <= q {
            sub.queues_mut(s).resize_with(q + 1, QueueState::default);
        }
        let st = &sub.queues_mut(s)[q];
        if opts.ordered && !st.inflight.is_empty() {
            return Ok(());
        }
        let want = if opts.ordered {
            1
        } else {
            opts.max_messages - out.len()
        };
        let from = st.next;
        let p = self
            .pull(&sub.group, &pulled_topic, (q, qr), from, want, tags)
            .await?;
        if !p.released.is_empty() {
            // RocketMQ's timer leaves no trace of its own; the release
            // time is the store time in the topic it was released to.
            // Every group that reads it records the same hop: the trace
            // reader keeps one.
            let hops = p.released.iter();
            self.trace
                .record(hops.map(|(id, at)| Hop::release(*id, *at)).collect());
        }
        let mut commit = None;
        {
            let st = &mut sub.queues_mut(s)[q];
            if p.messages.is_empty()
                && p.next > st.next
                && st.inflight.is_empty()
                && st.done.is_empty()
            {
                // Skipped by the tag filter, or below the retained range.
                st.committed = st.committed.max(p.next);
                commit = Some(st.committed);
            }
            st.next = st.next.max(p.next);
        }
        for m in p.messages.into_iter().take(want) {
            let offset = m.queue_offset;
            let (m, attempt) = match s {
                Source::Main => (m, 1),
                Source::Retry => unwrap_retry(m),
            };
            let visible = opts.tags.matches(m.tag.as_deref())
                && opts.predicate.as_ref().is_none_or(|p| (p.0)(&m));
            if !visible {
                let st = &mut sub.queues_mut(s)[q];
                st.next = st.next.max(offset + 1);
                if let Some(c) = st.finish(offset) {
                    commit = Some(c);
                } else {
                    let d = journal::done_rec(s, q, offset);
                    sub.journal.pending.push(Rec::Done(vec![d]));
                }
                continue;
            }
            let st = &mut sub.queues_mut(s)[q];
            st.next = st.next.max(offset + 1);
            if let Some(receipt) = sub.hold(s, q, m.clone(), attempt, opts.invisible) {
                out.push(Delivery {
                    message: m,
                    receipt,
                    attempt,
                });
            }
        }
        if let Some(c) = commit {
            self.commit(sub, s, q, c).await?;
        }
        Ok(())
    }

    /// Delivers again what was not settled within its invisibility time
    /// (dead-lettering what has had its last attempt).
    async fn redeliver_expired(
        &self,
        sub: &mut Sub,
        opts: &ReceiveOptions,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let now = Instant::now();
        let max_attempts = self.delivery.max_attempts;
        let room = opts.max_messages.saturating_sub(out.len());
        let (mut due, mut dead) = (Vec::new(), Vec::new());
        let me = sub.me;
        for s in [Source::Main, Source::Retry] {
            for (q, st) in sub.queues_mut(s).iter().enumerate() {
                for (offset, h) in &st.inflight {
                    if due.len() >= room || !h.due(me, now) {
                        continue;
                    }
                    if h.attempt >= max_attempts {
                        if dead.len() < DEAD_PER_CALL {
                            dead.push((s, q, *offset));
                        }
                    } else {
                        due.push((s, q, *offset));
                    }
                }
            }
        }
        for (s, q, offset) in due {
            let Some(message) = self.held_msg(sub, (s, q, offset)).await? else {
                continue;
            };
            let me = sub.me;
            let Some(h) = sub.held_mut(s, q, offset) else {
                continue;
            };
            h.attempt += 1;
            let n = h.replace(me, now + opts.invisible);
            out.push(Delivery {
                message,
                receipt: crate::consume::receipt(s, q, offset, n),
                attempt: h.attempt,
            });
        }
        // A dead letter is a copy, which cannot be taken back: claim first,
        // all in one append. Claims that met another gateway's records wait
        // for the next call, which reloads and knows whether they won.
        if dead.is_empty() || !self.claim(sub, &dead).await?.1 {
            return Ok(());
        }
        for key in dead {
            self.settle_one(sub, key, Settle::DeadLetter).await?;
        }
        Ok(())
    }

    /// Journals a claim of deliveries (a new nonce replacing each current
    /// one, invisible meanwhile), in one append, before a settle that sends
    /// a copy, so that another gateway's redelivery and the copy cannot
    /// both count. Returns the claims' nonces (of the keys held; others are
    /// skipped), and whether they are known to have won: the append landed
    /// where this process expected, after every record it had read.
    async fn claim(
        &self,
        sub: &mut Sub,
        keys: &[(Source, usize, u64)],
    ) -> Result<(Vec<u64>, bool)> {
        let me = sub.me;
        let until = Instant::now() + SETTLE_HOLD;
        let (mut recs, mut nonces) = (Vec::with_capacity(keys.len()), Vec::new());
        for &(s, q, offset) in keys {
            let Some(h) = sub.held_mut(s, q, offset) else {
                continue;
            };
            nonces.push(h.replace(me, h.visible_at.max(until)));
            recs.push(journal::held_rec(s, q, offset, h));
        }
        sub.journal.pending.push(Rec::Held(recs));
        let stale = journal::flush(&self.client.producer, sub).await?;
        Ok((nonces, !stale))
    }

    /// The message of a delivery, read again if the state came from the
    /// journal. `None` (and the offset done) if the broker no longer has
    /// it: retention removed it.
    async fn held_msg(
        &self,
        sub: &mut Sub,
        (s, q, offset): (Source, usize, u64),
    ) -> Result<Option<StoredMessage>> {
        let known = sub.held(s, q, offset).and_then(|h| h.msg.clone());
        if known.is_some() {
            return Ok(known);
        }
        let topic = sub.topic_of(s);
        let got = self
            .read_queue(&topic, q as u16, offset, 1)
            .await?
            .into_iter()
            .find(|m| m.queue_offset == offset)
            .map(|m| match s {
                Source::Main => m,
                Source::Retry => unwrap_retry(m).0,
            });
        match (&got, sub.held_mut(s, q, offset)) {
            (Some(m), Some(h)) => h.msg = Some(m.clone()),
            (Some(_), None) => {}
            (None, _) => {
                tracing::warn!(
                    topic,
                    queue = q,
                    offset,
                    "a delivered message is gone from the broker"
                );
                self.finish(sub, (s, q, offset)).await?;
            }
        }
        Ok(got)
    }

    /// Acks or nacks one receipt.
    pub(crate) async fn settle_impl(
        &self,
        group: &str,
        topic: &str,
        mode: &ConsumeMode,
        receipt: &str,
        ack: bool,
    ) -> Result<()> {
        let (s, q, offset, n) = parse_receipt(receipt)?;
        let slot = self.slot(&offset_group(group, mode), topic);
        let mut guard = slot.lock().await;
        let mut sub = self
            .loaded(&mut guard, group, topic, mode, Reload::IfStale)
            .await?;
        // Perhaps a receipt another gateway of the group issued since this
        // one last read the journal, which has its delivery. One pull says
        // whether the journal moved: a stale or forged receipt does not
        // cost a replay.
        if sub.held_with((s, q, offset), n).is_none() && self.journal_moved_soon(sub).await? {
            sub = self
                .loaded(&mut guard, group, topic, mode, Reload::Always)
                .await?;
        }
        let held = sub.held_with((s, q, offset), n).ok_or(Error::BadReceipt)?;
        let how = if ack {
            Settle::Done
        } else if held.attempt >= self.delivery.max_attempts {
            Settle::DeadLetter
        } else if matches!(mode, ConsumeMode::Broadcast { .. }) || sub.ordered {
            Settle::Later
        } else {
            Settle::Retry
        };
        if matches!(how, Settle::Retry | Settle::DeadLetter) {
            let (mine, won) = self.claim(sub, &[(s, q, offset)]).await?;
            let mine = mine.first().copied().ok_or(Error::BadReceipt)?;
            if !won {
                let claimed_at = sub.journal.claimed_at();
                let key = (group, topic, mode);
                sub = self
                    .reload_past(&mut guard, key, claimed_at)
                    .await?
                    .ok_or_else(|| contended("settle a delivery"))?;
                if sub.held_with((s, q, offset), mine).is_none() {
                    // Another gateway's redelivery came first.
                    return Err(Error::BadReceipt);
                }
            }
        }
        self.settle_one(sub, (s, q, offset), how).await
    }

    async fn settle_one(
        &self,
        sub: &mut Sub,
        (s, q, offset): (Source, usize, u64),
        how: Settle,
    ) -> Result<()> {
        let (group, topic) = (sub.group.clone(), sub.topic.clone());
        let msg = match how {
            Settle::Retry | Settle::DeadLetter => match self.held_msg(sub, (s, q, offset)).await? {
                Some(m) => Some(m),
                // Gone from the broker (retention): nothing is left to
                // retry, and `held_msg` finished the offset.
                None => return Ok(()),
            },
            Settle::Done | Settle::Later => None,
        };
        let me = sub.me;
        let Some(h) = sub.held_mut(s, q, offset) else {
            return Err(Error::BadReceipt);
        };
        let backoff = self.backoff(h.attempt);
        match (how, msg) {
            (Settle::Later, _) => {
                h.replace(me, Instant::now() + backoff);
                let rec = journal::held_rec(s, q, offset, h);
                self.journal_note(sub, Rec::Held(vec![rec]));
                return Ok(());
            }
            (Settle::Retry | Settle::DeadLetter, Some(m)) => {
                let dead = how == Settle::DeadLetter;
                let due = now_ms() + backoff.as_millis() as i64;
                let out = resend(&m, h, &group, &topic, dead, due);
                if dead {
                    // The embedded broker records this hop itself; so does
                    // this backend, since the move is its doing.
                    let hop = Hop::dead_letter(m.id, now_ms(), &group, h.attempt);
                    self.trace.record(vec![hop]);
                }
                self.send_all(vec![out]).await?;
            }
            (Settle::Retry | Settle::DeadLetter, None) | (Settle::Done, _) => {}
        }
        self.finish(sub, (s, q, offset)).await
    }

    /// Marks an offset done: journaled always (so another gateway's state
    /// shows as an append at an unexpected offset, and is reloaded), and
    /// committed when the committed offset moves.
    async fn finish(&self, sub: &mut Sub, (s, q, offset): (Source, usize, u64)) -> Result<()> {
        let moved = sub
            .queues_mut(s)
            .get_mut(q)
            .and_then(|st| st.finish(offset));
        self.journal_note(sub, Rec::Done(vec![journal::done_rec(s, q, offset)]));
        match moved {
            Some(c) => self.commit(sub, s, q, c).await,
            None => Ok(()),
        }
    }

    /// Queues `rec` for the journal flusher.
    fn journal_note(&self, sub: &mut Sub, rec: Rec) {
        sub.journal.pending.push(rec);
        self.journal_wake.notify_one();
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let levels = &self.delivery.retry_levels;
        let i = (attempt.max(1) as usize - 1).min(levels.len().saturating_sub(1));
        levels.get(i).copied().unwrap_or(Duration::from_secs(10))
    }
}

/// When [`RocketMqBroker::loaded`] replays the journal again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reload {
    /// Only if an append showed another gateway's records.
    IfStale,
    /// Now: a conflict to settle, or a receipt this state lacks.
    Always,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Acked.
    Done,
    /// Sent to the retry topic, due after its back-off.
    Retry,
    /// Kept in flight, visible again after its back-off (ordered queues,
    /// broadcast consumers).
    Later,
    /// Sent to the group's dead-letter topic.
    DeadLetter,
}
