//! Publish combining: single-message publishes that arrive at one cell
//! while an earlier write to it is in progress are stored together, with
//! one `send_batch`, instead of one `send` each.
//!
//! Why: the broker's cost per call is much larger than its cost per
//! message (each `send` takes the log's writer lock, makes its own
//! `pwrite`, waits for durability and runs a dispatch of its own; a batch
//! does each once). With 64 clients on 2 cores the broker's own write
//! combining rarely finds more than one writer, so under load most of the
//! gateway's CPU went into per-call broker work (docs/benchmarks.md).
//!
//! How: each cell has a queue. A publish pushes its message and waits for
//! its result on a oneshot channel; if no drain task is running for the
//! cell, it spawns one. The drain task takes from the front of the queue
//! every waiting message for the same topic (bounded in count and bytes),
//! stores them with one call, hands each its own result, and repeats until
//! the queue is empty. With one client there is never anything to combine:
//! each publish is a batch of one.
//!
//! Semantics are those of one `send` per message:
//! - a publish is answered only after its message is stored under the
//!   flush policy (the batch's durability wait covers every message in it);
//! - a message the broker would refuse on its own (too large, a field too
//!   long for the record format) is never combined: it is sent alone and
//!   gets its own error, so it cannot fail another client's message;
//! - only messages of one topic are combined, so a topic-level failure
//!   reaches only publishes to that topic;
//! - the drain task owns the batch, so a client that disconnects mid-write
//!   does not cancel the write of the others' messages.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::oneshot;

use cellgate_broker_core::{record, Broker, Message, PutResult, QueueSelect};

use crate::api::{ApiError, ApiResult};
use crate::brokers::STORE_MAX_MESSAGE_BYTES;

/// At most this many messages…
const MAX_BATCH_MESSAGES: usize = 256;
/// …and about this many body bytes per combined write (a message larger
/// than this goes alone).
const MAX_BATCH_BYTES: usize = 4 << 20;

struct Waiting {
    msg: Message,
    select: QueueSelect,
    tx: oneshot::Sender<ApiResult<PutResult>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    /// A drain task is running (it empties the queue before it ends).
    draining: bool,
}

/// One cell's combiner.
pub struct Combiner {
    broker: Arc<dyn Broker>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

fn broker_error(e: &cellgate_broker_core::Error) -> ApiError {
    ApiError::from_broker(e, "body")
}

impl Combiner {
    /// The cell's broker this combiner sends to.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn new(broker: Arc<dyn Broker>) -> Combiner {
        Combiner {
            broker,
            state: Mutex::new(State::default()),
        }
    }

    /// Stores one message; resolves once it is durable under the policy.
    pub async fn send(self: &Arc<Self>, msg: Message, select: QueueSelect) -> ApiResult<PutResult> {
        // A message the broker would refuse is not combined with others.
        let alone = msg.body.len() > STORE_MAX_MESSAGE_BYTES || record::encoded_len(&msg).is_err();
        if alone {
            return self
                .broker
                .send(msg, select)
                .await
                .map_err(|e| broker_error(&e));
        }
        let queued = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.draining {
                let (tx, rx) = oneshot::channel();
                st.queue.push_back(Waiting { msg, select, tx });
                Err(rx)
            } else {
                st.draining = true;
                Ok((msg, select))
            }
        };
        match queued {
            Err(rx) => rx
                .await
                .unwrap_or_else(|_| Err(ApiError::unavailable("the broker is shutting down"))),
            Ok((msg, select)) => {
                // Nothing was in progress: this task stores its message
                // itself, with no hand-over to a drain task and back. That
                // is every publish on an idle or single-connection gateway.
                // Publishes arriving meanwhile queue; the guard hands them
                // to a drain task when this write ends, however it ends (a
                // cancelled request cancels only its own write).
                let _guard = HandOver(self);
                self.broker
                    .send(msg, select)
                    .await
                    .map_err(|e| broker_error(&e))
            }
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            // Let the connections that are ready run first: their publishes
            // join this batch instead of each starting the next one. With
            // nothing else ready this returns at once.
            tokio::task::yield_now().await;
            let batch = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.queue.is_empty() {
                    st.draining = false;
                    return;
                }
                take_batch(&mut st.queue)
            };
            self.store(batch).await;
        }
    }

    async fn store(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 {
            if let Some(w) = batch.pop() {
                let r = self.broker.send(w.msg, w.select).await;
                let _ = w.tx.send(r.map_err(|e| broker_error(&e)));
            }
            return;
        }
        let (msgs, txs): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|w| ((w.msg, w.select), w.tx)).unzip();
        match self.broker.send_batch(msgs).await {
            Ok(results) if results.len() == txs.len() => {
                for (tx, r) in txs.into_iter().zip(results) {
                    let _ = tx.send(Ok(r));
                }
            }
            Ok(_) => {
                tracing::error!("the broker answered a batch with the wrong number of results");
                let e = ApiError::unavailable(
                    "the cell's broker failed; the error is in the gateway log",
                );
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            Err(e) => {
                let e = broker_error(&e);
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Ends a publish that stored its own message: starts a drain task for
/// whatever queued meanwhile, or marks the cell idle.
struct HandOver<'a>(&'a Arc<Combiner>);

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.queue.is_empty() {
            st.draining = false;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.0.clone().drain());
            }
            // The runtime is going away (shutdown): the waiting publishes
            // are answered "shutting down" as their senders drop.
            Err(_) => {
                st.queue.clear();
                st.draining = false;
            }
        }
    }
}

/// The front message and every later one for the same topic, within the
/// batch bounds; the others keep their places.
fn take_batch(queue: &mut VecDeque<Waiting>) -> Vec<Waiting> {
    let Some(first) = queue.pop_front() else {
        return Vec::new();
    };
    let mut bytes = first.msg.body.len();
    let mut batch = vec![first];
    let mut i = 0;
    while i < queue.len() && batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
        if queue[i].msg.topic == batch[0].msg.topic {
            if let Some(w) = queue.remove(i) {
                bytes += w.msg.body.len();
                batch.push(w);
            }
        } else {
            i += 1;
        }
    }
    batch
}

/// Combiners by cell name. A cell's broker never changes once open (see
/// `brokers`), so neither does its combiner.
#[derive(Debug, Default)]
pub struct Combiners {
    cells: RwLock<HashMap<Box<str>, Arc<Combiner>>>,
}

impl Combiners {
    /// The combiner of `cell`; `broker` opens the cell's broker on first use.
    pub fn get(
        &self,
        cell: &str,
        broker: impl FnOnce() -> ApiResult<Arc<dyn Broker>>,
    ) -> ApiResult<Arc<Combiner>> {
        if let Some(c) = self.cells.read().ok().and_then(|m| m.get(cell).cloned()) {
            return Ok(c);
        }
        let b = broker()?;
        let mut map = self.cells.write().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .entry(cell.into())
            .or_insert_with(|| Arc::new(Combiner::new(b)))
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use cellgate_broker_core::{DeliveryConfig, EmbeddedBroker, FlushPolicy, Store, StoreConfig};

    fn msg(topic: &str, body: &str) -> Message {
        Message {
            topic: topic.to_owned(),
            body: body.as_bytes().to_vec(),
            tag: None,
            keys: Vec::new(),
            properties: Default::default(),
            born_ms: 0,
        }
    }

    fn waiting(topic: &str, body: &str) -> Waiting {
        let (tx, _rx) = oneshot::channel();
        Waiting {
            msg: msg(topic, body),
            select: QueueSelect::RoundRobin,
            tx,
        }
    }

    #[test]
    fn a_batch_is_one_topic_in_arrival_order_and_bounded() {
        let mut q: VecDeque<Waiting> = ["A1", "B1", "A2", "A3", "B2"]
            .iter()
            .map(|b| waiting(&b[..1], b))
            .collect();
        let bodies = |v: Vec<Waiting>| -> Vec<String> {
            v.into_iter()
                .map(|w| String::from_utf8(w.msg.body).unwrap())
                .collect()
        };
        assert_eq!(bodies(take_batch(&mut q)), ["A1", "A2", "A3"]);
        assert_eq!(bodies(take_batch(&mut q)), ["B1", "B2"]);
        assert!(take_batch(&mut q).is_empty());
        let mut q: VecDeque<Waiting> = (0..MAX_BATCH_MESSAGES + 3)
            .map(|_| waiting("T", "x"))
            .collect();
        assert_eq!(take_batch(&mut q).len(), MAX_BATCH_MESSAGES);
        assert_eq!(take_batch(&mut q).len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_each_get_their_own_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::default();
        cfg.log.segment_bytes = 4 << 20;
        cfg.log.flush = FlushPolicy::Sync;
        let store = Arc::new(Store::open(dir.path(), cfg).unwrap());
        let broker: Arc<dyn Broker> =
            Arc::new(EmbeddedBroker::new(store, DeliveryConfig::default()));
        let c = Arc::new(Combiner::new(broker));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let c = c.clone();
                let topic = if i % 3 == 0 {
                    "ANT|RZ00A%B"
                } else {
                    "ANT|RZ00A%A"
                };
                tokio::spawn(async move {
                    c.send(msg(topic, &i.to_string()), QueueSelect::Queue(0))
                        .await
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert!(seen.insert(r.id), "each message has its own id");
        }
        // A message the record format refuses fails alone.
        let mut bad = msg("ANT|RZ00A%A", "x");
        bad.tag = Some("t".repeat(70_000));
        let e = c.send(bad, QueueSelect::RoundRobin).await.unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        assert!(c
            .send(msg("ANT|RZ00A%A", "ok"), QueueSelect::RoundRobin)
            .await
            .is_ok());
    }
}
