//! The RocketMQ backend's error. Calls through the [`Broker`] interface
//! return broker-core's error; this enum says what went wrong with the
//! client or the cluster, and converts into broker-core's `Remote`.
//!
//! The client's errors are opaque by design: `Display` gives only a catalog
//! message, and the broker's own remark cannot be read (spike, "Errors").
//! So every error here names the call that failed, plus the broker's
//! response code and address when the client knows them.
//!
//! [`Broker`]: cellgate_broker_core::Broker

use rocketmq_client_rust::{ClientError, MQClientException};

/// RocketMQ's response code for a topic that does not exist.
pub(crate) const TOPIC_NOT_EXIST: i32 = 17;
/// RocketMQ's response code for "nothing found" (no committed offset yet,
/// no message with this id).
pub(crate) const QUERY_NOT_FOUND: i32 = 22;
/// RocketMQ's response code for "no message": what the client's query by
/// key answers when the index holds nothing for the key.
pub(crate) const NO_MESSAGE: i32 = 208;

/// The response code of a failed call: the broker's, or the one the client
/// attached to its own exception (a query that found nothing). The client
/// wraps the latter as an "invalid argument" whose `Display` hides it.
pub(crate) fn response_code(e: &ClientError) -> Option<i32> {
    e.broker_response_code().or_else(|| {
        e.source_ref::<MQClientException>()
            .map(MQClientException::response_code)
            .filter(|c| *c >= 0)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker reference is not `rocketmq://host:port[,host:port]`.
    #[error("broker reference {reference:?}: {why}")]
    BadReference {
        reference: String,
        why: &'static str,
    },
    /// The client's own runtime could not start.
    #[error("cannot start the RocketMQ client runtime: {0}")]
    Runtime(String),
    /// A call to the cluster failed.
    #[error("{op}: {detail}")]
    Client { op: &'static str, detail: String },
}

/// An error of call `op`, with what the client tells of it.
pub(crate) fn remote(op: &'static str, e: &ClientError) -> Error {
    let mut detail = e.to_string();
    if let Some(m) = e
        .source_ref::<MQClientException>()
        .and_then(MQClientException::error_message)
    {
        detail.push_str(&format!(": {m}"));
    }
    if let Some(code) = response_code(e) {
        detail.push_str(&format!(" (code {code})"));
    }
    if let Some(addr) = e.broker_addr() {
        detail.push_str(&format!(" (broker {addr})"));
    }
    Error::Client { op, detail }
}

/// The outcome of one synchronous send named `op`: the client's error, or
/// its "no result" (which a synchronous send should never give), as an
/// error that names the call.
/// A call that lost to other gateways of its group, which kept writing
/// the group's journal while it tried (see journal.rs): the client may
/// simply call again.
pub(crate) fn contended(op: &'static str) -> cellgate_broker_core::Error {
    cellgate_broker_core::Error::Remote {
        op,
        detail: "other gateways of the group kept writing its state; try again".into(),
    }
}

pub(crate) fn sent<T>(
    op: &'static str,
    r: Result<Option<T>, ClientError>,
) -> Result<T, cellgate_broker_core::Error> {
    r.map_err(|e| remote(op, &e))?
        .ok_or(cellgate_broker_core::Error::Remote {
            op,
            detail: "the client returned no send result".into(),
        })
}

impl From<Error> for cellgate_broker_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Client { op, detail } => cellgate_broker_core::Error::Remote { op, detail },
            other => cellgate_broker_core::Error::Config(other.to_string()),
        }
    }
}
