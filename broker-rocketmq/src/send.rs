//! Sends: single, batched (runs of one topic and queue per RocketMQ batch),
//! copies that keep their ids, and delayed messages (the broker's timer).

use std::sync::Arc;

use cellgate_broker_core::{message_id, now_ms, Error, Message, PutResult, QueueSelect, Result};
use uuid::Uuid;

use crate::client::Route;
use crate::convert::to_rocketmq;
use crate::error::remote;
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

// === impl RocketMqBroker: sends ===

impl RocketMqBroker {
    /// Sends `out` in order. Consecutive messages of one topic and queue
    /// (and no delay) go as one RocketMQ batch; results keep input order.
    /// Queues are picked as the embedded broker picks them
    /// ([`QueueSelect::pick`]), so a sharding key keeps its queue number
    /// on either backend.
    pub(crate) async fn send_all(&self, out: Vec<Outgoing>) -> Result<Vec<PutResult>> {
        let mut results = Vec::with_capacity(out.len());
        let mut run: Vec<Outgoing> = Vec::new();
        // The run's queue and route; the route is looked up once per topic
        // change, not per message.
        let mut at: Option<(usize, Arc<Route>)> = None;
        for o in out {
            let same_topic = run.last().is_some_and(|l| l.msg.topic == o.msg.topic);
            let route = match (&at, same_topic) {
                (Some((_, r)), true) => r.clone(),
                _ => self.route_or_create(&o.msg.topic).await?,
            };
            let q = usize::from(o.select.pick(
                &o.msg.topic,
                route.queues.len() as u16,
                &self.rr,
            )?);
            let joins = same_topic
                && o.deliver_at_ms.is_none()
                && run.last().is_some_and(|l| l.deliver_at_ms.is_none())
                && at.as_ref().is_some_and(|(rq, _)| *rq == q);
            if !joins {
                if let Some((rq, rr)) = at.take() {
                    results.extend(self.send_run(&rr, rq, std::mem::take(&mut run)).await?);
                }
            }
            at = Some((q, route));
            run.push(o);
        }
        if let Some((rq, rr)) = at {
            results.extend(self.send_run(&rr, rq, run).await?);
        }
        self.bump();
        Ok(results)
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
        for o in &run {
            msgs.push(to_rocketmq(&o.msg, &o.id, o.deliver_at_ms)?);
        }
        let res = if msgs.len() == 1 {
            let m = msgs.pop().ok_or(Error::Closed)?;
            self.client
                .producer
                .send_to_queue(m, mq)
                .await
                .map_err(|e| remote("send", &e))?
                .ok_or(Error::Remote {
                    op: "send",
                    detail: "the client returned no send result".into(),
                })?
        } else {
            self.client
                .producer
                .send_batch_to_queue(msgs, mq)
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
