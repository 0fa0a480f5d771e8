//! The replication loop: one task per source cell.
//!
//! A task scans its cell's tenant topics queue by queue from the journal's
//! `next`, plans each batch (`plan::targets`), journals the placements,
//! appends the copies (skipping destinations that already hold the message
//! id: at-least-once, deduplicated), then advances. With nothing to do it
//! waits for the source broker's append signal (or a 1 s tick, which also
//! picks up topics and cells created meanwhile).

use std::collections::{BTreeMap, HashMap};
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

/// How long a woken router lets new messages gather before a pass: bounds
/// the passes (and journal writes) to a few hundred per second per source
/// cell, at the price of this much added replication lag.
const GATHER: Duration = Duration::from_millis(2);

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
                    let woke =
                        tokio::time::timeout(Duration::from_secs(1), appended.changed()).await;
                    if woke.is_ok() {
                        // Let a trickle of publishes gather into one pass:
                        // a pass costs a journal write (two fsyncs) and a
                        // look at every queue, whatever it carries.
                        tokio::time::sleep(GATHER).await;
                    }
                }
                Ok(n) if n < BATCH => tokio::time::sleep(GATHER).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%cell, error = %e, "router pass failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One look at every queue of the cell's topics; the number of
    /// messages it moved past. Every queue's batch is planned first, the
    /// placements of all of them are journaled with one durable write, then
    /// the copies go out, one `send_copies` per destination cell.
    async fn pass(
        &self,
        rules: &RuleSet,
        origin: CellId,
        src: &dyn Broker,
        journal: &mut Journal,
    ) -> Result<usize, Error> {
        let mut moved = 0;
        let mut work: Vec<(String, u16, Vec<StoredMessage>, Vec<Placement>)> = Vec::new();
        for (topic, queues) in src.topics()? {
            // Other cells' copies, DLQs, unknown tenants: never read.
            let Ok(source) = plan::source_topic(rules, origin, &topic) else {
                continue;
            };
            for q in 0..queues {
                let mut prog = journal.queue(&topic, q);
                if !prog.pending.is_empty() {
                    self.replay(rules, origin, src, &topic, q, &mut prog)
                        .await?;
                    journal.set(&topic, q, prog.clone());
                    journal.save()?;
                }
                let msgs = src.read(&topic, q, prog.next, BATCH)?;
                if msgs.is_empty() {
                    continue;
                }
                moved += msgs.len();
                let placements = self.plan(rules, origin, &source, &msgs);
                work.push((topic.clone(), q, msgs, placements));
            }
        }
        if work.is_empty() {
            return Ok(0);
        }
        let any = work.iter().any(|w| !w.3.is_empty());
        for (topic, q, _, placements) in &work {
            if !placements.is_empty() {
                let next = journal.queue(topic, *q).next;
                journal.set(
                    topic,
                    *q,
                    QueueProgress {
                        next,
                        pending: placements.clone(),
                    },
                );
            }
        }
        if any {
            // Durable before any copy exists: a replay goes to the same cells.
            journal.save()?;
            let items: Vec<(&StoredMessage, &Placement)> = work
                .iter()
                .flat_map(|(_, _, msgs, ps)| matched(msgs, ps))
                .collect();
            self.apply(rules, origin, &items, false).await?;
        }
        for (topic, q, msgs, _) in &work {
            let end = msgs.last().map(|m| m.queue_offset + 1).unwrap_or(0);
            // The placements stay in the file until the next save: were the
            // process to die now, a replay finds every copy (dedupe hits).
            journal.set(
                topic,
                *q,
                QueueProgress {
                    next: end,
                    pending: Vec::new(),
                },
            );
        }
        if !any {
            journal.save_if_stale()?;
        }
        Ok(moved)
    }

    /// Where each message of a batch goes (skips counted).
    fn plan(
        &self,
        rules: &RuleSet,
        origin: CellId,
        source: &plan::SourceTopic<'_>,
        msgs: &[StoredMessage],
    ) -> Vec<Placement> {
        let mut out = Vec::new();
        for m in msgs {
            match plan::targets(rules, origin, source, m) {
                Ok(t) => out.push(Placement {
                    offset: m.queue_offset,
                    id: m.id,
                    dests: t
                        .iter()
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
        out
    }

    /// Finishes a batch journaled before a restart: the recorded cells, and
    /// only those that do not hold the message yet.
    async fn replay(
        &self,
        rules: &RuleSet,
        origin: CellId,
        src: &dyn Broker,
        topic: &str,
        queue: u16,
        prog: &mut QueueProgress,
    ) -> Result<(), Error> {
        let first = prog.pending.first().map(|p| p.offset).unwrap_or(prog.next);
        let last = prog.pending.last().map(|p| p.offset).unwrap_or(prog.next);
        let span = usize::try_from(last - first + 1).unwrap_or(usize::MAX);
        let msgs = src.read(topic, queue, first, span)?;
        let items = matched(&msgs, &prog.pending);
        self.apply(rules, origin, &items, true).await?;
        *prog = QueueProgress {
            next: (last + 1).max(prog.next),
            pending: Vec::new(),
        };
        Ok(())
    }

    /// Appends the copies, one `send_copies` per destination cell, the
    /// destinations concurrently. With `dedupe`, a destination that already
    /// holds the message id is skipped (only a replay can find one: copies
    /// exist only for journaled placements).
    async fn apply(
        &self,
        rules: &RuleSet,
        origin: CellId,
        items: &[(&StoredMessage, &Placement)],
        dedupe: bool,
    ) -> Result<(), Error> {
        let mut per_dest: BTreeMap<&str, Vec<(&StoredMessage, &str)>> = BTreeMap::new();
        for (m, p) in items {
            for (dest, kinds) in &p.dests {
                per_dest.entry(dest).or_default().push((m, kinds));
            }
        }
        let mut sends = tokio::task::JoinSet::new();
        for (dest, list) in per_dest {
            let Some(dest_id) = rules.cell_id(dest) else {
                self.metrics.error("unknown_destination");
                continue;
            };
            let Some(broker) = self.brokers.broker(rules, dest_id) else {
                self.metrics.error("destination_unavailable");
                return Err(Error::Unavailable(dest.to_owned()));
            };
            let mut batch: Vec<(Message, QueueSelect, uuid::Uuid)> = Vec::with_capacity(list.len());
            // Store times of the originals, by tenant (the metric label).
            let mut origins: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            // Source topic -> its name in `dest`: one parse per topic.
            let mut names: HashMap<&str, Option<(String, &str)>> = HashMap::new();
            for (m, kinds) in list {
                if dedupe && broker.get_by_id(&m.id)?.is_some() {
                    self.metrics.dedupe_hits.inc();
                    continue;
                }
                let named = names.entry(m.topic.as_str()).or_insert_with(|| {
                    let s = plan::source_topic(rules, origin, &m.topic).ok()?;
                    Some((plan::dest_topic(rules, &s, dest_id)?, s.namespace))
                });
                let Some((topic, tenant)) = named.as_ref() else {
                    self.metrics.error("bad_name");
                    continue;
                };
                let (copy, select) = plan::copy_of(m, topic.clone(), kinds);
                batch.push((copy, select, m.id));
                match origins.get_mut(*tenant) {
                    Some(v) => v.push(m.stored_ms),
                    None => {
                        origins.insert((*tenant).to_owned(), vec![m.stored_ms]);
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let labels = (rules.cell_name(origin).to_owned(), dest.to_owned());
            let metrics = self.metrics.clone();
            let traced: Vec<uuid::Uuid> = batch.iter().map(|(_, _, id)| *id).collect();
            sends.spawn(async move {
                let stored = broker.send_copies(batch).await?;
                broker.record_trace(crate::trace::route_hops(&traced, &stored, &labels));
                let stored_at = stored.first().map(|r| r.stored_ms).unwrap_or_else(now_ms);
                for (tenant, born) in origins {
                    let l = RouteLabels {
                        tenant,
                        source: labels.0.clone(),
                        target: labels.1.clone(),
                    };
                    metrics.copies.get_or_create(&l).inc_by(born.len() as u64);
                    let lag = metrics.lag.get_or_create(&l);
                    for b in born {
                        lag.observe((stored_at - b).max(0) as f64 / 1000.0);
                    }
                }
                Ok::<(), Error>(())
            });
        }
        let mut first_err = None;
        while let Some(r) = sends.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.metrics.error("append");
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::Unavailable("a copy task".into()));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The journaled messages of `msgs`, each with its placement. A placement
/// whose message is gone (retention) or whose id differs is dropped.
fn matched<'a>(
    msgs: &'a [StoredMessage],
    ps: &'a [Placement],
) -> Vec<(&'a StoredMessage, &'a Placement)> {
    let by_offset: BTreeMap<u64, &StoredMessage> =
        msgs.iter().map(|m| (m.queue_offset, m)).collect();
    ps.iter()
        .filter_map(|p| {
            let m = by_offset.get(&p.offset).copied()?;
            (m.id == p.id).then_some((m, p))
        })
        .collect()
}
