//! Sends: single, batched (runs of one topic and queue per RocketMQ batch),
//! copies that keep their ids, and delayed messages (the broker's timer).

use std::collections::HashMap;
use std::sync::Arc;

use cellgate_broker_core::{message_id, now_ms, Error, Message, PutResult, QueueSelect, Result};
use futures_util::stream::{self, StreamExt};
use rocketmq_client_rust::{DefaultMQProducer, SendResult};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use uuid::Uuid;

use crate::busy::{self, Call};
use crate::client::Route;
use crate::convert::to_rocketmq;
use crate::error::{remote, sent};
use crate::RocketMqBroker;

/// One message to send: what, where, with which id, and when it is due.
pub(crate) struct Outgoing {
    pub msg: Message,
    pub select: QueueSelect,
    pub id: Uuid,
    pub deliver_at_ms: Option<i64>,
}

impl Outgoing {
    pub fn new(msg: Message, select: QueueSelect) -> Outgoing {
        Outgoing {
            msg,
            select,
            id: message_id(now_ms()),
            deliver_at_ms: None,
        }
    }
}

/// At most this many messages per RocketMQ batch…
const MAX_RUN_MESSAGES: usize = 256;
/// …and about this many body bytes: below the broker's default maximum
/// message size (4 MiB), which a batch counts as a whole.
const MAX_RUN_BYTES: usize = 3 << 20;
/// Queues sent to at once by one call.
const MAX_PARALLEL_QUEUES: usize = 8;

/// One queue's share of a call: its runs, sent in order.
struct QueuePlan {
    topic: String,
    q: usize,
    route: Arc<Route>,
    /// Each run is one RocketMQ call; `usize` is the message's input index.
    runs: Vec<Vec<(usize, Outgoing)>>,
    /// Body bytes of the last run.
    last_bytes: usize,
}

// === impl QueuePlan ===

impl QueuePlan {
    /// Appends to the last run, or starts a run: a delayed message, or a
    /// run at its bound, does not share.
    fn add(&mut self, i: usize, o: Outgoing, bytes: usize) {
        let joins = o.deliver_at_ms.is_none()
            && self.runs.last().is_some_and(|r| {
                r.len() < MAX_RUN_MESSAGES
                    && self.last_bytes + bytes <= MAX_RUN_BYTES
                    && r.last().is_some_and(|(_, l)| l.deliver_at_ms.is_none())
            });
        match self.runs.last_mut() {
            Some(run) if joins => {
                run.push((i, o));
                self.last_bytes += bytes;
            }
            _ => {
                self.runs.push(vec![(i, o)]);
                self.last_bytes = bytes;
            }
        }
    }
}

// === impl RocketMqBroker: sends ===

impl RocketMqBroker {
    /// Sends `out`; results keep input order.
    ///
    /// Queues are picked as the embedded broker picks them
    /// ([`QueueSelect::pick`]), so a sharding key keeps its queue number on
    /// either backend, except that the round-robin messages of one topic in
    /// one call share one queue, as RocketMQ's own producer sends a batch:
    /// the round robin advances per call. Why: a remote send costs a round
    /// trip, and the gateway combines concurrent publishes into one call;
    /// spread over every queue, a combined batch became one round trip per
    /// message and the gateway's rate stayed at one sender's
    /// (docs/benchmarks.md, issue 8).
    ///
    /// The messages of one queue go in input order, as batches of up to
    /// [`MAX_RUN_MESSAGES`] (a delayed message goes alone: its delay is a
    /// property of the message); different queues are sent to concurrently.
    pub(crate) async fn send_all(&self, out: Vec<Outgoing>) -> Result<Vec<PutResult>> {
        let n = out.len();
        let mut plans = self.plan(out).await?;
        if plans.len() == 1 {
            // One queue (every single send): no concurrency to arrange.
            let done = match plans.pop() {
                Some(p) => self.send_queue(p).await,
                None => Ok(Vec::new()),
            };
            self.bump();
            return Ok(done?.into_iter().map(|(_, r)| r).collect());
        }
        let mut results: Vec<Option<PutResult>> = vec![None; n];
        let mut sends = stream::iter(plans.into_iter().map(|p| self.send_queue(p)))
            .buffer_unordered(MAX_PARALLEL_QUEUES);
        let mut failed = None;
        while let Some(done) = sends.next().await {
            match done {
                Ok(rs) => {
                    for (i, r) in rs {
                        if let Some(slot) = results.get_mut(i) {
                            *slot = Some(r);
                        }
                    }
                }
                // The other queues' sends still finish: a send is not
                // cancelled halfway because another queue failed.
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        self.bump();
        if let Some(e) = failed {
            return Err(e);
        }
        results
            .into_iter()
            .map(|r| r.ok_or(Error::Closed))
            .collect()
    }

    /// Groups `out` by topic and queue, in input order.
    async fn plan(&self, out: Vec<Outgoing>) -> Result<Vec<QueuePlan>> {
        let mut plans: Vec<QueuePlan> = Vec::new();
        // Topic → (route, the queue its round-robin messages share).
        let mut topics: HashMap<String, (Arc<Route>, Option<usize>)> = HashMap::new();
        for (i, o) in out.into_iter().enumerate() {
            if !topics.contains_key(&o.msg.topic) {
                let route = self.route_or_create(&o.msg.topic).await?;
                topics.insert(o.msg.topic.clone(), (route, None));
            }
            let Some((route, rr_q)) = topics.get_mut(&o.msg.topic) else {
                return Err(Error::UnknownTopic(o.msg.topic));
            };
            let queues = route.queues.len() as u16;
            let q = match (&o.select, *rr_q) {
                (QueueSelect::RoundRobin, Some(q)) => q,
                (sel, _) => {
                    let q = usize::from(sel.pick(&o.msg.topic, queues, &self.rr)?);
                    if matches!(sel, QueueSelect::RoundRobin) {
                        *rr_q = Some(q);
                    }
                    q
                }
            };
            let bytes = o.msg.body.len();
            let plan = match plans
                .iter_mut()
                .position(|p| p.q == q && p.topic == o.msg.topic)
            {
                Some(at) => &mut plans[at],
                None => {
                    plans.push(QueuePlan {
                        topic: o.msg.topic.clone(),
                        q,
                        route: route.clone(),
                        runs: Vec::new(),
                        last_bytes: 0,
                    });
                    let last = plans.len() - 1;
                    &mut plans[last]
                }
            };
            plan.add(i, o, bytes);
        }
        Ok(plans)
    }

    /// One queue's runs, in order; stops at the first failure.
    async fn send_queue(&self, plan: QueuePlan) -> Result<Vec<(usize, PutResult)>> {
        let mut done = Vec::new();
        for run in plan.runs {
            let (idx, run): (Vec<usize>, Vec<Outgoing>) = run.into_iter().unzip();
            let rs = self.send_run(&plan.route, plan.q, run).await?;
            done.extend(idx.into_iter().zip(rs));
        }
        Ok(done)
    }

    /// One message alone, or a batch of messages of one topic and queue.
    async fn send_run(
        &self,
        route: &Route,
        q: usize,
        run: Vec<Outgoing>,
    ) -> Result<Vec<PutResult>> {
        let Some(topic) = run.first().map(|o| o.msg.topic.clone()) else {
            return Ok(Vec::new());
        };
        let Some(queue) = route.queues.get(q) else {
            return Err(Error::UnknownTopic(topic));
        };
        let mq = queue.mq(&topic);
        let ids: Vec<Uuid> = run.iter().map(|o| o.id).collect();
        let mut msgs = Vec::with_capacity(run.len());
        for o in run {
            msgs.push(to_rocketmq(o.msg, &o.id, o.deliver_at_ms)?);
        }
        let producer = &self.client.producer;
        let res = if msgs.len() == 1 {
            let m = msgs.pop().ok_or(Error::Closed)?;
            send_to_queue(producer, "send", m, &mq).await?
        } else {
            // As in `send_to_queue`: a copy per try.
            busy::retry("send a batch", Call::Send, || {
                producer.send_batch_to_queue(msgs.clone(), mq.clone())
            })
            .await
            .map_err(|e| remote("send a batch", &e))?
        };
        let stored_ms = now_ms();
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| PutResult {
                id,
                queue: q as u16,
                queue_offset: res.queue_offset + i as u64,
                log_pos: 0,
                stored_ms,
            })
            .collect())
    }
}

/// Sends one message to `mq`, again while the broker is busy (busy.rs).
/// Each try sends a copy: the client takes the message and hands nothing
/// back when the broker refuses it. (Against a 1–2 ms round trip, the
/// first copy costs microseconds.)
pub(crate) async fn send_to_queue(
    producer: &DefaultMQProducer,
    op: &'static str,
    m: RmqMessage,
    mq: &MessageQueue,
) -> Result<SendResult> {
    let r = busy::retry(op, Call::Send, || {
        producer.send_to_queue(m.clone(), mq.clone())
    })
    .await;
    sent(op, r)
}
