//! The broker interface every backend implements, shaped after RocketMQ:
//! topics with queues; messages with body, tag, keys and properties;
//! consumer groups with pop-style receive, an invisibility time, ack by
//! receipt handle, nack, retry with back-off and dead letters.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use uuid::Uuid;

use crate::error::Result;
use crate::filter::{Predicate, TagFilter};
use crate::record::{CopyOf, Message, Records, StoredMessage};
use crate::store::{PutResult, QueueSelect};
use crate::trace::Hop;
use crate::txn::{Decision, TxnCheck, TxnInfo};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Clustering: each message to one consumer of the group. Broadcast: every
/// consumer id gets every message and keeps its own progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeMode {
    Clustering,
    Broadcast { consumer_id: String },
}

#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub max_messages: usize,
    /// Long-poll: wait up to this long for a first message.
    pub wait: Duration,
    /// A delivered message is invisible to the group for this long unless
    /// acked; then it is delivered again.
    pub invisible: Duration,
    pub tags: TagFilter,
    pub predicate: Option<Predicate>,
    pub mode: ConsumeMode,
    /// Ordered consumption: at most one message of a queue in flight for
    /// the group; the next waits until it is acked (or dead-lettered).
    pub ordered: bool,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            max_messages: 16,
            wait: Duration::ZERO,
            invisible: Duration::from_secs(30),
            tags: TagFilter::All,
            predicate: None,
            mode: ConsumeMode::Clustering,
            ordered: false,
        }
    }
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: StoredMessage,
    /// Ack or nack with this; it is void once the message is redelivered.
    pub receipt: String,
    /// 1 on the first delivery.
    pub attempt: u32,
}

/// A group's backlog on one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLag {
    pub queue: u16,
    /// Everything below is done.
    pub committed: u64,
    /// The queue's next offset.
    pub max: u64,
    /// Messages not yet done (in flight included).
    pub lag: u64,
    pub inflight: usize,
}

/// Retry and dead-letter behaviour.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Invisibility after the n-th nack (the last level repeats).
    pub retry_levels: Vec<Duration>,
    /// Deliveries before a message goes to `%DLQ%<group>`.
    pub max_attempts: u32,
}

/// RocketMQ's delay levels from 10 s (levels 3–18).
pub fn rocketmq_retry_levels() -> Vec<Duration> {
    [
        10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_levels: rocketmq_retry_levels(),
            max_attempts: 16,
        }
    }
}

/// The dead-letter topic of a physical group.
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// Properties a dead-lettered copy carries.
pub const ORIGIN_TOPIC: &str = "__ORIGIN_TOPIC";
pub const ORIGIN_MESSAGE_ID: &str = "__ORIGIN_MESSAGE_ID";
pub const DELIVERY_ATTEMPTS: &str = "__DELIVERY_ATTEMPTS";

/// Marks `properties` as those of a dead letter of message `id` of
/// `topic`, after `attempts` deliveries. Every backend dead-letters so, and
/// [`revive`] undoes it.
pub fn mark_dead(
    properties: &mut std::collections::BTreeMap<String, String>,
    topic: &str,
    id: &Uuid,
    attempts: u32,
) {
    properties.insert(ORIGIN_TOPIC.into(), topic.to_owned());
    properties.insert(ORIGIN_MESSAGE_ID.into(), id.to_string());
    properties.insert(DELIVERY_ATTEMPTS.into(), attempts.to_string());
}

/// The message a dead letter was, addressed to its origin topic again (a
/// re-drive); `None` for a message that is no dead letter of cellgate's.
pub fn revive(m: StoredMessage) -> Option<Message> {
    let mut properties = m.properties;
    let topic = properties.remove(ORIGIN_TOPIC)?;
    properties.remove(ORIGIN_MESSAGE_ID);
    properties.remove(DELIVERY_ATTEMPTS);
    Some(Message {
        topic,
        body: m.body,
        tag: m.tag,
        keys: m.keys,
        properties,
        born_ms: m.born_ms,
    })
}

/// What every broker backend offers the gateway and the router.
///
/// Every call that may touch a remote broker returns a future: a backend
/// such as RocketMQ answers over the network, and the gateway must not
/// block a runtime thread on it. The embedded broker answers most of them
/// at once (its inherent methods of the same names are synchronous).
pub trait Broker: Send + Sync {
    /// Creates a topic with `queues` queues (a no-op if it exists alike).
    fn create_topic<'a>(&'a self, topic: &'a str, queues: u16) -> BoxFuture<'a, Result<()>>;
    /// Stores a message; resolves once it is durable under the policy.
    fn send(&self, msg: Message, select: QueueSelect) -> BoxFuture<'_, Result<PutResult>>;
    /// Stores messages in order, as one write.
    fn send_batch(
        &self,
        msgs: Vec<(Message, QueueSelect)>,
    ) -> BoxFuture<'_, Result<Vec<PutResult>>>;
    /// Pop-style receive for a group.
    fn receive<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        opts: ReceiveOptions,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>>;
    fn ack<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
    /// Makes the message visible again after the back-off of its attempt.
    fn nack<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        receipt: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
    /// Moves the group's progress on every queue to the first message
    /// stored at or after `ms`.
    fn reset_to_time<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
        ms: i64,
    ) -> BoxFuture<'a, Result<()>>;
    fn lag<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        mode: &'a ConsumeMode,
    ) -> BoxFuture<'a, Result<Vec<QueueLag>>>;
    /// A message by id. `topic` is where it was published: a backend that
    /// indexes ids per topic (RocketMQ) looks there; one with a global id
    /// index may ignore it.
    fn get_by_id<'a>(
        &'a self,
        topic: &'a str,
        id: &'a Uuid,
    ) -> BoxFuture<'a, Result<Option<StoredMessage>>>;
    /// The messages `topic` itself holds under any of `ids`, for a
    /// router's replay ("is the copy there already?"). Each was stored, if
    /// at all, between `since_ms` and `until_ms` by this broker's clock
    /// (the caller allows for skew). Unlike [`Broker::get_by_id`] the
    /// answer must be exact for messages stored in that window before the
    /// call (a miss means a second copy) and name only `topic` (a broker
    /// may hold a message and its copy); one found outside it may be
    /// named too. The default asks [`Broker::get_by_id`] per id, right for
    /// a backend whose id index is written with the message and kept per
    /// topic; a backend that indexes behind its writes reads the topic's
    /// window.
    fn find_ids<'a>(
        &'a self,
        topic: &'a str,
        ids: &'a [Uuid],
        (since_ms, until_ms): (i64, i64),
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        let _ = (since_ms, until_ms);
        Box::pin(async move {
            let mut out = Vec::new();
            for id in ids {
                if let Some(m) = self.get_by_id(topic, id).await? {
                    out.extend((m.topic == topic).then_some(m));
                }
            }
            Ok(out)
        })
    }
    fn get_by_key<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>>;
    /// Moves up to `max` messages from `%DLQ%<group>` back to their topics.
    fn redrive<'a>(&'a self, group: &'a str, max: usize) -> BoxFuture<'a, Result<usize>>;
    /// Stores copies of messages stored elsewhere, each keeping the given id.
    fn send_copies(
        &self,
        msgs: Vec<(Message, QueueSelect, Uuid)>,
    ) -> BoxFuture<'_, Result<Vec<PutResult>>>;
    /// [`Broker::read`], the messages kept encoded as [`Records`]: a router
    /// that only copies them allocates nothing per message. The default
    /// encodes what `read` returns.
    fn read_records<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Records>> {
        Box::pin(async move {
            let mut out = Records::new();
            for m in self.read(topic, queue, from, max).await? {
                out.push_stored(m)?;
            }
            Ok(out)
        })
    }
    /// [`Broker::read_records`] for a router: it may leave out records
    /// appended with [`Broker::send_copies`] or
    /// [`Broker::send_record_copies`] (a copy is never copied again), and
    /// then [`Records::end`] says where the next read starts. The default
    /// leaves nothing out; the router checks every record's unit headers
    /// anyway, so this only saves reading what it would skip.
    fn read_originals<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Records>> {
        self.read_records(topic, queue, from, max)
    }
    /// [`Broker::send_copies`] of records read with
    /// [`Broker::read_records`] (from this broker or another), each copy
    /// encoded from its source's bytes. The default builds owned messages.
    fn send_record_copies<'a>(
        &'a self,
        copies: &'a [CopyOf<'a>],
    ) -> BoxFuture<'a, Result<Vec<PutResult>>> {
        let msgs = copies
            .iter()
            .map(|c| (c.to_message(), c.select.clone(), c.source.id()))
            .collect();
        self.send_copies(msgs)
    }
    /// Every topic with its queue count.
    fn topics(&self) -> BoxFuture<'_, Result<Vec<(String, u16)>>>;
    /// Up to `max` messages of a queue from offset `from` on, in order,
    /// outside any consumer group (the router's read).
    fn read<'a>(
        &'a self,
        topic: &'a str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>>;
    /// Changes whenever new messages become readable.
    fn appended(&self) -> tokio::sync::watch::Receiver<u64>;
    /// How long after a send [`Broker::find_ids`] may still miss the
    /// message: a remote broker makes a write readable a moment after it
    /// answers, and a request sent just before a crash may still be on its
    /// way. The router waits this long before its replay looks copies up,
    /// so that such a copy is found, not sent again. Zero by default.
    fn lookup_lag(&self) -> Duration {
        Duration::ZERO
    }

    /// Stores a message that consumers see only from `deliver_at_ms` on
    /// (at most [`crate::timer::MAX_DELAY`] ahead). The result names the
    /// destination queue; the message gets its offset when it falls due.
    fn schedule(
        &self,
        msg: Message,
        select: QueueSelect,
        deliver_at_ms: i64,
    ) -> BoxFuture<'_, Result<PutResult>>;
    /// Stores a half message of a transaction of `producer_group`; the
    /// result's id is the transaction id.
    fn send_transactional<'a>(
        &'a self,
        msg: Message,
        select: QueueSelect,
        producer_group: &'a str,
    ) -> BoxFuture<'a, Result<PutResult>>;
    /// Commits or rolls back; a repeated decision returns the same state.
    fn end_transaction<'a>(
        &'a self,
        id: &'a Uuid,
        decision: Decision,
    ) -> BoxFuture<'a, Result<TxnInfo>>;
    /// What is known of a transaction.
    fn transaction<'a>(&'a self, id: &'a Uuid) -> BoxFuture<'a, Result<Option<TxnInfo>>>;
    /// Long-polls up to `max` check-backs for a producer group.
    fn transaction_checks<'a>(
        &'a self,
        producer_group: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<TxnCheck>>>;
    /// The oldest `max` messages of a topic stored in `[from_ms, to_ms)`.
    fn query_by_time<'a>(
        &'a self,
        topic: &'a str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>>;
    /// Records trace hops (fire-and-forget).
    fn record_trace(&self, hops: Vec<Hop>);
    /// The hops recorded here for a message, in time order.
    fn trace_of<'a>(&'a self, topic: &'a str, id: &'a Uuid) -> BoxFuture<'a, Result<Vec<Hop>>>;
}
