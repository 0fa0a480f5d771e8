//! broker-core: storage and delivery.
//!
//! The embedded durable broker (segmented commit log, consume indexes,
//! consumer groups, pop-style delivery, retry and dead letters) and the
//! broker interface every backend implements. It knows nothing about
//! tenants or cells: it stores whatever physical names it is given.

#![forbid(unsafe_code)]

pub mod broker;
pub mod cq;
mod dispatch;
mod embedded;
mod error;
pub mod filter;
mod group;
mod ids;
mod keys;
pub mod log;
pub mod record;
mod segment;
mod store;
pub mod timer;
pub mod trace;
pub mod txn;

pub use log::{FlushPolicy, LogConfig};

pub use broker::{Broker, ConsumeMode, Delivery, DeliveryConfig, QueueLag, ReceiveOptions};
pub use embedded::EmbeddedBroker;
pub use error::{DecodeError, Error, Result};
pub use filter::{Predicate, TagFilter};
pub use ids::{message_id, nonce, now_ms};
pub use record::{CopyOf, Kept, Message, RecordRef, Records, StoredMessage};
pub use store::{PutResult, QueueSelect, Store, StoreConfig};
pub use trace::Hop;
pub use txn::{Decision, TxnCheck, TxnConfig, TxnInfo, TxnState};
