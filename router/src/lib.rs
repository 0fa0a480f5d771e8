//! router: copies messages between cells' brokers by their unit headers,
//! under the hot-reloaded rules.
//!
//! The routing *decision* — which cells a message is copied to, takeover
//! included — is `cellgate_rules::RuleSet::router_targets`, a pure function.
//! This crate will add the moving parts around it: reading original messages
//! from every cell's broker, appending copies, dedupe by (origin cell,
//! message id), durable checkpoints and metrics.
//!
//! Status: scheduled for issue 5.

#![forbid(unsafe_code)]

/// The router's error. Variants arrive with the replication loop (issue 5).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
