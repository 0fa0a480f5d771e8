//! broker-core: storage and delivery.
//!
//! The embedded durable broker (segmented commit log, consume indexes,
//! consumer groups, pop-style delivery, retry and dead letters) and the
//! broker interface every backend implements. It knows nothing about
//! tenants or cells: it stores whatever physical names it is given.

#![forbid(unsafe_code)]

pub mod cq;
mod error;
mod keys;
pub mod log;
pub mod record;
mod segment;
mod store;

pub use log::{FlushPolicy, LogConfig};

pub use error::{DecodeError, Error, Result};
pub use record::{Message, StoredMessage};
pub use store::{PutResult, QueueSelect, Store, StoreConfig};
