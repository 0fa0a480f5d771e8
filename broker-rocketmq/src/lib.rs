//! cellgate's RocketMQ backend: broker-core's [`Broker`] over RocketMQ's
//! remoting protocol, through rocketmq-client-rust 1.0 (why this crate, and
//! what it lacks: docs/rocketmq.md).
//!
//! A cell whose rules say `broker: rocketmq://host:9876[,host:9876]` gets
//! one [`RocketMqBroker`] connected to those name servers. Names are used
//! as given (`NS|CELL%NAME`; RocketMQ accepts `|` and `%`).
//!
//! - Sends: single and batched (a RocketMQ batch per run of one topic and
//!   queue), sharding keys mapped to queues by CRC32C, delays by the
//!   broker's timer (`TIMER_DELAY_MS`, counted from the send), copies
//!   keeping their ids.
//! - Consumption: pull, with invisibility tracked here (`consume.rs`).
//! - Reads: by offset, time, id and key through the broker's indexes.
//! - Transactions: half messages, check-backs answered from a book in
//!   this process (`txn.rs`).
//! - Dead-letter re-drive (`redrive.rs`), and the message trace kept as
//!   messages of [`TRACE_TOPIC`], written in batches off the publish path
//!   (`trace.rs`).

#![forbid(unsafe_code)]
// rocketmq-client-rust's futures nest deeply (spike, "Engineering facts").
#![recursion_limit = "256"]

mod busy;
mod client;
pub mod consume;
mod convert;
mod error;
mod group;
mod journal;
mod offsets;
mod read;
mod redrive;
mod send;
mod trace;
mod txn;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::broker::BoxFuture;
use cellgate_broker_core::{
    Broker, ConsumeMode, Decision, Delivery, DeliveryConfig, Error as CoreError, Hop, Message,
    PutResult, QueueLag, QueueSelect, ReceiveOptions, Result, StoredMessage, TxnCheck, TxnInfo,
};
use uuid::Uuid;

pub use convert::BORN_MS;
pub use error::Error;
pub use trace::TRACE_TOPIC;

use client::{Client, Route};
use send::Outgoing;

/// How to reach a cluster, and how the backend behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of each name server.
    pub name_servers: Vec<String>,
    /// Per call to the cluster.
    pub timeout_ms: u64,
    /// Worker threads of the client's own runtime. Default 1: the client
    /// only moves bytes and wakes the caller's tasks; a second thread cost
    /// context switches and throughput in the issue 8 benchmark (2 cores).
    pub client_threads: usize,
    /// Client handles for pulls and offsets (each serialises its calls).
    pub handles: usize,
    /// Queues of a topic created on first use.
    pub default_queues: u16,
    /// Retry back-off and attempts before the dead-letter topic.
    pub delivery: DeliveryConfig,
    /// How often a waiting receive (and the router) looks for messages
    /// sent through other processes.
    pub poll_interval: Duration,
    /// Distinguishes this broker's clients from others in the process.
    pub instance: u64,
    /// Unanswered check-backs before a transaction is rolled back (the
    /// broker's own `transactionCheckMax` should not be lower).
    pub max_checks: u32,
}

impl Config {
    pub fn new(name_servers: Vec<String>) -> Config {
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        Config {
            name_servers,
            timeout_ms: 3000,
            client_threads: 1,
            handles: 4,
            default_queues: 8,
            delivery: DeliveryConfig::default(),
            poll_interval: Duration::from_millis(100),
            instance: INSTANCE.fetch_add(1, Ordering::Relaxed),
            max_checks: 15,
        }
    }
}

/// A [`Broker`] backed by one RocketMQ cluster.
#[derive(Debug)]
pub struct RocketMqBroker {
    client: Client,
    delivery: DeliveryConfig,
    /// The round-robin queue counter of sends.
    rr: AtomicU32,
    /// Where the next receive starts pulling: it moves on per receive, and
    /// starts at random, so that gateways sharing a group tend to pull
    /// different queues (each offset both pull is a lost claim for one).
    pull_rr: AtomicUsize,
    /// Bumped by every send through this process and by the poll tick.
    appended: Arc<tokio::sync::watch::Sender<u64>>,
    /// Arc: the journal flusher task holds it weakly.
    subs: Arc<consume::Subs>,
    /// Wakes the journal flusher after an ack or nack.
    journal_wake: Arc<tokio::sync::Notify>,
    /// The transaction book, shared (weakly) with the check listeners.
    txn: Arc<txn::Shared>,
    txn_producers: txn::Producers,
    /// Queues trace hops for a writer task (`record_trace` cannot wait).
    trace: trace::TraceWriter,
    /// This backend's id in the journals: the owner of its deliveries
    /// (`consume::Sub::me`). A `nonce()`: a counter with a random start, so
    /// distinct among one process's backends and, but for a 2^-64 chance,
    /// among gateways.
    me: u64,
}

pub(crate) use cellgate_broker_core::now_ms;

/// See [`Broker::lookup_lag`]. A pull sees a write once the broker has
/// dispatched it to the consume queue (milliseconds); the rest is for a
/// send still on its way when its sender died.
const LOOKUP_LAG: Duration = Duration::from_secs(1);

/// The topic whose route names the brokers a new topic is created on
/// (RocketMQ's default topic for creation).
const CREATE_KEY: &str = "TBW102";
/// How long a new topic may take to appear in the name server before a
/// send is told to try again. One registration period of a broker set to
/// the shortest one RocketMQ allows (10 s), plus lookups; see
/// [`RocketMqBroker::create`].
const ROUTE_WAIT: Duration = Duration::from_secs(15);

// === impl RocketMqBroker ===

impl RocketMqBroker {
    /// Connects to the cluster. The poll tick runs on the caller's runtime
    /// until the broker is dropped.
    pub async fn connect(cfg: Config) -> std::result::Result<RocketMqBroker, Error> {
        if cfg.name_servers.is_empty() {
            return Err(Error::BadReference {
                reference: String::new(),
                why: "no name server given",
            });
        }
        let delivery = cfg.delivery.clone();
        let poll = cfg.poll_interval;
        let max_checks = cfg.max_checks;
        let client = Client::connect(cfg).await?;
        let appended = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let weak = Arc::downgrade(&appended);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        let txn = Arc::new(txn::Shared {
            book: txn::Book::default(),
            routes: client.route_cache(),
            max_checks,
        });
        let trace = trace::TraceWriter::start(client.producer.clone());
        let subs: Arc<consume::Subs> = Arc::default();
        let journal_wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(journal::flusher(
            Arc::downgrade(&subs),
            client.producer.clone(),
            journal_wake.clone(),
        ));
        let b = RocketMqBroker {
            client,
            delivery,
            rr: AtomicU32::new(0),
            pull_rr: AtomicUsize::new(cellgate_broker_core::nonce() as usize),
            appended,
            subs,
            journal_wake,
            txn,
            txn_producers: Default::default(),
            trace,
            // Never 0, which stands for "unknown" in older journals.
            me: cellgate_broker_core::nonce() | 1,
        };
        // The trace writer sends without creating topics, so the trace
        // topic must exist; a cluster that refuses it still serves
        // everything else.
        if let Err(e) = b.ensure_topic(TRACE_TOPIC, 1).await {
            tracing::warn!(error = %e, "no trace topic: message trace hops will be dropped");
        }
        Ok(b)
    }

    /// Ends what a shared broker can end at shutdown: the queued trace hops
    /// are stored (for up to 2 s), and the transaction producers unregister
    /// their groups, so the cluster checks back with another producer of
    /// the group instead of this process. Sends and receives still work
    /// afterwards (their hops are dropped); [`Self::shutdown`] ends the rest.
    pub async fn close(&self) {
        self.trace.close().await;
        for (_, mut p) in self.txn_producers.0.lock().await.drain() {
            p.shutdown().await;
        }
    }

    /// Shuts the client down (its runtime, connections and tasks).
    pub async fn shutdown(mut self) {
        self.close().await;
        self.client.shutdown().await;
    }

    fn bump(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The topic's route; a topic that does not exist yet is created with
    /// the default queue count (as the embedded broker auto-creates).
    async fn route_or_create(&self, topic: &str) -> Result<Arc<Route>> {
        self.ensure_topic(topic, self.client.cfg.default_queues)
            .await
    }

    /// The topic's route, creating the topic with `queues` queues first if
    /// it does not exist.
    async fn ensure_topic(&self, topic: &str, queues: u16) -> Result<Arc<Route>> {
        match self.client.route(topic).await {
            Err(CoreError::UnknownTopic(_)) => {}
            other => return other,
        }
        self.create(topic, queues).await?;
        self.client.route(topic).await
    }

    /// Creates `topic` with `queues` queues and waits until the name
    /// server lists it: sends need its route from there.
    ///
    /// The broker registers a new topic at once, but its periodic
    /// registration of all topics (10 s after it starts, then every
    /// `registerNameServerPeriod`, 30 s by default) can carry a list taken
    /// before the creation, and the name server then drops the topic until
    /// the next one. Creating it again does not help: a broker answers an
    /// unchanged topic config with success and registers nothing. So this
    /// waits up to [`ROUTE_WAIT`], then answers "try again" (503 at the
    /// gateway); a cluster that auto-creates should run a short period,
    /// and production clusters create topics up front (docs/rocketmq.md).
    async fn create(&self, topic: &str, queues: u16) -> Result<()> {
        self.client
            .admin
            .lock()
            .await
            .create_topic(CREATE_KEY, topic, i32::from(queues), Default::default())
            .await
            .map_err(|e| error::remote("create a topic", &e))?;
        let until = tokio::time::Instant::now() + ROUTE_WAIT;
        loop {
            if self.client.refresh_route(topic).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                // Created, but not routable: "unknown" would be wrong,
                // "try again" is right.
                return Err(CoreError::Remote {
                    op: "create a topic",
                    detail: format!("the name server does not list {topic} yet; try again"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// === impl Broker for RocketMqBroker ===

impl Broker for RocketMqBroker {
    fn create_topic<'a>(&'a self, topic: &'a str, queues: u16) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.client.route(topic).await {
                Ok(_) => Ok(()),
                Err(CoreError::UnknownTopic(_)) => self.create(topic, queues).await,
                Err(e) => Err(e),
            }
        })
    }

    fn send(&self, msg: Message, select: QueueSelect) -> BoxFuture<'_, Result<PutResult>> {
        Box::pin(async move {
            let mut r = self.send_all(vec![Outgoing::new(msg, select)]).await?;
            r.pop().ok_or(CoreError::Closed)
        })
    }

    fn send_batch(
        &self,
        msgs: Vec<(Message, QueueSelect)>,
    ) -> BoxFuture<'_, Result<Vec<PutResult>>> {
        Box::pin(self.send_all(msgs.into_iter().map(|(m, s)| Outgoing::new(m, s)).collect()))
    }

    fn receive<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        opts: ReceiveOptions,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(self.receive_impl(group, topic, opts))
    }

    fn ack<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.settle_impl(group, topic, mode, receipt, true))
    }

    fn nack<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.settle_impl(group, topic, mode, receipt, false))
    }

    fn reset_to_time<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        ms: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.reset_impl(group, topic, mode, ms))
    }

    fn lag<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
    ) -> BoxFuture<'a, Result<Vec<QueueLag>>> {
        Box::pin(self.lag_impl(group, topic, mode))
    }

    fn get_by_id<'a>(
        &'a self,
        topic: &'a str,
        id: &'a Uuid,
    ) -> BoxFuture<'a, Result<Option<StoredMessage>>> {
        Box::pin(self.by_id(topic, id))
    }

    fn find_ids<'a>(
        &'a self,
        topic: &'a str,
        ids: &'a [Uuid],
        window: (i64, i64),
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(RocketMqBroker::find_ids(self, topic, ids, window))
    }

    fn get_by_key<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(self.by_key(topic, key))
    }

    fn redrive<'a>(&'a self, group: &'a str, max: usize) -> BoxFuture<'a, Result<usize>> {
        Box::pin(self.redrive_impl(group, max))
    }

    fn send_copies(
        &self,
        msgs: Vec<(Message, QueueSelect, Uuid)>,
    ) -> BoxFuture<'_, Result<Vec<PutResult>>> {
        let out = msgs
            .into_iter()
            .map(|(msg, select, id)| Outgoing {
                msg,
                select,
                id,
                deliver_at_ms: None,
            })
            .collect();
        Box::pin(self.send_all(out))
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<(String, u16)>>> {
        Box::pin(self.topic_list())
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(self.read_queue(topic, queue, from, max))
    }

    fn lookup_lag(&self) -> Duration {
        LOOKUP_LAG
    }

    fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    fn schedule(
        &self,
        msg: Message,
        select: QueueSelect,
        deliver_at_ms: i64,
    ) -> BoxFuture<'_, Result<PutResult>> {
        Box::pin(async move {
            let max_ms = now_ms() + cellgate_broker_core::timer::MAX_DELAY.as_millis() as i64;
            if deliver_at_ms > max_ms {
                return Err(CoreError::DelayTooLong {
                    deliver_at_ms,
                    max_ms,
                });
            }
            let mut o = Outgoing::new(msg, select);
            o.deliver_at_ms = Some(deliver_at_ms);
            let mut r = self.send_all(vec![o]).await?;
            r.pop().ok_or(CoreError::Closed)
        })
    }

    fn send_transactional<'a>(
        &'a self,
        msg: Message,
        select: QueueSelect,
        group: &'a str,
    ) -> BoxFuture<'a, Result<PutResult>> {
        Box::pin(self.send_half(msg, select, group))
    }

    fn end_transaction<'a>(
        &'a self,
        id: &'a Uuid,
        decision: Decision,
    ) -> BoxFuture<'a, Result<TxnInfo>> {
        Box::pin(self.end_txn(id, decision))
    }

    fn transaction<'a>(&'a self, id: &'a Uuid) -> BoxFuture<'a, Result<Option<TxnInfo>>> {
        Box::pin(std::future::ready(Ok(self.txn_info(id))))
    }

    fn transaction_checks<'a>(
        &'a self,
        group: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<TxnCheck>>> {
        Box::pin(self.txn_checks(group, max, wait))
    }

    fn query_by_time<'a>(
        &'a self,
        topic: &'a str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        Box::pin(self.by_time(topic, from_ms, to_ms, max))
    }

    /// Hops are messages of [`TRACE_TOPIC`] keyed by message id
    /// (`extras.rs`).
    fn record_trace(&self, hops: Vec<Hop>) {
        self.trace.record(hops);
    }

    fn trace_of<'a>(&'a self, _topic: &'a str, id: &'a Uuid) -> BoxFuture<'a, Result<Vec<Hop>>> {
        Box::pin(self.hops_of(id))
    }
}
