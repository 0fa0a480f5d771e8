//! The brokers behind the cells: one embedded broker per cell whose rules
//! say `broker: embedded`, each in its own data directory `<data>/<CELL>`.
//!
//! A cell added by a rules reload gets its broker on first use. A cell's
//! broker reference cannot change by reload (rules refuses it), so a broker,
//! once open, serves its cell until shutdown.
//!
//! A cell whose rules say `broker: rocketmq://…` is served by a
//! [`RocketMqBroker`] connected to those name servers; cells that name the
//! same name servers share one. Clusters named at start are connected
//! before the gateway listens; one first named by a reload is connected in
//! the background, and its cells answer 503 until it is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellgate_broker_core::{
    Broker, DeliveryConfig, EmbeddedBroker, FlushPolicy, LogConfig, Store, StoreConfig, TxnConfig,
};
#[cfg(feature = "rocketmq")]
use cellgate_broker_rocketmq::RocketMqBroker;
use cellgate_rules::{BrokerRef, CellId, RuleSet};

use crate::api::ApiError;
use crate::Error;

/// How embedded brokers are opened.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub flush: FlushPolicy,
    pub segment_bytes: u64,
    pub default_queues: u16,
    pub delivery: DeliveryConfig,
    pub transactions: TxnConfig,
    pub retention: Duration,
    pub retention_bytes: Option<u64>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            flush: FlushPolicy::Sync,
            segment_bytes: 1 << 30,
            default_queues: 8,
            delivery: DeliveryConfig::default(),
            transactions: TxnConfig::default(),
            retention: Duration::from_secs(72 * 3600),
            retention_bytes: None,
        }
    }
}

/// The per-tenant limit is the gateway's to enforce (tenants differ); the
/// store only guards against what no tenant may send (the rules' ceiling).
pub(crate) const STORE_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Cell name → broker.
#[derive(Debug)]
pub struct Brokers {
    data: PathBuf,
    opts: BrokerOptions,
    /// RwLock: every request reads; only opening a new cell's broker writes.
    open: RwLock<HashMap<Box<str>, Arc<EmbeddedBroker>>>,
    /// RocketMQ clusters by their reference (`rocketmq://a,b`); `None`
    /// while connecting. RwLock: read per request, written on connect.
    #[cfg(feature = "rocketmq")]
    remote: Arc<RwLock<HashMap<String, Option<Arc<RocketMqBroker>>>>>,
}

impl Brokers {
    /// Opens the embedded broker of every embedded cell (recovering each)
    /// and connects to every RocketMQ cluster the rules name.
    pub async fn open_all(
        data: &Path,
        opts: BrokerOptions,
        rules: &RuleSet,
    ) -> Result<Brokers, Error> {
        let b = Brokers {
            data: data.to_owned(),
            opts,
            open: RwLock::new(HashMap::new()),
            #[cfg(feature = "rocketmq")]
            remote: Arc::default(),
        };
        for (id, cell) in rules.cells() {
            match &cell.broker {
                BrokerRef::Embedded => {
                    b.open_cell(rules, id)?;
                }
                #[cfg(feature = "rocketmq")]
                BrokerRef::RocketMq { name_servers } => {
                    let key = cell.broker.to_string();
                    if b.remote_get(&key).is_none() {
                        let broker = connect(&b.opts, name_servers.clone()).await.map_err(|e| {
                            Error::Broker {
                                cell: cell.name.to_string(),
                                source: e.into(),
                            }
                        })?;
                        b.remote_put(key, Some(Arc::new(broker)));
                    }
                }
                #[cfg(not(feature = "rocketmq"))]
                BrokerRef::RocketMq { .. } => {}
            }
        }
        Ok(b)
    }

    #[cfg(feature = "rocketmq")]
    fn remote_get(&self, key: &str) -> Option<Option<Arc<RocketMqBroker>>> {
        self.remote.read().ok()?.get(key).cloned()
    }

    #[cfg(feature = "rocketmq")]
    fn remote_put(&self, key: String, b: Option<Arc<RocketMqBroker>>) {
        let mut m = self.remote.write().unwrap_or_else(|p| p.into_inner());
        m.insert(key, b);
    }

    /// The RocketMQ broker of a cluster, connecting in the background on
    /// first use (503 until connected; a failed attempt is retried by the
    /// next request).
    #[cfg(feature = "rocketmq")]
    fn remote_broker(
        &self,
        r: &BrokerRef,
        name_servers: &[String],
    ) -> Result<Arc<dyn Broker>, ApiError> {
        let key = r.to_string();
        match self.remote_get(&key) {
            Some(Some(b)) => return Ok(b),
            Some(None) => {}
            None => {
                self.remote_put(key.clone(), None);
                let (remote, opts, ns) = (
                    self.remote.clone(),
                    self.opts.clone(),
                    name_servers.to_vec(),
                );
                tokio::spawn(async move {
                    let got = connect(&opts, ns).await;
                    let mut m = remote.write().unwrap_or_else(|p| p.into_inner());
                    match got {
                        Ok(b) => {
                            m.insert(key, Some(Arc::new(b)));
                        }
                        Err(e) => {
                            tracing::error!(cluster = %key, error = %e, "cannot connect to RocketMQ");
                            m.remove(&key);
                        }
                    }
                });
            }
        }
        Err(
            ApiError::unavailable("connecting to the cell's RocketMQ cluster")
                .retry(Duration::from_secs(1)),
        )
    }

    fn open_cell(&self, rules: &RuleSet, id: CellId) -> Result<Arc<EmbeddedBroker>, Error> {
        let name = rules.cell_name(id);
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = open.get(name) {
            return Ok(b.clone());
        }
        let cfg = StoreConfig {
            log: LogConfig {
                segment_bytes: self.opts.segment_bytes,
                flush: self.opts.flush,
                preallocate: true,
            },
            max_message_bytes: STORE_MAX_MESSAGE_BYTES,
            auto_create_topics: true,
            default_queues: self.opts.default_queues,
            retention_age: self.opts.retention,
            retention_bytes: self.opts.retention_bytes,
        };
        let dir = self.data.join(name);
        let store = Store::open(&dir, cfg).map_err(|e| Error::Broker {
            cell: name.to_owned(),
            source: e,
        })?;
        let broker = Arc::new(
            EmbeddedBroker::new(Arc::new(store), self.opts.delivery.clone())
                .with_transactions(self.opts.transactions.clone()),
        );
        // Maintenance, the delay timer, transaction check-backs and the
        // message trace writer: they end when the broker is dropped.
        drop(broker.start(Duration::from_millis(500)));
        tracing::info!(cell = name, dir = %dir.display(), "embedded broker open");
        open.insert(name.into(), broker.clone());
        Ok(broker)
    }

    /// The broker of `cell`.
    pub fn get(&self, rules: &RuleSet, cell: CellId) -> Result<Arc<dyn Broker>, ApiError> {
        let name = rules.cell_name(cell);
        if let Some(b) = self.open.read().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(b);
        }
        match &rules.cell(cell).broker {
            BrokerRef::Embedded => self
                .open_cell(rules, cell)
                .map(|b| b as Arc<dyn Broker>)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot open a cell's broker");
                    ApiError::unavailable(
                        "the cell's broker could not be opened; the error is in the gateway log",
                    )
                }),
            #[cfg(feature = "rocketmq")]
            r @ BrokerRef::RocketMq { name_servers } => self.remote_broker(r, name_servers),
            #[cfg(not(feature = "rocketmq"))]
            BrokerRef::RocketMq { .. } => Err(ApiError::unavailable(
                "the cell is backed by RocketMQ, and this gateway was built without it",
            )
            .field("X-Cell")),
        }
    }

    /// The embedded broker of a cell by name, for tests and tools.
    pub fn embedded(&self, cell: &str) -> Option<Arc<EmbeddedBroker>> {
        self.open.read().ok()?.get(cell).cloned()
    }

    /// Closes every RocketMQ backend ([`RocketMqBroker::close`]: queued
    /// trace hops stored, transaction producers unregistered). The clients
    /// themselves end with the process: the backends are shared (router,
    /// combiners), so none is owned here to shut down.
    pub async fn close_remote(&self) {
        #[cfg(feature = "rocketmq")]
        {
            let remote: Vec<Arc<RocketMqBroker>> = self
                .remote
                .read()
                .map(|m| m.values().flatten().cloned().collect())
                .unwrap_or_default();
            for b in remote {
                b.close().await;
            }
        }
    }

    /// Flushes every broker and persists its consumer progress.
    pub fn close(&self) -> Result<(), Error> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        let mut first = None;
        for (cell, b) in open.iter() {
            if let Err(e) = b.close() {
                tracing::error!(cell = &**cell, error = %e, "closing the broker failed");
                first.get_or_insert(Error::Broker {
                    cell: cell.to_string(),
                    source: e,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// A RocketMQ backend for `name_servers`, with the gateway's delivery
/// settings.
#[cfg(feature = "rocketmq")]
async fn connect(
    opts: &BrokerOptions,
    name_servers: Vec<String>,
) -> Result<RocketMqBroker, cellgate_broker_rocketmq::Error> {
    let mut cfg = cellgate_broker_rocketmq::Config::new(name_servers);
    cfg.delivery = opts.delivery.clone();
    cfg.default_queues = opts.default_queues;
    // The broker times its own check-backs; the count is the gateway's.
    cfg.max_checks = opts.transactions.max_checks;
    let b = RocketMqBroker::connect(cfg).await?;
    tracing::info!("connected to a RocketMQ cluster");
    Ok(b)
}

impl cellgate_router::BrokerDirectory for Brokers {
    fn broker(&self, rules: &RuleSet, cell: CellId) -> Option<Arc<dyn Broker>> {
        self.get(rules, cell).ok()
    }
}
