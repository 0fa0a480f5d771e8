//! The embedded broker's synchronous calls. The [`Broker`] impl in the
//! parent module wraps each in a ready future; tests and tools call them
//! directly (inherent methods win over the trait's of the same name).

use super::*;

// === impl EmbeddedBroker: the synchronous calls ===

/// The calls the embedded broker answers at once; the [`Broker`] impl wraps
/// them in ready futures. Tests and tools call them directly.
impl EmbeddedBroker {
    pub fn create_topic(&self, topic: &str, queues: u16) -> Result<()> {
        self.store.create_topic(topic, queues)
    }

    pub fn ack(&self, group: &str, topic: &str, mode: &ConsumeMode, receipt: &str) -> Result<()> {
        self.settle(group, topic, mode, receipt, true)
    }

    pub fn nack(&self, group: &str, topic: &str, mode: &ConsumeMode, receipt: &str) -> Result<()> {
        self.settle(group, topic, mode, receipt, false)
    }

    pub fn reset_to_time(
        &self,
        group: &str,
        topic: &str,
        mode: &ConsumeMode,
        ms: i64,
    ) -> Result<()> {
        let queues = self
            .store
            .queues(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        let offsets = (0..queues)
            .map(|q| self.store.offset_at_time(topic, q, ms))
            .collect::<Result<Vec<_>>>()?;
        self.groups
            .with(&group_key(group, mode), topic, queues, |s| {
                for (st, off) in s.iter_mut().zip(offsets) {
                    st.jump_to(off);
                }
            })
    }

    pub fn lag(&self, group: &str, topic: &str, mode: &ConsumeMode) -> Result<Vec<QueueLag>> {
        let queues = self
            .store
            .queues(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        let ranges = (0..queues)
            .map(|q| self.store.queue_range(topic, q))
            .collect::<Result<Vec<_>>>()?;
        self.groups
            .with(&group_key(group, mode), topic, queues, |s| {
                s.iter()
                    .zip(ranges)
                    .enumerate()
                    .map(|(q, (st, (min, max)))| {
                        let committed = st.committed.max(min);
                        let done = st.done.range(committed..).count() as u64;
                        QueueLag {
                            queue: q as u16,
                            committed,
                            max,
                            lag: max.saturating_sub(committed).saturating_sub(done),
                            inflight: st.inflight.len(),
                        }
                    })
                    .collect()
            })
    }

    /// Those of `ids` stored in `topic` itself: one broker can hold a
    /// message and its copies (a takeover serves another cell's topics),
    /// all under one id.
    pub fn find_ids(&self, topic: &str, ids: &[Uuid]) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for id in ids {
            let all = self.store.get_all_by_id(id)?;
            out.extend(all.into_iter().filter(|m| m.topic == topic));
        }
        Ok(out)
    }

    /// The message as consumers see it; one still held (delayed, or a half
    /// message) is shown under its destination topic with `__STATE`
    /// `scheduled` or `transaction_half`.
    pub fn get_by_id(&self, id: &Uuid) -> Result<Option<StoredMessage>> {
        let mut all = self.store.get_all_by_id(id)?;
        if let Some(i) = all.iter().rposition(|m| !m.topic.starts_with('%')) {
            return Ok(Some(all.swap_remove(i)));
        }
        let Some(mut m) = all.into_iter().next() else {
            return Ok(None);
        };
        let state = match m.topic.as_str() {
            crate::timer::SCHEDULE_TOPIC => "scheduled",
            crate::txn::HALF_TOPIC => "transaction_half",
            _ => return Ok(Some(m)),
        };
        if let Some(real) = m.properties.remove(crate::timer::REAL_TOPIC) {
            m.topic = real;
        }
        m.properties.remove(crate::timer::REAL_QUEUE);
        m.properties.remove(crate::txn::PRODUCER_GROUP);
        m.properties.insert("__STATE".into(), state.into());
        Ok(Some(m))
    }

    pub fn get_by_key(&self, topic: &str, key: &str) -> Result<Vec<StoredMessage>> {
        self.store.get_by_key(topic, key)
    }

    pub fn read_records(&self, topic: &str, queue: u16, from: u64, max: usize) -> Result<Records> {
        self.store.read_records(topic, queue, from, max, false)
    }

    pub fn topics(&self) -> Result<Vec<(String, u16)>> {
        self.store.topic_list()
    }

    pub fn read(
        &self,
        topic: &str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.store.read_from(topic, queue, from, max)
    }

    pub fn transaction(&self, id: &Uuid) -> Result<Option<TxnInfo>> {
        self.transaction_info(id)
    }

    pub fn query_by_time(
        &self,
        topic: &str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.store.query_by_time(topic, from_ms, to_ms, max)
    }

    pub fn trace_of(&self, id: &Uuid) -> Result<Vec<Hop>> {
        if self.store.queues(TRACE_TOPIC).is_none() {
            return Ok(Vec::new());
        }
        let mut hops: Vec<Hop> = self
            .store
            .get_by_key(TRACE_TOPIC, &id.to_string())?
            .iter()
            .flat_map(|r| trace::hops_of(&r.body, id))
            .collect();
        hops.sort_by_key(|h| h.at_ms);
        Ok(hops)
    }
}
