//! broker-core: storage and delivery.
//!
//! This crate will hold the embedded durable broker (segmented commit log,
//! consume indexes, consumer groups, pop-style delivery, retry and dead
//! letters) and the broker interface that every backend implements — the
//! embedded store and, later, Apache RocketMQ. It knows nothing about
//! tenants or cells: it stores whatever physical names it is given.
//!
//! Status: scheduled for issue 3. Until then the crate only fixes its
//! boundary (no dependency on `cellgate-rules`) and its error type.

#![forbid(unsafe_code)]

/// broker-core's error. Variants arrive with the store (issue 3).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be used.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
