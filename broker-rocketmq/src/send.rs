//! Sends: single, batched (runs of one topic and queue per RocketMQ batch),
//! copies that keep their ids, and delayed messages (the broker's timer).

use cellgate_broker_core::{message_id, Error, Message, PutResult, QueueSelect, Result};
use uuid::Uuid;

use crate::convert::to_rocketmq;
use crate::error::remote;
use crate::{now_ms, RocketMqBroker};

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

/// The queue a sharding key maps to. CRC32C: stable across builds and
/// versions, so a key keeps its queue (and its order) across upgrades.
fn key_queue(key: &str, queues: usize) -> usize {
    crc32c::crc32c(key.as_bytes()) as usize % queues
}

// === impl RocketMqBroker: sends ===

impl RocketMqBroker {
    fn pick(&self, select: &QueueSelect, queues: usize) -> Result<usize> {
        match select {
            QueueSelect::RoundRobin => {
                Ok(self.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % queues)
            }
            QueueSelect::ShardingKey(k) => Ok(key_queue(k, queues)),
            QueueSelect::Queue(q) if usize::from(*q) < queues => Ok(usize::from(*q)),
            QueueSelect::Queue(q) => Err(Error::UnknownQueue {
                topic: String::new(),
                queue: *q,
                queues: queues as u16,
            }),
        }
    }

    /// Sends `out` in order. Consecutive messages of one topic and queue
    /// (and no delay) go as one RocketMQ batch; results keep input order.
    pub(crate) async fn send_all(&self, out: Vec<Outgoing>) -> Result<Vec<PutResult>> {
        let mut results = Vec::with_capacity(out.len());
        let mut run: Vec<Outgoing> = Vec::new();
        let mut run_at: Option<(String, usize)> = None;
        for o in out {
            let route = self.route_or_create(&o.msg.topic).await?;
            let q = self
                .pick(&o.select, route.queues.len())
                .map_err(|e| match e {
                    Error::UnknownQueue { queue, queues, .. } => Error::UnknownQueue {
                        topic: o.msg.topic.clone(),
                        queue,
                        queues,
                    },
                    e => e,
                })?;
            let here = (o.msg.topic.clone(), q);
            let joins = o.deliver_at_ms.is_none() && run_at.as_ref() == Some(&here);
            if !joins && !run.is_empty() {
                let (topic, q) = run_at.take().unwrap_or(here.clone());
                results.extend(self.send_run(&topic, q, std::mem::take(&mut run)).await?);
            }
            run_at = Some(here);
            run.push(o);
        }
        if let Some((topic, q)) = run_at {
            results.extend(self.send_run(&topic, q, run).await?);
        }
        self.bump();
        Ok(results)
    }

    /// One message alone, or a batch of messages of one topic and queue.
    async fn send_run(&self, topic: &str, q: usize, run: Vec<Outgoing>) -> Result<Vec<PutResult>> {
        let route = self.route_or_create(topic).await?;
        let Some(queue) = route.queues.get(q) else {
            return Err(Error::UnknownTopic(topic.to_owned()));
        };
        let mq = queue.mq(topic);
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

#[cfg(test)]
mod tests {
    use super::key_queue;

    #[test]
    fn sharding_keys_spread_over_every_queue_and_stay_put() {
        let mut hit = [0u32; 8];
        for i in 0..1000 {
            let k = format!("user-{i}");
            let q = key_queue(&k, 8);
            assert_eq!(key_queue(&k, 8), q);
            hit[q] += 1;
        }
        assert!(hit.iter().all(|&n| n > 60), "{hit:?}");
    }
}
