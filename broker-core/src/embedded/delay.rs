//! Delayed delivery in the embedded broker: holding, firing, recovery and
//! rolling. The timer's on-disk invariants are in [`crate::timer`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{now_ms, EmbeddedBroker};
use crate::error::{Error, Result};
use crate::record::{Kept, Message, StoredMessage};
use crate::store::{read_json, PutResult, QueueSelect};
use crate::timer::{Fired, DELIVER_AT, MAX_DELAY, REAL_QUEUE, REAL_TOPIC, SCHEDULE_TOPIC};

/// Due messages fired per step: one `put_copies` each.
const FIRE_BATCH: usize = 512;
/// How often the timer looks for held messages to roll (see `roll`).
const ROLL_EVERY: Duration = Duration::from_secs(60);

/// A held message back in its own shape: topic, queue, id.
fn released(m: StoredMessage) -> Option<(Message, QueueSelect, Uuid)> {
    let mut props = m.properties;
    let topic = props.remove(REAL_TOPIC)?;
    let queue: u16 = props.remove(REAL_QUEUE)?.parse().ok()?;
    let msg = Message {
        topic,
        body: m.body,
        tag: m.tag,
        keys: m.keys,
        properties: props,
        born_ms: m.born_ms,
    };
    Some((msg, QueueSelect::Queue(queue), m.id))
}

impl EmbeddedBroker {
    /// Stores `msgs` held until their due time: the schedule topic gets
    /// them now (each keeping the given id, or a new one), the timer fires
    /// them later. Each result names the destination queue.
    pub(crate) async fn hold(
        &self,
        msgs: Vec<(Message, QueueSelect, Option<Uuid>, i64)>,
    ) -> Result<Vec<PutResult>> {
        let limit = now_ms() + MAX_DELAY.as_millis() as i64;
        let mut held = Vec::with_capacity(msgs.len());
        let mut queues = Vec::with_capacity(msgs.len());
        for (mut msg, select, id, due) in msgs {
            if due > limit {
                return Err(Error::DelayTooLong {
                    deliver_at_ms: due,
                    max_ms: limit,
                });
            }
            let queue = self.store.pick_queue(&msg.topic, &select)?;
            let real = std::mem::replace(&mut msg.topic, SCHEDULE_TOPIC.to_owned());
            msg.properties.insert(REAL_TOPIC.into(), real);
            msg.properties.insert(REAL_QUEUE.into(), queue.to_string());
            msg.properties.insert(DELIVER_AT.into(), due.to_string());
            queues.push((queue, due));
            held.push((
                msg,
                QueueSelect::Queue(0),
                id.unwrap_or_else(|| crate::ids::message_id(now_ms())),
            ));
        }
        let results = self.store.put_copies(held, Kept::Moved).await?;
        let mut out = Vec::with_capacity(results.len());
        for (r, (queue, due)) in results.into_iter().zip(queues) {
            self.timer.schedule(due, r.queue_offset);
            out.push(PutResult { queue, ..r });
        }
        Ok(out)
    }

    /// Messages waiting for their due time.
    pub fn scheduled_pending(&self) -> usize {
        self.timer.pending_len()
    }

    /// Runs the timer until the broker is dropped: recovers the index from
    /// the log, then fires due messages as they fall due.
    pub fn run_timer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let timer = self.timer.clone();
        tokio::spawn(async move {
            let mut last_roll = tokio::time::Instant::now();
            loop {
                // Armed before the state is read: a wake-up sent meanwhile
                // leaves a permit, so it is never missed.
                let woken = timer.wake.notified();
                let Some(b) = weak.upgrade() else { return };
                let wait = match b.timer_step().await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "delayed delivery failed; retrying");
                        Duration::from_millis(200)
                    }
                };
                if wait > Duration::ZERO && last_roll.elapsed() >= ROLL_EVERY {
                    last_roll = tokio::time::Instant::now();
                    if let Err(e) = b.roll().await {
                        tracing::warn!(error = %e, "rolling held messages failed");
                    }
                }
                drop(b);
                if wait > Duration::ZERO {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = woken => {}
                    }
                }
            }
        })
    }

    /// Fires what is due; returns how long to wait for the next.
    async fn timer_step(&self) -> Result<Duration> {
        let loaded = self.timer.state.lock().map_err(|_| Error::Closed)?.loaded;
        if !loaded {
            self.load_timer()?;
        }
        let now = now_ms();
        let (due, recovered_below, next) = {
            let mut st = self.timer.state.lock().map_err(|_| Error::Closed)?;
            let due = st.take_due(now, FIRE_BATCH);
            (due, st.recovered_below, st.next_due())
        };
        if due.is_empty() {
            let ms = next.map_or(1000, |n| (n - now).clamp(1, 1000));
            return Ok(Duration::from_millis(ms as u64));
        }
        match self.fire(&due, recovered_below).await {
            Ok(()) => Ok(Duration::ZERO),
            Err(e) => {
                // Back in the index: fired again on the next step.
                let mut st = self.timer.state.lock().map_err(|_| Error::Closed)?;
                for (d, o) in due {
                    st.add(d, o);
                }
                Err(e)
            }
        }
    }

    /// Stores due messages in their topics, then marks them fired.
    async fn fire(&self, due: &[(i64, u64)], recovered_below: u64) -> Result<()> {
        let mut batch = Vec::with_capacity(due.len());
        let mut offsets = Vec::with_capacity(due.len());
        let mut dropped = Vec::new();
        let mut ids = HashSet::new();
        for &(_, off) in due {
            let released = match self.store.read_offset(SCHEDULE_TOPIC, 0, off) {
                Ok(Some(m)) => released(m),
                Ok(None) | Err(Error::OutOfRange { .. }) => None,
                Err(e) => return Err(e),
            };
            let Some((msg, sel, id)) = released else {
                tracing::warn!(offset = off, "a held message is gone or malformed; dropped");
                dropped.push(off);
                continue;
            };
            // A rolled message reloaded twice, or one fired just before a
            // crash: its id is already where it was going.
            let fired_before = !ids.insert(id)
                || (off < recovered_below
                    && self
                        .store
                        .get_all_by_id(&id)?
                        .iter()
                        .any(|m| m.topic == msg.topic));
            if fired_before {
                dropped.push(off);
                continue;
            }
            batch.push((msg, sel, id));
            offsets.push(off);
        }
        if !batch.is_empty() {
            let now = now_ms();
            let hops = batch
                .iter()
                .map(|(_, _, id)| crate::trace::Hop::release(*id, now))
                .collect();
            self.store.put_copies(batch, Kept::Moved).await?;
            self.trace.record(hops);
        }
        let mut st = self.timer.state.lock().map_err(|_| Error::Closed)?;
        for off in offsets.into_iter().chain(dropped) {
            st.fired.mark(off);
        }
        Ok(())
    }

    /// Rebuilds the timer's index from the schedule topic.
    fn load_timer(&self) -> Result<()> {
        let path = self.store.dir().join("timer.json");
        let fired: Fired = read_json(&path)?.unwrap_or_default();
        if self.store.queues(SCHEDULE_TOPIC).is_none() {
            self.store.create_topic(SCHEDULE_TOPIC, 1)?;
        }
        let (min, end) = self.store.queue_range(SCHEDULE_TOPIC, 0)?;
        let mut found = Vec::new();
        let mut at = fired.low.max(min);
        while at < end {
            let entries = self.store.entries(SCHEDULE_TOPIC, 0, at, 1024)?;
            if entries.is_empty() {
                break;
            }
            for e in entries {
                let off = at;
                at += 1;
                if fired.is_done(off) {
                    continue;
                }
                let m = self.store.read(&e)?;
                match m.properties.get(DELIVER_AT).and_then(|d| d.parse().ok()) {
                    Some(due) => found.push((due, off)),
                    None => tracing::warn!(offset = off, "held message without a due time"),
                }
            }
        }
        let mut st = self.timer.state.lock().map_err(|_| Error::Closed)?;
        st.fired = fired;
        for (due, off) in found {
            st.add(due, off);
        }
        st.recovered_below = end;
        st.loaded = true;
        drop(st);
        self.timer.wake.notify_one();
        Ok(())
    }

    /// Writes the timer's fired offsets (see [`crate::timer`]).
    pub(crate) fn persist_timer(&self) -> Result<()> {
        let fired = {
            let st = self.timer.state.lock().map_err(|_| Error::Closed)?;
            if !st.loaded {
                return Ok(());
            }
            st.fired.clone()
        };
        self.timer_file
            .put(&self.store.dir().join("timer.json"), &fired)
    }

    /// Writes held messages older than half the retention age again, so
    /// that retention never deletes a message that is still waiting.
    async fn roll(&self) -> Result<()> {
        let cutoff = now_ms() - (self.store.config().retention_age.as_millis() / 2) as i64;
        loop {
            let oldest: Vec<(u64, i64)> = {
                let st = self.timer.state.lock().map_err(|_| Error::Closed)?;
                st.by_offset
                    .iter()
                    .take(256)
                    .map(|(o, d)| (*o, *d))
                    .collect()
            };
            let mut old = Vec::new();
            for (off, due) in oldest {
                let Some(e) = self.store.entries(SCHEDULE_TOPIC, 0, off, 1)?.pop() else {
                    continue;
                };
                if e.stored_ms >= cutoff {
                    break;
                }
                let m = self.store.read(&e)?;
                let id = m.id;
                let copy = Message {
                    topic: SCHEDULE_TOPIC.to_owned(),
                    body: m.body,
                    tag: m.tag,
                    keys: m.keys,
                    properties: m.properties,
                    born_ms: m.born_ms,
                };
                old.push(((copy, QueueSelect::Queue(0), id), off, due));
            }
            if old.is_empty() {
                return Ok(());
            }
            let (copies, rest): (Vec<_>, Vec<_>) =
                old.into_iter().map(|(c, o, d)| (c, (o, d))).unzip();
            let results = self.store.put_copies(copies, Kept::Moved).await?;
            let mut st = self.timer.state.lock().map_err(|_| Error::Closed)?;
            for (r, (off, due)) in results.iter().zip(rest) {
                // Fired meanwhile: the new record is marked fired as well.
                if st.pending.remove(&(due, off)) {
                    st.by_offset.remove(&off);
                    st.add(due, r.queue_offset);
                } else {
                    st.fired.mark(r.queue_offset);
                }
                st.fired.mark(off);
            }
        }
    }
}
