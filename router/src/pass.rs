//! One pass of a source cell: reading and planning a batch from every
//! queue (or replaying the journaled plan after a restart or an error),
//! and the copies that follow, one `send_record_copies` per destination.
//!
//! A pass holds its source records encoded (`Records`), and each copy is
//! encoded by the destination broker straight from them: nothing is
//! decoded into owned messages or cloned per copy.

use cellgate_broker_core::{Broker, Records};
use cellgate_rules::{CellId, RuleSet, TargetMask, Targets};

use crate::journal::{Journal, Pending, QueueProgress, Shape};
use crate::metrics::{KindLabels, RouterMetrics};
use crate::plan;
use crate::Error;

/// Messages read from one queue per pass.
pub(crate) const BATCH: usize = 256;

/// What a pass read from one source queue.
pub(crate) struct Batch {
    pub topic: String,
    pub queue: u16,
    pub records: Records,
    /// The journaled offsets the batch covers: `[from, end)`.
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
#[derive(Default)]
pub(crate) struct Work {
    pub batches: Vec<Batch>,
    /// Destination cell name → its copies, in source order per queue.
    pub dests: Vec<(String, Vec<Item>)>,
    /// A replay: skip destinations that already hold the message id.
    pub dedupe: bool,
}

impl Work {
    pub fn copies(&self) -> usize {
        self.dests.iter().map(|d| d.1.len()).sum()
    }

    fn add(&mut self, dest: &str, item: Item) {
        match self.dests.iter_mut().find(|d| d.0 == dest) {
            Some(d) => d.1.push(item),
            None => self.dests.push((dest.to_owned(), vec![item])),
        }
    }

    /// Moves each batch's queue past it: its copies are all appended.
    pub fn complete(&self, journal: &mut Journal) {
        for b in &self.batches {
            let q = journal.queue_mut(&b.topic, b.queue);
            // Always so: passes of a queue complete in order.
            if q.next == b.from {
                q.advance(b.end - b.from);
            }
        }
    }
}

/// Reads the next batch of every tenant queue of the source cell from the
/// end of its journaled plan, plans it, and adds the plan to the journal
/// (in memory: the caller writes it before any copy is sent).
pub(crate) fn read(
    rules: &RuleSet,
    origin: CellId,
    src: &dyn Broker,
    journal: &mut Journal,
    metrics: &RouterMetrics,
) -> Result<Work, Error> {
    let mut work = Work::default();
    for (topic, queues) in src.topics()? {
        // Other cells' copies, DLQs, unknown tenants: never read.
        let Ok(source) = plan::source_topic(rules, origin, &topic) else {
            continue;
        };
        for q in 0..queues {
            let prog = journal.queue_mut(&topic, q);
            let from = prog.planned_end();
            let records = src.read_records(&topic, q, from, BATCH)?;
            if records.is_empty() {
                continue;
            }
            let batch = work.batches.len() as u32;
            let end = plan_into(
                rules,
                origin,
                &source,
                &records,
                from,
                prog,
                metrics,
                |i, t| {
                    for (cell, kinds) in t.iter() {
                        let item = Item {
                            batch,
                            record: i,
                            kinds: kinds.as_str(),
                        };
                        work.add(rules.cell_name(cell), item);
                    }
                },
            );
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

/// Plans `records` (read from offset `from`) into `prog`'s pending plan;
/// `copy(i, targets)` gets the targets of the `i`-th record. Returns the
/// end of the plan. Offsets the read skipped (past retention) get no copy.
#[allow(clippy::too_many_arguments)]
fn plan_into(
    rules: &RuleSet,
    origin: CellId,
    source: &plan::SourceTopic<'_>,
    records: &Records,
    from: u64,
    prog: &mut QueueProgress,
    metrics: &RouterMetrics,
    mut copy: impl FnMut(u32, Targets),
) -> u64 {
    let mut at = from;
    // Most messages of a batch share a few shapes: look each up once.
    let mut seen: Vec<(Targets, u32)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let pending = prog.pending.get_or_insert_with(|| Pending::new(r.id()));
        pending.push(r.queue_offset().saturating_sub(at), None);
        at = r.queue_offset() + 1;
        pending.last_id = r.id();
        match plan::targets(rules, origin, source, &r) {
            Ok(t) => {
                let shape = match seen.iter().find(|s| s.0 == t) {
                    Some(s) => s.1,
                    None => {
                        let names: Shape = t
                            .iter()
                            .map(|(c, k)| (rules.cell_name(c).to_owned(), k.as_str().to_owned()))
                            .collect();
                        let s = pending.shape(names);
                        seen.push((t, s));
                        s
                    }
                };
                pending.push(1, Some(shape));
                copy(i as u32, t);
            }
            Err(skip) => {
                pending.push(1, None);
                metrics
                    .skipped
                    .get_or_create(&KindLabels {
                        kind: skip.as_str(),
                    })
                    .inc();
            }
        }
    }
    at
}

/// The journaled plans of every queue that has one, to send again with
/// dedupe (after a restart or a failed pass). A queue whose source no
/// longer holds the last planned message (it lost its tail) is planned
/// again from `next` under the rules in force; the caller writes the
/// journal before sending.
pub(crate) fn replay(
    rules: &RuleSet,
    origin: CellId,
    src: &dyn Broker,
    journal: &mut Journal,
    metrics: &RouterMetrics,
) -> Result<Work, Error> {
    let mut work = Work {
        dedupe: true,
        ..Work::default()
    };
    for (topic, q) in journal.pending() {
        let prog = journal.queue_mut(&topic, q);
        let Some(pending) = prog.pending.take() else {
            continue;
        };
        let (from, n) = (prog.next, pending.len());
        if n == 0 {
            continue;
        }
        let records = src.read_records(&topic, q, from, n as usize)?;
        let last = from + n - 1;
        let trusted = records
            .iter()
            .any(|r| r.queue_offset() == last && r.id() == pending.last_id);
        let batch = work.batches.len() as u32;
        let end = if trusted {
            let plan: Vec<Option<&Shape>> = pending.plan().collect();
            for (i, r) in records.iter().enumerate() {
                let at = (r.queue_offset() - from) as usize;
                for (cell, kinds) in plan.get(at).copied().flatten().into_iter().flatten() {
                    // Written by `plan_into`: always a valid mask.
                    let Some(kinds) = TargetMask::parse(kinds) else {
                        metrics.error("journal");
                        continue;
                    };
                    let item = Item {
                        batch,
                        record: i as u32,
                        kinds: kinds.as_str(),
                    };
                    work.add(cell, item);
                }
            }
            prog.pending = Some(pending);
            from + n
        } else {
            tracing::warn!(%topic, queue = q, "the source lost messages the router had planned; planning again");
            metrics.error("source_rewound");
            let Ok(source) = plan::source_topic(rules, origin, &topic) else {
                continue;
            };
            plan_into(
                rules,
                origin,
                &source,
                &records,
                from,
                prog,
                metrics,
                |i, t| {
                    for (cell, kinds) in t.iter() {
                        let item = Item {
                            batch,
                            record: i,
                            kinds: kinds.as_str(),
                        };
                        work.add(rules.cell_name(cell), item);
                    }
                },
            )
        };
        work.batches.push(Batch {
            topic,
            queue: q,
            records,
            from,
            end,
        });
    }
    Ok(work)
}
