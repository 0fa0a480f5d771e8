//! The router's path through the store: records read kept encoded match
//! what `read` decodes, and copies appended from them match copies of
//! owned messages (`send_copies`) — over real files.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{
    Broker, CopyOf, DeliveryConfig, EmbeddedBroker, Message, QueueSelect, Store, StoreConfig,
};

fn broker(dir: &std::path::Path) -> EmbeddedBroker {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            flush: FlushPolicy::Sync,
            preallocate: true,
        },
        default_queues: 4,
        ..StoreConfig::default()
    };
    EmbeddedBroker::new(
        Arc::new(Store::open(dir, cfg).unwrap()),
        DeliveryConfig::default(),
    )
}

fn msg(i: usize) -> Message {
    Message {
        topic: "A|X%T".into(),
        body: vec![i as u8; 3000],
        tag: (!i.is_multiple_of(3)).then(|| "TagA".into()),
        keys: vec![format!("order-{i}")],
        properties: [
            ("__SHARDINGKEY".to_owned(), format!("k{}", i % 5)),
            ("trace".to_owned(), format!("t{i}")),
        ]
        .into(),
        born_ms: 1_000 + i as i64,
    }
}

#[tokio::test]
async fn records_and_their_copies_match_the_owned_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = broker(&dir.path().join("src"));
    let a = broker(&dir.path().join("a"));
    let b = broker(&dir.path().join("b"));
    src.create_topic("A|X%T", 1).unwrap();
    // Enough 3 KiB messages to span several 64 KiB segments.
    let batch: Vec<_> = (0..60).map(|i| (msg(i), QueueSelect::Queue(0))).collect();
    src.send_batch(batch).await.unwrap();

    let owned = src.read("A|X%T", 0, 5, 50).unwrap();
    let records = src.read_records("A|X%T", 0, 5, 50).unwrap();
    assert_eq!(records.len(), 50);
    let back: Vec<_> = records.iter().map(|r| r.to_stored()).collect();
    assert_eq!(back, owned);
    assert!(src.read_records("A|X%T", 0, 60, 10).unwrap().is_empty());

    let copies: Vec<CopyOf<'_>> = records
        .iter()
        .map(|r| CopyOf {
            source: r,
            topic: "A|Y%T",
            set: ("__UNIT.COPY_FOR", "R"),
            select: QueueSelect::ShardingKey(r.property("__SHARDINGKEY").unwrap().to_owned()),
        })
        .collect();
    let by_records = a.send_record_copies(&copies).await.unwrap();
    let by_messages = b
        .send_copies(
            copies
                .iter()
                .map(|c| (c.to_message(), c.select.clone(), c.source.id()))
                .collect(),
        )
        .await
        .unwrap();
    for ((c, x), y) in copies.iter().zip(&by_records).zip(&by_messages) {
        assert_eq!(
            (x.id, x.queue, x.queue_offset),
            (y.id, y.queue, y.queue_offset)
        );
        let (mut x, mut y) = (
            a.get_by_id(&x.id).unwrap().unwrap(),
            b.get_by_id(&y.id).unwrap().unwrap(),
        );
        assert_eq!(x.id, c.source.id());
        assert_eq!(x.properties["__UNIT.COPY_FOR"], "R");
        assert_eq!(x.keys, [format!("order-{}", c.source.born_ms() - 1_000)]);
        (x.stored_ms, x.log_pos, y.stored_ms, y.log_pos) = (0, 0, 0, 0);
        assert_eq!(x, y);
    }
    // Copies are found by key in their topic, as any message is.
    assert_eq!(a.get_by_key("A|Y%T", "order-7").unwrap().len(), 1);
}

/// A takeover can put a message and its copy in one broker, under one id:
/// the router's replay asks for the copy's topic and must get only that.
#[tokio::test]
async fn find_ids_names_only_the_topic_asked() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let original = b.send(msg(1), QueueSelect::Queue(0)).await.unwrap();
    let lone = b.send(msg(2), QueueSelect::Queue(0)).await.unwrap();
    let mut copy = msg(1);
    copy.topic = "A|Y%T".into();
    b.send_copies(vec![(copy, QueueSelect::Queue(0), original.id)])
        .await
        .unwrap();
    let ids = [original.id, lone.id];
    let in_y = Broker::find_ids(&b, "A|Y%T", &ids, (0, i64::MAX))
        .await
        .unwrap();
    assert_eq!(in_y.len(), 1);
    assert_eq!((in_y[0].id, in_y[0].topic.as_str()), (original.id, "A|Y%T"));
    let in_t = Broker::find_ids(&b, "A|X%T", &ids, (0, i64::MAX))
        .await
        .unwrap();
    assert!(in_t.iter().all(|m| m.topic == "A|X%T"));
    assert_eq!(in_t.len(), 2);
    assert!(Broker::find_ids(&b, "A|Z%T", &ids, (0, i64::MAX))
        .await
        .unwrap()
        .is_empty());
}

/// A store that keeps three 64 KiB segments, with the one-queue topic
/// `A|X%T`.
fn retained_store(dir: &std::path::Path) -> Store {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            flush: FlushPolicy::Sync,
            preallocate: true,
        },
        retention_bytes: Some(3 * 64 * 1024),
        ..StoreConfig::default()
    };
    let s = Store::open(dir, cfg).unwrap();
    s.create_topic("A|X%T", 1).unwrap();
    s
}

#[tokio::test]
async fn records_below_retention_are_skipped_as_read_from_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = retained_store(dir.path());
    let batch: Vec<_> = (0..200).map(|i| (msg(i), QueueSelect::Queue(0))).collect();
    s.put_batch(batch).await.unwrap();
    assert!(s.enforce_retention().unwrap() > 0);
    let owned = s.read_from("A|X%T", 0, 0, 30).unwrap();
    let records = s.read_records("A|X%T", 0, 0, 30, false).unwrap();
    assert!(owned[0].queue_offset > 0);
    let back: Vec<_> = records.iter().map(|r| r.to_stored()).collect();
    assert_eq!(back, owned);
}

/// A copy (`send_copies`, `send_record_copies`) is marked in the log and in
/// its consume queue: `read_originals` leaves it out without reading it and
/// says where the next read starts, even when a read finds only copies;
/// `read_records` still returns everything. The mark survives a restart
/// that rebuilds the consume queues from the log.
#[tokio::test]
async fn read_originals_leaves_copies_out_across_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let offsets_of =
        |r: &cellgate_broker_core::Records| r.iter().map(|r| r.queue_offset()).collect::<Vec<_>>();
    {
        let b = broker(dir.path());
        b.create_topic("A|X%T", 1).unwrap();
        let q0 = || QueueSelect::Queue(0);
        // Offsets 0-4 originals, 5-7 owned copies, 8-9 record copies,
        // 10-11 originals.
        b.send_batch((0..5).map(|i| (msg(i), q0())).collect())
            .await
            .unwrap();
        let ids: Vec<_> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
        let copies = ids.iter().map(|id| (msg(9), q0(), *id)).collect();
        b.send_copies(copies).await.unwrap();
        let src = b.read_records("A|X%T", 0, 0, 2).unwrap();
        let copies: Vec<_> = src
            .iter()
            .map(|r| CopyOf {
                source: r,
                topic: "A|X%T",
                set: ("__UNIT.COPY_FOR", "R"),
                select: q0(),
            })
            .collect();
        b.send_record_copies(&copies).await.unwrap();
        b.send_batch((10..12).map(|i| (msg(i), q0())).collect())
            .await
            .unwrap();

        let all = Broker::read_originals(&b, "A|X%T", 0, 0, 100)
            .await
            .unwrap();
        assert_eq!(offsets_of(&all), [0, 1, 2, 3, 4, 10, 11]);
        assert_eq!(all.end(), Some(12));
        let only_copies = Broker::read_originals(&b, "A|X%T", 0, 5, 5).await.unwrap();
        assert!(only_copies.is_empty());
        assert_eq!(only_copies.end(), Some(10), "past the copies it skipped");
        let past_end = Broker::read_originals(&b, "A|X%T", 0, 12, 5).await.unwrap();
        assert_eq!(past_end.end(), None);
        let everything = b.read_records("A|X%T", 0, 0, 100).unwrap();
        assert_eq!(everything.len(), 12);
        b.store().close().unwrap();
    }
    // Rebuild every consume queue from the log: no checkpoint, no queues.
    std::fs::remove_file(dir.path().join("checkpoint.json")).unwrap();
    std::fs::remove_dir_all(dir.path().join("queues")).unwrap();
    let b = broker(dir.path());
    let all = Broker::read_originals(&b, "A|X%T", 0, 0, 100)
        .await
        .unwrap();
    assert_eq!(offsets_of(&all), [0, 1, 2, 3, 4, 10, 11]);
    assert_eq!(b.read_records("A|X%T", 0, 0, 100).unwrap().len(), 12);
}

/// A reader whose queue lies wholly below the retained log moves past it:
/// the read is empty but says where the next one starts (the router's
/// journal would otherwise never leave the expired offsets).
#[tokio::test]
async fn a_queue_wholly_below_retention_still_moves_the_reader_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = retained_store(dir.path());
    s.create_topic("A|X%FILL", 1).unwrap();
    let batch: Vec<_> = (0..40).map(|i| (msg(i), QueueSelect::Queue(0))).collect();
    s.put_batch(batch).await.unwrap();
    // Enough of another topic that every segment of the first is deleted.
    for i in 0..200 {
        let mut m = msg(i);
        m.topic = "A|X%FILL".into();
        s.put(m, QueueSelect::Queue(0)).await.unwrap();
    }
    assert!(s.enforce_retention().unwrap() > 0);
    assert_eq!(s.queue_range("A|X%T", 0).unwrap(), (40, 40));
    for originals in [false, true] {
        let r = s.read_records("A|X%T", 0, 0, 30, originals).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.end(), Some(40), "moves on past what retention took");
    }
}
