//! Transactional messages: the half-message book.
//!
//! A transactional send stores a *half message* in the internal topic
//! [`HALF_TOPIC`] (one queue; destination in the timer's `__REAL_TOPIC` and
//! `__REAL_QUEUE` properties, producer group in [`PRODUCER_GROUP`]). Its id
//! is the transaction id. Consumers never see it. Then:
//! - **commit** stores the message in its topic under the same id — that
//!   record *is* the durable commit decision. It refers to the half's body
//!   rather than copying it when both lie in one segment
//!   (`record/shared_body.rs`);
//! - **rollback** (asked for, or after `max_checks` unanswered check-backs)
//!   appends a small record to [`OP_TOPIC`] keyed by the transaction id,
//!   with the reason in [`REASON`].
//!
//! Invariants:
//! - A transaction is committed iff its id is stored in its destination
//!   topic, rolled back iff an op record carries its id, pending otherwise.
//!   A decision is taken once: the book marks it `Deciding` while it is
//!   written, and a second, different decision is a conflict.
//! - Every half-message offset below `half_low` (written to `txn.json`) is
//!   decided. A restart reloads the halves from there and asks the store
//!   which are decided. The book holds undecided transactions only: a
//!   decided one is looked up in the store the same way, so a repeated
//!   decision is idempotent, across restarts too.
//! - Check-backs are a function of the half's store time: the k-th is due
//!   at `stored + first_check + (k-1) * check_every`, so a restart resumes
//!   the count without persisting it. After `max_checks` the next due time
//!   rolls the transaction back.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use uuid::Uuid;

use crate::record::Message;

/// The internal topic of half messages.
pub const HALF_TOPIC: &str = "%HALF%";
/// The internal topic of rollback records.
pub const OP_TOPIC: &str = "%TXN_OP%";
/// The producer group a half message belongs to (checks go to it).
pub const PRODUCER_GROUP: &str = "__PRODUCER_GROUP";
/// Why a transaction was rolled back (on an op record).
pub const REASON: &str = "__TXN_REASON";

/// Check-back timing.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// The first check-back after the half message is stored.
    pub first_check: Duration,
    /// Between check-backs.
    pub check_every: Duration,
    /// Unanswered check-backs before the broker rolls back.
    pub max_checks: u32,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            first_check: Duration::from_secs(6),
            check_every: Duration::from_secs(6),
            max_checks: 15,
        }
    }
}

impl TxnConfig {
    /// (checks made by `now`, when the next is due) for a half stored at
    /// `stored`.
    pub fn schedule(&self, stored: i64, now: i64) -> (u32, i64) {
        let first = stored + self.first_check.as_millis() as i64;
        let every = (self.check_every.as_millis() as i64).max(1);
        if now < first {
            return (0, first);
        }
        let made = ((now - first) / every + 1).min(i64::from(self.max_checks)) as u32;
        (made, first + i64::from(made) * every)
    }
}

/// A commit or a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Rollback,
}

/// Where a transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnState {
    Pending,
    /// A decision is being written.
    Deciding,
    Committed,
    RolledBack {
        reason: String,
    },
}

impl TxnState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TxnState::Pending => "pending",
            TxnState::Deciding => "being decided",
            TxnState::Committed => "committed",
            TxnState::RolledBack { .. } => "rolled_back",
        }
    }
}

/// What the broker tells about a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    pub id: Uuid,
    /// The destination topic.
    pub topic: String,
    pub producer_group: String,
    pub state: TxnState,
    /// Check-backs made so far.
    pub checks: u32,
}

/// A check-back for a producer group: is this transaction committed?
#[derive(Debug, Clone)]
pub struct TxnCheck {
    pub info: TxnInfo,
    /// The half message, with its destination as `topic`.
    pub message: crate::record::StoredMessage,
}

/// One transaction in the book.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub info: TxnInfo,
    pub half_offset: u64,
    /// The half message's log position: a commit refers to its body.
    pub half_pos: u64,
    pub queue: u16,
    /// The message while pending, when small: a commit then needs no read.
    /// Moved out by the first decision attempt (a retry reads the half).
    pub cached: Option<Message>,
    pub next_check: i64,
}

/// The in-memory book of undecided transactions. Guarded by one std
/// mutex in the broker: every section is a few map operations, never
/// across an await.
///
/// A decided transaction leaves the book: the store answers for it (its
/// index lookups catch dispatch up first, so a decision is found as soon
/// as it is acknowledged). The book once remembered decisions for a
/// while, to answer a repeated decision from memory; under load that was
/// hundreds of thousands of entries, and growing and filling that map cost
/// more than a tenth of a transaction's time, for an answer that is rare.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub loaded: bool,
    /// Pending and deciding transactions.
    pub entries: HashMap<Uuid, Entry>,
    /// (due ms, id) of pending transactions' next check-back.
    pub checks_due: BTreeSet<(i64, Uuid)>,
    /// Issued check-backs not yet handed to a poller, per producer group.
    pub ready: HashMap<String, VecDeque<Uuid>>,
    /// (half offset, id) of every undecided transaction: the least is
    /// `half_low`. A set beside `entries`, so that the maintenance pass
    /// does not walk every pending transaction under the lock (a producer
    /// that never decides leaves thousands).
    undecided: BTreeSet<(u64, Uuid)>,
    /// The half queue's end as far as the book knows.
    pub half_end: u64,
    /// Transactions decided before the book was loaded: the load's
    /// lookups may predate their decisions, and must not bring them back
    /// as pending (see [`Book::finish_load`]).
    decided_in_load: HashSet<Uuid>,
    /// When the check-back clock wakes next (ms); `None` while it runs.
    /// A check-back due later needs no wake: waking it for every
    /// transaction cost a task switch and a pass over the book each, for
    /// check-backs seconds away.
    pub clock_at: Option<i64>,
}

impl Book {
    /// Adds an undecided transaction, replacing what the book held of it;
    /// a decided one only moves `half_end`.
    pub fn insert(&mut self, e: Entry) {
        let id = e.info.id;
        self.remove(&id);
        self.half_end = self.half_end.max(e.half_offset + 1);
        if !is_undecided(&e.info.state) {
            return;
        }
        if e.info.state == TxnState::Pending {
            self.checks_due.insert((e.next_check, id));
        }
        self.undecided.insert((e.half_offset, id));
        self.entries.insert(id, e);
    }

    /// [`Book::insert`] unless the book holds `e`'s transaction already.
    pub fn insert_if_absent(&mut self, e: Entry) {
        if !self.entries.contains_key(&e.info.id) {
            self.insert(e);
        }
    }

    fn remove(&mut self, id: &Uuid) -> Option<Entry> {
        let old = self.entries.remove(id)?;
        self.checks_due.remove(&(old.next_check, *id));
        self.undecided.remove(&(old.half_offset, *id));
        Some(old)
    }

    /// Records a decision, which takes the transaction out of the book
    /// and returns what it was; or marks it `Deciding`, or undoes that
    /// with `Pending`.
    pub fn set_state(&mut self, id: &Uuid, state: TxnState) -> Option<TxnInfo> {
        if !is_undecided(&state) {
            if !self.loaded {
                self.decided_in_load.insert(*id);
            }
            let mut e = self.remove(id)?;
            e.info.state = state;
            return Some(e.info);
        }
        let e = self.entries.get_mut(id)?;
        self.checks_due.remove(&(e.next_check, *id));
        if state == TxnState::Pending {
            self.checks_due.insert((e.next_check, *id));
        }
        e.info.state = state;
        None
    }

    /// Ends loading: adds what the load found in the store, except the
    /// transactions decided meanwhile (a lookup made before a decision
    /// was stored says pending); `end` is the half queue's end it read to.
    pub fn finish_load(&mut self, found: Vec<Entry>, end: u64) {
        for e in found {
            if !self.decided_in_load.contains(&e.info.id) {
                self.insert_if_absent(e);
            }
        }
        self.decided_in_load = HashSet::new();
        self.half_end = self.half_end.max(end);
        self.loaded = true;
    }

    /// Whether a check-back due at `due` needs the clock woken.
    pub fn wakes_clock(&self, due: i64) -> bool {
        self.clock_at.is_none_or(|at| due < at)
    }

    /// Every half below this is decided.
    pub fn half_low(&self) -> u64 {
        self.undecided
            .first()
            .map_or(self.half_end, |&(offset, _)| offset)
    }
}

fn is_undecided(state: &TxnState) -> bool {
    matches!(state, TxnState::Pending | TxnState::Deciding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(half_offset: u64) -> Entry {
        Entry {
            info: TxnInfo {
                id: Uuid::now_v7(),
                topic: "T".into(),
                producer_group: "P".into(),
                state: TxnState::Pending,
                checks: 0,
            },
            half_offset,
            half_pos: half_offset * 100,
            queue: 0,
            cached: None,
            next_check: 1_000 + half_offset as i64,
        }
    }

    #[test]
    fn half_low_is_the_least_undecided_half_through_every_state() {
        let mut book = Book::default();
        assert_eq!(book.half_low(), 0);
        let [a, b, c] = [5, 7, 9].map(entry);
        let ids = [a.info.id, b.info.id, c.info.id];
        for e in [a, b, c] {
            book.insert(e);
        }
        assert_eq!(book.half_low(), 5);
        let decided = book.set_state(&ids[0], TxnState::Committed);
        assert_eq!(decided.map(|i| i.state), Some(TxnState::Committed));
        assert_eq!(book.half_low(), 7);
        assert!(!book.entries.contains_key(&ids[0]), "decided leaves");
        assert_eq!(book.set_state(&ids[1], TxnState::Deciding), None);
        assert_eq!(book.half_low(), 7, "deciding is not decided");
        book.set_state(&ids[1], TxnState::Pending);
        assert_eq!(book.half_low(), 7);
        assert!(book.checks_due.iter().any(|&(_, id)| id == ids[1]));
        let reason = String::from("no");
        book.set_state(&ids[1], TxnState::RolledBack { reason });
        assert_eq!(book.half_low(), 9);
        assert_eq!(book.checks_due.len(), 1, "only the pending one is checked");
        // A decided transaction looked up again is not held: it does not
        // hold the mark back; the last decision moves it to the end.
        let mut again = entry(5);
        again.info.state = TxnState::Committed;
        book.insert_if_absent(again);
        assert_eq!(book.entries.len(), 1);
        book.set_state(&ids[2], TxnState::Committed);
        assert_eq!(book.half_low(), 10);
        assert!(book.entries.is_empty() && book.checks_due.is_empty());
    }

    #[test]
    fn a_transaction_decided_while_loading_does_not_come_back_pending() {
        let mut book = Book::default();
        let (a, b) = (entry(1), entry(2));
        let ids = [a.info.id, b.info.id];
        // Sent and decided while the load was reading the store: its
        // lookup (made before the decision) says pending.
        book.insert(a.clone());
        book.set_state(&ids[0], TxnState::Committed);
        book.finish_load(vec![a, b], 3);
        assert!(book.loaded);
        assert!(!book.entries.contains_key(&ids[0]), "decided stays out");
        assert!(book.entries.contains_key(&ids[1]), "pending comes in");
        assert_eq!(book.half_low(), 2);
        // Loaded: a later decision is not remembered for any load.
        book.set_state(&ids[1], TxnState::Committed);
        assert!(book.decided_in_load.is_empty());
        assert_eq!(book.half_low(), 3);
    }

    #[test]
    fn check_backs_follow_the_store_time() {
        let c = TxnConfig {
            first_check: Duration::from_millis(100),
            check_every: Duration::from_millis(50),
            max_checks: 3,
        };
        assert_eq!(c.schedule(1000, 1050), (0, 1100));
        assert_eq!(c.schedule(1000, 1100), (1, 1150));
        assert_eq!(c.schedule(1000, 1199), (2, 1200));
        assert_eq!(c.schedule(1000, 9999), (3, 1250));
    }
}
