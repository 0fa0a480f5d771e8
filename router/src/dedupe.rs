//! A replay's question, "does this destination hold the copy already?",
//! asked once per destination topic per step ([`Broker::find_ids`]), not
//! once per message.
//!
//! ## How far a replay looks
//!
//! A replay reads from the journal's `next`, and only copies made by the
//! process before (since its last journal write) can exist. Two bounds keep
//! it from looking copies up for ever after a long outage:
//!
//! - by time, `Work::dedupe_until_ms`: messages stored after the replay
//!   began were never read before (run.rs, `Replay`);
//! - per source queue, [`Cleared`]: a step appends its copies only once
//!   every copy of the step before is appended, and a step reads at most
//!   [`BATCH`] messages of a queue. So when a message planned for a
//!   destination has no copy there, its step never finished, no later step
//!   sent anything, and no message of that queue [`BATCH`] or more past it
//!   has a copy anywhere. This holds only when the plans being replayed are
//!   the plans now made ([`Dedupe::Planned`]): under other rules a missing
//!   copy may simply not have been planned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cellgate_broker_core::{Broker, RecordRef};
use cellgate_rules::{TargetMask, COPY_FOR};
use uuid::Uuid;

use crate::pass::{Work, BATCH};
use crate::send::{Name, Names};
use crate::Error;

/// How a replay tells a copy that may exist already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dedupe {
    /// Not a replay: no copy of these messages exists.
    No,
    /// The plans before were made under the same rules, so they name the
    /// same destination: skip it if it holds the message id.
    Planned,
    /// The plans before may have been made under other rules: skip each
    /// kind some cell holds a copy for.
    AnyCell,
}

/// A destination broker's clock may be behind the source broker's: a copy
/// can look stored this long before its original.
const SKEW_MS: i64 = 10_000;

/// Per source queue (physical topic, queue id), the offset from which the
/// replay knows no copy exists (see the module docs). Written by the
/// destinations' send tasks, read by the next step's; a std mutex because
/// each use is a map lookup or insert, never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Cleared(Mutex<HashMap<(String, u16), u64>>);

// === impl Cleared ===

impl Cleared {
    fn covers(&self, topic: &str, queue: u16, offset: u64) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // One key allocation per message, during a replay only.
        map.get(&(topic.to_owned(), queue))
            .is_some_and(|from| offset >= *from)
    }

    /// A message at `offset` lacks a copy it was planned to have.
    fn missing(&self, topic: &str, queue: u16, offset: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let from = map.entry((topic.to_owned(), queue)).or_insert(u64::MAX);
        *from = (*from).min(offset.saturating_add(BATCH as u64));
    }
}

/// One copy a destination task is about to append.
pub(crate) struct Ask<'a> {
    /// Its batch in the pass (for the names and the source queue).
    pub batch: usize,
    pub record: RecordRef<'a>,
    /// The copy's physical topic in the destination.
    pub topic: &'a str,
    pub kinds: &'static str,
}

/// Every cell's broker with the batches' names there.
pub(crate) type AllCells = [(Arc<dyn Broker>, Names)];

/// For each of `asks`, the kinds still to copy to `dest`; `None` when the
/// copies are all there.
pub(crate) async fn to_copy(
    work: &Work,
    dest: &dyn Broker,
    all: &AllCells,
    asks: &[Ask<'_>],
) -> Result<Vec<Option<&'static str>>, Error> {
    let mut out: Vec<Option<&'static str>> = asks.iter().map(|a| Some(a.kinds)).collect();
    // The asks a copy may exist for, by index.
    let doubt: Vec<usize> = (0..asks.len())
        .filter(|&i| in_doubt(work, &asks[i]))
        .collect();
    if doubt.is_empty() {
        return Ok(out);
    }
    match work.dedupe {
        Dedupe::No => {}
        Dedupe::Planned => {
            let held = copies_in(dest, doubt.iter().map(|&i| (asks[i].topic, &asks[i]))).await?;
            for i in doubt {
                let a = &asks[i];
                if held.contains_key(&a.record.id()) {
                    out[i] = None;
                } else if let Some(b) = work.batches.get(a.batch) {
                    work.cleared
                        .missing(&b.topic, b.queue, a.record.queue_offset());
                }
            }
        }
        Dedupe::AnyCell => {
            let mut placed: HashMap<Uuid, TargetMask> = HashMap::new();
            for (broker, names) in all {
                let here = doubt.iter().filter_map(|&i| {
                    let Name { topic, .. } = names.get(asks[i].batch)?.as_ref()?;
                    Some((topic.as_str(), &asks[i]))
                });
                for (id, k) in copies_in(&**broker, here).await? {
                    let p = placed.entry(id).or_default();
                    p.r |= k.r;
                    p.g |= k.g;
                    p.c |= k.c;
                }
            }
            for i in doubt {
                let got = placed.get(&asks[i].record.id()).copied();
                out[i] = left(asks[i].kinds, got.unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// Whether a copy of `a` may exist already.
fn in_doubt(work: &Work, a: &Ask<'_>) -> bool {
    if work.dedupe == Dedupe::No || a.record.stored_ms() > work.dedupe_until_ms {
        return false;
    }
    let Some(b) = work.batches.get(a.batch) else {
        return false;
    };
    !(work.dedupe == Dedupe::Planned
        && work
            .cleared
            .covers(&b.topic, b.queue, a.record.queue_offset()))
}

/// The copies `broker` holds of the asked ids, each with the kinds it is
/// for: one [`Broker::find_ids`] per topic. The original (no `COPY_FOR`,
/// in a destination that is its origin, by takeover) is not a copy.
async fn copies_in<'a>(
    broker: &dyn Broker,
    asks: impl Iterator<Item = (&'a str, &'a Ask<'a>)>,
) -> Result<HashMap<Uuid, TargetMask>, Error> {
    let mut by_topic: BTreeMap<&str, (Vec<Uuid>, i64)> = BTreeMap::new();
    for (topic, a) in asks {
        let (ids, since) = by_topic.entry(topic).or_insert((Vec::new(), i64::MAX));
        ids.push(a.record.id());
        *since = (*since).min(a.record.stored_ms().saturating_sub(SKEW_MS));
    }
    let mut out = HashMap::new();
    for (topic, (ids, since)) in by_topic {
        let asked: HashSet<Uuid> = ids.iter().copied().collect();
        for m in broker.find_ids(topic, &ids, since).await? {
            let kinds = m
                .properties
                .get(COPY_FOR)
                .and_then(|v| TargetMask::parse(v));
            if let (true, Some(k)) = (asked.contains(&m.id), kinds) {
                out.insert(m.id, k);
            }
        }
    }
    Ok(out)
}

/// The kinds of `want` that `placed` lacks, if any.
fn left(want: &'static str, placed: TargetMask) -> Option<&'static str> {
    let want = TargetMask::parse(want)?;
    let left = TargetMask {
        r: want.r && !placed.r,
        g: want.g && !placed.g,
        c: want.c && !placed.c,
    };
    (left != TargetMask::default()).then(|| left.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_copy_clears_its_queue_a_batch_on() {
        let c = Cleared::default();
        assert!(!c.covers("T", 0, 1_000_000));
        c.missing("T", 0, 100);
        c.missing("T", 0, 400);
        assert!(!c.covers("T", 0, 100 + BATCH as u64 - 1));
        assert!(c.covers("T", 0, 100 + BATCH as u64));
        assert!(!c.covers("T", 1, 100 + BATCH as u64), "per queue");
        assert!(!c.covers("U", 0, 100 + BATCH as u64), "per topic");
    }

    #[test]
    fn left_is_what_no_cell_holds() {
        let none = TargetMask::default();
        assert_eq!(left("R", none), Some("R"));
        let r = TargetMask::parse("R").unwrap();
        assert_eq!(left("R", r), None);
        let both = left("R,G", r).and_then(TargetMask::parse).unwrap();
        assert!(!both.r && both.g && !both.c);
    }
}
