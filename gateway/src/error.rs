//! The gateway crate's error.

/// What a gateway command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rules(#[from] cellgate_rules::Error),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cell {cell}: {source}")]
    Broker {
        cell: String,
        #[source]
        source: cellgate_broker_core::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Config(String),
}
