//! The replication loop: one task per source cell.
//!
//! A task scans its cell's tenant topics queue by queue from the journal's
//! `next`, plans each batch (`plan::targets`), journals the placements,
//! appends the copies (skipping destinations that already hold the message
//! id: at-least-once, deduplicated), then advances. With nothing to do it
//! waits for the source broker's append signal (or a 1 s tick, which also
//! picks up topics and cells created meanwhile).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{Broker, Message, QueueSelect, StoredMessage};
use cellgate_rules::{CellId, RuleSet, RulesHandle};

use crate::journal::{Journal, Placement, QueueProgress};
use crate::metrics::{KindLabels, RouteLabels, RouterMetrics};
use crate::plan;
use crate::Error;

/// Messages read from one queue per step.
const BATCH: usize = 256;

/// Where the router finds each cell's broker.
pub trait BrokerDirectory: Send + Sync + 'static {
    fn broker(&self, rules: &RuleSet, cell: CellId) -> Option<Arc<dyn Broker>>;
}

/// The router's configuration and shared parts.
pub struct Router {
    pub rules: Arc<RulesHandle>,
    pub brokers: Arc<dyn BrokerDirectory>,
    /// Journals live here, one file per source cell.
    pub dir: PathBuf,
    pub metrics: RouterMetrics,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Router {
    /// Runs until the returned handle is aborted: a supervisor that starts
    /// one task per cell (and for cells added by a reload).
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut running: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
            loop {
                let rules = self.rules.current();
                for (_, cell) in rules.cells() {
                    let name = cell.name.to_string();
                    if running.get(&name).is_some_and(|h| !h.is_finished()) {
                        continue;
                    }
                    let me = self.clone();
                    let task_name = name.clone();
                    running.insert(
                        name,
                        tokio::spawn(async move { me.source(task_name).await }),
                    );
                }
                drop(rules);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Copies everything originating in `cell`, forever; returns on an
    /// error (logged; the supervisor restarts it a second later).
    async fn source(self: Arc<Self>, cell: String) {
        let mut journal = match Journal::open(&self.dir, &cell) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(%cell, error = %e, "router journal");
                self.metrics.error("journal");
                return;
            }
        };
        loop {
            let rules = self.rules.current();
            let Some(origin) = rules.cell_id(&cell) else {
                return;
            };
            let Some(src) = self.brokers.broker(&rules, origin) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut appended = src.appended();
            appended.borrow_and_update();
            match self.pass(&rules, origin, &*src, &mut journal).await {
                Ok(0) => {
                    drop(rules);
                    let _ = tokio::time::timeout(Duration::from_secs(1), appended.changed()).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%cell, error = %e, "router pass failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One look at every queue of the cell's topics; the number of
    /// messages it moved past.
    async fn pass(
        &self,
        rules: &RuleSet,
        origin: CellId,
        src: &dyn Broker,
        journal: &mut Journal,
    ) -> Result<usize, Error> {
        let mut moved = 0;
        let mine = format!("|{}%", rules.cell_name(origin));
        for (topic, queues) in src.topics()? {
            if !topic.contains(&mine) || topic.starts_with('%') {
                continue;
            }
            for q in 0..queues {
                moved += self.step(rules, origin, src, journal, &topic, q).await?;
            }
        }
        Ok(moved)
    }

    /// Finishes an interrupted batch, then copies the next one.
    async fn step(
        &self,
        rules: &RuleSet,
        origin: CellId,
        src: &dyn Broker,
        journal: &mut Journal,
        topic: &str,
        queue: u16,
    ) -> Result<usize, Error> {
        let mut prog = journal.queue(topic, queue);
        if !prog.pending.is_empty() {
            let from = prog.pending.first().map(|p| p.offset).unwrap_or(prog.next);
            let msgs = src.read(topic, queue, from, prog.pending.len().max(1) * 4)?;
            self.apply(rules, origin, &msgs, &prog.pending).await?;
            let end = prog
                .pending
                .last()
                .map(|p| p.offset + 1)
                .unwrap_or(prog.next);
            prog = QueueProgress {
                next: end.max(prog.next),
                pending: Vec::new(),
            };
            journal.set(topic, queue, prog.clone());
            journal.save()?;
        }
        let msgs = src.read(topic, queue, prog.next, BATCH)?;
        let Some(last) = msgs.last() else {
            return Ok(0);
        };
        let end = last.queue_offset + 1;
        let mut pending = Vec::new();
        for m in &msgs {
            match plan::targets(rules, origin, m) {
                Ok(t) => pending.push(Placement {
                    offset: m.queue_offset,
                    id: m.id.to_string(),
                    dests: t
                        .into_iter()
                        .map(|(c, k)| (rules.cell_name(c).to_owned(), k.as_str().to_owned()))
                        .collect(),
                }),
                Err(skip) => {
                    self.metrics
                        .skipped
                        .get_or_create(&KindLabels {
                            kind: skip.as_str(),
                        })
                        .inc();
                }
            }
        }
        if !pending.is_empty() {
            // Durable before any copy exists: a replay goes to the same cells.
            journal.set(
                topic,
                queue,
                QueueProgress {
                    next: prog.next,
                    pending: pending.clone(),
                },
            );
            journal.save()?;
            self.apply(rules, origin, &msgs, &pending).await?;
        }
        journal.set(
            topic,
            queue,
            QueueProgress {
                next: end,
                pending: Vec::new(),
            },
        );
        if !pending.is_empty() {
            journal.save()?;
        }
        Ok(msgs.len())
    }

    /// Appends the copies of `placements` (found in `msgs`), per destination
    /// in offset order, skipping destinations that already hold the id.
    async fn apply(
        &self,
        rules: &RuleSet,
        origin: CellId,
        msgs: &[StoredMessage],
        placements: &[Placement],
    ) -> Result<(), Error> {
        let by_offset: BTreeMap<u64, &StoredMessage> =
            msgs.iter().map(|m| (m.queue_offset, m)).collect();
        let mut per_dest: BTreeMap<&str, Vec<(&StoredMessage, &str)>> = BTreeMap::new();
        for p in placements {
            let Some(m) = by_offset
                .get(&p.offset)
                .copied()
                .filter(|m| m.id.to_string() == p.id)
            else {
                // Gone (retention) since it was journaled: nothing to copy.
                self.metrics.error("source_gone");
                continue;
            };
            for (dest, kinds) in &p.dests {
                per_dest.entry(dest).or_default().push((m, kinds));
            }
        }
        let ns_of = |m: &StoredMessage| m.topic.split('|').next().unwrap_or("").to_owned();
        for (dest, items) in per_dest {
            let Some(dest_id) = rules.cell_id(dest) else {
                self.metrics.error("unknown_destination");
                continue;
            };
            let Some(broker) = self.brokers.broker(rules, dest_id) else {
                self.metrics.error("destination_unavailable");
                return Err(Error::Unavailable(dest.to_owned()));
            };
            let mut batch: Vec<(Message, QueueSelect, uuid::Uuid)> = Vec::new();
            let mut origins = Vec::new();
            for (m, kinds) in items {
                if broker.get_by_id(&m.id)?.is_some() {
                    self.metrics.dedupe_hits.inc();
                    continue;
                }
                let Some(topic) = plan::dest_topic(rules, m, dest_id) else {
                    self.metrics.error("bad_name");
                    continue;
                };
                let (copy, select) = plan::copy_of(m, topic, kinds);
                batch.push((copy, select, m.id));
                origins.push(m);
            }
            if batch.is_empty() {
                continue;
            }
            let stored = broker.send_copies(batch).await?;
            let stored_at = stored.first().map(|r| r.stored_ms).unwrap_or_else(now_ms);
            for m in origins {
                let labels = RouteLabels {
                    tenant: ns_of(m),
                    source: rules.cell_name(origin).to_owned(),
                    target: dest.to_owned(),
                };
                self.metrics.copies.get_or_create(&labels).inc();
                let lag = (stored_at - m.stored_ms).max(0) as f64 / 1000.0;
                self.metrics.lag.get_or_create(&labels).observe(lag);
            }
        }
        Ok(())
    }
}
