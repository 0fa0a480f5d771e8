use std::collections::BTreeMap;

use super::*;
use crate::record::{decode, encode, seal};

fn message(props: &[(&str, &str)]) -> Message {
    Message {
        topic: "ANT|RZ00A%T1".into(),
        body: b"hello".to_vec(),
        tag: Some("TagA".into()),
        keys: vec!["order-1".into(), "k2".into()],
        properties: props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        born_ms: 1_700_000_000_000,
    }
}

fn stamp(queue_offset: u64) -> Stamp {
    Stamp {
        id: Uuid::now_v7(),
        queue: 3,
        queue_offset,
        stored_ms: 1_700_000_000_001,
    }
}

fn records(msgs: &[Message]) -> (Records, Vec<Stamp>) {
    let mut r = Records::new();
    let mut stamps = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let s = stamp(i as u64);
        let mut buf = Vec::new();
        encode(m, &s, encoded_len(m).unwrap(), &mut buf);
        buf.extend_from_slice(b"trailing bytes are not part of it");
        r.push(&buf, 100 * i as u64).unwrap();
        stamps.push(s);
    }
    (r, stamps)
}

#[test]
fn fields_read_in_place_match_decode() {
    let m = message(&[("__UNIT.ORIUNIT", "RZ00A"), ("a", "1"), ("z", "")]);
    let (r, s) = records(&[m.clone(), Message::default()]);
    assert_eq!(r.len(), 2);
    let x = r.get(0).unwrap();
    assert_eq!(
        (x.id(), x.queue(), x.queue_offset(), x.log_pos()),
        (s[0].id, 3, 0, 0)
    );
    assert_eq!(
        (x.topic(), x.tag(), x.body()),
        ("ANT|RZ00A%T1", Some("TagA"), &b"hello"[..])
    );
    assert_eq!(x.keys().collect::<Vec<_>>(), ["order-1", "k2"]);
    assert_eq!(x.property("__UNIT.ORIUNIT"), Some("RZ00A"));
    assert_eq!(
        (x.property("z"), x.property("b"), x.property("~")),
        (Some(""), None, None)
    );
    assert_eq!(x.to_message(), m);
    let empty = r.get(1).unwrap();
    assert_eq!(
        (empty.tag(), empty.keys().count(), empty.log_pos()),
        (None, 0, 100)
    );
    assert!(r.get(2).is_none());
}

#[test]
fn a_corrupt_record_is_refused() {
    let m = message(&[("a", "1")]);
    let mut buf = Vec::new();
    encode(&m, &stamp(0), encoded_len(&m).unwrap(), &mut buf);
    let mut r = Records::new();
    for i in 4..buf.len() {
        let mut b = buf.clone();
        b[i] ^= 0x40;
        assert!(r.push(&b, 0).is_err(), "flip at {i}");
    }
    assert!(r.push(&buf[..buf.len() - 1], 0).is_err());
    assert!(r.push(&[0; 80], 0).is_err());
    assert!(r.is_empty());
}

/// The copy of `m` with `set`, sealed and decoded.
fn copy(m: &Message, set: (&str, &str)) -> (StoredMessage, Stamp) {
    let (r, s) = records(std::slice::from_ref(m));
    let c = CopyOf {
        source: r.get(0).unwrap(),
        topic: "ANT|RZ03A%T1",
        set,
        select: QueueSelect::RoundRobin,
    };
    let len = c.encoded_len().unwrap();
    let mut buf = vec![7u8; 5];
    c.encode_unsealed(len, &mut buf);
    assert_eq!(buf.len(), 5 + len);
    let copied = Stamp {
        id: s[0].id,
        queue: 1,
        queue_offset: 9,
        stored_ms: 5,
    };
    seal(&mut buf[5..], &copied);
    let d = decode(&buf[5..], 0).unwrap();
    assert_eq!(d.properties, c.to_message().properties);
    (d, s[0])
}

#[test]
fn a_copy_keeps_everything_but_the_topic_and_sets_its_property() {
    for (props, set) in [
        (vec![], ("__UNIT.COPY_FOR", "R")),
        (vec![("a", "1"), ("z", "2")], ("m", "G,C")),
        (vec![("m", "1"), ("z", "2")], ("a", "R")),
        (vec![("a", "1"), ("m", "2")], ("z", "R")),
        (
            vec![("a", "1"), ("m", "old value"), ("z", "2")],
            ("m", "new"),
        ),
        (vec![("m", "")], ("m", "")),
    ] {
        let m = message(&props);
        let (d, s) = copy(&m, set);
        let mut want: BTreeMap<String, String> = m.properties.clone();
        want.insert(set.0.into(), set.1.into());
        assert_eq!(d.properties, want, "{props:?} + {set:?}");
        assert_eq!(d.topic, "ANT|RZ03A%T1");
        assert_eq!(
            (d.id, d.queue, d.queue_offset, d.stored_ms),
            (s.id, 1, 9, 5)
        );
        assert_eq!(
            (d.body, d.tag, d.keys, d.born_ms),
            (m.body, m.tag, m.keys, m.born_ms)
        );
    }
}

#[test]
fn a_stored_message_pushes_as_the_record_it_came_from() {
    let m = message(&[("a", "1")]);
    let s = stamp(4);
    let mut buf = Vec::new();
    encode(&m, &s, encoded_len(&m).unwrap(), &mut buf);
    let stored = decode(&buf, 77).unwrap();
    let mut r = Records::new();
    r.push_stored(stored.clone()).unwrap();
    assert_eq!(r.get(0).unwrap().to_stored(), stored);
    assert_eq!(r.iter().count(), 1);
}
