#![allow(clippy::unwrap_used)]
//! Fuzz tests for the record decoder, done with proptest (cargo-fuzz needs a
//! nightly toolchain). The decoder is fed arbitrary bytes, valid records,
//! mutated valid records and hand-made headers with a correct checksum but
//! inconsistent contents. It must never panic (proptest turns a panic into a
//! failing, shrunk case), must refuse everything that is not exactly a
//! record, and must return what was encoded for everything that is.
//!
//! Each decode result is checked against `frame_oracle`, an independent
//! reading of the format in `record.rs`'s module docs: where the length
//! prefix, the checksum, the version or the section-length sum are wrong, the
//! exact error is known; where they are right, the decoder may still refuse
//! (bad UTF-8, a section whose contents do not fill it), but if it accepts,
//! re-encoding what it returned must give back the input bytes exactly.
//!
//! Allocation size is not measured: counting allocations needs a
//! `#[global_allocator]`, i.e. `unsafe`, which the workspace forbids. The
//! hostile-count tests below feed the shapes that would make a careless
//! decoder allocate gigabytes (counts of 65535 in a 2-byte section, section
//! lengths of `u32::MAX`); they must be refused at once.

use cellgate_broker_core::record::{
    decode, decode_meta, decode_parts, encode, encoded_len, tag_hash, Message, Stamp,
    StoredMessage, END_OF_SEGMENT, HEADER,
};
use cellgate_broker_core::{DecodeError, Error};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    // No regression files: this test must not write next to the sources.
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Helpers: encoding, the reference reading of the format, the Ok check.
// ---------------------------------------------------------------------------

fn encode_one(m: &Message, s: &Stamp) -> Vec<u8> {
    let len = encoded_len(m).unwrap();
    let mut out = Vec::new();
    encode(m, s, len, &mut out);
    assert_eq!(out.len(), len, "encoded_len disagrees with encode");
    out
}

fn stamp(id: [u8; 16], queue: u16, queue_offset: u64, stored_ms: i64) -> Stamp {
    Stamp {
        id: Uuid::from_bytes(id),
        queue,
        queue_offset,
        stored_ms,
    }
}

/// What decoding the record of `m` stamped with `s` must give.
fn expected(m: &Message, s: &Stamp, log_pos: u64) -> StoredMessage {
    StoredMessage {
        id: s.id,
        topic: m.topic.clone(),
        queue: s.queue,
        queue_offset: s.queue_offset,
        log_pos,
        body: m.body.clone(),
        // The format has no "absent" tag: an empty tag reads back as None.
        tag: m.tag.clone().filter(|t| !t.is_empty()),
        keys: m.keys.clone(),
        properties: m.properties.clone(),
        born_ms: m.born_ms,
        stored_ms: s.stored_ms,
    }
}

/// The record of a decoded message, encoded again with the same stamp.
fn reencode(d: &StoredMessage) -> Vec<u8> {
    let m = Message {
        topic: d.topic.clone(),
        body: d.body.clone(),
        tag: d.tag.clone(),
        keys: d.keys.clone(),
        properties: d.properties.clone(),
        born_ms: d.born_ms,
    };
    encode_one(
        &m,
        &stamp(*d.id.as_bytes(), d.queue, d.queue_offset, d.stored_ms),
    )
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reference for the checks the decoder makes before it parses the
/// sections, in its order (frame, truncation, checksum, version, length sum).
/// `Ok(total)`: those pass, the record is `buf[..total]`.
fn frame_oracle(buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated {
            need: 4,
            have: buf.len(),
        });
    }
    let len = le32(buf, 0);
    if len == 0 || len == END_OF_SEGMENT {
        // decode() reports both "nothing here" markers as BadLength.
        return Err(DecodeError::BadLength(len));
    }
    let total = len as usize + 4;
    if total < HEADER {
        return Err(DecodeError::BadLength(len));
    }
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            need: total,
            have: buf.len(),
        });
    }
    let stored = le32(buf, 4);
    let computed = crc32c::crc32c(&buf[8..total]);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    if buf[8] != 1 {
        return Err(DecodeError::Version(buf[8]));
    }
    let sum = HEADER as u64
        + u64::from(le16(buf, 52))
        + u64::from(le16(buf, 54))
        + u64::from(le32(buf, 56))
        + u64::from(le32(buf, 60))
        + u64::from(le32(buf, 64));
    if sum != total as u64 {
        return Err(DecodeError::Layout);
    }
    Ok(total)
}

/// Decodes `buf`, checking the result against the reference: the exact
/// error where the reference knows it, and that an Ok is genuine.
fn check(buf: &[u8], log_pos: u64) -> Result<StoredMessage, DecodeError> {
    let got = decode(buf, log_pos);
    // `decode` is `decode_parts` refusing a record whose body is elsewhere
    // (flags bit 0, a 12-byte body section: `record/shared_body.rs`).
    let parts = decode_parts(buf, log_pos);
    match (&parts, &got) {
        (Ok((m, None)), Ok(d)) => assert_eq!(m, d),
        (Ok((m, Some(at))), Err(DecodeError::BodyElsewhere(p))) => {
            assert_eq!(at.pos, *p);
            assert!(m.body.is_empty());
            let body_at = (buf[9] & 1, le32(buf, 64));
            assert_eq!(body_at, (1, 12), "only a BODY_AT record");
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("decode {got:?} but decode_parts {parts:?} for {buf:02x?}"),
    }
    // Recovery's lighter decoder accepts and refuses exactly the bytes
    // `decode_parts` does.
    let meta = decode_meta(buf);
    let whole = parts.map(|(m, _)| m);
    match (&whole, &meta) {
        (Ok(d), Ok(m)) => assert_eq!(
            (
                &m.id,
                &m.topic,
                m.queue,
                m.queue_offset,
                &m.keys,
                m.stored_ms,
                m.tag_hash
            ),
            (
                &d.id,
                &d.topic,
                d.queue,
                d.queue_offset,
                &d.keys,
                d.stored_ms,
                tag_hash(d.tag.as_deref())
            ),
            "decode_meta disagrees with decode on {buf:02x?}"
        ),
        (Err(a), Err(b)) => assert_eq!(a, b, "decode_meta disagrees with decode on {buf:02x?}"),
        _ => panic!("decode_parts {whole:?} but decode_meta {meta:?} for {buf:02x?}"),
    }
    match frame_oracle(buf) {
        Err(want) => assert_eq!(got, Err(want), "input {buf:02x?}"),
        Ok(total) => match &got {
            Ok(d) => {
                assert_eq!(d.log_pos, log_pos);
                let rec = &buf[..total];
                let mut again = reencode(d);
                // COPY is a mark on the record, not a field of the message.
                if rec[9] & 2 != 0 {
                    again[9] |= 2;
                    seal(&mut again);
                }
                if again != rec {
                    panic!(
                        "decode returned Ok for bytes that are not the record of what it returned\n\
                         input      {rec:02x?}\nre-encoded {again:02x?}\ndecoded {d:?}"
                    );
                }
            }
            Err(e) => assert!(
                matches!(
                    e,
                    DecodeError::Layout | DecodeError::Utf8(_) | DecodeError::BodyElsewhere(_)
                ),
                "frame, checksum, version and lengths are right, yet {e:?} for {buf:02x?}"
            ),
        },
    }
    got
}

/// Sets `len` to cover the whole of `rec` and seals it with a valid CRC.
fn seal(rec: &mut [u8]) {
    let len = (rec.len() - 4) as u32;
    rec[..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A record built by hand: version 1, flags 0, the given header lengths and
/// section bytes, then sealed (len covers everything, CRC valid).
fn raw(lens: (u16, u16, u32, u32, u32), sections: &[&[u8]]) -> Vec<u8> {
    let mut r = vec![0u8; 8];
    r.extend_from_slice(&[1, 0]);
    r.extend_from_slice(&[0; 42]); // queue, queue_off, born, stored, id
    r.extend_from_slice(&lens.0.to_le_bytes());
    r.extend_from_slice(&lens.1.to_le_bytes());
    r.extend_from_slice(&lens.2.to_le_bytes());
    r.extend_from_slice(&lens.3.to_le_bytes());
    r.extend_from_slice(&lens.4.to_le_bytes());
    assert_eq!(r.len(), HEADER);
    for s in sections {
        r.extend_from_slice(s);
    }
    seal(&mut r);
    r
}

/// Cheap filler for large bodies (a per-byte strategy would be slow).
fn filled(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

/// Arbitrary UTF-8 (any `char`, control characters and NUL included).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max_chars).prop_map(|c| c.into_iter().collect())
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..256),
        1 => (0..70_000usize, any::<u64>()).prop_map(|(n, seed)| filled(n, seed)),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![4 => text(24), 1 => text(600)],
        option::of(prop_oneof![4 => text(16), 1 => text(600)]),
        vec(prop_oneof![4 => text(24), 1 => text(300)], 0..8),
        btree_map(text(12), prop_oneof![4 => text(40), 1 => text(2000)], 0..8),
        body(),
        any::<i64>(),
    )
        .prop_map(|(topic, tag, keys, properties, body, born_ms)| Message {
            topic,
            body,
            tag,
            keys,
            properties,
            born_ms,
        })
}

fn stamps() -> impl Strategy<Value = Stamp> {
    (any::<[u8; 16]>(), any::<u16>(), any::<u64>(), any::<i64>())
        .prop_map(|(id, q, qo, ms)| stamp(id, q, qo, ms))
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one bit at each (position, bit); positions range over the whole
    /// buffer, trailing bytes after the record included.
    Flip(Vec<(Index, u8)>),
    /// Keep only a prefix.
    Truncate(Index),
    /// Overwrite the length field.
    SetLen(u32),
    /// Remove `remove` bytes at `at` and insert `insert` there.
    Splice {
        at: Index,
        remove: usize,
        insert: Vec<u8>,
    },
    /// Overwrite and extend what follows the record.
    Tail(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        vec((any::<Index>(), 0..8u8), 1..6).prop_map(Mutation::Flip),
        any::<Index>().prop_map(Mutation::Truncate),
        prop_oneof![
            any::<u32>(),
            Just(0),
            Just(END_OF_SEGMENT),
            (HEADER as u32 - 8)..(HEADER as u32 + 64),
        ]
        .prop_map(Mutation::SetLen),
        (any::<Index>(), 0..8usize, vec(any::<u8>(), 0..8))
            .prop_map(|(at, remove, insert)| Mutation::Splice { at, remove, insert }),
        vec(any::<u8>(), 1..32).prop_map(Mutation::Tail),
    ]
}

/// `Off(d)`: record a length `d` away from the truth; `Any`: anything.
#[derive(Debug, Clone, Copy)]
enum Skew {
    Exact,
    Off(i8),
    Any(u32),
}

impl Skew {
    fn apply(self, actual: usize) -> u32 {
        match self {
            Skew::Exact => actual as u32,
            Skew::Off(d) => (actual as i64 + i64::from(d)) as u32,
            Skew::Any(v) => v,
        }
    }
}

fn skew() -> impl Strategy<Value = Skew> {
    prop_oneof![
        40 => Just(Skew::Exact),
        2 => any::<i8>().prop_map(Skew::Off),
        1 => any::<u32>().prop_map(Skew::Any),
    ]
}

/// Mostly UTF-8, sometimes arbitrary bytes or UTF-8 with a stray high byte.
fn strish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        40 => text(8).prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..8),
        1 => (text(6), 0x80..=0xffu8, any::<Index>()).prop_map(|(s, b, at)| {
            let mut v = s.into_bytes();
            v.insert(at.index(v.len() + 1), b);
            v
        }),
    ]
}

/// A keys section: structured (count and per-key lengths possibly wrong),
/// random bytes, or a huge count in a tiny section.
fn keys_section() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        10 => (vec((strish(), skew()), 0..5), skew()).prop_map(|(keys, count)| {
            let mut v = (count.apply(keys.len()) as u16).to_le_bytes().to_vec();
            for (k, s) in keys {
                v.extend_from_slice(&(s.apply(k.len()) as u16).to_le_bytes());
                v.extend_from_slice(&k);
            }
            v
        }),
        1 => vec(any::<u8>(), 0..12),
        1 => (any::<u16>(), vec(any::<u8>(), 0..6)).prop_map(|(n, rest)| {
            let mut v = n.to_le_bytes().to_vec();
            v.extend_from_slice(&rest);
            v
        }),
    ]
}

/// A properties section, like `keys_section`; names come mostly from a tiny
/// alphabet so that duplicates and out-of-order names occur.
fn props_section() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![3 => "[ab]{0,2}".prop_map(String::into_bytes), 1 => strish()];
    prop_oneof![
        10 => (vec((name, strish(), skew(), skew()), 0..5), skew()).prop_map(|(props, count)| {
            let mut v = (count.apply(props.len()) as u16).to_le_bytes().to_vec();
            for (k, val, ks, vs) in props {
                v.extend_from_slice(&(ks.apply(k.len()) as u16).to_le_bytes());
                v.extend_from_slice(&k);
                v.extend_from_slice(&vs.apply(val.len()).to_le_bytes());
                v.extend_from_slice(&val);
            }
            v
        }),
        1 => vec(any::<u8>(), 0..12),
        1 => (any::<u16>(), vec(any::<u8>(), 0..6)).prop_map(|(n, rest)| {
            let mut v = n.to_le_bytes().to_vec();
            v.extend_from_slice(&rest);
            v
        }),
    ]
}

/// A hand-made record whose CRC is valid over whatever `len` says.
#[derive(Debug, Clone)]
struct Crafted {
    version: u8,
    flags: u8,
    fixed: Vec<u8>,
    sections: [Vec<u8>; 5],
    skews: [Skew; 5],
    len: Skew,
    trailing: Vec<u8>,
}

impl Crafted {
    fn build(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b.push(self.version);
        b.push(self.flags);
        b.extend_from_slice(&self.fixed);
        for (i, (sec, s)) in self.sections.iter().zip(self.skews).enumerate() {
            let n = s.apply(sec.len());
            if i < 2 {
                b.extend_from_slice(&(n as u16).to_le_bytes());
            } else {
                b.extend_from_slice(&n.to_le_bytes());
            }
        }
        for sec in &self.sections {
            b.extend_from_slice(sec);
        }
        let len = self.len.apply(b.len() - 4);
        b[..4].copy_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&self.trailing);
        let end = (len as usize).saturating_add(4).clamp(8, b.len());
        let crc = crc32c::crc32c(&b[8..end]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

fn crafted() -> impl Strategy<Value = Crafted> {
    (
        prop_oneof![20 => Just(1u8), 1 => any::<u8>()],
        // 2: COPY, a known flag on its own.
        prop_oneof![20 => Just(0u8), 2 => Just(2u8), 1 => any::<u8>()],
        vec(any::<u8>(), 42),
        (
            strish(),
            strish(),
            keys_section(),
            props_section(),
            vec(any::<u8>(), 0..16),
        ),
        (skew(), skew(), skew(), skew(), skew()),
        prop_oneof![10 => Just(Skew::Exact), 1 => skew()],
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<u8>(), 0..8)],
    )
        .prop_map(
            |(version, flags, fixed, (t, g, k, p, b), (s0, s1, s2, s3, s4), len, trailing)| {
                Crafted {
                    version,
                    flags,
                    fixed,
                    sections: [t, g, k, p, b],
                    skews: [s0, s1, s2, s3, s4],
                    len,
                    trailing,
                }
            },
        )
}

/// Random bytes whose first four are often a plausible length, so that the
/// checksum path is reached and not only "truncated".
fn random_buf() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..4096),
        (vec(any::<u8>(), 4..4096), any::<Index>()).prop_map(|(mut b, i)| {
            let len = i.index(b.len() - 3) as u32; // total <= b.len()
            b[..4].copy_from_slice(&len.to_le_bytes());
            b
        }),
    ]
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// 1. Arbitrary bytes: no panic; exact errors for bad frames and
    /// checksums; Ok only for genuine records.
    #[test]
    fn arbitrary_bytes_never_panic(buf in random_buf(), pos in any::<u64>()) {
        let _ = check(&buf, pos);
    }

    /// 1b. Arbitrary bytes given a valid frame, version, CRC and (mostly)
    /// section lengths that add up, so that the section parsers see garbage.
    #[test]
    fn arbitrary_bytes_with_valid_crc_never_panic(
        mut buf in prop_oneof![vec(any::<u8>(), HEADER..2048), vec(0..0x80u8, HEADER..2048)],
        version_one in prop::bool::weighted(0.9),
        cuts in prop::option::weighted(0.9, any::<[Index; 4]>()),
        pos in any::<u64>(),
    ) {
        if version_one {
            buf[8] = 1;
        }
        if let Some(cuts) = cuts {
            // Split the bytes after the header into five sections.
            let rest = buf.len() - HEADER;
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(rest + 1)).collect();
            at.push(0);
            at.push(rest);
            at.sort_unstable();
            let lens: Vec<usize> = at.windows(2).map(|w| w[1] - w[0]).collect();
            buf[52..54].copy_from_slice(&(lens[0] as u16).to_le_bytes());
            buf[54..56].copy_from_slice(&(lens[1] as u16).to_le_bytes());
            buf[56..60].copy_from_slice(&(lens[2] as u32).to_le_bytes());
            buf[60..64].copy_from_slice(&(lens[3] as u32).to_le_bytes());
            buf[64..68].copy_from_slice(&(lens[4] as u32).to_le_bytes());
        }
        seal(&mut buf);
        let _ = check(&buf, pos);
    }

    /// 2. Valid records decode to exactly what was encoded, also when more
    /// bytes follow them.
    #[test]
    fn valid_records_round_trip(
        m in message(),
        s in stamps(),
        pos in any::<u64>(),
        trailing in vec(any::<u8>(), 0..16),
    ) {
        let mut buf = encode_one(&m, &s);
        let len = buf.len();
        prop_assert_eq!(le32(&buf, 0) as usize + 4, len);
        buf.extend_from_slice(&trailing);
        let d = check(&buf, pos).unwrap();
        prop_assert_eq!(&d, &expected(&m, &s, pos));
        prop_assert_eq!(reencode(&d), &buf[..len]);
    }

    /// 3. Mutated valid records: refused unless the record's own bytes are
    /// untouched (changes after its end do not matter); a change after the
    /// length field with the length intact is a checksum error.
    #[test]
    fn mutated_records_are_refused(
        m in message(),
        s in stamps(),
        pos in any::<u64>(),
        trailing in vec(any::<u8>(), 0..16),
        mutation in mutation(),
    ) {
        let mut buf = encode_one(&m, &s);
        let total = buf.len();
        buf.extend_from_slice(&trailing);
        let mut b = buf.clone();
        match &mutation {
            Mutation::Flip(flips) => {
                for (i, bit) in flips {
                    b[i.index(buf.len())] ^= 1 << bit;
                }
            }
            Mutation::Truncate(i) => b.truncate(i.index(buf.len() + 1)),
            Mutation::SetLen(n) => b[..4].copy_from_slice(&n.to_le_bytes()),
            Mutation::Splice { at, remove, insert } => {
                let at = at.index(b.len() + 1);
                let end = (at + remove).min(b.len());
                b.splice(at..end, insert.iter().copied());
            }
            Mutation::Tail(t) => {
                b.truncate(total);
                b.extend_from_slice(t);
            }
        }
        let got = check(&b, pos);
        let intact = b.len() >= total && b[..total] == buf[..total];
        if intact {
            prop_assert_eq!(got, Ok(expected(&m, &s, pos)));
        } else if b.len() >= total && b[..4] == buf[..4] {
            prop_assert!(matches!(got, Err(DecodeError::Checksum { .. })), "{:?}", got);
        } else {
            prop_assert!(got.is_err(), "mutated record accepted: {:?}", got);
        }
    }

    /// 4. Hand-made headers with a valid CRC and inconsistent section
    /// lengths, counts and element lengths: exact errors where the reference
    /// knows them (Version, Layout), no panic, Ok only for genuine records.
    #[test]
    fn crafted_headers_with_valid_crc(c in crafted(), pos in any::<u64>()) {
        let buf = c.build();
        let _ = check(&buf, pos);
    }
}

// ---------------------------------------------------------------------------
// Hostile counts and lengths (no huge allocations, no overflow).
// ---------------------------------------------------------------------------

#[test]
fn huge_counts_in_tiny_sections_are_refused() {
    let max = u16::MAX.to_le_bytes();
    // 65535 keys in a 2-byte keys section.
    let r = raw((0, 0, 2, 2, 0), &[&max, &[0, 0]]);
    assert_eq!(decode(&r, 0), Err(DecodeError::Layout));
    // 65535 empty keys would need 131072 more bytes; give 4.
    let r = raw((0, 0, 6, 2, 0), &[&max, &[0, 0, 0, 0], &[0, 0]]);
    assert_eq!(decode(&r, 0), Err(DecodeError::Layout));
    // 65535 properties in a 2-byte properties section.
    let r = raw((0, 0, 2, 2, 0), &[&[0, 0], &max]);
    assert_eq!(decode(&r, 0), Err(DecodeError::Layout));
    // A property value claiming u32::MAX bytes.
    let mut props = vec![1, 0, 1, 0, b'a'];
    props.extend_from_slice(&u32::MAX.to_le_bytes());
    let r = raw((0, 0, 2, props.len() as u32, 0), &[&[0, 0], &props]);
    assert_eq!(decode(&r, 0), Err(DecodeError::Layout));
    // A key claiming 65535 bytes.
    let r = raw((0, 0, 4, 2, 0), &[&[1, 0, 0xff, 0xff], &[0, 0]]);
    assert_eq!(decode(&r, 0), Err(DecodeError::Layout));
}

#[test]
fn huge_section_lengths_are_refused() {
    let m = u32::MAX;
    for lens in [
        (0, 0, m, 2, 0),
        (0, 0, 2, m, 0),
        (0, 0, 2, 2, m),
        (u16::MAX, u16::MAX, m, m, m),
        // Sums that wrap a u32 back to the true total.
        (0, 0, 2, 2, m - 3),
        (0, 0, 2u32.wrapping_sub(1 << 31), 2, 1 << 31),
    ] {
        let r = raw(lens, &[&[0, 0], &[0, 0]]);
        assert_eq!(decode(&r, 0), Err(DecodeError::Layout), "{lens:?}");
    }
}

#[test]
fn huge_length_prefix_is_truncated_not_allocated() {
    let mut b = (u32::MAX - 1).to_le_bytes().to_vec();
    b.resize(100, 0);
    assert_eq!(
        decode(&b, 0),
        Err(DecodeError::Truncated {
            need: u32::MAX as usize + 3,
            have: 100
        })
    );
}

#[test]
fn max_size_fields_round_trip_and_one_more_byte_is_refused() {
    let big = "a".repeat(usize::from(u16::MAX));
    let m = Message {
        topic: big.clone(),
        body: vec![7; 100_000],
        tag: Some(big.clone()),
        keys: vec![big.clone(), String::new()],
        properties: [
            (big.clone(), "v".repeat(100_000)),
            (String::new(), String::new()),
        ]
        .into(),
        born_ms: i64::MIN,
    };
    let s = stamp([0xff; 16], u16::MAX, u64::MAX, i64::MAX);
    let buf = encode_one(&m, &s);
    assert_eq!(check(&buf, u64::MAX), Ok(expected(&m, &s, u64::MAX)));

    let over = format!("{big}a");
    let cases: [(Message, &str); 4] = [
        (
            Message {
                topic: over.clone(),
                ..m.clone()
            },
            "topic",
        ),
        (
            Message {
                tag: Some(over.clone()),
                ..m.clone()
            },
            "tag",
        ),
        (
            Message {
                keys: vec![over.clone()],
                ..m.clone()
            },
            "key",
        ),
        (
            Message {
                properties: [(over.clone(), String::new())].into(),
                ..m.clone()
            },
            "property name",
        ),
    ];
    for (bad, field) in cases {
        let e = encoded_len(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{field} is 65536 bytes, over the limit of 65535")
        );
        assert!(matches!(e, Error::FieldTooLong { .. }));
    }
}

#[test]
fn empty_message_round_trips_and_empty_tag_reads_as_none() {
    for tag in [None, Some(String::new())] {
        let m = Message {
            tag,
            ..Message::default()
        };
        let s = stamp([0; 16], 0, 0, 0);
        let buf = encode_one(&m, &s);
        assert_eq!(buf.len(), HEADER + 4);
        let d = check(&buf, 0).unwrap();
        assert_eq!(d.tag, None);
        assert_eq!(d, expected(&m, &s, 0));
    }
}

// ---------------------------------------------------------------------------
// One test per DecodeError variant: the exact message.
// ---------------------------------------------------------------------------

fn sample() -> Vec<u8> {
    let m = Message {
        topic: "T".into(),
        body: b"hi".to_vec(),
        tag: Some("A".into()),
        keys: vec!["k".into()],
        properties: [("p".to_owned(), "v".to_owned())].into(),
        born_ms: 1,
    };
    encode_one(&m, &stamp([1; 16], 2, 3, 4))
}

#[test]
fn error_truncated() {
    assert_eq!(
        decode(&[1, 2], 0).unwrap_err().to_string(),
        "truncated: need 4 bytes, have 2"
    );
    let r = sample();
    let e = decode(&r[..r.len() - 1], 0).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Truncated {
            need: r.len(),
            have: r.len() - 1
        }
    );
    assert_eq!(
        e.to_string(),
        format!("truncated: need {} bytes, have {}", r.len(), r.len() - 1)
    );
}

#[test]
fn error_bad_length() {
    let mut b = vec![0u8; 100];
    b[0] = 10;
    assert_eq!(
        decode(&b, 0).unwrap_err().to_string(),
        "length 10 is impossible"
    );
    b[0] = 63; // one short of a header
    assert_eq!(
        decode(&b, 0).unwrap_err().to_string(),
        "length 63 is impossible"
    );
    assert_eq!(
        decode(&[0; 100], 0).unwrap_err().to_string(),
        "length 0 is impossible"
    );
    let eos = [0xff; 100];
    assert_eq!(decode(&eos, 0), Err(DecodeError::BadLength(u32::MAX)));
}

#[test]
fn error_checksum() {
    // len 64 (a bare header), stored CRC 0x0000abcd, then 60 zero bytes.
    let mut b = vec![0u8; HEADER];
    b[0] = 64;
    b[4..8].copy_from_slice(&0xabcd_u32.to_le_bytes());
    // The standard CRC32C check value, then the one used here (computed
    // independently with a bitwise CRC32C, polynomial 0x82F63B78).
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c::crc32c(&[0; 60]), 0x5a0b_0531);
    let e = decode(&b, 0).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Checksum {
            stored: 0xabcd,
            computed: 0x5a0b_0531
        }
    );
    assert_eq!(
        e.to_string(),
        "checksum mismatch (stored 0000abcd, computed 5a0b0531)"
    );
}

#[test]
fn error_version() {
    let mut r = sample();
    r[8] = 2;
    seal(&mut r);
    assert_eq!(
        decode(&r, 0).unwrap_err().to_string(),
        "unknown record version 2"
    );
    r[8] = 0;
    seal(&mut r);
    assert_eq!(
        decode(&r, 0).unwrap_err().to_string(),
        "unknown record version 0"
    );
}

#[test]
fn error_layout() {
    // Section lengths sum to 68 + 4, record is 68 + 5.
    let r = raw((0, 0, 2, 2, 0), &[&[0, 0], &[0, 0], b"x"]);
    assert_eq!(
        decode(&r, 0).unwrap_err().to_string(),
        "field lengths do not add up to the record length"
    );
    // Lengths add up, but the keys section holds a trailing byte.
    let r = raw((0, 0, 3, 2, 0), &[&[0, 0, 0], &[0, 0]]);
    assert_eq!(decode(&r, 0), Err(DecodeError::Layout));
}

#[test]
fn error_utf8() {
    let bad: &[u8] = &[0xff];
    let r = raw((1, 0, 2, 2, 0), &[bad, &[0, 0], &[0, 0]]);
    assert_eq!(decode(&r, 0).unwrap_err().to_string(), "topic is not UTF-8");
    let r = raw((0, 1, 2, 2, 0), &[bad, &[0, 0], &[0, 0]]);
    assert_eq!(decode(&r, 0).unwrap_err().to_string(), "tag is not UTF-8");
    let r = raw((0, 0, 5, 2, 0), &[&[1, 0, 1, 0, 0xff], &[0, 0]]);
    assert_eq!(decode(&r, 0).unwrap_err().to_string(), "key is not UTF-8");
    let r = raw((0, 0, 2, 9, 0), &[&[0, 0], &[1, 0, 1, 0, 0xc3, 0, 0, 0, 0]]);
    assert_eq!(
        decode(&r, 0).unwrap_err().to_string(),
        "property name is not UTF-8"
    );
    let r = raw(
        (0, 0, 2, 10, 0),
        &[&[0, 0], &[1, 0, 1, 0, b'p', 1, 0, 0, 0, 0x80]],
    );
    assert_eq!(
        decode(&r, 0).unwrap_err().to_string(),
        "property value is not UTF-8"
    );
}

// ---------------------------------------------------------------------------
// Records the encoder never writes are refused (these were findings of this
// test; the decoder now checks flags and property-name order).
// ---------------------------------------------------------------------------

#[test]
fn unknown_flags_are_refused() {
    for flags in [4, 6, 0x80, 0xff] {
        let mut r = sample();
        r[9] = flags;
        seal(&mut r);
        assert_eq!(decode_parts(&r, 0).err(), Some(DecodeError::Layout));
    }
    // COPY (bit 1) is known, and changes nothing a reader of the record
    // sees; recovery reports it.
    let mut r = sample();
    r[9] = 2;
    seal(&mut r);
    let plain = decode_parts(&sample(), 0).unwrap();
    assert_eq!(decode_parts(&r, 0).unwrap(), plain);
    assert!(decode_meta(&r).unwrap().copy);
    assert!(!decode_meta(&sample()).unwrap().copy);
    // BODY_AT (bit 0) is known, but only with a 12-byte body section.
    let mut r = sample();
    r[9] = 1;
    seal(&mut r);
    assert_eq!(decode_parts(&r, 0).err(), Some(DecodeError::Layout));
}

#[test]
fn a_body_at_record_passes_the_oracle_and_names_its_target() {
    // A record whose body section is a reference: pos 4096, len 1024.
    let mut body = 4096u64.to_le_bytes().to_vec();
    body.extend_from_slice(&1024u32.to_le_bytes());
    let mut r = raw((0, 0, 2, 2, 12), &[&[0, 0], &[0, 0], &body]);
    r[9] = 1;
    seal(&mut r);
    assert_eq!(check(&r, 7).err(), Some(DecodeError::BodyElsewhere(4096)));
    let (m, at) = decode_parts(&r, 7).unwrap();
    assert_eq!(
        (at.map(|a| (a.pos, a.len)), m.body.len()),
        (Some((4096, 1024)), 0)
    );
}

#[test]
fn duplicate_property_names_are_refused() {
    let props = [
        2, 0, 1, 0, b'a', 1, 0, 0, 0, b'1', 1, 0, b'a', 1, 0, 0, 0, b'2',
    ];
    let r = raw((0, 0, 2, props.len() as u32, 0), &[&[0, 0], &props]);
    assert!(decode(&r, 0).is_err(), "{:?}", decode(&r, 0));
}

#[test]
fn unsorted_property_names_are_refused() {
    let props = [
        2, 0, 1, 0, b'b', 1, 0, 0, 0, b'1', 1, 0, b'a', 1, 0, 0, 0, b'2',
    ];
    let r = raw((0, 0, 2, props.len() as u32, 0), &[&[0, 0], &props]);
    assert!(decode(&r, 0).is_err(), "{:?}", decode(&r, 0));
}
