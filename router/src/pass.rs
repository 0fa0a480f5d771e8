//! One pass of a source cell: the next batch of every tenant queue, read
//! from the end of what is planned, and planned: which cells get a copy of
//! each message, for which kinds.
//!
//! A pass holds its source records encoded (`Records`), and each copy is
//! encoded by the destination broker straight from them: nothing is
//! decoded into owned messages or cloned per copy.

use std::sync::Arc;

use cellgate_broker_core::{Broker, Records};
use cellgate_rules::{CellId, RuleSet};

use crate::dedupe::{Cleared, Dedupe, Placed};
use crate::journal::Journal;
use crate::lease::Lease;
use crate::metrics::{KindLabels, RouterMetrics};
use crate::plan;
use crate::Error;

/// A replay's bounds (dedupe.rs, lease.rs).
#[derive(Debug, Clone)]
pub(crate) struct Doubt {
    /// Only messages stored up to then (by the source's clock, give or
    /// take a margin) can have copies already.
    pub until_ms: i64,
    /// Every copy that exists already was stored by then (by the router's
    /// clock; the lookup allows for the destination's).
    pub copies_until_ms: i64,
    /// The replay's per-queue bound.
    pub cleared: Arc<Cleared>,
}

/// Messages read from one queue per pass.
pub(crate) const BATCH: usize = 256;

/// What a pass read from one source queue: offsets `[from, end)`.
pub(crate) struct Batch {
    pub topic: String,
    pub queue: u16,
    pub records: Records,
    pub from: u64,
    pub end: u64,
}

/// One copy: the `record`-th record of the `batch`-th batch, for `kinds`.
pub(crate) struct Item {
    pub batch: u32,
    pub record: u32,
    pub kinds: &'static str,
}

/// A pass's batches and its copies, by destination cell.
pub(crate) struct Work {
    pub batches: Vec<Batch>,
    /// Destination cell name → its copies, in source order per queue.
    pub dests: Vec<(String, Vec<Item>)>,
    /// What a replay may find copied already, and where to look.
    pub doubt: Doubt,
    pub dedupe: Dedupe,
    /// The source cell's lease: each send is checked against it.
    pub lease: Arc<Lease>,
    /// Under unknown rules: the copies any cell holds (dedupe.rs).
    pub placed: Placed,
    /// Some queue had a full batch: there may be more to read at once.
    pub full: bool,
    /// The earliest store time of a batch's first message.
    pub oldest_ms: Option<i64>,
}

impl Work {
    fn add(&mut self, dest: &str, item: Item) {
        match self.dests.iter_mut().find(|d| d.0 == dest) {
            Some(d) => d.1.push(item),
            None => self.dests.push((dest.to_owned(), vec![item])),
        }
    }

    /// Moves each batch's queue past it: its copies are all appended.
    pub fn complete(&self, journal: &mut Journal) {
        for b in &self.batches {
            journal.copied(&b.topic, b.queue, b.from, b.end);
        }
    }
}

/// Reads the next batch of every tenant queue of the source cell from the
/// end of what is planned, and plans it.
pub(crate) async fn read(
    rules: &RuleSet,
    origin: CellId,
    src: &dyn Broker,
    journal: &mut Journal,
    metrics: &RouterMetrics,
    (dedupe, doubt, lease): (Dedupe, Doubt, Arc<Lease>),
) -> Result<Work, Error> {
    let mut work = Work {
        batches: Vec::new(),
        dests: Vec::new(),
        doubt,
        dedupe,
        lease,
        placed: Placed::default(),
        full: false,
        oldest_ms: None,
    };
    for (topic, queues) in src.topics().await? {
        // Other cells' copies, DLQs, unknown tenants: never read.
        let Ok(source) = plan::source_topic(rules, origin, &topic) else {
            continue;
        };
        for q in 0..queues {
            let prog = journal.queue_mut(&topic, q);
            let from = prog.planned_end();
            // Copies in this cell (other cells' messages) are left out
            // unread where the broker can tell them.
            let records = src.read_originals(&topic, q, from, BATCH).await?;
            let Some(end) = records.end().filter(|&e| e > from) else {
                continue;
            };
            prog.planned = Some(end);
            work.full |= end - from >= BATCH as u64;
            if let Some(first) = records.get(0) {
                let t = first.stored_ms();
                work.oldest_ms = Some(work.oldest_ms.map_or(t, |o| o.min(t)));
            }
            let batch = work.batches.len() as u32;
            for (i, r) in records.iter().enumerate() {
                match plan::targets(rules, origin, &source, &r) {
                    Ok(t) => {
                        for (cell, kinds) in t.iter() {
                            let item = Item {
                                batch,
                                record: i as u32,
                                kinds: kinds.as_str(),
                            };
                            work.add(rules.cell_name(cell), item);
                        }
                    }
                    Err(skip) => {
                        metrics
                            .skipped
                            .get_or_create(&KindLabels {
                                kind: skip.as_str(),
                            })
                            .inc();
                    }
                }
            }
            work.batches.push(Batch {
                topic: topic.clone(),
                queue: q,
                records,
                from,
                end,
            });
        }
    }
    Ok(work)
}
