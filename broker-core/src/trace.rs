//! Message trace: every hop a message takes (publish, store, route copy,
//! deliver, ack, nack, dead letter, scheduled release, commit, rollback),
//! each with its time, place and actor.
//!
//! Hops are kept in the broker itself, in the internal topic
//! [`TRACE_TOPIC`], so they live exactly as long as the retention period
//! and survive restarts like any message. Recording is fire-and-forget and
//! off the request path: [`TraceWriter::record`] queues hops on a bounded
//! channel, and one task writes whatever has gathered as a single record
//! whose keys are the message ids it mentions (the key index is what a
//! lookup by id uses) and whose body is the hops as JSON. When the channel
//! is full (a writer that cannot keep up) hops are dropped and counted,
//! never waited for: a trace must not slow the messages it describes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::record::Message;

/// The internal topic of trace records.
pub const TRACE_TOPIC: &str = "%TRACE%";
/// Hops written per record at most.
const PER_RECORD: usize = 256;
/// Hops queued before new ones are dropped.
const QUEUE: usize = 64 * 1024;

/// One hop of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub message_id: Uuid,
    /// `publish`, `store`, `route`, `deliver`, `ack`, `nack`, `dlq`,
    /// `release` (a delayed message fell due), `commit`, `rollback`.
    pub kind: String,
    pub at_ms: i64,
    /// Where it happened (the gateway puts the cell here; empty when the
    /// broker records a hop itself: the reader knows which broker it asked).
    #[serde(default)]
    pub place: String,
    /// Who did it: a token name, a consumer group, `router`, `broker`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
}

impl Hop {
    pub fn new(message_id: Uuid, kind: &str, at_ms: i64, place: &str, actor: &str) -> Hop {
        Hop {
            message_id,
            kind: kind.to_owned(),
            at_ms,
            place: place.to_owned(),
            actor: actor.to_owned(),
            detail: BTreeMap::new(),
        }
    }

    /// The hop of message `id` moving to `group`'s dead letters after
    /// `attempts` deliveries (recorded by the broker that moves it).
    pub fn dead_letter(id: Uuid, at_ms: i64, group: &str, attempts: u32) -> Hop {
        Hop::new(id, "dlq", at_ms, "", "broker")
            .with("group", group)
            .with("attempts", attempts.to_string())
    }

    /// The hop of delayed message (or retry) `id` falling due at `at_ms`
    /// (recorded by the broker whose timer released it).
    pub fn release(id: Uuid, at_ms: i64) -> Hop {
        Hop::new(id, "release", at_ms, "", "broker")
    }

    pub fn with(mut self, k: &str, v: impl Into<String>) -> Hop {
        self.detail.insert(k.to_owned(), v.into());
        self
    }
}

/// The sending side of the trace channel.
#[derive(Debug, Clone)]
pub struct TraceWriter {
    tx: mpsc::Sender<Vec<Hop>>,
    /// Hops dropped because the writer was behind (a metric).
    pub dropped: Arc<AtomicU64>,
}

impl TraceWriter {
    /// A writer and the receiver its task drains.
    pub(crate) fn channel() -> (TraceWriter, mpsc::Receiver<Vec<Hop>>) {
        let (tx, rx) = mpsc::channel(QUEUE / 16);
        let w = TraceWriter {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (w, rx)
    }

    /// Queues hops; never waits.
    pub fn record(&self, hops: Vec<Hop>) {
        if hops.is_empty() {
            return;
        }
        let n = hops.len() as u64;
        if self.tx.try_send(hops).is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The record that stores `hops`.
pub(crate) fn record_of(hops: &[Hop], now: i64) -> Option<Message> {
    let body = serde_json::to_vec(hops).ok()?;
    let keys: BTreeSet<String> = hops.iter().map(|h| h.message_id.to_string()).collect();
    Some(Message {
        topic: TRACE_TOPIC.to_owned(),
        body,
        keys: keys.into_iter().collect(),
        born_ms: now,
        ..Message::default()
    })
}

/// Takes what has gathered on `rx`, up to a record's worth; None when the
/// channel is closed.
pub(crate) async fn gather(rx: &mut mpsc::Receiver<Vec<Hop>>) -> Option<Vec<Hop>> {
    let mut hops = rx.recv().await?;
    while hops.len() < PER_RECORD {
        match rx.try_recv() {
            Ok(more) => hops.extend(more),
            Err(_) => break,
        }
    }
    Some(hops)
}

/// The hops of `id` among a trace record's, in time order.
pub(crate) fn hops_of(body: &[u8], id: &Uuid) -> Vec<Hop> {
    let all: Vec<Hop> = serde_json::from_slice(body).unwrap_or_default();
    all.into_iter().filter(|h| h.message_id == *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_keyed_by_every_message_it_mentions() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let hops = vec![
            Hop::new(a, "publish", 1, "RZ00A", "ant"),
            Hop::new(b, "publish", 2, "RZ00A", "ant").with("queue", "3"),
            Hop::new(a, "store", 3, "RZ00A", "broker"),
        ];
        let m = record_of(&hops, 5).unwrap();
        assert_eq!(m.keys.len(), 2);
        let of_a = hops_of(&m.body, &a);
        assert_eq!(of_a.len(), 2);
        assert_eq!(hops_of(&m.body, &b)[0].detail["queue"], "3");
    }
}
