//! A transaction's commit shares its half message's body
//! (`record/shared_body.rs`): over a real store, every read path returns the
//! body whole, a restart keeps it, and a commit that lands in a later
//! segment than its half is written whole, so retention cannot take its
//! body away.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{
    Broker, Decision, DeliveryConfig, EmbeddedBroker, Message, QueueSelect, ReceiveOptions, Store,
    StoreConfig,
};

const T: &str = "ANT|RZ00A%T1";
const G: &str = "ANT|RZ00A%G1";
const P: &str = "ANT|RZ00A%P1";
const SEGMENT: u64 = 256 << 10;

fn broker(dir: &Path, retention_bytes: Option<u64>) -> (Arc<EmbeddedBroker>, Arc<Store>) {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: SEGMENT,
            flush: FlushPolicy::Sync,
            preallocate: false,
        },
        default_queues: 1,
        retention_bytes,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(dir, cfg).unwrap());
    let b = EmbeddedBroker::new(store.clone(), DeliveryConfig::default());
    (Arc::new(b), store)
}

fn msg(topic: &str, fill: u8, len: usize) -> Message {
    Message {
        topic: topic.into(),
        body: vec![fill; len],
        tag: Some("TagA".into()),
        keys: vec!["order-1".into()],
        properties: [("__UNIT.ORIUNIT".to_owned(), "RZ00A".to_owned())].into(),
        born_ms: 1,
    }
}

fn opts() -> ReceiveOptions {
    ReceiveOptions {
        max_messages: 16,
        invisible: std::time::Duration::from_secs(60),
        ..ReceiveOptions::default()
    }
}

/// Sends and commits one transaction; returns the committed message's
/// offset in `T` (queue 0).
async fn commit(b: &EmbeddedBroker, m: Message) -> (uuid::Uuid, u64) {
    let r = b
        .send_transactional(m, QueueSelect::Queue(0), P)
        .await
        .unwrap();
    b.end_transaction(&r.id, Decision::Commit).await.unwrap();
    let committed = b.find_ids(T, &[r.id]).unwrap();
    assert_eq!(committed.len(), 1, "committed once");
    (r.id, committed[0].queue_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_stores_a_reference_and_every_read_returns_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let (b, store) = broker(dir.path(), None);
    let sent = msg(T, 7, 4096);
    let (id, offset) = commit(&b, sent.clone()).await;

    // What is on disk: the commit's record is a few hundred bytes, not 4 KiB.
    let entry = store.entries(T, 0, offset, 1).unwrap()[0];
    assert!(entry.size < 300, "commit record of {} bytes", entry.size);

    // Read by offset, by id, through the router's encoded path, and by a
    // consumer group: the body is there, byte for byte.
    let by_offset = store.read_offset(T, 0, offset).unwrap().unwrap();
    assert_eq!((by_offset.id, &by_offset.body), (id, &sent.body));
    assert_eq!(by_offset.properties, sent.properties);
    let records = b.read_records(T, 0, offset, 8).unwrap();
    let rec = records.get(0).unwrap();
    assert_eq!((rec.id(), rec.body()), (id, &sent.body[..]));
    assert_eq!(rec.property("__UNIT.ORIUNIT"), Some("RZ00A"));
    let got = b.receive(G, T, opts()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.body, sent.body);

    // And after a restart (recovery reads the commit's record too).
    b.close().unwrap();
    drop((b, store));
    let (b, store) = broker(dir.path(), None);
    let again = store.read_offset(T, 0, offset).unwrap().unwrap();
    assert_eq!((again.id, again.body), (id, sent.body));
    let state = b.transaction(&id).unwrap().unwrap().state;
    assert_eq!(state.as_str(), "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_a_later_segment_than_its_half_is_whole_and_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    let (b, store) = broker(dir.path(), Some(SEGMENT));
    let sent = msg(T, 9, 8192);
    let half = b
        .send_transactional(sent.clone(), QueueSelect::Queue(0), P)
        .await
        .unwrap();
    // Fill the rest of the half's segment, so the commit lands in the next.
    let mut last = half.log_pos;
    while last / SEGMENT == half.log_pos / SEGMENT {
        last = b
            .send(msg("ANT|RZ00A%FILL", 1, 8192), QueueSelect::Queue(0))
            .await
            .unwrap()
            .log_pos;
    }
    b.end_transaction(&half.id, Decision::Commit).await.unwrap();
    let offset = b.find_ids(T, &[half.id]).unwrap()[0].queue_offset;
    let entry = store.entries(T, 0, offset, 1).unwrap()[0];
    assert_ne!(entry.log_pos / SEGMENT, half.log_pos / SEGMENT);
    assert!(entry.size > 8192, "written whole: {} bytes", entry.size);

    // Retention deletes the half's segment; the commit keeps its body.
    store.enforce_retention().unwrap();
    assert!(
        !matches!(store.read_offset("%HALF%", 0, 0), Ok(Some(_))),
        "the half's segment is gone"
    );
    let read = store.read_offset(T, 0, offset).unwrap().unwrap();
    assert_eq!((read.id, read.body), (half.id, sent.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_not_worth_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (b, store) = broker(dir.path(), None);
    let sent = msg(T, 3, 16);
    let (_, offset) = commit(&b, sent.clone()).await;
    let read = store.read_offset(T, 0, offset).unwrap().unwrap();
    assert_eq!(read.body, sent.body);
    let whole = cellgate_broker_core::record::encoded_len(&sent).unwrap();
    let entry = store.entries(T, 0, offset, 1).unwrap()[0];
    assert_eq!(entry.size as usize, whole);
}

/// Rewrites the body reference of the record at `pos` (a commit) in the
/// log file, with a valid checksum: a damaged or stray reference that the
/// CRC cannot catch.
fn rewrite_body_at(dir: &Path, pos: u64, size: u32, at: u64, len: u32) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("log").join(format!("{:020}", 0)))
        .unwrap();
    let mut rec = vec![0u8; size as usize];
    f.read_exact_at(&mut rec, pos).unwrap();
    assert_eq!(rec[9] & 1, 1, "a BODY_AT record");
    // The body section comes last: `pos u64, len u32`.
    let n = rec.len();
    rec[n - 12..n - 4].copy_from_slice(&at.to_le_bytes());
    rec[n - 4..].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&rec, pos).unwrap();
}

/// A reference the checksum cannot catch (written by a bug, or bytes
/// changed and resealed) is refused with the reason, never answered with
/// another message's body or a wrong length: one case per check of
/// `Store::fill_body`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_body_reference_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (b, store) = broker(dir.path(), None);
    let other = b
        .send_transactional(msg(T, 8, 4096), QueueSelect::Queue(0), P)
        .await
        .unwrap();
    let half = b
        .send_transactional(msg(T, 7, 4096), QueueSelect::Queue(0), P)
        .await
        .unwrap();
    b.end_transaction(&half.id, Decision::Commit).await.unwrap();
    let offset = b.find_ids(T, &[half.id]).unwrap()[0].queue_offset;
    let entry = store.entries(T, 0, offset, 1).unwrap()[0];
    b.close().unwrap();
    drop((b, store));

    let cases = [
        (
            entry.log_pos,
            4096,
            "not an earlier record of the same segment",
        ),
        (other.log_pos, 4096, "the record there is another message's"),
        (half.log_pos, 4095, "the body there has another length"),
    ];
    for (at, len, why) in cases {
        rewrite_body_at(dir.path(), entry.log_pos, entry.size, at, len);
        let (b, store) = broker(dir.path(), None);
        let e = store.read_offset(T, 0, offset).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the record at log position {} refers to its body at {at}, but {why}",
                entry.log_pos
            )
        );
        // The router's encoded read refuses it the same way.
        let e = b.read_records(T, 0, offset, 1).unwrap_err();
        assert!(e.to_string().ends_with(why), "{e}");
        b.close().unwrap();
    }
    // Put back, it reads as before: nothing else was damaged.
    rewrite_body_at(dir.path(), entry.log_pos, entry.size, half.log_pos, 4096);
    let (_b, store) = broker(dir.path(), None);
    let read = store.read_offset(T, 0, offset).unwrap().unwrap();
    assert_eq!((read.id, read.body), (half.id, vec![7; 4096]));
}
