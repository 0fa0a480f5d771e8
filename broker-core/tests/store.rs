//! The store over real files: put, read by offset, time, id and key;
//! queue selection; reopen; typed errors; retention.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{Error, Message, QueueSelect, Store, StoreConfig};

fn cfg() -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            flush: FlushPolicy::Sync,
            preallocate: true,
        },
        ..StoreConfig::default()
    }
}

fn msg(topic: &str, i: usize) -> Message {
    Message {
        topic: topic.into(),
        body: format!("m{i}").into_bytes(),
        tag: Some(if i.is_multiple_of(2) { "Even" } else { "Odd" }.into()),
        keys: vec![format!("order-{}", i % 10)],
        properties: [("i".to_owned(), i.to_string())].into(),
        born_ms: 1,
    }
}

/// A store with one single-queue topic "T" holding `n` 8 KiB messages
/// (several 64 KiB segments).
async fn filled(dir: &Path, c: StoreConfig, n: usize) -> (Store, &'static str) {
    let s = Store::open(dir, c).unwrap();
    let t = "T";
    s.create_topic(t, 1).unwrap();
    let mut big = msg(t, 0);
    big.body = vec![7; 8 * 1024];
    for _ in 0..n {
        s.put(big.clone(), QueueSelect::Queue(0)).await.unwrap();
    }
    (s, t)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, cfg()).unwrap()
}

#[tokio::test]
async fn put_then_read_by_offset_id_key_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let t = "ANT|RZ00A%T1";
    s.create_topic(t, 2).unwrap();
    let mut results = Vec::new();
    for i in 0..20 {
        results.push(
            s.put(msg(t, i), QueueSelect::Queue((i % 2) as u16))
                .await
                .unwrap(),
        );
    }
    assert_eq!(s.queue_range(t, 0).unwrap(), (0, 10));
    let entries = s.entries(t, 1, 0, 100).unwrap();
    assert_eq!(entries.len(), 10);
    let m = s.read(&entries[3]).unwrap();
    assert_eq!((m.body, m.queue, m.queue_offset), (b"m7".to_vec(), 1, 3));
    assert_eq!(m.properties["i"], "7");
    // By id and by key.
    let by_id = s.get_by_id(&results[7].id).unwrap().unwrap();
    assert_eq!(by_id.body, b"m7");
    let by_key = s.get_by_key(t, "order-3").unwrap();
    assert_eq!(
        by_key.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        [b"m3".to_vec(), b"m13".to_vec()]
    );
    assert!(s.get_by_key("OTHER", "order-3").unwrap().is_empty());
    // By time: everything was stored at or after the first stamp.
    assert_eq!(s.offset_at_time(t, 0, results[0].stored_ms).unwrap(), 0);
    assert_eq!(s.offset_at_time(t, 0, i64::MAX).unwrap(), 10);
}

#[tokio::test]
async fn queue_selection_round_robin_and_by_sharding_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let t = "T";
    s.create_topic(t, 4).unwrap();
    let mut rr = Vec::new();
    for i in 0..8 {
        rr.push(
            s.put(msg(t, i), QueueSelect::RoundRobin)
                .await
                .unwrap()
                .queue,
        );
    }
    assert_eq!(rr, [0, 1, 2, 3, 0, 1, 2, 3]);
    let mut by_key = Vec::new();
    for i in 0..6 {
        by_key.push(
            s.put(msg(t, i), QueueSelect::ShardingKey("user-42".into()))
                .await
                .unwrap(),
        );
    }
    assert!(
        by_key.windows(2).all(|w| w[0].queue == w[1].queue),
        "one key, one queue"
    );
    assert!(
        by_key
            .windows(2)
            .all(|w| w[0].queue_offset + 1 == w[1].queue_offset),
        "in order"
    );
}

#[tokio::test]
async fn everything_survives_a_reopen_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let t = "ANT|RZ00A%T1";
    let first = {
        let s = open(dir.path());
        for i in 0..50 {
            s.put(msg(t, i), QueueSelect::Queue(0)).await.unwrap();
        }
        s.close().unwrap();
        s.get_by_key(t, "order-1").unwrap().len()
    };
    let s = open(dir.path());
    assert_eq!(s.queues(t), Some(4));
    assert_eq!(s.queue_range(t, 0).unwrap(), (0, 50));
    assert_eq!(s.get_by_key(t, "order-1").unwrap().len(), first);
    let r = s.put(msg(t, 50), QueueSelect::Queue(0)).await.unwrap();
    assert_eq!(r.queue_offset, 50);
}

#[tokio::test]
async fn errors_are_typed_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        StoreConfig {
            auto_create_topics: false,
            max_message_bytes: 100,
            ..cfg()
        },
    )
    .unwrap();
    let e = s
        .put(msg("NOPE", 0), QueueSelect::RoundRobin)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownTopic(_)));
    assert_eq!(e.to_string(), "topic NOPE does not exist");
    s.create_topic("T", 2).unwrap();
    let e = s.create_topic("T", 3).unwrap_err();
    assert_eq!(e.to_string(), "topic T already exists with 2 queues, not 3");
    let e = s.put(msg("T", 0), QueueSelect::Queue(5)).await.unwrap_err();
    assert_eq!(e.to_string(), "topic T has 2 queues, there is no queue 5");
    let mut big = msg("T", 0);
    big.body = vec![0; 101];
    let e = s.put(big, QueueSelect::RoundRobin).await.unwrap_err();
    assert_eq!(e.to_string(), "message is 101 bytes, over the limit of 100");
    let e = s.entries("T", 9, 0, 1).unwrap_err();
    assert!(matches!(e, Error::UnknownQueue { .. }));
    let e = s.create_topic("Z", 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: a topic needs at least one queue"
    );
}

#[tokio::test]
async fn retention_by_size_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let c = StoreConfig {
        retention_bytes: Some(3 * 64 * 1024),
        retention_age: Duration::from_secs(3600),
        ..cfg()
    };
    let (s, t) = filled(dir.path(), c, 60).await;
    let before = s.queue_range(t, 0).unwrap();
    assert_eq!(before, (0, 60));
    let min_pos = s.enforce_retention().unwrap();
    assert!(min_pos > 0);
    let (lo, hi) = s.queue_range(t, 0).unwrap();
    assert!(lo > 0 && hi == 60, "{lo}..{hi}");
    // What remains is readable; what is gone is refused, not garbage.
    let e = s.entries(t, 0, lo, 1).unwrap()[0];
    assert_eq!(s.read(&e).unwrap().body.len(), 8 * 1024);
    let gone = s.entries(t, 0, 0, 1).unwrap()[0];
    assert!(matches!(s.read(&gone), Err(Error::OutOfRange { .. })));
}

#[tokio::test]
async fn retention_by_age_deletes_segments_older_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let c = StoreConfig {
        retention_age: Duration::from_secs(72 * 3600),
        ..cfg()
    };
    let (s, t) = filled(dir.path(), c, 30).await;
    // Nothing is old yet.
    assert_eq!(s.enforce_retention().unwrap(), 0);
    // Age the first two segments past 72 h.
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let old = std::time::SystemTime::now() - Duration::from_secs(100 * 3600);
    for p in &segs[..2] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let min = s.enforce_retention().unwrap();
    let third: u64 = segs[2]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(min, third);
    assert!(!segs[0].exists() && !segs[1].exists() && segs[2].exists());
    assert!(s.queue_range(t, 0).unwrap().0 > 0);
}

#[tokio::test]
async fn storage_error_paths_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // A segment too small for any record is refused at open.
    let tiny = StoreConfig {
        log: LogConfig {
            segment_bytes: 16,
            flush: FlushPolicy::Sync,
            preallocate: false,
        },
        ..cfg()
    };
    let e = Store::open(&dir.path().join("tiny"), tiny).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: segment_bytes 16 is too small"
    );

    let (s, t) = filled(&dir.path().join("main"), cfg(), 3).await;
    // A read past the log is OutOfRange, with the retained range.
    let mut e = s.entries(t, 0, 0, 1).unwrap()[0];
    e.log_pos += 1 << 30;
    let err = s.read(&e).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }));
    assert!(
        err.to_string().starts_with(&format!(
            "log position {} is outside the retained log [0, ",
            e.log_pos
        )),
        "{err}"
    );
    // Bytes changed on disk are caught by the checksum on every read.
    let e = s.entries(t, 0, 1, 1).unwrap()[0];
    let seg = dir.path().join("main/log").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[e.log_pos as usize + e.size as usize - 1] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let err = s.read(&e).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }));
    assert!(
        err.to_string().starts_with(&format!(
            "corrupt record at log position {}: checksum mismatch (stored ",
            e.log_pos
        )),
        "{err}"
    );
    // A message too big for a segment is refused before anything is written.
    let small = StoreConfig {
        log: LogConfig {
            segment_bytes: 4096,
            flush: FlushPolicy::Sync,
            preallocate: false,
        },
        max_message_bytes: 1 << 20,
        ..cfg()
    };
    let s2 = Store::open(&dir.path().join("small"), small).unwrap();
    let mut m = msg("T", 0);
    m.body = vec![0; 8192];
    let err = s2.put(m, QueueSelect::RoundRobin).await.unwrap_err();
    assert!(
        err.to_string().starts_with("message is ")
            && err.to_string().ends_with("over the limit of 4092"),
        "{err}"
    );
}

/// Batches from one record to ~50 KiB, interleaved with single puts from
/// another task and across many 64 KiB segment rolls (a batch's records
/// land on both sides of a roll), read back intact and in order, and
/// survive a reopen that re-checks every record (no checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_and_single_puts_interleave_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let t = "T";
    let body = |q: u16, i: usize| {
        let mut b = format!("q{q}-{i}-").into_bytes();
        b.resize(1500 + i % 700, b'a' + (i % 26) as u8);
        b
    };
    let sent = {
        let s = std::sync::Arc::new(open(dir.path()));
        s.create_topic(t, 2).unwrap();
        let singles = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let mut m = msg(t, i);
                    m.body = body(1, i);
                    s.put(m, QueueSelect::Queue(1)).await.unwrap();
                }
            })
        };
        let mut i = 0;
        // 1 to 24 messages of ~2 KiB: batches from 2 to ~50 KiB.
        for n in (1..=24).cycle().take(40) {
            let batch = (i..i + n)
                .map(|j| {
                    let mut m = msg(t, j);
                    m.body = body(0, j);
                    (m, QueueSelect::Queue(0))
                })
                .collect();
            let r = s.put_batch(batch).await.unwrap();
            assert_eq!(r.len(), n);
            assert!(r.iter().zip(i..).all(|(r, j)| r.queue_offset == j as u64));
            i += n;
        }
        singles.await.unwrap();
        s.close().unwrap();
        i
    };
    assert!(
        sent * 2000 > 10 * 64 * 1024,
        "rolls many segments ({sent} messages)"
    );
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("checkpoint")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let s = open(dir.path());
    for (q, n) in [(0u16, sent), (1, 150)] {
        assert_eq!(s.queue_range(t, q).unwrap(), (0, n as u64));
        let mut got = Vec::new();
        while got.len() < n {
            let entries = s.entries(t, q, got.len() as u64, 64).unwrap();
            assert!(!entries.is_empty());
            got.extend(entries.iter().map(|e| s.read(e).unwrap()));
        }
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.body, body(q, i), "queue {q} offset {i}");
            assert_eq!(m.properties["i"], i.to_string());
        }
    }
}
