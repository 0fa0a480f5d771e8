//! The record: one message as stored in the commit log.
//!
//! ## On-disk format (little-endian)
//!
//! ```text
//! offset size field
//!      0    4 len        bytes after this field (crc .. end of body)
//!      4    4 crc        CRC32C of bytes [8, 4 + len)
//!      8    1 version    1
//!      9    1 flags      bit 0: BODY_AT (see below); bit 1: COPY; others 0
//!     10    2 queue      queue id within the topic
//!     12    8 queue_off  offset of the record in its consume queue
//!     20    8 born_ms    producer time, ms since the Unix epoch
//!     28    8 stored_ms  broker time, ms since the Unix epoch
//!     36   16 id         message id (UUIDv7: unique, time-sortable)
//!     52    2 topic_len
//!     54    2 tag_len
//!     56    4 keys_len   encoded keys section
//!     60    4 props_len  encoded properties section
//!     64    4 body_len
//!     68    … topic, tag, keys, properties, body
//! keys:  u16 count, then per key u16 len + bytes
//! props: u16 count, then per entry u16 key len + bytes, u32 value len + bytes
//! ```
//!
//! With `BODY_AT` set, the body section is 12 bytes, `pos u64, len u32`:
//! the body is the body of the record at log position `pos`, `len` bytes
//! (a transaction's commit stores its message without a second copy of the
//! half message's body; `shared_body.rs`).
//!
//! `COPY` marks a copy of a message stored in another broker, appended
//! with the id it has there (a router's copy; [`Kept::Copy`]). The consume
//! queue carries the mark too, so a reader of originals skips copies
//! without reading them (`Store::read_records`).
//!
//! ## Invariants
//!
//! - `len` = 64 + the five section lengths, and `8 <= 4 + len`; a `len` of 0
//!   is never written, so zeroed (pre-allocated) space reads as "end of log".
//! - `crc` covers everything after itself, so a torn write (any prefix of a
//!   record) fails the check: the decoder never returns a partial record.
//! - Strings (topic, tag, keys, property keys and values) are UTF-8.
//! - A record never spans two segments; [`END_OF_SEGMENT`] as `len` marks the
//!   unused tail of a segment.
//! - A `BODY_AT` record refers to a record earlier in *the same segment*,
//!   with the same message id, one that holds its body itself. Retention deletes whole segments and
//!   recovery cuts only a log's tail, so whatever keeps the referring
//!   record keeps the record it refers to; and no chain or cycle can form.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::{DecodeError, Error};

mod encoded;
mod shared_body;
pub use encoded::{CopyOf, RecordRef, Records};
pub use shared_body::{body_of, decode_parts, encode_unsealed_at, encoded_len_at, BodyAt};

/// Fixed part of a record, `len` and `crc` included.
pub const HEADER: usize = 68;
/// `len` value that marks the rest of a segment as unused.
pub const END_OF_SEGMENT: u32 = u32::MAX;
const VERSION: u8 = 1;
/// The flags bit of a copy (see the module docs).
const COPY: u8 = 2;

/// What a message stored with an id it already has is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The same message, moved within this broker (a delayed message at
    /// its due time): an original.
    Moved,
    /// A copy of a message stored in another broker (a router's): marked
    /// `COPY`, and skipped by readers of originals.
    Copy,
}

/// Marks the record at the start of `rec`, encoded and not yet sealed, as
/// a copy ([`Kept::Copy`]); sealing then checksums the mark with the rest.
pub fn mark_copy(rec: &mut [u8]) {
    if let Some(flags) = rec.get_mut(9) {
        *flags |= COPY;
    }
}

/// A message as a producer hands it to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    pub body: Vec<u8>,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub born_ms: i64,
}

/// A message as the broker stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: Uuid,
    pub topic: String,
    pub queue: u16,
    pub queue_offset: u64,
    /// Where the record starts in the commit log.
    pub log_pos: u64,
    pub body: Vec<u8>,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub born_ms: i64,
    pub stored_ms: i64,
}

/// The broker-assigned fields of a record.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub id: Uuid,
    pub queue: u16,
    pub queue_offset: u64,
    pub stored_ms: i64,
}

fn too_long(field: &'static str, len: usize, max: usize) -> Error {
    Error::FieldTooLong { field, len, max }
}

/// The encoded size of `m`, or why it cannot be encoded.
pub fn encoded_len(m: &Message) -> Result<usize, Error> {
    let u16max = usize::from(u16::MAX);
    if m.topic.len() > u16max {
        return Err(too_long("topic", m.topic.len(), u16max));
    }
    let tag = m.tag.as_deref().unwrap_or("");
    if tag.len() > u16max {
        return Err(too_long("tag", tag.len(), u16max));
    }
    if m.keys.len() > u16max || m.properties.len() > u16max {
        return Err(too_long(
            "keys or properties count",
            m.keys.len().max(m.properties.len()),
            u16max,
        ));
    }
    let mut keys = 2;
    for k in &m.keys {
        if k.len() > u16max {
            return Err(too_long("key", k.len(), u16max));
        }
        keys += 2 + k.len();
    }
    let u32max = u32::MAX as usize;
    let mut props = 2;
    for (k, v) in &m.properties {
        if k.len() > u16max {
            return Err(too_long("property name", k.len(), u16max));
        }
        props += 2 + k.len() + 4 + v.len();
    }
    let total = HEADER + m.topic.len() + tag.len() + keys + props + m.body.len();
    // Every length field must hold its section, and the whole record fits
    // a u32 length prefix.
    if total > u32max - 4 {
        return Err(too_long("message", total, u32max - 4));
    }
    Ok(total)
}

/// Appends the record of `m` to `out`; `len` is what [`encoded_len`]
/// returned for `m` (it must have succeeded).
pub fn encode(m: &Message, s: &Stamp, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    encode_unsealed(m, len, out);
    seal(&mut out[start..], s);
}

/// Appends the record of `m` to `out` without the broker-assigned fields
/// and the checksum: [`seal`] adds them. The store encodes outside its
/// writer lock (reading the message's scattered allocations is the slow
/// part) and only seals under it, where queue offsets are assigned.
pub fn encode_unsealed(m: &Message, len: usize, out: &mut Vec<u8>) {
    encode_sections(m, 0, &m.body, len, out);
}

/// [`encode_unsealed`] with the flags byte and body section given.
fn encode_sections(m: &Message, flags: u8, body: &[u8], len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let tag = m.tag.as_deref().unwrap_or("");
    let keys_len: usize = 2 + m.keys.iter().map(|k| 2 + k.len()).sum::<usize>();
    let props_len: usize = 2 + m
        .properties
        .iter()
        .map(|(k, v)| 6 + k.len() + v.len())
        .sum::<usize>();
    // Sized once, then filled by offset: one bounds check per field instead
    // of a capacity check per `extend` (this runs under the writer lock).
    out.resize(start + len, 0);
    let mut w = Writer {
        buf: &mut out[start..],
        at: 0,
    };
    w.put(&((len - 4) as u32).to_le_bytes());
    w.put(&[0; 4]); // crc, filled in below
    w.put(&[VERSION, flags]);
    w.put(&[0; 10]); // queue, queue_offset: sealed
    w.put(&m.born_ms.to_le_bytes());
    w.put(&[0; 24]); // stored_ms, id: sealed
    w.put(&(m.topic.len() as u16).to_le_bytes());
    w.put(&(tag.len() as u16).to_le_bytes());
    w.put(&(keys_len as u32).to_le_bytes());
    w.put(&(props_len as u32).to_le_bytes());
    w.put(&(body.len() as u32).to_le_bytes());
    w.put(m.topic.as_bytes());
    w.put(tag.as_bytes());
    w.put(&(m.keys.len() as u16).to_le_bytes());
    for k in &m.keys {
        w.put(&(k.len() as u16).to_le_bytes());
        w.put(k.as_bytes());
    }
    w.put(&(m.properties.len() as u16).to_le_bytes());
    for (k, v) in &m.properties {
        w.put(&(k.len() as u16).to_le_bytes());
        w.put(k.as_bytes());
        w.put(&(v.len() as u32).to_le_bytes());
        w.put(v.as_bytes());
    }
    w.put(body);
    debug_assert_eq!(w.at, len);
}

/// Writes the broker-assigned fields into a record [`encode_unsealed`]
/// produced (`rec` is exactly that record) and its checksum.
pub fn seal(rec: &mut [u8], s: &Stamp) {
    let mut w = Writer { buf: rec, at: 10 };
    w.put(&s.queue.to_le_bytes());
    w.put(&s.queue_offset.to_le_bytes());
    w.at = 28; // born_ms stays
    w.put(&s.stored_ms.to_le_bytes());
    w.put(s.id.as_bytes());
    if let Some(body) = rec.get(8..) {
        let crc = crc32c::crc32c(body);
        if let Some(c) = rec.get_mut(4..8) {
            c.copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Writes consecutive fields into a slice sized for them.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    /// Never panics: with a wrong `len` the record is cut short (and its
    /// checksum still covers exactly what was written).
    fn put(&mut self, b: &[u8]) {
        let end = self.at + b.len();
        if let Some(dst) = self.buf.get_mut(self.at..end) {
            dst.copy_from_slice(b);
        }
        self.at = end;
    }
}

/// What the first bytes at a log position say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A record of this total size (`len` + 4).
    Record(usize),
    /// The rest of the segment is unused.
    EndOfSegment,
    /// Zeroes: nothing was ever written here.
    Empty,
}

/// Reads the length prefix. `max` bounds a record's total size.
pub(crate) fn frame(buf: &[u8], max: usize) -> Result<Frame, DecodeError> {
    let Some(len) = buf.get(..4) else {
        return Err(DecodeError::Truncated {
            need: 4,
            have: buf.len(),
        });
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    match len {
        0 => Ok(Frame::Empty),
        END_OF_SEGMENT => Ok(Frame::EndOfSegment),
        n if (n as usize) + 4 < HEADER || (n as usize) + 4 > max => Err(DecodeError::BadLength(n)),
        n => Ok(Frame::Record(n as usize + 4)),
    }
}

/// A cursor over a record's bytes that never panics.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Layout)?;
        let s = self.buf.get(self.at..end).ok_or(DecodeError::Layout)?;
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self, n: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8(what))
    }
}

/// A record's fields, verified, borrowing from the buffer.
#[derive(Debug, Clone, Copy)]
struct Parsed<'a> {
    id: Uuid,
    topic: &'a str,
    queue: u16,
    queue_offset: u64,
    tag: &'a str,
    keys: &'a [u8],
    props: &'a [u8],
    /// Empty when `body_at` is set.
    body: &'a [u8],
    /// Where the body is, for a `BODY_AT` record.
    body_at: Option<BodyAt>,
    /// Marked `COPY`.
    copy: bool,
    born_ms: i64,
    stored_ms: i64,
}

/// Checks the length, the checksum and the header layout of the record at
/// the start of `buf`; never panics, allocates nothing. The keys and
/// properties sections are checked by whoever walks them
/// ([`for_each_key`], [`for_each_prop`]): every caller must.
fn parse(buf: &[u8]) -> Result<Parsed<'_>, DecodeError> {
    let total = match frame(buf, usize::MAX)? {
        Frame::Record(n) => n,
        Frame::Empty => return Err(DecodeError::BadLength(0)),
        Frame::EndOfSegment => return Err(DecodeError::BadLength(END_OF_SEGMENT)),
    };
    let rec = buf.get(..total).ok_or(DecodeError::Truncated {
        need: total,
        have: buf.len(),
    })?;
    let stored = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    let computed = crc32c::crc32c(&rec[8..]);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    layout(rec)
}

/// The header and section layout of `rec`, exactly one record whose
/// checksum [`parse`] has verified (a batch of records already verified is
/// read again without checksumming each every time).
fn layout(rec: &[u8]) -> Result<Parsed<'_>, DecodeError> {
    let total = rec.len();
    let mut c = Cursor { buf: rec, at: 8 };
    let version = c.take(1)?[0];
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = c.take(1)?[0];
    if flags & !(shared_body::BODY_AT | COPY) != 0 {
        // Reserved flags: a record with any set was not written by us.
        return Err(DecodeError::Layout);
    }
    let queue = c.u16()?;
    let queue_offset = c.u64()?;
    let born_ms = c.u64()? as i64;
    let stored_ms = c.u64()? as i64;
    let mut id = [0u8; 16];
    id.copy_from_slice(c.take(16)?);
    let topic_len = usize::from(c.u16()?);
    let tag_len = usize::from(c.u16()?);
    let keys_len = c.u32()? as usize;
    let props_len = c.u32()? as usize;
    let body_len = c.u32()? as usize;
    let sum = [topic_len, tag_len, keys_len, props_len, body_len]
        .iter()
        .try_fold(HEADER, |a, &b| a.checked_add(b))
        .ok_or(DecodeError::Layout)?;
    if sum != total {
        return Err(DecodeError::Layout);
    }
    let topic = c.str(topic_len, "topic")?;
    let tag = c.str(tag_len, "tag")?;
    let keys = c.take(keys_len)?;
    let props = c.take(props_len)?;
    let mut body = c.take(body_len)?;
    let mut body_at = None;
    if flags & shared_body::BODY_AT != 0 {
        body_at = Some(BodyAt::decode(body)?);
        body = &[];
    }
    Ok(Parsed {
        id: Uuid::from_bytes(id),
        topic,
        queue,
        queue_offset,
        tag,
        keys,
        props,
        body,
        body_at,
        copy: flags & COPY != 0,
        born_ms,
        stored_ms,
    })
}

/// Decodes the record at the start of `buf` (which may hold more after it).
/// Checks the length, the checksum and the layout; never panics. A record
/// whose body is elsewhere is refused ([`DecodeError::BodyElsewhere`]):
/// [`decode_parts`] returns it with the body's place.
pub fn decode(buf: &[u8], log_pos: u64) -> Result<StoredMessage, DecodeError> {
    match decode_parts(buf, log_pos)? {
        (m, None) => Ok(m),
        (_, Some(at)) => Err(DecodeError::BodyElsewhere(at.pos)),
    }
}

/// [`decode`]'s work, on a parsed record.
fn decode_parsed(p: &Parsed<'_>, log_pos: u64) -> Result<StoredMessage, DecodeError> {
    let mut keys = Vec::with_capacity(1);
    for_each_key(p.keys, |k| keys.push(k.to_owned()))?;
    let mut properties = BTreeMap::new();
    for_each_prop(p.props, |k, v| {
        properties.insert(k.to_owned(), v.to_owned());
    })?;
    Ok(StoredMessage {
        id: p.id,
        topic: p.topic.to_owned(),
        queue: p.queue,
        queue_offset: p.queue_offset,
        log_pos,
        body: p.body.to_vec(),
        tag: (!p.tag.is_empty()).then(|| p.tag.to_owned()),
        keys,
        properties,
        born_ms: p.born_ms,
        stored_ms: p.stored_ms,
    })
}

/// What recovery needs of a record to rebuild its index entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: Uuid,
    pub topic: String,
    pub queue: u16,
    pub queue_offset: u64,
    /// [`tag_hash`] of the tag.
    pub tag_hash: u32,
    pub keys: Vec<String>,
    pub stored_ms: i64,
    /// Marked as a copy ([`Kept::Copy`]).
    pub copy: bool,
}

/// Verifies the record at the start of `buf` exactly as [`decode_parts`]
/// does (same bytes, same result), but copies out only what recovery
/// needs: no body, no properties. A full scan decodes every record of the
/// log, those whose body is elsewhere included.
pub fn decode_meta(buf: &[u8]) -> Result<RecordMeta, DecodeError> {
    let p = parse(buf)?;
    let mut keys = Vec::with_capacity(1);
    for_each_key(p.keys, |k| keys.push(k.to_owned()))?;
    for_each_prop(p.props, |_, _| ())?;
    Ok(RecordMeta {
        id: p.id,
        topic: p.topic.to_owned(),
        queue: p.queue,
        queue_offset: p.queue_offset,
        tag_hash: tag_hash(Some(p.tag)),
        keys,
        stored_ms: p.stored_ms,
        copy: p.copy,
    })
}

/// Walks the keys section, checking it.
fn for_each_key<'a>(section: &'a [u8], mut f: impl FnMut(&'a str)) -> Result<(), DecodeError> {
    let mut c = Cursor {
        buf: section,
        at: 0,
    };
    let n = c.u16()?;
    for _ in 0..n {
        let len = usize::from(c.u16()?);
        f(c.str(len, "key")?);
    }
    if c.at != c.buf.len() {
        return Err(DecodeError::Layout);
    }
    Ok(())
}

/// Walks the properties section, checking it.
fn for_each_prop<'a>(
    section: &'a [u8],
    mut f: impl FnMut(&'a str, &'a str),
) -> Result<(), DecodeError> {
    let mut c = Cursor {
        buf: section,
        at: 0,
    };
    let n = c.u16()?;
    let mut prev: Option<&str> = None;
    for _ in 0..n {
        let klen = usize::from(c.u16()?);
        let k = c.str(klen, "property name")?;
        let vlen = c.u32()? as usize;
        let v = c.str(vlen, "property value")?;
        // The encoder writes names strictly ascending (a BTreeMap): anything
        // else (a duplicate would silently drop data) is not our record.
        if prev.is_some_and(|p| p >= k) {
            return Err(DecodeError::Layout);
        }
        prev = Some(k);
        f(k, v);
    }
    if c.at != c.buf.len() {
        return Err(DecodeError::Layout);
    }
    Ok(())
}

/// The tag's hash as the consume index stores it (0 for no tag).
pub fn tag_hash(tag: Option<&str>) -> u32 {
    match tag {
        None | Some("") => 0,
        Some(t) => crc32c::crc32c(t.as_bytes()) | 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Message {
        Message {
            topic: "ANT|RZ00A%T1".into(),
            body: b"hello".to_vec(),
            tag: Some("TagA".into()),
            keys: vec!["order-1".into(), "k2".into()],
            properties: [("__UNIT.ORIUNIT".to_owned(), "RZ00A".to_owned())].into(),
            born_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let s = Stamp {
            id: Uuid::now_v7(),
            queue: 3,
            queue_offset: 42,
            stored_ms: 1_700_000_000_001,
        };
        let len = encoded_len(&m).unwrap();
        let mut buf = vec![9u8; 7]; // records are appended after other bytes
        encode(&m, &s, len, &mut buf);
        assert_eq!(buf.len(), 7 + len);
        let d = decode(&buf[7..], 1234).unwrap();
        assert_eq!(
            (d.topic.as_str(), d.queue, d.queue_offset, d.log_pos),
            ("ANT|RZ00A%T1", 3, 42, 1234)
        );
        assert_eq!(
            (d.body, d.tag, d.keys, d.properties),
            (m.body, m.tag, m.keys, m.properties)
        );
        assert_eq!(
            (d.id, d.born_ms, d.stored_ms),
            (s.id, m.born_ms, s.stored_ms)
        );
    }

    #[test]
    fn every_torn_prefix_and_every_flipped_byte_is_refused() {
        let m = sample();
        let s = Stamp {
            id: Uuid::now_v7(),
            queue: 0,
            queue_offset: 0,
            stored_ms: 0,
        };
        let len = encoded_len(&m).unwrap();
        let mut buf = Vec::new();
        encode(&m, &s, len, &mut buf);
        refuses_every_tear_and_flip(&buf, |b| decode(b, 0).is_err());
    }

    /// `refused` holds for every proper prefix of `rec` and for `rec` with
    /// any one byte after the length flipped.
    pub(crate) fn refuses_every_tear_and_flip(rec: &[u8], refused: impl Fn(&[u8]) -> bool) {
        for cut in 0..rec.len() {
            assert!(refused(&rec[..cut]), "prefix {cut}");
        }
        for i in 4..rec.len() {
            let mut b = rec.to_vec();
            b[i] ^= 0x40;
            assert!(refused(&b), "flip at {i}");
        }
    }

    #[test]
    fn no_tag_and_empty_tag_hash_to_zero() {
        assert_eq!(tag_hash(None), 0);
        assert_eq!(tag_hash(Some("")), 0);
        assert_ne!(tag_hash(Some("TagA")), 0);
    }
}
