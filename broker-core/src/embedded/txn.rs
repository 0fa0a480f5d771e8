//! Transactional messages in the embedded broker: half messages, decisions,
//! check-backs and recovery. The invariants are in [`crate::txn`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{now_ms, EmbeddedBroker};
use crate::error::{Error, Result};
use crate::record::{Message, StoredMessage};
use crate::store::{read_json, Put, PutResult, QueueSelect};
use crate::timer::{REAL_QUEUE, REAL_TOPIC};
use crate::txn::{
    Decision, Entry, TxnCheck, TxnInfo, TxnState, HALF_TOPIC, OP_TOPIC, PRODUCER_GROUP, REASON,
};

/// What [`EmbeddedBroker::begin_decision`] found.
enum Begun {
    /// Pending: decide this (now `Deciding` in the book).
    Decide(Deciding),
    /// The same decision was taken already: its answer.
    Taken(TxnInfo),
}

/// What a decision needs of its transaction's entry: taken without
/// copying its names (the book keeps the entry until the decision is
/// written, and hands back its info then).
struct Deciding {
    id: Uuid,
    half_offset: u64,
    half_pos: u64,
    queue: u16,
    cached: Option<Message>,
    next_check: i64,
}

/// Pending messages up to this size stay in memory until decided.
const CACHE_BODY: usize = 64 << 10;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct TxnFile {
    half_low: u64,
}

/// The destination message of a half, and its queue.
fn unwrap_half(m: &StoredMessage) -> Option<(Message, u16, String)> {
    let mut props = m.properties.clone();
    let topic = props.remove(REAL_TOPIC)?;
    let queue = props.remove(REAL_QUEUE)?.parse().ok()?;
    let group = props.remove(PRODUCER_GROUP)?;
    let msg = Message {
        topic,
        body: m.body.clone(),
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        properties: props,
        born_ms: m.born_ms,
    };
    Some((msg, queue, group))
}

/// A decision on a transaction that is not pending: the same decision's
/// answer again, or a conflict (the other decision, or one being taken).
fn taken_or_conflict(info: &TxnInfo, d: Decision) -> Result<Begun> {
    match (&info.state, d) {
        (TxnState::Committed, Decision::Commit)
        | (TxnState::RolledBack { .. }, Decision::Rollback) => Ok(Begun::Taken(info.clone())),
        (state, _) => Err(Error::TransactionConflict {
            id: info.id,
            state: state.as_str(),
            reason: match state {
                TxnState::RolledBack { reason } => reason.clone(),
                _ => String::new(),
            },
        }),
    }
}

impl EmbeddedBroker {
    /// Stores a half message of `producer_group`; its id is the
    /// transaction id. The message reaches its topic only on commit.
    pub(crate) async fn send_half(
        &self,
        msg: Message,
        select: QueueSelect,
        producer_group: &str,
    ) -> Result<PutResult> {
        let queue = self.store.pick_queue(&msg.topic, &select)?;
        let mut half = msg.clone();
        half.topic = HALF_TOPIC.to_owned();
        half.properties.insert(REAL_TOPIC.into(), msg.topic.clone());
        half.properties.insert(REAL_QUEUE.into(), queue.to_string());
        half.properties
            .insert(PRODUCER_GROUP.into(), producer_group.to_owned());
        let r = self.store.put(half, QueueSelect::Queue(0)).await?;
        let next_check = r.stored_ms + self.txn_cfg.first_check.as_millis() as i64;
        let entry = Entry {
            info: TxnInfo {
                id: r.id,
                topic: msg.topic.clone(),
                producer_group: producer_group.to_owned(),
                state: TxnState::Pending,
                checks: 0,
            },
            half_offset: r.queue_offset,
            half_pos: r.log_pos,
            queue,
            cached: (msg.body.len() <= CACHE_BODY).then_some(msg),
            next_check,
        };
        let wake = {
            let mut book = self.txns.lock().map_err(|_| Error::Closed)?;
            book.insert(entry);
            book.wakes_clock(next_check)
        };
        if wake {
            self.txn_wake.notify_one();
        }
        Ok(PutResult { queue, ..r })
    }

    /// What the broker knows of transaction `id` (None: no such half).
    pub(crate) fn transaction_info(&self, id: &Uuid) -> Result<Option<TxnInfo>> {
        if let Some(e) = self.txns.lock().map_err(|_| Error::Closed)?.entries.get(id) {
            return Ok(Some(e.info.clone()));
        }
        Ok(self.lookup(id)?.map(|e| e.info))
    }

    /// Asks the store about a transaction the book does not hold.
    fn lookup(&self, id: &Uuid) -> Result<Option<Entry>> {
        let all = self.store.get_all_by_id(id)?;
        let Some(half) = all.iter().find(|m| m.topic == HALF_TOPIC) else {
            return Ok(None);
        };
        let Some((msg, queue, group)) = unwrap_half(half) else {
            return Ok(None);
        };
        // A decided one counts the check-backs due before its decision
        // record was stored.
        let (state, decided_ms) = if let Some(c) = all.iter().find(|m| m.topic == msg.topic) {
            (TxnState::Committed, Some(c.stored_ms))
        } else if let Some(op) = self.store.get_by_key(OP_TOPIC, &id.to_string())?.first() {
            let reason = op.properties.get(REASON).cloned().unwrap_or_default();
            (TxnState::RolledBack { reason }, Some(op.stored_ms))
        } else {
            (TxnState::Pending, None)
        };
        let at = decided_ms.unwrap_or_else(now_ms);
        let (checks, next_check) = self.txn_cfg.schedule(half.stored_ms, at);
        Ok(Some(Entry {
            info: TxnInfo {
                id: *id,
                topic: msg.topic.clone(),
                producer_group: group,
                state,
                checks,
            },
            half_offset: half.queue_offset,
            half_pos: half.log_pos,
            queue,
            cached: None,
            next_check,
        }))
    }

    /// Commits or rolls back. Repeating a decision returns the same state;
    /// the opposite decision is a conflict.
    pub(crate) async fn decide(&self, id: &Uuid, d: Decision, reason: &str) -> Result<TxnInfo> {
        let mut entry = match self.begin_decision(id, d)? {
            Begun::Decide(e) => e,
            Begun::Taken(info) => return Ok(info),
        };
        let state = match d {
            Decision::Commit => TxnState::Committed,
            Decision::Rollback => TxnState::RolledBack {
                reason: reason.to_owned(),
            },
        };
        let written = self.write_decision(&mut entry, d, reason).await;
        let mut book = self.txns.lock().map_err(|_| Error::Closed)?;
        match written {
            // Only this decision takes a `Deciding` entry out.
            Ok(()) => book
                .set_state(id, state)
                .ok_or(Error::UnknownTransaction(*id)),
            Err(e) => {
                // Pending again, its check-back due as before (it may be
                // past due).
                book.set_state(id, TxnState::Pending);
                let wake = book.wakes_clock(entry.next_check);
                drop(book);
                if wake {
                    self.txn_wake.notify_one();
                }
                Err(e)
            }
        }
    }

    /// The book's side of a decision's start: the entry to decide (marked
    /// `Deciding`), or the same decision's answer if it was taken already.
    fn begin_decision(&self, id: &Uuid, d: Decision) -> Result<Begun> {
        let mut book = self.txns.lock().map_err(|_| Error::Closed)?;
        if !book.entries.contains_key(id) {
            if !book.loaded {
                return Err(Error::Recovering);
            }
            drop(book);
            // Decided (the book holds the undecided only), or unknown.
            let found = self.lookup(id)?.ok_or(Error::UnknownTransaction(*id))?;
            if found.info.state != TxnState::Pending {
                return taken_or_conflict(&found.info, d);
            }
            book = self.txns.lock().map_err(|_| Error::Closed)?;
            book.insert_if_absent(found);
        }
        let e = book
            .entries
            .get_mut(id)
            .ok_or(Error::UnknownTransaction(*id))?;
        if e.info.state != TxnState::Pending {
            return taken_or_conflict(&e.info, d);
        }
        // The cached message moves to the decision, not copied: a decided
        // entry drops it anyway, and a failed commit reads the half again.
        let e = Deciding {
            id: *id,
            half_offset: e.half_offset,
            half_pos: e.half_pos,
            queue: e.queue,
            cached: e.cached.take(),
            next_check: e.next_check,
        };
        book.set_state(id, TxnState::Deciding);
        Ok(Begun::Decide(e))
    }

    async fn write_decision(&self, e: &mut Deciding, d: Decision, reason: &str) -> Result<()> {
        match d {
            Decision::Commit => {
                let msg = match e.cached.take() {
                    Some(m) => m,
                    None => {
                        let half = self
                            .store
                            .read_offset(HALF_TOPIC, 0, e.half_offset)?
                            .ok_or(Error::UnknownTransaction(e.id))?;
                        unwrap_half(&half).ok_or(Error::UnknownTransaction(e.id))?.0
                    }
                };
                let select = QueueSelect::Queue(e.queue);
                let commit = Put {
                    msg,
                    select,
                    keep_id: Some(e.id),
                    copy: false,
                    body_at: Some(e.half_pos),
                };
                self.store.put_one(commit).await?;
            }
            Decision::Rollback => {
                let op = Message {
                    topic: OP_TOPIC.to_owned(),
                    keys: vec![e.id.to_string()],
                    properties: BTreeMap::from([(REASON.to_owned(), reason.to_owned())]),
                    born_ms: now_ms(),
                    ..Message::default()
                };
                self.store.put(op, QueueSelect::Queue(0)).await?;
            }
        }
        Ok(())
    }

    /// Up to `max` check-backs for `group`, waiting up to `wait` for one.
    pub(crate) async fn checks(
        &self,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<TxnCheck>> {
        let deadline = Instant::now() + wait;
        loop {
            let woken = self.checks_ready.notified();
            let ids: Vec<Uuid> = {
                let mut book = self.txns.lock().map_err(|_| Error::Closed)?;
                let mut out = Vec::new();
                while out.len() < max {
                    let Some(id) = book.ready.get_mut(group).and_then(|q| q.pop_front()) else {
                        break;
                    };
                    if book
                        .entries
                        .get(&id)
                        .is_some_and(|e| e.info.state == TxnState::Pending)
                    {
                        out.push(id);
                    }
                }
                out
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let entry = self
                    .txns
                    .lock()
                    .map_err(|_| Error::Closed)?
                    .entries
                    .get(&id)
                    .cloned();
                let Some(e) = entry else { continue };
                let Some(half) = self.store.read_offset(HALF_TOPIC, 0, e.half_offset)? else {
                    continue;
                };
                let mut message = half;
                message.properties.remove(REAL_TOPIC);
                message.properties.remove(REAL_QUEUE);
                message.properties.remove(PRODUCER_GROUP);
                message.topic = e.info.topic.clone();
                message.queue = e.queue;
                out.push(TxnCheck {
                    info: e.info,
                    message,
                });
            }
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Runs the check-back clock until the broker is dropped: issues due
    /// check-backs and rolls back after the last.
    pub fn run_transactions(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let wake = self.txn_wake.clone();
        tokio::spawn(async move {
            loop {
                let woken = wake.notified();
                let Some(b) = weak.upgrade() else { return };
                let wait = match b.txn_step().await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "transaction check-backs failed; retrying");
                        Duration::from_millis(200)
                    }
                };
                drop(b);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = woken => {}
                }
            }
        })
    }

    async fn txn_step(&self) -> Result<Duration> {
        if !self.txns.lock().map_err(|_| Error::Closed)?.loaded {
            self.load_transactions()?;
        }
        let now = now_ms();
        let max = self.txn_cfg.max_checks;
        let every = self.txn_cfg.check_every.as_millis() as i64;
        let mut expired = Vec::new();
        let next = {
            let mut book = self.txns.lock().map_err(|_| Error::Closed)?;
            // Awake: every new check-back wakes it again until it sleeps.
            book.clock_at = None;
            let mut issued = false;
            while let Some(&(due, id)) = book.checks_due.first() {
                if due > now {
                    break;
                }
                book.checks_due.pop_first();
                let Some(e) = book.entries.get_mut(&id) else {
                    continue;
                };
                if e.info.checks >= max {
                    expired.push(id);
                    continue;
                }
                e.info.checks += 1;
                e.next_check = due + every;
                let (next, group) = (e.next_check, e.info.producer_group.clone());
                book.checks_due.insert((next, id));
                book.ready.entry(group).or_default().push_back(id);
                issued = true;
            }
            if issued {
                self.checks_ready.notify_waiters();
            }
            book.checks_due.first().map(|(d, _)| *d)
        };
        for id in expired {
            let why = format!("no decision after {max} check-backs");
            if let Err(e) = self.decide(&id, Decision::Rollback, &why).await {
                tracing::warn!(%id, error = %e, "rolling back a timed-out transaction failed");
            }
        }
        let ms = next.map_or(1000, |n| (n - now).clamp(1, 1000));
        // A check-back added since `next` was read has woken the clock
        // already (its permit is stored); later ones compare with this.
        self.txns.lock().map_err(|_| Error::Closed)?.clock_at = Some(now + ms);
        Ok(Duration::from_millis(ms as u64))
    }

    /// Rebuilds the book from the half topic (see [`crate::txn`]).
    fn load_transactions(&self) -> Result<()> {
        let path = self.store.dir().join("txn.json");
        let file: TxnFile = read_json(&path)?.unwrap_or_default();
        if self.store.queues(HALF_TOPIC).is_none() {
            self.store.create_topic(HALF_TOPIC, 1)?;
        }
        let (min, end) = self.store.queue_range(HALF_TOPIC, 0)?;
        let mut found = Vec::new();
        let mut at = file.half_low.max(min);
        while at < end {
            let batch = self.store.read_from(HALF_TOPIC, 0, at, 256)?;
            let Some(last) = batch.last() else { break };
            at = last.queue_offset + 1;
            for half in batch {
                if let Some(e) = self.lookup(&half.id)? {
                    found.push(e);
                }
            }
        }
        self.txns
            .lock()
            .map_err(|_| Error::Closed)?
            .finish_load(found, end);
        Ok(())
    }

    /// Writes the book's low-water mark of undecided halves.
    pub(crate) fn persist_transactions(&self) -> Result<()> {
        let half_low = {
            let book = self.txns.lock().map_err(|_| Error::Closed)?;
            if !book.loaded {
                return Ok(());
            }
            book.half_low()
        };
        self.txn_file
            .put(&self.store.dir().join("txn.json"), &TxnFile { half_low })
    }
}
