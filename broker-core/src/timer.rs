//! Delayed and scheduled delivery: a durable timer.
//!
//! A delayed message is stored at once, in the internal topic
//! [`SCHEDULE_TOPIC`] (one queue), with its destination topic and queue in
//! the properties [`REAL_TOPIC`] and [`REAL_QUEUE`] and its due time in
//! [`DELIVER_AT`]. The queue is chosen at publish time, so a sharding key
//! keeps its queue. When the message is due the timer stores it in its
//! destination *under the same id* (and with [`DELIVER_AT`] kept), where
//! consumers see it like any other message. Nothing else waits for it:
//! delayed messages live in their own topic and are fired by their own task.
//!
//! Invariants:
//! - The commit log is the timer's durable state; the in-memory index
//!   (`pending`, ordered by due time then offset) is rebuilt from it.
//! - Every offset of the schedule queue below `low` has been fired (or
//!   dropped); above it, `done` lists the fired ones. Both are written to
//!   `timer.json` on maintenance and on close.
//! - A restart reloads every offset from `low` that is not in `done`. One
//!   fired after the last write would fire twice, so a reloaded message is
//!   fired only if its destination does not hold its id yet.
//! - Retention deletes whole segments by age, and a message may wait 40
//!   days: a pending message older than half the retention age is written
//!   again (same id, same due time) and its old offset marked done, the way
//!   RocketMQ's timer rolls long delays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The internal topic that holds messages until they are due.
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";
/// The absolute delivery time (ms since the epoch), a property.
pub const DELIVER_AT: &str = "__DELIVER_AT_MS";
/// The destination topic of a held message.
pub const REAL_TOPIC: &str = "__REAL_TOPIC";
/// The destination queue of a held message.
pub const REAL_QUEUE: &str = "__REAL_QUEUE";
/// The furthest a message may be scheduled ahead (SPEC §7).
pub const MAX_DELAY: Duration = Duration::from_secs(40 * 24 * 3600);

/// What `timer.json` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Fired {
    pub low: u64,
    pub done: BTreeSet<u64>,
}

impl Fired {
    pub fn mark(&mut self, offset: u64) {
        if offset >= self.low {
            self.done.insert(offset);
        }
        while self.done.remove(&self.low) {
            self.low += 1;
        }
    }

    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.low || self.done.contains(&offset)
    }
}

/// The timer's state. One std mutex: every critical section is a few map
/// operations and never spans an await, so an async lock would only add
/// cost; the firing task and publishers both touch it.
#[derive(Debug, Default)]
pub(crate) struct TimerState {
    /// Recovery from the log has finished.
    pub loaded: bool,
    /// (due ms, offset): what fires next is the first entry.
    pub pending: BTreeSet<(i64, u64)>,
    /// offset -> due ms: the oldest pending messages first (for rolling).
    pub by_offset: BTreeMap<u64, i64>,
    pub fired: Fired,
    /// Offsets below this were reloaded after a restart: check the
    /// destination before firing them.
    pub recovered_below: u64,
}

impl TimerState {
    pub fn add(&mut self, due: i64, offset: u64) {
        if self.fired.is_done(offset) {
            return;
        }
        self.pending.insert((due, offset));
        self.by_offset.insert(offset, due);
    }

    /// Up to `max` due entries, removed from the index (the caller fires
    /// them, or puts them back with [`TimerState::add`] on failure).
    pub fn take_due(&mut self, now: i64, max: usize) -> Vec<(i64, u64)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.pending.first() {
                Some(&(due, off)) if due <= now => {
                    self.pending.pop_first();
                    self.by_offset.remove(&off);
                    out.push((due, off));
                }
                _ => break,
            }
        }
        out
    }

    pub fn next_due(&self) -> Option<i64> {
        self.pending.first().map(|(d, _)| *d)
    }
}

/// The timer: its state and the signal that wakes its task.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    pub state: Mutex<TimerState>,
    /// Wakes the firing task when a message due earlier than everything
    /// it waits for arrives. `Notify` keeps one permit, so a wake-up sent
    /// while the task is busy is not lost.
    pub wake: Notify,
}

impl Timer {
    /// Indexes a newly held message.
    pub fn schedule(&self, due: i64, offset: u64) {
        let earliest = match self.state.lock() {
            Ok(mut st) => {
                let before = st.next_due();
                st.add(due, offset);
                before.is_none_or(|b| due < b)
            }
            Err(_) => return,
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    pub fn pending_len(&self) -> usize {
        self.state.lock().map(|s| s.pending.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fired_offsets_compact_into_low() {
        let mut f = Fired::default();
        f.mark(1);
        f.mark(2);
        assert_eq!(f.low, 0);
        assert!(f.is_done(2) && !f.is_done(0));
        f.mark(0);
        assert_eq!(f.low, 3);
        assert!(f.done.is_empty());
    }

    #[test]
    fn due_entries_come_out_in_time_then_offset_order() {
        let mut st = TimerState::default();
        st.add(30, 0);
        st.add(10, 2);
        st.add(10, 1);
        st.add(50, 3);
        assert_eq!(st.take_due(30, 10), vec![(10, 1), (10, 2), (30, 0)]);
        assert_eq!(st.next_due(), Some(50));
        assert_eq!(st.by_offset.len(), 1);
        st.fired.mark(3);
        st.add(50, 3);
        assert_eq!(st.pending.len(), 1, "a fired offset is not added again");
    }
}
