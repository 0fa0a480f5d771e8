//! The replication loop: one task per source cell, pipelined.
//!
//! A step reads the next batch of every tenant queue of the cell from the
//! end of what is planned and plans it (`pass::read`) while the previous
//! step's copies are being appended (`send::spawn`, one task per
//! destination); once those are all appended, the journal moves past them
//! (written in the background) and this step's copies start. So reading and
//! planning run beside the appends, no fsync is on the copies' path, and
//! copies of one source queue reach each destination in source order.
//!
//! After a start or a failed step the task replays: it reads again from the
//! journal's `next`, skipping copies that exist already (dedupe.rs),
//! until a step finds no full batch. The journal's `rules` says whether the
//! plans being replayed were made under the rules in force (see
//! journal.rs). With nothing to read the task waits for the source broker's
//! append signal (or a 1 s tick, which also picks up topics and cells
//! created meanwhile).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{now_ms, Broker};
use cellgate_rules::{CellId, RuleSet, RulesHandle};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::dedupe::{Dedupe, AHEAD_MS};
use crate::journal::Journal;
use crate::lease::{Lease, SEND_BOUND};
use crate::metrics::RouterMetrics;
use crate::pass::{self, Doubt, Work};
use crate::{send, Error};

/// How long a router woken from idle lets new messages gather before it
/// reads: a trickle of publishes then makes one step (one journal write)
/// instead of one each, at the price of this much added lag.
const GATHER: Duration = Duration::from_millis(1);

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

/// A task that is aborted when this is dropped: aborting the supervisor
/// stops the cell tasks, and a cell task its copies (mid-copy is fine: the
/// journal replays an interrupted step).
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The copies of the last step, still being appended.
#[derive(Default)]
struct InFlight {
    sends: JoinSet<Result<(), Error>>,
    work: Option<Arc<Work>>,
}

impl InFlight {
    /// Waits for every copy in flight; moves the journal past them once all
    /// are appended (in memory: the next write records it).
    async fn finish(&mut self, journal: &mut Journal) -> Result<(), Error> {
        let mut first_err = None;
        while let Some(r) = self.sends.join_next().await {
            let e = match r {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => Error::Unavailable("a copy task".into()),
            };
            first_err.get_or_insert(e);
        }
        let work = self.work.take();
        match (first_err, work) {
            (Some(e), _) => Err(e),
            (None, Some(w)) => {
                w.complete(journal);
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }
}

/// What a step did.
enum Step {
    /// Read messages; look again at once.
    Busy,
    /// Nothing new: wait on this for appends.
    Idle(watch::Receiver<u64>),
}

/// Where a cell task stands with replaying.
#[derive(Debug, Clone)]
struct Replay {
    /// Messages read now may have copies already.
    active: bool,
    /// ... placed under other rules than those in force.
    any_cell: bool,
    /// ... if stored up to [`Doubt::until_ms`]: the replay's start, or the
    /// lease of the process before if it ran out earlier, plus a margin
    /// for a source broker whose clock is ahead of ours. Without this
    /// bound, a router kept behind by the load would look up every message
    /// for ever (and so stay behind), and one back from a long outage
    /// would look up the whole outage.
    doubt: Doubt,
    /// The destinations' lookups see every copy sent before the replay
    /// began (their [`Broker::lookup_lag`] has passed since).
    settled: bool,
}

impl Replay {
    /// A replay starting now, after the process that held `lease`.
    fn start(lease: &Lease) -> Replay {
        let now = now_ms();
        // A lease still running is this process's own (a failed step:
        // its copies in flight were cut off now), or a process's that
        // died moments ago: either way nothing is sent after now.
        let ended = lease.until_ms().map_or(now, |t| t.min(now));
        Replay {
            active: true,
            any_cell: false,
            doubt: Doubt {
                until_ms: ended + AHEAD_MS,
                copies_until_ms: ended + SEND_BOUND.as_millis() as i64,
                cleared: Arc::default(),
            },
            settled: false,
        }
    }

    fn dedupe(&self) -> Dedupe {
        match (self.active, self.any_cell) {
            (false, _) => Dedupe::No,
            (true, false) => Dedupe::Planned,
            (true, true) => Dedupe::AnyCell,
        }
    }
}

impl Router {
    /// Runs until the returned handle is aborted: a supervisor that starts
    /// one task per cell (and for cells added by a reload).
    pub fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut running: BTreeMap<String, Owned> = BTreeMap::new();
            loop {
                let rules = self.rules.current();
                for (_, cell) in rules.cells() {
                    let name = cell.name.to_string();
                    if running.get(&name).is_some_and(|h| !h.0.is_finished()) {
                        continue;
                    }
                    let me = self.clone();
                    let task_name = name.clone();
                    let task = tokio::spawn(async move { me.source(task_name).await });
                    running.insert(name, Owned(task));
                }
                drop(rules);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Copies everything originating in `cell`, forever; returns when the
    /// cell leaves the rules or its journal cannot be opened (logged; the
    /// supervisor restarts it a second later).
    async fn source(self: Arc<Self>, cell: String) {
        let mut journal = match Journal::open(&self.dir, &cell) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(%cell, error = %e, "router journal");
                self.metrics.error("journal");
                return;
            }
        };
        let lease = match Lease::open(&self.dir, &cell) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(%cell, error = %e, "router lease");
                self.metrics.error("journal");
                return;
            }
        };
        // Renewed apart from the steps, for as long as this task runs.
        let _keeper = Owned(lease.keep());
        let mut flight = InFlight::default();
        // Without a journal no copy was ever made: nothing to replay.
        let mut replay = Replay {
            active: !journal.fresh(),
            ..Replay::start(&lease)
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
            if replay.active && !replay.settled {
                // Before a replay looks copies up: a copy sent just before
                // the crash (or the failed step) must be findable.
                let lag = rules
                    .cells()
                    .filter_map(|(id, _)| self.brokers.broker(&rules, id))
                    .map(|b| b.lookup_lag())
                    .max()
                    .unwrap_or_default();
                drop(rules);
                tokio::time::sleep(lag).await;
                replay.settled = true;
                continue;
            }
            let step = self
                .step(
                    &rules,
                    origin,
                    &*src,
                    (&mut journal, &lease),
                    &mut flight,
                    &mut replay,
                )
                .await;
            drop(rules);
            match step {
                Ok(Step::Busy) => {}
                Ok(Step::Idle(mut appended)) => {
                    let woke =
                        tokio::time::timeout(Duration::from_secs(1), appended.changed()).await;
                    if woke.is_ok() {
                        tokio::time::sleep(GATHER).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(%cell, error = %e, "router step failed; replaying");
                    if matches!(e, Error::Checkpoint { .. }) {
                        self.metrics.error("journal");
                    }
                    // Whatever is in flight is replayed with the rest.
                    flight = InFlight::default();
                    journal.unplan();
                    replay = Replay {
                        any_cell: replay.any_cell,
                        ..Replay::start(&lease)
                    };
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One step (see the module docs).
    async fn step(
        &self,
        rules: &Arc<RuleSet>,
        origin: CellId,
        src: &dyn Broker,
        (journal, lease): (&mut Journal, &Arc<Lease>),
        flight: &mut InFlight,
        replay: &mut Replay,
    ) -> Result<Step, Error> {
        sync_rules(rules, journal, flight, replay).await?;
        // Subscribed before reading: an append after the read wakes us.
        let mut appended = src.appended();
        appended.borrow_and_update();
        let dedupe = (replay.dedupe(), replay.doubt.clone(), lease.clone());
        let work = pass::read(rules, origin, src, journal, &self.metrics, dedupe).await?;
        // Copies of a queue reach each destination in source order: the
        // previous step's first.
        flight.finish(journal).await?;
        journal.save_in_background().await?;
        if replay.active
            && (!work.full || work.oldest_ms.is_some_and(|t| t > replay.doubt.until_ms))
        {
            // Caught up, or past what existed when the replay began:
            // whatever comes next was never read before.
            replay.active = false;
        }
        if work.batches.is_empty() {
            return Ok(Step::Idle(appended));
        }
        self.start(rules, origin, work, flight)?;
        Ok(Step::Busy)
    }

    fn start(
        &self,
        rules: &RuleSet,
        origin: CellId,
        work: Work,
        flight: &mut InFlight,
    ) -> Result<(), Error> {
        let work = Arc::new(work);
        send::spawn(
            rules,
            origin,
            &*self.brokers,
            &self.metrics,
            &work,
            &mut flight.sends,
        )?;
        flight.work = Some(work);
        Ok(())
    }
}

/// Makes the journal's `rules` true for the plans about to be made under
/// `rules` (the journal.rs invariant), durably, before any is made.
async fn sync_rules(
    rules: &RuleSet,
    journal: &mut Journal,
    flight: &mut InFlight,
    replay: &mut Replay,
) -> Result<(), Error> {
    let sha = &rules.meta().sha256;
    if journal.progress.rules.as_ref() == Some(sha) {
        return Ok(());
    }
    if replay.active {
        // What is replayed may have been planned under other rules: check
        // every cell; and the file must say the plans are mixed before one
        // is made under these rules.
        replay.any_cell = true;
        if journal.progress.rules.is_some() {
            flight.finish(journal).await?;
            journal.progress.rules = None;
            journal.save_now().await?;
        }
        return Ok(());
    }
    // Once the copies in flight are appended, nothing planned under other
    // rules is outstanding.
    flight.finish(journal).await?;
    journal.progress.rules = Some(sha.clone());
    journal.save_now().await?;
    replay.any_cell = false;
    Ok(())
}
