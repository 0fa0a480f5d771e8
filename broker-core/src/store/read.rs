//! The read side: index entries, records, lookups. Every read that
//! wants the newest entries first catches dispatch up (see `dispatch.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use super::Store;
use crate::cq::{ConsumeQueue, Entry};
use crate::error::{Error, Result};
use crate::record::{self, BodyAt, StoredMessage};

/// Decodes the record at the start of `buf`, read at `pos`.
pub(super) fn decode_at(buf: &[u8], pos: u64) -> Result<(StoredMessage, Option<BodyAt>)> {
    record::decode_parts(buf, pos).map_err(|why| Error::Corrupt { pos, why })
}

impl Store {
    /// A receiver of the dispatched position: it changes whenever new
    /// messages become readable (long polls wait on it).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.dispatch.dispatched.subscribe()
    }

    /// Every topic with its queue count, sorted by name.
    pub fn topic_list(&self) -> Result<Vec<(String, u16)>> {
        let topics = self.topics.read().map_err(|_| Error::Closed)?;
        let mut out: Vec<(String, u16)> = topics
            .iter()
            .map(|(n, t)| (n.clone(), t.queues.len() as u16))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Up to `max` messages of a queue from offset `from` on (offsets below
    /// the retained range are skipped), in offset order.
    pub fn read_from(
        &self,
        topic: &str,
        queue: u16,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        let (min, _) = self.queue_range(topic, queue)?;
        let entries = self.entries(topic, queue, from.max(min), max)?;
        entries.iter().map(|e| self.read(e)).collect()
    }

    /// The readable offsets of a queue: `[min, max)`.
    pub fn queue_range(&self, topic: &str, queue: u16) -> Result<(u64, u64)> {
        let q = self.queue(topic, queue)?;
        self.dispatch.catch_up()?;
        let len = q.len();
        let min_pos = self.log.min_pos();
        // The first entry whose record is still retained.
        let (mut lo, mut hi) = (0u64, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match q.get(mid)? {
                Some(e) if e.log_pos < min_pos => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok((lo, len))
    }

    fn queue(&self, topic: &str, queue: u16) -> Result<Arc<ConsumeQueue>> {
        let topics = self.topics.read().map_err(|_| Error::Closed)?;
        let t = topics
            .get(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        t.queues
            .get(usize::from(queue))
            .cloned()
            .ok_or(Error::UnknownQueue {
                topic: topic.to_owned(),
                queue,
                queues: t.queues.len() as u16,
            })
    }

    /// Up to `max` index entries of a queue from `from`.
    pub fn entries(&self, topic: &str, queue: u16, from: u64, max: usize) -> Result<Vec<Entry>> {
        let q = self.queue(topic, queue)?;
        let len = q.len();
        if from.saturating_add(max as u64) > len && q.assigned.load(Ordering::Acquire) > len {
            // Asked past the dispatched end of a queue that has more.
            self.dispatch.catch_up()?;
        }
        q.range(from, max)
    }

    /// The first offset stored at or after `ms`.
    pub fn offset_at_time(&self, topic: &str, queue: u16, ms: i64) -> Result<u64> {
        let q = self.queue(topic, queue)?;
        self.dispatch.catch_up()?;
        q.offset_at_time(ms)
    }

    /// Reads and verifies the record an entry points at.
    pub fn read(&self, e: &Entry) -> Result<StoredMessage> {
        self.read_at(e.log_pos, e.size as usize)
    }

    /// The record of `size` bytes at `pos`, with its body read from where
    /// it is kept (`record/shared_body.rs`).
    pub(super) fn read_at(&self, pos: u64, size: usize) -> Result<StoredMessage> {
        let mut buf = Vec::new();
        self.log.read(pos, size, &mut buf)?;
        let (mut m, body_at) = decode_at(&buf, pos)?;
        if let Some(at) = body_at {
            self.fill_body(&mut m, at)?;
        }
        Ok(m)
    }

    /// The whole record at `pos`, whatever its size, decoded; a body kept
    /// elsewhere is not read yet (a lookup reads it only for a match).
    fn read_unsized(&self, pos: u64) -> Result<(StoredMessage, Option<BodyAt>)> {
        let mut buf = Vec::new();
        self.read_unsized_into(pos, &mut buf)?;
        decode_at(&buf, pos)
    }

    /// Reads the whole record at `pos`, whatever its size, into `buf`.
    fn read_unsized_into(&self, pos: u64, buf: &mut Vec<u8>) -> Result<()> {
        self.log.read(pos, 4, buf)?;
        match record::frame(buf, self.cfg.log.segment_bytes as usize) {
            Ok(record::Frame::Record(n)) => self.log.read(pos, n, buf),
            Ok(_) => Err(Error::OutOfRange {
                pos,
                min: self.log.min_pos(),
                max: self.log.durable(),
            }),
            Err(why) => Err(Error::Corrupt { pos, why }),
        }
    }

    /// Reads `m`'s body from the record `at` names. The format's invariant
    /// is checked (an earlier record of the same segment, holding its body
    /// itself, with the same message id: a commit and its half share the
    /// transaction id), so a damaged or stray reference is an error, never
    /// another message's body.
    pub(super) fn fill_body(&self, m: &mut StoredMessage, at: BodyAt) -> Result<()> {
        let bad = |why| Error::BadBodyRef {
            pos: m.log_pos,
            at: at.pos,
            why,
        };
        if at.pos >= m.log_pos || self.log.segment_base(at.pos) != self.log.segment_base(m.log_pos)
        {
            return Err(bad("not an earlier record of the same segment"));
        }
        let mut buf = Vec::new();
        self.read_unsized_into(at.pos, &mut buf)?;
        let (id, body) =
            record::body_of(&buf).map_err(|why| Error::Corrupt { pos: at.pos, why })?;
        if id != m.id {
            return Err(bad("the record there is another message's"));
        }
        if body.len() != at.len as usize {
            return Err(bad("the body there has another length"));
        }
        m.body = body.to_vec();
        Ok(())
    }

    /// Log positions the key index holds for a lookup, once dispatch has
    /// caught up (hash candidates: the caller checks the records).
    fn candidates(
        &self,
        find: impl FnOnce(&crate::keys::KeyIndex) -> Vec<u64>,
    ) -> Result<Vec<u64>> {
        self.dispatch.catch_up()?;
        let keys = self.dispatch.keys.lock().map_err(|_| Error::Closed)?;
        Ok(find(&keys))
    }

    /// The oldest retained message with `id`.
    pub fn get_by_id(&self, id: &Uuid) -> Result<Option<StoredMessage>> {
        Ok(self.get_all_by_id(id)?.into_iter().next())
    }

    /// Every retained record carrying `id`, oldest first: a delayed or
    /// transactional message is held in an internal topic and then stored
    /// in its own, under the same id.
    pub fn get_all_by_id(&self, id: &Uuid) -> Result<Vec<StoredMessage>> {
        let cands = self.candidates(|k| k.by_id(id))?;
        self.matching(cands, |m| m.id == *id)
    }

    /// The message at `offset` of a queue, if retained.
    pub fn read_offset(
        &self,
        topic: &str,
        queue: u16,
        offset: u64,
    ) -> Result<Option<StoredMessage>> {
        match self.entries(topic, queue, offset, 1)?.first() {
            Some(e) => self.read(e).map(Some),
            None => Ok(None),
        }
    }

    /// The oldest `max` retained messages of a topic stored in
    /// `[from_ms, to_ms)`, by store time: a binary search of each queue's
    /// index by store time, then a forward read of at most `max` per queue.
    pub fn query_by_time(
        &self,
        topic: &str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>> {
        let queues = self
            .queues(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        let mut out = Vec::new();
        for q in 0..queues {
            let (min, end) = self.queue_range(topic, q)?;
            let mut at = self.offset_at_time(topic, q, from_ms)?.max(min);
            let mut taken = 0;
            'queue: while at < end && taken < max {
                let entries = self.entries(topic, q, at, 64)?;
                if entries.is_empty() {
                    break;
                }
                for e in entries {
                    at += 1;
                    if e.stored_ms >= to_ms {
                        break 'queue;
                    }
                    out.push(self.read(&e)?);
                    taken += 1;
                    if taken >= max {
                        break 'queue;
                    }
                }
            }
        }
        out.sort_by_key(|m| (m.stored_ms, m.log_pos));
        out.truncate(max);
        Ok(out)
    }

    /// Retained messages of `topic` carrying `key`, oldest first.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Result<Vec<StoredMessage>> {
        let cands = self.candidates(|k| k.by_key(topic, key))?;
        self.matching(cands, |m| {
            m.topic == topic && m.keys.iter().any(|k| k == key)
        })
    }

    /// The records at the index's candidate positions that `is` accepts,
    /// oldest first. A candidate that cannot be read is skipped (a hash
    /// collision, or a position retention removed); a match whose body
    /// cannot be read is an error, not a message silently missing.
    fn matching(
        &self,
        cands: Vec<u64>,
        is: impl Fn(&StoredMessage) -> bool,
    ) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for pos in cands {
            let Ok((mut m, body_at)) = self.read_unsized(pos) else {
                continue;
            };
            if is(&m) {
                if let Some(at) = body_at {
                    self.fill_body(&mut m, at)?;
                }
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.log_pos);
        Ok(out)
    }
}
