//! The router's path through the store: records read kept encoded, and
//! copies of them appended straight from those bytes (`record/encoded.rs`
//! says why). Each is the twin of a general path (`read_from`,
//! `put_copies`) and keeps its guarantees.

use std::sync::Arc;

use super::{select_queue, Prepared};
use crate::error::{DecodeError, Error, Result};
use crate::keys::KeyHashes;
use crate::record::{self, CopyOf, Message, Records};
use crate::store::{PutResult, Store, Topic};

impl Store {
    /// The records of the next `max` offsets of a queue from `from` on, in
    /// offset order, verified and kept encoded; with `originals`, copies
    /// ([`crate::Kept::Copy`]) are skipped without reading them (`Records::end`
    /// says where the next read starts). Offsets below the retained range
    /// are skipped, as [`Store::read_from`] does.
    pub fn read_records(
        &self,
        topic: &str,
        queue: u16,
        from: u64,
        max: usize,
        originals: bool,
    ) -> Result<Records> {
        let mut start = from;
        let mut entries = self.entries(topic, queue, start, max)?;
        // Only a reader that fell behind retention pays for the search of
        // the first retained offset.
        if entries
            .first()
            .is_some_and(|e| e.log_pos < self.log.min_pos())
        {
            let (min, _) = self.queue_range(topic, queue)?;
            start = from.max(min);
            entries = self.entries(topic, queue, start, max)?;
        }
        // Entries are consecutive offsets from `start`.
        let end = start + entries.len() as u64;
        if originals {
            entries.retain(|e| !e.copy);
        }
        let bytes = entries.iter().map(|e| e.size as usize).sum();
        let mut out = Records::with_capacity(entries.len(), bytes);
        // Past `from` even when nothing is retained beyond the expired
        // offsets, so the reader moves on instead of asking again.
        if end > from {
            out.set_end(end);
        }
        let mut buf = Vec::new();
        for e in &entries {
            self.log.read(e.log_pos, e.size as usize, &mut buf)?;
            match out.push(&buf, e.log_pos) {
                Ok(()) => {}
                // A commit sharing its half's body: pushed whole, so the
                // batch stands on its own.
                Err(DecodeError::BodyElsewhere(_)) => {
                    let (mut m, at) = super::super::read::decode_at(&buf, e.log_pos)?;
                    if let Some(at) = at {
                        self.fill_body(&mut m, at)?;
                    }
                    out.push_stored(m)?
                }
                Err(why) => {
                    return Err(Error::Corrupt {
                        pos: e.log_pos,
                        why,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Stores copies of records read elsewhere, each keeping its source's
    /// id, in order, with one write and one durability wait: what
    /// [`Store::put_copies`] does, without an owned message per copy.
    pub async fn put_record_copies(&self, copies: &[CopyOf<'_>]) -> Result<Vec<PutResult>> {
        let mut prepared = Vec::with_capacity(copies.len());
        let mut last = None;
        for c in copies {
            prepared.push(self.prepare_copy(c, &mut last)?);
        }
        let mut results = Vec::with_capacity(prepared.len());
        let appended = self.encode_and_append(
            prepared,
            // `prepared` is `copies`, one for one.
            |i, p, buf| {
                if let Some(c) = copies.get(i) {
                    c.encode_unsealed(p.len, buf);
                }
            },
            |r| results.push(r),
        )?;
        self.finish(appended).await?;
        Ok(results)
    }

    /// `prepare` for a copy; `last` caches the previous copy's topic.
    fn prepare_copy(&self, c: &CopyOf<'_>, last: &mut Option<Arc<Topic>>) -> Result<Prepared> {
        let size = c.source.body().len();
        if size > self.cfg.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size,
                max: self.cfg.max_message_bytes,
            });
        }
        let len = c.encoded_len()?;
        let topic = match last.as_ref().filter(|t| t.name == c.topic) {
            Some(t) => t.clone(),
            None => {
                let t = self.topic(c.topic)?;
                *last = Some(t.clone());
                t
            }
        };
        let queue = select_queue(&topic, c.topic, &c.select)?;
        Ok(Prepared {
            // Already encoded: the key index needs only the key hashes, so
            // the message itself stays empty.
            msg: Message::default(),
            keys: KeyHashes::of_iter(topic.crc, &topic.name, c.source.keys()),
            tag_hash: record::tag_hash(c.source.tag()),
            topic: Some(topic),
            queue,
            len,
            keep_id: Some(c.source.id()),
            copy: true,
            body_at: None,
            whole_len: len,
        })
    }
}
