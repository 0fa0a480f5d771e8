//! The embedded broker: [`Store`] plus consumer-group delivery.
//!
//! A receive walks the group's queues round-robin. In each it first
//! redelivers in-flight messages whose invisibility ended (their attempt
//! grows; past `max_attempts` they go to `%DLQ%<group>`), then scans new
//! offsets: the tag filter is checked on the index's tag hash before any
//! read, then the tag itself and the property predicate on the record.
//! Filtered-out offsets are completed on the spot, so they never count as
//! lag. An empty receive with a wait parks on the store's "appended" signal
//! or the next invisibility deadline, whichever comes first — no polling.

mod calls;
mod delay;
mod deliver;
mod txn;

use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::{
    dlq_topic, mark_dead, BoxFuture, Broker, ConsumeMode, Delivery, DeliveryConfig, QueueLag,
    ReceiveOptions,
};
use crate::error::{Error, Result};
use crate::group::{Groups, InFlight, QueueState};
use crate::record::{CopyOf, Kept, Message, Records, StoredMessage};
use crate::store::{JsonFile, PutResult, QueueSelect, Store};
use crate::timer::Timer;
use crate::trace::{self, Hop, TraceWriter, TRACE_TOPIC};
use crate::txn::{Book, Decision, TxnCheck, TxnConfig, TxnInfo};

use crate::ids::now_ms;

/// The progress key: broadcast consumers each have their own.
fn group_key(group: &str, mode: &ConsumeMode) -> String {
    match mode {
        ConsumeMode::Clustering => group.to_owned(),
        ConsumeMode::Broadcast { consumer_id } => format!("{group}\u{1}{consumer_id}"),
    }
}

fn receipt(queue: u16, offset: u64, nonce: u64) -> String {
    format!("{queue}.{offset}.{nonce:016x}")
}

fn parse_receipt(r: &str) -> Result<(u16, u64, u64)> {
    let mut it = r.split('.');
    let (Some(q), Some(o), Some(n), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(Error::BadReceipt);
    };
    let q = q.parse().map_err(|_| Error::BadReceipt)?;
    let o = o.parse().map_err(|_| Error::BadReceipt)?;
    let n = u64::from_str_radix(n, 16).map_err(|_| Error::BadReceipt)?;
    Ok((q, o, n))
}

use crate::ids::nonce;

/// What one receive pass works with.
struct Pass<'a> {
    topic: &'a str,
    opts: &'a ReceiveOptions,
    now: i64,
    /// The invisibility time in ms.
    invisible: i64,
}

/// A message that exhausted its attempts, to be dead-lettered.
struct Dead {
    queue: u16,
    offset: u64,
    message: StoredMessage,
    attempts: u32,
}

/// The embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    store: Arc<Store>,
    groups: Groups,
    cfg: DeliveryConfig,
    /// Where the next receive starts its round-robin over queues.
    rr: AtomicUsize,
    /// Delayed messages (see `crate::timer`). In an `Arc` so that its task
    /// can wait on it without keeping the broker alive.
    timer: Arc<Timer>,
    /// Transactions (see `crate::txn`); a std mutex for the same reason as
    /// the timer's: short sections, never across an await.
    txns: Mutex<crate::txn::Book>,
    txn_cfg: TxnConfig,
    /// Wakes the check-back clock when a transaction starts with the
    /// earliest check due.
    txn_wake: Arc<Notify>,
    /// Wakes every check-back poller when checks are issued (pollers of
    /// all groups share it: a poller re-checks its own group's queue).
    checks_ready: Notify,
    trace: TraceWriter,
    /// The trace channel's receiving end until `start` takes it.
    trace_rx: Mutex<Option<mpsc::Receiver<Vec<Hop>>>>,
    /// `timer.json` and `txn.json`, rewritten only when they change.
    timer_file: JsonFile,
    txn_file: JsonFile,
}

impl EmbeddedBroker {
    pub fn new(store: Arc<Store>, cfg: DeliveryConfig) -> EmbeddedBroker {
        let groups = Groups::new(store.dir());
        let (trace, trace_rx) = TraceWriter::channel();
        EmbeddedBroker {
            store,
            groups,
            cfg,
            rr: AtomicUsize::new(0),
            timer: Arc::default(),
            txns: Mutex::new(Book::default()),
            txn_cfg: TxnConfig::default(),
            txn_wake: Arc::default(),
            checks_ready: Notify::new(),
            trace,
            trace_rx: Mutex::new(Some(trace_rx)),
            timer_file: JsonFile::default(),
            txn_file: JsonFile::default(),
        }
    }

    /// Sets the check-back timing of transactions.
    pub fn with_transactions(mut self, cfg: TxnConfig) -> EmbeddedBroker {
        self.txn_cfg = cfg;
        self
    }

    /// Starts the broker's background tasks: maintenance every
    /// `maintenance`, the delayed-delivery timer, the transaction
    /// check-back clock and the trace writer. They end when the broker is
    /// dropped.
    pub fn start(self: &Arc<Self>, maintenance: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            self.run_maintenance(maintenance),
            self.run_timer(),
            self.run_transactions(),
        ];
        if let Some(rx) = self.trace_rx.lock().ok().and_then(|mut r| r.take()) {
            tasks.push(self.run_trace(rx));
        }
        tasks
    }

    /// The trace channel's sending end (hops dropped when it is behind
    /// are counted in `dropped`).
    pub fn trace_writer(&self) -> &TraceWriter {
        &self.trace
    }

    fn run_trace(
        self: &Arc<Self>,
        mut rx: mpsc::Receiver<Vec<Hop>>,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(hops) = trace::gather(&mut rx).await {
                let Some(b) = weak.upgrade() else { return };
                let Some(rec) = trace::record_of(&hops, now_ms()) else {
                    continue;
                };
                if let Err(e) = b.store.put(rec, QueueSelect::Queue(0)).await {
                    tracing::warn!(error = %e, "writing message trace failed");
                }
            }
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Persists group progress, checkpoints the store and applies retention.
    /// Call it periodically ([`EmbeddedBroker::run_maintenance`]) and on close.
    pub fn maintain(&self) -> Result<()> {
        self.groups.persist()?;
        self.persist_timer()?;
        self.persist_transactions()?;
        self.store.write_checkpoint()?;
        self.store.enforce_retention()?;
        Ok(())
    }

    /// Runs [`EmbeddedBroker::maintain`] every `every` until the broker is
    /// dropped.
    pub fn run_maintenance(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(b) = weak.upgrade() else { return };
                // fsyncs: off the async workers, which serve requests.
                match tokio::task::spawn_blocking(move || b.maintain()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "broker maintenance failed"),
                    Err(e) => tracing::warn!(error = %e, "broker maintenance stopped"),
                }
            }
        })
    }

    /// Flushes everything and persists all progress.
    pub fn close(&self) -> Result<()> {
        self.groups.persist()?;
        self.persist_timer()?;
        self.persist_transactions()?;
        self.store.close()
    }
}

// === impl Broker for EmbeddedBroker ===

impl Broker for EmbeddedBroker {
    fn create_topic<'a>(&'a self, topic: &'a str, queues: u16) -> BoxFuture<'a, Result<()>> {
        Box::pin(ready(EmbeddedBroker::create_topic(self, topic, queues)))
    }

    fn ack<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(ready(EmbeddedBroker::ack(
            self, group, topic, mode, receipt,
        )))
    }

    fn nack<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(ready(EmbeddedBroker::nack(
            self, group, topic, mode, receipt,
        )))
    }

    fn reset_to_time<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        ms: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(ready(EmbeddedBroker::reset_to_time(
            self, group, topic, mode, ms,
        )))
    }

    fn lag<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
    ) -> BoxFuture<'a, Result<Vec<QueueLag>>> {
        Box::pin(ready(EmbeddedBroker::lag(self, group, topic, mode)))
    }

    /// The id index is global here: `topic` is not needed.
    fn get_by_id<'a>(
        &'a self,
        _topic: &'a str,
        id: &'a Uuid,
    ) -> BoxFuture<'a, Result<Option<StoredMessage>>> {
        Box::pin(ready(EmbeddedBroker::get_by_id(self, id)))
    }

    /// Exact at any time: the id index is written with each record.
    fn find_ids<'a>(
        &'a self,
        topic: &'a str,
        ids: &'a [Uuid],
        _window: (i64, i64),
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(ready(EmbeddedBroker::find_ids(self, topic, ids)))
    }

    fn get_by_key<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(ready(EmbeddedBroker::get_by_key(self, topic, key)))
    }

    fn read_records<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Records>> {
        Box::pin(ready(EmbeddedBroker::read_records(
            self, topic, queue, from, max,
        )))
    }

    fn read_originals<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Records>> {
        let records = self.store.read_records(topic, queue, from, max, true);
        Box::pin(ready(records))
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<(String, u16)>>> {
        Box::pin(ready(EmbeddedBroker::topics(self)))
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(ready(EmbeddedBroker::read(self, topic, queue, from, max)))
    }

    fn transaction<'a>(&'a self, id: &'a Uuid) -> BoxFuture<'a, Result<Option<TxnInfo>>> {
        Box::pin(ready(EmbeddedBroker::transaction(self, id)))
    }

    fn query_by_time<'a>(
        &'a self,
        topic: &'a str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(ready(EmbeddedBroker::query_by_time(
            self, topic, from_ms, to_ms, max,
        )))
    }

    /// The trace index is global here: `topic` is not needed.
    fn trace_of<'a>(&'a self, _topic: &'a str, id: &'a Uuid) -> BoxFuture<'a, Result<Vec<Hop>>> {
        Box::pin(ready(EmbeddedBroker::trace_of(self, id)))
    }

    fn send(&self, msg: Message, select: QueueSelect) -> BoxFuture<'_, Result<PutResult>> {
        Box::pin(self.store.put(msg, select))
    }

    fn send_batch(
        &self,
        msgs: Vec<(Message, QueueSelect)>,
    ) -> BoxFuture<'_, Result<Vec<PutResult>>> {
        Box::pin(self.store.put_batch(msgs))
    }

    fn receive<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        opts: ReceiveOptions,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(self.receive_impl(group, topic, opts))
    }

    fn redrive<'a>(&'a self, group: &'a str, max: usize) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let dlq = dlq_topic(group);
            let redriver = format!("%REDRIVE%{group}");
            let opts = ReceiveOptions {
                max_messages: max,
                ..ReceiveOptions::default()
            };
            let got = self.receive_impl(&redriver, &dlq, opts).await?;
            let mut n = 0;
            for d in got {
                let Some(again) = crate::broker::revive(d.message) else {
                    continue;
                };
                self.store.put(again, QueueSelect::RoundRobin).await?;
                self.settle(&redriver, &dlq, &ConsumeMode::Clustering, &d.receipt, true)?;
                n += 1;
            }
            Ok(n)
        })
    }

    fn send_copies(
        &self,
        msgs: Vec<(Message, QueueSelect, Uuid)>,
    ) -> BoxFuture<'_, Result<Vec<PutResult>>> {
        Box::pin(self.store.put_copies(msgs, Kept::Copy))
    }

    fn send_record_copies<'a>(
        &'a self,
        copies: &'a [CopyOf<'a>],
    ) -> BoxFuture<'a, Result<Vec<PutResult>>> {
        Box::pin(self.store.put_record_copies(copies))
    }

    fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.appended()
    }

    fn schedule(
        &self,
        msg: Message,
        select: QueueSelect,
        deliver_at_ms: i64,
    ) -> BoxFuture<'_, Result<PutResult>> {
        Box::pin(async move {
            let mut held = self.hold(vec![(msg, select, None, deliver_at_ms)]).await?;
            held.pop().ok_or(Error::Closed)
        })
    }

    fn send_transactional<'a>(
        &'a self,
        msg: Message,
        select: QueueSelect,
        producer_group: &'a str,
    ) -> BoxFuture<'a, Result<PutResult>> {
        Box::pin(self.send_half(msg, select, producer_group))
    }

    fn end_transaction<'a>(
        &'a self,
        id: &'a Uuid,
        decision: Decision,
    ) -> BoxFuture<'a, Result<TxnInfo>> {
        Box::pin(self.decide(id, decision, "rolled back by the producer"))
    }

    fn transaction_checks<'a>(
        &'a self,
        producer_group: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<TxnCheck>>> {
        Box::pin(self.checks(producer_group, max, wait))
    }

    fn record_trace(&self, hops: Vec<Hop>) {
        self.trace.record(hops);
    }
}
