//! Reads outside consumer groups: by offset (the router's read), by time,
//! by id and by key; and the topic list.

use cellgate_broker_core::{Error, Result, StoredMessage};
use rocketmq_model::common::boundary_type::BoundaryType;
use rocketmq_model::result::PullStatus;
use rocketmq_protocol::protocol::header::pull_message_request_header::PullMessageRequestHeader;

use crate::client::{QueueRef, Route};
use crate::convert::{from_rocketmq, id_string, released_ms};
use crate::error::{remote, response_code, NO_MESSAGE, QUERY_NOT_FOUND, TOPIC_NOT_EXIST};
use crate::{now_ms, RocketMqBroker};

/// Pull's `sysFlag`: the request carries its subscription expression.
const FLAG_SUBSCRIPTION: i32 = 4;
/// The most messages one pull returns (the broker's default cap).
const PULL_MAX: usize = 32;
/// Offsets a replay's read starts before the broker's answer to "the
/// first offset stored at or after this time".
const SEARCH_MARGIN: u64 = 256;
/// The consumer group cellgate's own reads pull as; it never commits.
pub(crate) const READER_GROUP: &str = "CELLGATE_READER";

/// One pull's outcome: the messages and the next offset.
pub(crate) struct Pulled {
    pub messages: Vec<StoredMessage>,
    pub next: u64,
    /// Of `messages`, those the broker's timer released (id, release time).
    pub released: Vec<(uuid::Uuid, i64)>,
}

/// RocketMQ's own topics, the names the name server lists beside topics
/// (clusters, brokers), and the backend's bookkeeping (retry topics,
/// journals): never cellgate's topics.
fn is_system_topic(t: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "RMQ_SYS_",
        "rmq_sys_",
        "TBW102",
        "SCHEDULE_TOPIC",
        "TRANS_",
        "%RETRY%",
        "%DLQ%",
    ];
    PREFIXES.iter().any(|p| t.starts_with(p))
        || !t.contains('%')
        || t.contains("%RETRY%")
        || t.contains("%STATE%")
}

// === impl RocketMqBroker: reads ===

impl RocketMqBroker {
    /// One pull of queue `q` of `topic` from `from`, as `group`, filtered
    /// by the tag expression `tags` on the broker.
    pub(crate) async fn pull(
        &self,
        group: &str,
        topic: &str,
        q: (usize, &QueueRef),
        from: u64,
        max: usize,
        tags: &str,
    ) -> Result<Pulled> {
        let (index, queue) = q;
        let req = PullMessageRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id: queue.queue_id,
            queue_offset: from as i64,
            max_msg_nums: max.min(PULL_MAX) as i32,
            sys_flag: FLAG_SUBSCRIPTION,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            sub_version: 0,
            subscription: Some(tags.into()),
            expression_type: Some("TAG".into()),
            topic_request: queue.topic_header(),
            ..Default::default()
        };
        let out = crate::busy::retry("pull", crate::busy::Call::Repeatable, || {
            self.client.handle().pull_outcome_from_broker(
                queue.addr.as_str(),
                req.clone(),
                self.client.cfg.timeout_ms,
            )
        })
        .await
        .map_err(|e| remote("pull", &e))?;
        let next = out.next_begin_offset();
        match out.pull_status() {
            PullStatus::Found => {
                let raw = out.into_messages().unwrap_or_default();
                let mut released = Vec::new();
                let mut messages = Vec::with_capacity(raw.len());
                for m in &raw {
                    let sm = from_rocketmq(m, index as u16);
                    if let Some(at) = released_ms(m) {
                        released.push((sm.id, at));
                    }
                    messages.push(sm);
                }
                Ok(Pulled {
                    messages,
                    next,
                    released,
                })
            }
            PullStatus::NoNewMsg | PullStatus::NoMatchedMsg => Ok(Pulled {
                messages: Vec::new(),
                next: next.max(from),
                released: Vec::new(),
            }),
            // Below the oldest retained message: go on from there. Above
            // the newest: stay where the queue ends.
            PullStatus::OffsetIllegal => Ok(Pulled {
                messages: Vec::new(),
                next,
                released: Vec::new(),
            }),
        }
    }

    /// Up to `max` messages of queue `queue` from `from` on, pulling until
    /// `max` or the end of the queue.
    pub(crate) async fn read_queue(
        &self,
        topic: &str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        let route = self.client.route(topic).await?;
        let q = route
            .queues
            .get(usize::from(queue))
            .ok_or_else(|| Error::UnknownQueue {
                topic: topic.to_owned(),
                queue,
                queues: route.queues.len() as u16,
            })?;
        let mut out = Vec::new();
        let mut at = from;
        while out.len() < max {
            let p = self
                .pull(
                    READER_GROUP,
                    topic,
                    (usize::from(queue), q),
                    at,
                    max - out.len(),
                    "*",
                )
                .await?;
            let got = p.messages.len();
            out.extend(p.messages);
            if got == 0 && p.next != at && out.is_empty() {
                // An offset below the retained range: skip to the oldest.
                at = p.next;
                continue;
            }
            at = p.next;
            if got == 0 || got < PULL_MAX {
                break;
            }
        }
        Ok(out)
    }

    /// Every cellgate topic of the cluster with its queue count. The list
    /// is the name server's; a topic whose route fails is left out (it is
    /// being created or deleted).
    pub(crate) async fn topic_list(&self) -> Result<Vec<(String, u16)>> {
        let mut out = Vec::new();
        for t in self.client.topic_names().await? {
            if is_system_topic(&t) {
                continue;
            }
            if let Ok(r) = self.client.route(&t).await {
                out.push((t, r.queues.len() as u16));
            }
        }
        Ok(out)
    }

    /// The first offset of each queue stored at or after `ms`.
    pub(crate) async fn offsets_at(&self, topic: &str, route: &Route, ms: i64) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(route.queues.len());
        for q in &route.queues {
            let off = self
                .client
                .handle()
                .search_offset(
                    q.addr.as_str(),
                    &q.mq(topic),
                    ms,
                    BoundaryType::Lower,
                    self.client.cfg.timeout_ms,
                )
                .await
                .map_err(|e| remote("search an offset by time", &e))?;
            out.push(off.max(0) as u64);
        }
        Ok(out)
    }

    /// The offset queue `qr` of `topic` will give its next message.
    pub(crate) async fn max_offset(&self, topic: &str, qr: &QueueRef) -> Result<u64> {
        let off = self
            .client
            .handle()
            .max_offset(qr.addr.as_str(), &qr.mq(topic), self.client.cfg.timeout_ms)
            .await
            .map_err(|e| remote("read a queue's newest offset", &e))?;
        Ok(off.max(0) as u64)
    }

    /// The oldest `max` messages stored in `[from_ms, to_ms)`.
    pub(crate) async fn by_time(
        &self,
        topic: &str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        let route = self.client.route(topic).await?;
        let starts = self.offsets_at(topic, &route, from_ms).await?;
        let mut found = Vec::new();
        for (i, start) in starts.into_iter().enumerate() {
            let mut at = start;
            'queue: loop {
                let got = self.read_queue(topic, i as u16, at, PULL_MAX).await?;
                let Some(last) = got.last() else { break };
                at = last.queue_offset + 1;
                for m in got {
                    if m.stored_ms >= to_ms || found.len() >= max * 2 {
                        break 'queue;
                    }
                    if m.stored_ms >= from_ms {
                        found.push(m);
                    }
                }
            }
        }
        found.sort_by_key(|m| (m.stored_ms, m.id));
        found.truncate(max);
        Ok(found)
    }

    /// Those of `ids` in `topic`, read from the queues themselves over
    /// the stored-time window `[since_ms, until_ms]`
    /// ([`cellgate_broker_core::Broker::find_ids`]): the key index can
    /// miss an entry (docs/rocketmq.md, "Replays read the destination"),
    /// and a miss there is a duplicate copy. Reads each queue until a
    /// margin of messages past the window's end (or its end as of now), or
    /// until every id is found.
    pub(crate) async fn find_ids(
        &self,
        topic: &str,
        ids: &[uuid::Uuid],
        (since_ms, until_ms): (i64, i64),
    ) -> Result<Vec<StoredMessage>> {
        let mut wanted: std::collections::HashSet<uuid::Uuid> = ids.iter().copied().collect();
        let mut found = Vec::new();
        if wanted.is_empty() {
            return Ok(found);
        }
        let route = match self.client.route(topic).await {
            Ok(r) => r,
            // No such topic here: it holds no copy.
            Err(Error::UnknownTopic(_)) => return Ok(found),
            Err(e) => return Err(e),
        };
        let starts = self.offsets_at(topic, &route, since_ms).await?;
        for ((q, start), qr) in starts.into_iter().enumerate().zip(&route.queues) {
            // A little before the time search's answer: that search is
            // the broker's, over store times, and a miss here is a copy
            // sent twice.
            let mut at = start.saturating_sub(SEARCH_MARGIN);
            // Up to the end as of now: what is stored later is not a copy
            // the caller asks about, and a busy queue would never be done.
            let end = self.max_offset(topic, qr).await?;
            // And no further than a margin past the window's end, judged
            // by the messages read (not by a time search, whose failure
            // answers 0: here that would cut copies off).
            let mut past = 0;
            while at < end && !wanted.is_empty() && past < SEARCH_MARGIN {
                let got = self.read_queue(topic, q as u16, at, PULL_MAX).await?;
                let Some(last) = got.last() else { break };
                at = last.queue_offset + 1;
                past += got.iter().filter(|m| m.stored_ms > until_ms).count() as u64;
                found.extend(got.into_iter().filter(|m| wanted.remove(&m.id)));
            }
        }
        // What the queues did not show, the key index may: a copy counts
        // as there if either finds it. Each has been seen to miss (the
        // index single entries; the reads once a whole batch, cause not
        // known: docs/rocketmq.md), and the ids left are few (the router
        // stops asking a batch past the first missing copy).
        for id in wanted {
            if let Some(m) = self.by_id(topic, &id).await? {
                found.extend((m.topic == topic).then_some(m));
            }
        }
        Ok(found)
    }

    /// A message by id in `topic`, through the key index (every message
    /// has its id among its keys).
    pub(crate) async fn by_id(
        &self,
        topic: &str,
        id: &uuid::Uuid,
    ) -> Result<Option<StoredMessage>> {
        let found = self.query_key(topic, &id_string(id)).await?;
        Ok(found.into_iter().find(|m| m.id == *id))
    }

    /// Messages of `topic` with key `key` (the broker's index catches up
    /// within about a second of a send).
    pub(crate) async fn by_key(&self, topic: &str, key: &str) -> Result<Vec<StoredMessage>> {
        let mut out = self.query_key(topic, key).await?;
        out.retain(|m| m.keys.iter().any(|k| k == key));
        Ok(out)
    }

    /// What the key index holds for `key` (ids included), oldest first.
    async fn query_key(&self, topic: &str, key: &str) -> Result<Vec<StoredMessage>> {
        let res = self
            .client
            .admin
            .lock()
            .await
            .query_message(topic, key, 64, 0, (now_ms() + 1000) as u64)
            .await;
        let res = match res {
            Ok(r) => r,
            // Nothing under the key, or no such topic (yet): not found.
            Err(e)
                if matches!(
                    response_code(&e),
                    Some(NO_MESSAGE | TOPIC_NOT_EXIST | QUERY_NOT_FOUND)
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(remote("query by key", &e).into()),
        };
        let mut out = Vec::new();
        for ext in res.message_list() {
            let queue = self
                .queue_index(topic, ext.broker_name(), ext.queue_id())
                .await;
            out.push(from_rocketmq(ext, queue));
        }
        out.sort_by_key(|m| (m.stored_ms, m.id));
        Ok(out)
    }

    /// cellgate's queue number of RocketMQ queue (`broker`, `queue_id`).
    async fn queue_index(&self, topic: &str, broker: &str, queue_id: i32) -> u16 {
        let Ok(route) = self.client.route(topic).await else {
            return queue_id.max(0) as u16;
        };
        route
            .queues
            .iter()
            .position(|q| q.broker_name.as_str() == broker && q.queue_id == queue_id)
            .unwrap_or(queue_id.max(0) as usize) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::is_system_topic;

    #[test]
    fn rocketmq_topics_and_cluster_names_are_not_cellgate_topics() {
        for t in [
            "TBW102",
            "RMQ_SYS_TRACE_TOPIC",
            "%RETRY%ANT|RZ00A%G1",
            "ANT|RZ00A%G1%STATE%ANT|RZ00A%T1",
            "%DLQ%x",
            "CellgateTest",
            "broker-a",
        ] {
            assert!(is_system_topic(t), "{t}");
        }
        assert!(!is_system_topic("ANT|RZ00A%T1"));
    }
}
