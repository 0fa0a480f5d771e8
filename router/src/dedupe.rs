//! A replay's question, "does this destination hold the copy already?",
//! asked once per destination topic per step ([`Broker::find_ids`]), not
//! once per message; under unknown rules, "which kinds does some cell hold
//! a copy for?", asked once per step of every cell and topic.
//!
//! ## How far a replay looks
//!
//! A replay reads from the journal's `next`, and only copies made by the
//! process before (since its last journal write) can exist. Two bounds keep
//! it from looking copies up for ever after a long outage:
//!
//! - by time, `Doubt::until_ms`: messages stored after the replay began,
//!   or after the lease of the process before ran out, were never copied
//!   before (run.rs, `Replay`; lease.rs); and the lookups read the
//!   destinations only up to `Doubt::copies_until_ms`, by when every copy
//!   of the process before was stored;
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

/// How far a broker's clock may run ahead of the router's: a message
/// stored by a time a replay bounds its doubt by can look stored this much
/// later, in the source (run.rs, `Replay`) as in a destination (here).
pub(crate) const AHEAD_MS: i64 = 60_000;

/// Per source queue (physical topic, queue id), the offset from which the
/// replay knows no copy exists (see the module docs). Written by the
/// destinations' send tasks, read by the next step's; a std mutex because
/// each use is a map lookup or insert, never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Cleared(Mutex<HashMap<String, HashMap<u16, u64>>>);

// === impl Cleared ===

impl Cleared {
    fn covers(&self, topic: &str, queue: u16, offset: u64) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(topic)
            .and_then(|queues| queues.get(&queue))
            .is_some_and(|from| offset >= *from)
    }

    /// A message at `offset` lacks a copy it was planned to have.
    fn missing(&self, topic: &str, queue: u16, offset: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let queues = match map.get_mut(topic) {
            Some(q) => q,
            None => map.entry(topic.to_owned()).or_default(),
        };
        let from = queues.entry(queue).or_insert(u64::MAX);
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
    /// The kinds to copy; [`to_copy`] narrows them to those not placed
    /// yet, `None` when none is left.
    pub kinds: Option<&'static str>,
}

/// Every cell's broker with the batches' names there.
pub(crate) type AllCells = [(Arc<dyn Broker>, Names)];

/// The copies some cell holds of a step's messages, with the kinds each
/// is for: asked once per step ([`Dedupe::AnyCell`]), by whichever
/// destination task comes first; the others wait for its answer.
pub(crate) type Placed = tokio::sync::OnceCell<HashMap<Uuid, TargetMask>>;

/// Narrows each of `asks` to the kinds still to copy to `dest` (see
/// [`Ask::kinds`]). Not a replay: nothing to do, nothing allocated.
pub(crate) async fn to_copy(
    work: &Work,
    dest: &dyn Broker,
    all: &AllCells,
    asks: &mut [Ask<'_>],
) -> Result<(), Error> {
    if work.dedupe == Dedupe::No {
        return Ok(());
    }
    // The asks a copy may exist for, by index.
    let doubt: Vec<usize> = (0..asks.len())
        .filter(|&i| in_doubt(work, asks[i].batch, &asks[i].record))
        .collect();
    if doubt.is_empty() {
        return Ok(());
    }
    if work.dedupe == Dedupe::AnyCell {
        let placed = work
            .placed
            .get_or_try_init(|| placed_anywhere(work, all))
            .await?;
        for i in doubt {
            let a = &mut asks[i];
            let got = placed.get(&a.record.id()).copied().unwrap_or_default();
            a.kinds = a.kinds.and_then(|k| left(k, got));
        }
        return Ok(());
    }
    let asked = doubt.iter().map(|&i| (asks[i].topic, &asks[i].record));
    let held = held_in(dest, asked, work.doubt.copies_until_ms).await?;
    for i in doubt {
        let a = &mut asks[i];
        let id = a.record.id();
        if held.copies.contains_key(&id) {
            a.kinds = None;
        } else if let (false, Some(b)) = (held.found.contains(&id), work.batches.get(a.batch)) {
            work.doubt
                .cleared
                .missing(&b.topic, b.queue, a.record.queue_offset());
        }
    }
    Ok(())
}

/// Whether a copy of `record` (of batch `batch`) may exist already.
fn in_doubt(work: &Work, batch: usize, record: &RecordRef<'_>) -> bool {
    if work.dedupe == Dedupe::No || record.stored_ms() > work.doubt.until_ms {
        return false;
    }
    let Some(b) = work.batches.get(batch) else {
        return false;
    };
    !(work.dedupe == Dedupe::Planned
        && work
            .doubt
            .cleared
            .covers(&b.topic, b.queue, record.queue_offset()))
}

/// [`Placed`]: every cell asked for every message of the step in doubt,
/// under that cell's name for its topic.
async fn placed_anywhere(work: &Work, all: &AllCells) -> Result<HashMap<Uuid, TargetMask>, Error> {
    let mut doubt: Vec<(usize, RecordRef<'_>)> = Vec::new();
    let mut seen = HashSet::new();
    for it in work.dests.iter().flat_map(|(_, items)| items) {
        let batch = it.batch as usize;
        let Some(r) = work
            .batches
            .get(batch)
            .and_then(|b| b.records.get(it.record as usize))
        else {
            continue;
        };
        if seen.insert((it.batch, it.record)) && in_doubt(work, batch, &r) {
            doubt.push((batch, r));
        }
    }
    let mut placed: HashMap<Uuid, TargetMask> = HashMap::new();
    for (broker, names) in all {
        let here = doubt.iter().filter_map(|(batch, r)| {
            let Name { topic, .. } = names.get(*batch)?.as_ref()?;
            Some((topic.as_str(), r))
        });
        for (id, k) in held_in(&**broker, here, work.doubt.copies_until_ms)
            .await?
            .copies
        {
            let p = placed.entry(id).or_default();
            *p = p.union(k);
        }
    }
    Ok(placed)
}

/// What a broker holds of some messages, each asked in one topic.
#[derive(Default)]
struct Held {
    /// Ids found at all.
    found: HashSet<Uuid>,
    /// Of those, the copies, with the kinds each is for. What lacks
    /// `COPY_FOR` is an original, not a copy.
    copies: HashMap<Uuid, TargetMask>,
}

/// [`Held`] of the asked records in `broker`: one [`Broker::find_ids`] per
/// topic, from the oldest record's store time less [`SKEW_MS`] to
/// `copies_until_ms` plus [`AHEAD_MS`].
async fn held_in<'a>(
    broker: &dyn Broker,
    asks: impl Iterator<Item = (&'a str, &'a RecordRef<'a>)>,
    copies_until_ms: i64,
) -> Result<Held, Error> {
    let mut by_topic: BTreeMap<&str, (Vec<Uuid>, i64)> = BTreeMap::new();
    for (topic, r) in asks {
        let (ids, since) = by_topic.entry(topic).or_insert((Vec::new(), i64::MAX));
        ids.push(r.id());
        *since = (*since).min(r.stored_ms().saturating_sub(SKEW_MS));
    }
    let mut out = Held::default();
    for (topic, (ids, since)) in by_topic {
        let asked: HashSet<Uuid> = ids.iter().copied().collect();
        let window = (since, copies_until_ms.saturating_add(AHEAD_MS));
        for m in broker.find_ids(topic, &ids, window).await? {
            if m.topic != topic || !asked.contains(&m.id) {
                continue;
            }
            out.found.insert(m.id);
            if let Some(k) = m
                .properties
                .get(COPY_FOR)
                .and_then(|v| TargetMask::parse(v))
            {
                out.copies.insert(m.id, k);
            }
        }
    }
    Ok(out)
}

/// The kinds of `want` that `placed` lacks, if any.
fn left(want: &'static str, placed: TargetMask) -> Option<&'static str> {
    let left = TargetMask::parse(want)?.minus(placed);
    (!left.is_empty()).then(|| left.as_str())
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
