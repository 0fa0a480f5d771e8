//! Records kept encoded: a batch of verified records in one buffer, read in
//! place, and copies of them encoded straight from those bytes.
//!
//! Why: a router reads a message only to copy it elsewhere. Decoded into a
//! [`StoredMessage`], every string, the property map and the body are
//! allocated, and each copy cloned them again only to encode and free them;
//! that was most of the router's time. Here a batch costs one buffer, a
//! field read is a slice of it, and a copy is the source's sections copied
//! into the new record (keys and body verbatim, the properties merged with
//! the one the copy sets).

use std::fmt;

use uuid::Uuid;

use super::{
    encode, encoded_len, for_each_key, for_each_prop, frame, layout, parse, too_long, Cursor,
    Frame, Message, Parsed, Stamp, StoredMessage, Writer, HEADER, VERSION,
};
use crate::error::{DecodeError, Error};
use crate::store::QueueSelect;

/// Verified records, in one buffer, in the order they were pushed.
#[derive(Debug, Clone, Default)]
pub struct Records {
    buf: Vec<u8>,
    /// Each record's start and length in `buf`, and its log position.
    spans: Vec<(usize, usize, u64)>,
    /// The queue offset after the last one the read looked at, when that
    /// is past the last record (records it skipped: see [`Records::end`]).
    end: Option<u64>,
}

impl Records {
    pub fn new() -> Records {
        Records::default()
    }

    /// Room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Records {
        Records {
            buf: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(records),
            end: None,
        }
    }

    /// Where the next read of the queue starts: past the last record, or
    /// past the records the read skipped after it (a reader of originals
    /// skips copies unread). `None`: nothing read and nothing skipped.
    pub fn end(&self) -> Option<u64> {
        let last = self.len().checked_sub(1).and_then(|i| self.get(i));
        let past_last = last.map(|r| r.queue_offset() + 1);
        past_last.max(self.end)
    }

    /// Records that the read looked at every offset below `end`.
    pub fn set_end(&mut self, end: u64) {
        self.end = Some(end);
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Appends the record at the start of `bytes` (which may hold more
    /// after it), verified exactly as [`super::decode`] verifies it.
    pub fn push(&mut self, bytes: &[u8], log_pos: u64) -> Result<(), DecodeError> {
        let total = match frame(bytes, usize::MAX)? {
            Frame::Record(n) => n,
            Frame::Empty | Frame::EndOfSegment => return Err(DecodeError::Layout),
        };
        let rec = bytes.get(..total).ok_or(DecodeError::Truncated {
            need: total,
            have: bytes.len(),
        })?;
        let p = parse(rec)?;
        // A batch is self-contained: whoever reads it has no log to fetch a
        // body from. The store resolves such records before pushing them.
        if let Some(at) = p.body_at {
            return Err(DecodeError::BodyElsewhere(at.pos));
        }
        // Checked once here, so the walks in `RecordRef` cannot fail.
        for_each_key(p.keys, |_| ())?;
        for_each_prop(p.props, |_, _| ())?;
        self.spans.push((self.buf.len(), total, log_pos));
        self.buf.extend_from_slice(rec);
        Ok(())
    }

    /// Appends `m`, encoded: how a backend that does not store this format
    /// offers its messages as records.
    pub fn push_stored(&mut self, m: StoredMessage) -> Result<(), Error> {
        let stamp = Stamp {
            id: m.id,
            queue: m.queue,
            queue_offset: m.queue_offset,
            stored_ms: m.stored_ms,
        };
        let log_pos = m.log_pos;
        let msg = Message {
            topic: m.topic,
            body: m.body,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties,
            born_ms: m.born_ms,
        };
        let len = encoded_len(&msg)?;
        let start = self.buf.len();
        encode(&msg, &stamp, len, &mut self.buf);
        self.spans.push((start, len, log_pos));
        Ok(())
    }

    /// The `i`-th record.
    pub fn get(&self, i: usize) -> Option<RecordRef<'_>> {
        let &(start, len, log_pos) = self.spans.get(i)?;
        let rec = self.buf.get(start..start + len)?;
        // Verified by `push` (or encoded by us): the layout holds.
        let p = layout(rec).ok()?;
        Some(RecordRef { p, log_pos })
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One verified record, read in place.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    p: Parsed<'a>,
    log_pos: u64,
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("id", &self.p.id)
            .field("topic", &self.p.topic)
            .field("queue", &self.p.queue)
            .field("queue_offset", &self.p.queue_offset)
            .finish_non_exhaustive()
    }
}

impl<'a> RecordRef<'a> {
    pub fn id(&self) -> Uuid {
        self.p.id
    }

    pub fn topic(&self) -> &'a str {
        self.p.topic
    }

    pub fn queue(&self) -> u16 {
        self.p.queue
    }

    pub fn queue_offset(&self) -> u64 {
        self.p.queue_offset
    }

    pub fn log_pos(&self) -> u64 {
        self.log_pos
    }

    pub fn tag(&self) -> Option<&'a str> {
        (!self.p.tag.is_empty()).then_some(self.p.tag)
    }

    pub fn body(&self) -> &'a [u8] {
        self.p.body
    }

    pub fn born_ms(&self) -> i64 {
        self.p.born_ms
    }

    pub fn stored_ms(&self) -> i64 {
        self.p.stored_ms
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut c = Cursor {
            buf: self.p.keys,
            at: 0,
        };
        let n = c.u16().unwrap_or(0);
        (0..n).map_while(move |_| {
            let len = usize::from(c.u16().ok()?);
            c.str(len, "key").ok()
        })
    }

    /// Every property, in name order.
    pub fn properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut c = Cursor {
            buf: self.p.props,
            at: 0,
        };
        let n = c.u16().unwrap_or(0);
        (0..n).map_while(move |_| {
            let klen = usize::from(c.u16().ok()?);
            let k = c.str(klen, "property name").ok()?;
            let vlen = c.u32().ok()? as usize;
            Some((k, c.str(vlen, "property value").ok()?))
        })
    }

    /// The property `name`: a walk of the properties section that compares
    /// names as bytes and stops past where `name` would sort.
    pub fn property(&self, name: &str) -> Option<&'a str> {
        let mut c = Cursor {
            buf: self.p.props,
            at: 0,
        };
        let n = c.u16().ok()?;
        for _ in 0..n {
            let klen = usize::from(c.u16().ok()?);
            let k = c.take(klen).ok()?;
            let vlen = c.u32().ok()? as usize;
            match k.cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => {
                    c.take(vlen).ok()?;
                }
                std::cmp::Ordering::Equal => return c.str(vlen, "property value").ok(),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    /// The message as a producer would hand it over (for a backend that
    /// takes only owned messages).
    pub fn to_message(&self) -> Message {
        Message {
            topic: self.p.topic.to_owned(),
            body: self.p.body.to_vec(),
            tag: self.tag().map(str::to_owned),
            keys: self.keys().map(str::to_owned).collect(),
            properties: self
                .properties()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            born_ms: self.p.born_ms,
        }
    }

    pub fn to_stored(&self) -> StoredMessage {
        let m = self.to_message();
        StoredMessage {
            id: self.p.id,
            topic: m.topic,
            queue: self.p.queue,
            queue_offset: self.p.queue_offset,
            log_pos: self.log_pos,
            body: m.body,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties,
            born_ms: m.born_ms,
            stored_ms: self.p.stored_ms,
        }
    }
}

/// A copy to store: `source` under `topic`, with the property `set.0` set
/// to `set.1` (added, or replacing one of that name); the source's id,
/// body, tag, keys, other properties and born time are kept.
#[derive(Debug, Clone)]
pub struct CopyOf<'a> {
    pub source: RecordRef<'a>,
    pub topic: &'a str,
    pub set: (&'a str, &'a str),
    pub select: QueueSelect,
}

impl CopyOf<'_> {
    /// The copy as an owned message (for a backend that takes only those).
    pub fn to_message(&self) -> Message {
        let mut m = self.source.to_message();
        m.topic = self.topic.to_owned();
        m.properties
            .insert(self.set.0.to_owned(), self.set.1.to_owned());
        m
    }

    /// How `set` merges into the source's properties section (names are
    /// compared as bytes: the section was verified when it was read).
    fn merge(&self) -> Option<Merge> {
        let section = self.source.p.props;
        let (name, value) = self.set;
        let mut c = Cursor {
            buf: section,
            at: 0,
        };
        let count = usize::from(c.u16().ok()?);
        let mut at = c.at;
        let mut replaced = None;
        for _ in 0..count {
            let start = c.at;
            let klen = usize::from(c.u16().ok()?);
            let k = c.take(klen).ok()?;
            let vlen = c.u32().ok()? as usize;
            c.take(vlen).ok()?;
            at = start;
            match k.cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => at = c.at,
                std::cmp::Ordering::Equal => {
                    replaced = Some(c.at);
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let entry = 6 + name.len() + value.len();
        let removed = replaced.map_or(0, |end| end - at);
        Some(Merge {
            at,
            resume: replaced.unwrap_or(at),
            count: count + usize::from(replaced.is_none()),
            len: section.len() + entry - removed,
        })
    }

    /// The copy's encoded size, or why it cannot be encoded (the limits of
    /// [`encoded_len`]).
    pub fn encoded_len(&self) -> Result<usize, Error> {
        let u16max = usize::from(u16::MAX);
        if self.topic.len() > u16max {
            return Err(too_long("topic", self.topic.len(), u16max));
        }
        if self.set.0.len() > u16max {
            return Err(too_long("property name", self.set.0.len(), u16max));
        }
        let m = self.merge().ok_or(Error::Corrupt {
            pos: self.source.log_pos,
            why: DecodeError::Layout,
        })?;
        if m.count > u16max {
            return Err(too_long("keys or properties count", m.count, u16max));
        }
        let p = &self.source.p;
        let total = HEADER + self.topic.len() + p.tag.len() + p.keys.len() + m.len + p.body.len();
        let u32max = u32::MAX as usize;
        if total > u32max - 4 {
            return Err(too_long("message", total, u32max - 4));
        }
        Ok(total)
    }

    /// Appends the copy's record to `out` without the broker-assigned
    /// fields and the checksum, as [`super::encode_unsealed`] does; `len`
    /// is what [`CopyOf::encoded_len`] returned (it must have succeeded).
    pub fn encode_unsealed(&self, len: usize, out: &mut Vec<u8>) {
        let p = &self.source.p;
        let start = out.len();
        out.resize(start + len, 0);
        let Some(m) = self.merge() else {
            return;
        };
        let mut w = Writer {
            buf: &mut out[start..],
            at: 0,
        };
        w.put(&((len - 4) as u32).to_le_bytes());
        w.put(&[0; 4]); // crc: sealed
        w.put(&[VERSION, 0]);
        w.put(&[0; 10]); // queue, queue_offset: sealed
        w.put(&p.born_ms.to_le_bytes());
        w.put(&[0; 24]); // stored_ms, id: sealed
        w.put(&(self.topic.len() as u16).to_le_bytes());
        w.put(&(p.tag.len() as u16).to_le_bytes());
        w.put(&(p.keys.len() as u32).to_le_bytes());
        w.put(&(m.len as u32).to_le_bytes());
        w.put(&(p.body.len() as u32).to_le_bytes());
        w.put(self.topic.as_bytes());
        w.put(p.tag.as_bytes());
        w.put(p.keys);
        // The entries before `set`, `set`, the entries after it: names
        // stay strictly ascending, as the decoder requires.
        let (name, value) = self.set;
        w.put(&(m.count as u16).to_le_bytes());
        w.put(p.props.get(2..m.at).unwrap_or_default());
        w.put(&(name.len() as u16).to_le_bytes());
        w.put(name.as_bytes());
        w.put(&(value.len() as u32).to_le_bytes());
        w.put(value.as_bytes());
        w.put(p.props.get(m.resume..).unwrap_or_default());
        w.put(p.body);
        debug_assert_eq!(w.at, len);
    }
}

/// Where a copy's property goes in its source's properties section.
struct Merge {
    /// The byte offset of the new entry (of the one it replaces, or of the
    /// first entry whose name sorts after it).
    at: usize,
    /// Where the source's entries resume after the new one.
    resume: usize,
    /// Entries in the copy.
    count: usize,
    /// The copy's properties section length.
    len: usize,
}

#[cfg(test)]
mod tests;
