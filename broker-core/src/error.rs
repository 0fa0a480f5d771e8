//! broker-core's error: one enum, every variant a sentence an operator or a
//! client can act on.

use std::path::PathBuf;

/// What a broker operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory or one of its files could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A message is larger than the broker accepts.
    #[error("message is {size} bytes, over the limit of {max}")]
    MessageTooLarge { size: usize, max: usize },
    /// A field of a message does not fit the record format.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// The topic does not exist and auto-creation is off.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// A queue id outside the topic's queues.
    #[error("topic {topic} has {queues} queues, there is no queue {queue}")]
    UnknownQueue {
        topic: String,
        queue: u16,
        queues: u16,
    },
    /// A topic was created again with a different queue count.
    #[error("topic {topic} already exists with {existing} queues, not {requested}")]
    TopicExists {
        topic: String,
        existing: u16,
        requested: u16,
    },
    /// Bytes on disk that are not a valid record.
    #[error("corrupt record at log position {pos}: {why}")]
    Corrupt { pos: u64, why: DecodeError },
    /// A record whose body is kept in another record (a transaction's
    /// commit) names a record that cannot hold it.
    #[error("the record at log position {pos} refers to its body at {at}, but {why}")]
    BadBodyRef {
        pos: u64,
        at: u64,
        why: &'static str,
    },
    /// A read below the oldest retained position or above the newest.
    #[error("log position {pos} is outside the retained log [{min}, {max})")]
    OutOfRange { pos: u64, min: u64, max: u64 },
    /// A receipt handle that this broker did not issue, or that has expired.
    #[error("receipt handle is invalid or expired")]
    BadReceipt,
    /// Configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker is shutting down.
    #[error("the broker is closed")]
    Closed,
    /// The log's fsync failed: nothing more is stored or acknowledged
    /// until the broker restarts and recovers (see the log's docs).
    #[error("the commit log's disk failed (fdatasync); restart the broker to recover")]
    LogFailed,
    /// A delivery time further ahead than the broker holds messages.
    #[error(
        "deliver_at_ms {deliver_at_ms} is later than the latest allowed, {max_ms} (40 days ahead)"
    )]
    DelayTooLong { deliver_at_ms: i64, max_ms: i64 },
    /// No half message with this transaction id.
    #[error("transaction {0} does not exist")]
    UnknownTransaction(uuid::Uuid),
    /// A decision that contradicts the one already taken.
    #[error("transaction {id} is {state}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    TransactionConflict {
        id: uuid::Uuid,
        state: &'static str,
        reason: String,
    },
    /// State is still being recovered after a restart; retry shortly.
    #[error("the broker is recovering its state; retry shortly")]
    Recovering,
    /// A remote broker (a backend such as RocketMQ) failed the call or could
    /// not be reached; the call may be retried.
    #[error("remote broker: {op} failed: {detail}")]
    Remote { op: &'static str, detail: String },
    /// The backend does not offer this operation.
    #[error("{0} is not supported by this broker backend")]
    Unsupported(&'static str),
}

/// Why bytes do not decode to a record. Cheap: the decoder is on the read
/// path and is fed arbitrary bytes by the fuzz tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("length {0} is impossible")]
    BadLength(u32),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("field lengths do not add up to the record length")]
    Layout,
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
    /// A record that keeps its body in the record at this log position:
    /// only the store, which can read that record, decodes it whole.
    #[error("the body is in the record at log position {0}")]
    BodyElsewhere(u64),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
