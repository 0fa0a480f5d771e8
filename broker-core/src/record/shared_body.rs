//! Records that keep their body in an earlier record (`BODY_AT`).
//!
//! Why: a transaction writes its message twice, the half message and then,
//! on commit, the message in its topic. The body is the same bytes both
//! times and is most of the record, so a commit that lands in the half's
//! segment stores a 12-byte reference to the half's body instead of a
//! second copy: the commit then costs about a quarter of a normal publish's
//! bytes instead of a whole one (issue 6's transaction throughput).
//!
//! The format and its invariant (same segment, the target holds its body
//! itself) are in the parent module's docs. Who may write such a record is
//! the store's business (`store/put.rs` checks the segment under the writer
//! lock); everything here only encodes and decodes.

use super::{decode_parsed, encode_sections, encoded_len, parse, Message, StoredMessage, Writer};
use crate::error::{DecodeError, Error};
use uuid::Uuid;

/// The flags bit of a record whose body section is a [`BodyAt`].
pub(super) const BODY_AT: u8 = 1;
/// The size of that body section.
const BODY_AT_LEN: usize = 12;

/// Where a record's body is: the body of the record at log position `pos`,
/// `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyAt {
    pub pos: u64,
    pub len: u32,
}

impl BodyAt {
    pub(super) fn decode(section: &[u8]) -> Result<BodyAt, DecodeError> {
        let b: &[u8; BODY_AT_LEN] = section.try_into().map_err(|_| DecodeError::Layout)?;
        let mut pos = [0u8; 8];
        pos.copy_from_slice(&b[..8]);
        Ok(BodyAt {
            pos: u64::from_le_bytes(pos),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    fn encode(&self) -> [u8; BODY_AT_LEN] {
        let mut b = [0u8; BODY_AT_LEN];
        let mut w = Writer { buf: &mut b, at: 0 };
        w.put(&self.pos.to_le_bytes());
        w.put(&self.len.to_le_bytes());
        b
    }
}

/// The encoded size of `m` with its body stored elsewhere; `m.body` is
/// checked as [`encoded_len`] checks it (the body must fit where it is).
pub fn encoded_len_at(m: &Message) -> Result<usize, Error> {
    Ok(encoded_len(m)? - m.body.len() + BODY_AT_LEN)
}

/// [`super::encode_unsealed`] for `m` with its body at `at`; `len` is what
/// [`encoded_len_at`] returned. `m.body` is not written.
pub fn encode_unsealed_at(m: &Message, at: BodyAt, len: usize, out: &mut Vec<u8>) {
    encode_sections(m, BODY_AT, &at.encode(), len, out);
}

/// Decodes the record at the start of `buf`, checked as
/// [`super::decode`] checks it; for a `BODY_AT` record the message's body
/// is empty and the second field says where it is.
pub fn decode_parts(
    buf: &[u8],
    log_pos: u64,
) -> Result<(StoredMessage, Option<BodyAt>), DecodeError> {
    let p = parse(buf)?;
    Ok((decode_parsed(&p, log_pos)?, p.body_at))
}

/// The message id and body of the record at the start of `buf`, checked
/// as [`super::decode`] checks the record. A record that refers elsewhere
/// is refused: a body is never a reference to a reference.
pub fn body_of(buf: &[u8]) -> Result<(Uuid, &[u8]), DecodeError> {
    let p = parse(buf)?;
    match p.body_at {
        Some(at) => Err(DecodeError::BodyElsewhere(at.pos)),
        None => Ok((p.id, p.body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{refuses_every_tear_and_flip, sample};
    use crate::record::{decode, encode, seal, Records, Stamp};

    fn stamp() -> Stamp {
        Stamp {
            id: Uuid::now_v7(),
            queue: 2,
            queue_offset: 7,
            stored_ms: 1_700_000_000_002,
        }
    }

    fn referring(m: &Message, at: BodyAt) -> Vec<u8> {
        let len = encoded_len_at(m).unwrap();
        let mut buf = Vec::new();
        encode_unsealed_at(m, at, len, &mut buf);
        assert_eq!(buf.len(), len);
        seal(&mut buf, &stamp());
        buf
    }

    #[test]
    fn a_referring_record_keeps_everything_but_the_body() {
        let mut m = sample();
        m.body = vec![7u8; 1024];
        let at = BodyAt {
            pos: 4096,
            len: 1024,
        };
        let buf = referring(&m, at);
        assert_eq!(buf.len(), encoded_len(&m).unwrap() - 1024 + 12);
        let (d, found) = decode_parts(&buf, 9000).unwrap();
        assert_eq!(found, Some(at));
        assert!(d.body.is_empty());
        assert_eq!(
            (d.topic, d.tag, d.keys, d.properties, d.born_ms, d.log_pos),
            (m.topic, m.tag, m.keys, m.properties, m.born_ms, 9000)
        );
    }

    #[test]
    fn only_the_store_reads_a_referring_record_whole() {
        let m = sample();
        let buf = referring(&m, BodyAt { pos: 64, len: 5 });
        assert_eq!(decode(&buf, 0), Err(DecodeError::BodyElsewhere(64)));
        assert_eq!(body_of(&buf), Err(DecodeError::BodyElsewhere(64)));
        let mut batch = Records::new();
        assert_eq!(batch.push(&buf, 0), Err(DecodeError::BodyElsewhere(64)));
        assert!(batch.is_empty());
    }

    #[test]
    fn a_whole_record_gives_its_body_and_no_reference() {
        let m = sample();
        let len = encoded_len(&m).unwrap();
        let mut buf = Vec::new();
        encode(&m, &stamp(), len, &mut buf);
        assert_eq!(body_of(&buf).unwrap().1, b"hello");
        assert_eq!(decode_parts(&buf, 0).unwrap().1, None);
    }

    #[test]
    fn a_reference_of_any_other_size_or_an_unknown_flag_is_refused() {
        let m = sample();
        let mut buf = referring(&m, BodyAt { pos: 64, len: 5 });
        // Unknown flag bits.
        buf[9] |= 0x80;
        let s = stamp();
        seal(&mut buf, &s);
        assert_eq!(decode_parts(&buf, 0).err(), Some(DecodeError::Layout));
        // A BODY_AT record whose body section is not 12 bytes.
        let len = encoded_len(&m).unwrap();
        let mut whole = Vec::new();
        encode(&m, &s, len, &mut whole);
        whole[9] = BODY_AT;
        seal(&mut whole, &s);
        assert_eq!(decode_parts(&whole, 0).err(), Some(DecodeError::Layout));
    }

    #[test]
    fn every_torn_prefix_and_flipped_byte_of_a_referring_record_is_refused() {
        let buf = referring(&sample(), BodyAt { pos: 64, len: 5 });
        refuses_every_tear_and_flip(&buf, |b| decode_parts(b, 0).is_err());
    }
}
