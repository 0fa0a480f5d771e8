//! router: copies messages between cells' brokers by their unit headers,
//! under the hot-reloaded rules.
//!
//! The routing *decision* — which cells a message is copied to, takeover
//! included — is `cellgate_rules::RuleSet::router_targets`, a pure function.
//! This crate adds the moving parts around it: the loop per source cell
//! (`run`), reading and planning batches of original messages (`pass`,
//! `plan`), journaling where their copies go and how far each source queue
//! is done (`journal`), appending copies that keep the message id so a
//! destination can tell a copy it already holds (`send`, `dedupe`), and
//! metrics.

#![forbid(unsafe_code)]

mod dedupe;
pub mod journal;
pub mod lease;
pub mod metrics;
mod pass;
pub mod plan;
mod run;
mod send;
mod trace;

pub use run::{BrokerDirectory, Router};

/// The router's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A broker operation failed (source read or copy append).
    #[error(transparent)]
    Broker(#[from] cellgate_broker_core::Error),
    /// A destination cell has no broker right now.
    #[error("the broker of cell {0} is not available")]
    Unavailable(String),
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
