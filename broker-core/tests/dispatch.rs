//! Dispatch off the put path: index entries are written by a background
//! thread that lags the log. Readers must never see an entry before its
//! record is written, the thread alone must make every put visible, and
//! recovery must rebuild index entries that lag the log.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{Message, QueueSelect, Store, StoreConfig};

const T: &str = "ANT|RZ00A%DISPATCH";

fn cfg(flush: FlushPolicy) -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_bytes: 128 * 1024,
            flush,
            preallocate: true,
        },
        ..StoreConfig::default()
    }
}

fn asynchronous() -> FlushPolicy {
    FlushPolicy::Async {
        interval: Duration::from_millis(5),
    }
}

fn msg(p: usize, i: usize) -> Message {
    Message {
        topic: T.into(),
        body: format!("p{p}-{i}:{}", "x".repeat(i % 300)).into_bytes(),
        keys: vec![format!("k-{p}-{i}")],
        ..Message::default()
    }
}

/// Reads every entry of every queue from `next` on, checking each record;
/// returns how many were read.
fn read_new(s: &Store, next: &mut [u64]) -> usize {
    let mut n = 0;
    for (q, from) in next.iter_mut().enumerate() {
        for e in s.entries(T, q as u16, *from, 64).unwrap() {
            // An entry whose record is not written yet fails here: the
            // read refuses positions past the written end of the log.
            let m = s.read(&e).unwrap();
            assert_eq!((m.queue, m.queue_offset), (q as u16, *from));
            *from += 1;
            n += 1;
        }
    }
    n
}

async fn readers_only_see_written_records(flush: FlushPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), cfg(flush)).unwrap());
    s.create_topic(T, 4).unwrap();
    let (producers, per) = (8, 300);
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut next = vec![0u64; 4];
            let mut seen = 0;
            while seen < producers * per {
                seen += read_new(&s, &mut next);
            }
            seen
        })
    };
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    s.put(msg(p, i), QueueSelect::RoundRobin).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(reader.join().unwrap(), producers * per);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_an_entry_before_its_record_is_written_async() {
    readers_only_see_written_records(asynchronous()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_an_entry_before_its_record_is_written_sync() {
    readers_only_see_written_records(FlushPolicy::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_alone_makes_every_put_visible() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg(asynchronous())).unwrap();
    s.create_topic(T, 2).unwrap();
    let mut appended = s.appended();
    let mut last = None;
    for i in 0..500 {
        last = Some(s.put(msg(0, i), QueueSelect::RoundRobin).await.unwrap());
    }
    let last = last.unwrap();
    // No read in between: only the dispatcher thread moves this.
    tokio::time::timeout(
        Duration::from_secs(10),
        appended.wait_for(|d| *d > last.log_pos),
    )
    .await
    .unwrap()
    .unwrap();
    let total: u64 = (0..2).map(|q| s.queue_range(T, q).unwrap().1).sum();
    assert_eq!(total, 500);
}

fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

#[tokio::test]
async fn recovery_rebuilds_index_entries_that_lag_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), cfg(asynchronous())).unwrap();
    s.create_topic(T, 2).unwrap();
    for i in 0..20 {
        s.put(msg(0, i), QueueSelect::RoundRobin).await.unwrap();
    }
    // A checkpoint covering the first 20.
    s.close().unwrap();
    drop(s);
    let keys = dir.path().join("keys.idx");
    let keys_len = std::fs::metadata(&keys).unwrap().len();
    let s = Store::open(dir.path(), cfg(asynchronous())).unwrap();
    let mut ids = Vec::new();
    for i in 20..50 {
        ids.push(s.put(msg(0, i), QueueSelect::RoundRobin).await.unwrap().id);
    }
    // A crash without close, with the dispatcher behind: index files that
    // hold only what the checkpoint covers.
    drop(s);
    for q in 0..2 {
        truncate(
            &dir.path()
                .join("queues/ANT%7CRZ00A%25DISPATCH")
                .join(q.to_string()),
            10 * 24,
        );
    }
    truncate(&keys, keys_len);
    let s = Store::open(dir.path(), cfg(asynchronous())).unwrap();
    assert_eq!(s.queue_range(T, 0).unwrap(), (0, 25));
    assert_eq!(s.queue_range(T, 1).unwrap(), (0, 25));
    let mut next = vec![0u64; 2];
    assert_eq!(read_new(&s, &mut next), 50);
    for (i, id) in (20..50).zip(&ids) {
        let by_key = s.get_by_key(T, &format!("k-0-{i}")).unwrap();
        assert_eq!(by_key.len(), 1, "key of message {i}");
        assert_eq!(s.get_by_id(id).unwrap().unwrap().keys, [format!("k-0-{i}")]);
    }
    // Offsets continue after the rebuilt entries.
    let r = s.put(msg(0, 50), QueueSelect::Queue(1)).await.unwrap();
    assert_eq!(r.queue_offset, 25);
}
