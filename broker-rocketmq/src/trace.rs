//! The message trace on RocketMQ: hops stored as messages of [`TRACE_TOPIC`]
//! keyed by message id, the hops as JSON in the body. That is how RocketMQ
//! keeps its own message trace (`RMQ_SYS_TRACE_TOPIC`, keyed by message
//! id), except that one trace message carries the hops of many messages
//! (up to [`IDS_PER_MESSAGE`], each id one of its keys). A trace is read
//! with a query by key, so it lives as long as the broker retains that
//! topic.
//!
//! Recording is best effort and off the publish path:
//! - [`Broker::record_trace`](cellgate_broker_core::Broker::record_trace)
//!   only queues the hops (it cannot wait, and a publish must not pay a
//!   second round trip for its trace);
//! - one writer task per cluster takes whatever is queued within
//!   [`LINGER`] of the first, up to [`MAX_BATCH`] calls' hops, and stores
//!   it as one RocketMQ batch. One
//!   batch is in flight at a time, so the writer costs one send per round
//!   trip however many publishes there are, and can never hold more of the
//!   client's in-flight requests than that;
//! - the queue is bounded ([`QUEUE`] calls). Hops that find it full, or
//!   whose batch the cluster refuses, are dropped and counted, with a
//!   warning (carrying the count) at every power of two: a
//!   trace store that cannot keep up loses trace hops, never messages, and
//!   never slows publishes down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{message_id, Hop, Message, Result};
use rocketmq_client_rust::DefaultMQProducer;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::convert::to_rocketmq;
use crate::error::remote;
use crate::{now_ms, RocketMqBroker};

/// Where trace hops are kept (one topic per cluster; one queue is plenty:
/// hops are read by key, never by offset).
pub const TRACE_TOPIC: &str = "CELLGATE_TRACE";

/// Calls' hops waiting for the writer, at most.
const QUEUE: usize = 16_384;
/// Calls' hops per stored batch, at most (a few hundred bytes each: far
/// below the broker's 4 MiB message limit, which a batch counts whole).
const MAX_BATCH: usize = 256;
/// Message ids per trace message, at most: its keys (37 bytes each) stay
/// far below RocketMQ's 32 KiB of properties, and a trace query reads a
/// body of a few kilobytes.
const IDS_PER_MESSAGE: usize = 64;
/// How long the writer waits for more hops before it stores a batch that
/// is not full.
const LINGER: Duration = Duration::from_millis(10);
/// How long [`TraceWriter::close`] waits for the queued hops to be stored.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

type RmqMessage = rocketmq_model::common::message::message_single::Message;

/// The queue in front of one cluster's trace writer task.
#[derive(Debug)]
pub(crate) struct TraceWriter {
    /// Bounded mpsc: `record` must not wait, so it uses `try_send` and a
    /// full (or, after `close`, closed) queue drops (see the module docs).
    /// No lock around it: `record` is on every publish.
    tx: mpsc::Sender<Vec<Hop>>,
    /// Tells the task to close its queue and store what is left.
    closing: Arc<tokio::sync::Notify>,
    /// Hops dropped so far; shared with the task, which drops refused ones.
    dropped: Arc<AtomicU64>,
    /// The writer task, awaited by `close`. A std mutex: taken once.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

// === impl TraceWriter ===

impl TraceWriter {
    /// Starts the writer task on the caller's runtime; it sends with
    /// `producer` (a clone of the send producer: same client instance).
    pub fn start(producer: DefaultMQProducer) -> TraceWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(write(rx, producer, dropped.clone(), closing.clone()));
        TraceWriter {
            tx,
            closing,
            dropped,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues `hops` for the writer; never waits.
    pub fn record(&self, hops: Vec<Hop>) {
        if hops.is_empty() {
            return;
        }
        let n = hops.len() as u64;
        if self.tx.try_send(hops).is_err() {
            count_dropped(&self.dropped, n, "the trace queue is full or closed");
        }
    }

    /// Stops taking hops and waits (a bounded time) for the queued ones to
    /// be stored; before the client shuts down.
    pub async fn close(&self) {
        // A permit: the task takes it even if it is busy storing now.
        self.closing.notify_one();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            if tokio::time::timeout(CLOSE_WAIT, task).await.is_err() {
                tracing::warn!("trace hops still queued at shutdown were dropped");
            }
        }
    }
}

/// The writer task: one batch in flight at a time, until the queue is
/// closed (by `close`, or by the broker's drop) and empty.
async fn write(
    mut rx: mpsc::Receiver<Vec<Hop>>,
    producer: DefaultMQProducer,
    dropped: Arc<AtomicU64>,
    closing: Arc<tokio::sync::Notify>,
) {
    let mut calls = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut calls, MAX_BATCH) => n,
            () = closing.notified() => {
                // What is queued is still received; new hops are refused.
                rx.close();
                continue;
            }
        };
        if n == 0 {
            return;
        }
        if calls.len() < MAX_BATCH {
            // Let a few more calls' hops join: the trace is not read within
            // milliseconds, and each batch is a request the broker serves.
            tokio::time::sleep(LINGER).await;
            while calls.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(h) => calls.push(h),
                    Err(_) => break,
                }
            }
        }
        let hops: Vec<Hop> = calls.drain(..).flatten().collect();
        let n = hops.len() as u64;
        let mut msgs = encode(hops);
        let res = if msgs.len() == 1 {
            match msgs.pop() {
                Some(m) => producer.send(m).await.map(|_| ()),
                None => Ok(()),
            }
        } else {
            producer.send_batch(msgs).await.map(|_| ())
        };
        if let Err(e) = res {
            tracing::warn!(error = %remote("store trace hops", &e), "trace hops dropped");
            count_dropped(&dropped, n, "the cluster refused them");
        }
    }
}

/// The hops as trace messages: each holds the hops of up to
/// [`IDS_PER_MESSAGE`] message ids, as JSON, with those ids as its keys
/// (the broker indexes every key of a message, so a query by any of them
/// finds it; the reader keeps the hops of the id it asked for). One
/// message per publish would double the broker's work for a batch
/// publish; one per flush keeps the trace at a few requests a second.
fn encode(hops: Vec<Hop>) -> Vec<RmqMessage> {
    let mut by_id: BTreeMap<Uuid, Vec<Hop>> = BTreeMap::new();
    for h in hops {
        by_id.entry(h.message_id).or_default().push(h);
    }
    let ids: Vec<Uuid> = by_id.keys().copied().collect();
    let mut out = Vec::with_capacity(ids.len().div_ceil(IDS_PER_MESSAGE));
    for chunk in ids.chunks(IDS_PER_MESSAGE) {
        let hops: Vec<&Hop> = chunk
            .iter()
            .filter_map(|id| by_id.get(id))
            .flatten()
            .collect();
        let body = match serde_json::to_vec(&hops) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "trace hops not encoded");
                continue;
            }
        };
        let m = Message {
            topic: TRACE_TOPIC.to_owned(),
            body,
            tag: None,
            keys: chunk.iter().map(Uuid::to_string).collect(),
            properties: BTreeMap::new(),
            born_ms: now_ms(),
        };
        let id = message_id(m.born_ms);
        match to_rocketmq(m, &id, None) {
            Ok(rm) => out.push(rm),
            Err(e) => tracing::warn!(error = %e, "trace hops not encoded"),
        }
    }
    out
}

/// Adds `n` to the dropped count; warns when the total crosses a power of
/// two, so a sustained loss is visible without a warning per call.
fn count_dropped(dropped: &AtomicU64, n: u64, why: &str) {
    let before = dropped.fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    if before == 0 || after.ilog2() > before.ilog2() {
        tracing::warn!(dropped = after, why, "message trace hops dropped");
    }
}

// === impl RocketMqBroker: trace ===

impl RocketMqBroker {
    /// The hops recorded for message `id`, oldest first.
    pub(crate) async fn hops_of(&self, id: &Uuid) -> Result<Vec<Hop>> {
        let mut hops = Vec::new();
        for m in self.by_key(TRACE_TOPIC, &id.to_string()).await? {
            match serde_json::from_slice::<Vec<Hop>>(&m.body) {
                Ok(h) => hops.extend(h.into_iter().filter(|h| h.message_id == *id)),
                Err(e) => tracing::warn!(%id, error = %e, "a trace message that is not hops"),
            }
        }
        hops.sort_by_key(|h| h.at_ms);
        // Each group that read a released message recorded its release.
        let mut released = std::collections::HashSet::new();
        hops.retain(|h| h.kind != "release" || released.insert(h.at_ms));
        Ok(hops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_of_many_ids_share_messages_keyed_by_each_id() {
        let ids: Vec<Uuid> = (0..65).map(|i| message_id(1_700_000_000_000 + i)).collect();
        let hops: Vec<Hop> = ids
            .iter()
            .flat_map(|id| {
                [
                    Hop::new(*id, "publish", 1, "RZ00A", "app"),
                    Hop::new(*id, "store", 2, "RZ00A", "broker"),
                ]
            })
            .collect();
        let msgs = encode(hops);
        assert_eq!(msgs.len(), 2, "64 ids, then 1");
        let mut seen = Vec::new();
        for m in &msgs {
            let keys: Vec<&str> = m.property("KEYS").unwrap().split(' ').collect();
            let body: Vec<Hop> = serde_json::from_slice(&m.body().unwrap()).unwrap();
            let in_body: std::collections::BTreeSet<String> =
                body.iter().map(|h| h.message_id.to_string()).collect();
            // Every id whose hops it holds is a key (the last key is the
            // trace message's own id).
            assert_eq!(keys.len(), in_body.len() + 1);
            assert!(in_body.iter().all(|id| keys.contains(&id.as_str())));
            assert_eq!(body.len(), in_body.len() * 2);
            seen.extend(in_body);
        }
        seen.sort();
        let mut want: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        want.sort();
        assert_eq!(seen, want);
    }
}
