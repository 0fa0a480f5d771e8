//! The brokers behind the cells: one embedded broker per cell whose rules
//! say `broker: embedded`, each in its own data directory `<data>/<CELL>`.
//!
//! A cell added by a rules reload gets its broker on first use. A cell's
//! broker reference cannot change by reload (rules refuses it), so a broker,
//! once open, serves its cell until shutdown. RocketMQ-backed cells arrive
//! with the RocketMQ backend; until then a request to one answers 503.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellgate_broker_core::{
    Broker, DeliveryConfig, EmbeddedBroker, FlushPolicy, LogConfig, Store, StoreConfig, TxnConfig,
};
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
}

impl Brokers {
    /// Opens the embedded broker of every embedded cell (recovering each).
    pub fn open_all(data: &Path, opts: BrokerOptions, rules: &RuleSet) -> Result<Brokers, Error> {
        let b = Brokers {
            data: data.to_owned(),
            opts,
            open: RwLock::new(HashMap::new()),
        };
        for (id, cell) in rules.cells() {
            if cell.broker == BrokerRef::Embedded {
                b.open_cell(rules, id)?;
            }
        }
        Ok(b)
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
            BrokerRef::RocketMq { .. } => Err(ApiError::unavailable(
                "the cell is backed by RocketMQ, which this gateway version does not support yet",
            )
            .field("X-Cell")),
        }
    }

    /// The embedded broker of a cell by name, for tests and tools.
    pub fn embedded(&self, cell: &str) -> Option<Arc<EmbeddedBroker>> {
        self.open.read().ok()?.get(cell).cloned()
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

impl cellgate_router::BrokerDirectory for Brokers {
    fn broker(&self, rules: &RuleSet, cell: CellId) -> Option<Arc<dyn Broker>> {
        self.get(rules, cell).ok()
    }
}
