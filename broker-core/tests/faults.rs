//! The log under a failing disk, through fail points in `Segment`
//! (`segment::write_at`, `segment::sync`; the `failpoints` feature, which
//! this crate's tests turn on). What the log's docs promise:
//! - a failed `pwrite` loses nothing and hangs nobody: it is tried again,
//!   and no appender is acknowledged before its records are written;
//! - under `sync` nothing is acknowledged while writes fail;
//! - a failed fsync stops the log (`Error::LogFailed`), and a restart
//!   recovers every acknowledged message.
//!
//! Fail points are global: each test holds a `FailScenario`, which runs
//! them one at a time.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{Error, Message, QueueSelect, Store, StoreConfig};
use fail::FailScenario;

const T: &str = "ANT|RZ00A%T1";

fn open(dir: &Path, flush: FlushPolicy) -> Store {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: 1 << 20,
            flush,
            preallocate: true,
        },
        ..StoreConfig::default()
    };
    let s = Store::open(dir, cfg).unwrap();
    if s.queues(T).is_none() {
        s.create_topic(T, 1).unwrap();
    }
    s
}

fn async_flush() -> FlushPolicy {
    FlushPolicy::Async {
        interval: Duration::from_millis(10),
    }
}

fn msg(i: usize) -> Message {
    Message {
        topic: T.into(),
        body: format!("m{i}").into_bytes(),
        keys: vec![format!("k{i}")],
        born_ms: 1,
        ..Message::default()
    }
}

/// The bodies of queue 0, in offset order.
fn bodies(s: &Store) -> Vec<String> {
    s.read_from(T, 0, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_retried_and_loses_no_record() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), async_flush());
    s.put(msg(0), QueueSelect::Queue(0)).await.unwrap();
    fail::cfg("segment::write_at", "1*return").unwrap();
    // The appender that leads the failed write hears of it...
    let e = s.put(msg(1), QueueSelect::Queue(0)).await.unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // ...but its record is written by the next try, in its place.
    s.put(msg(2), QueueSelect::Queue(0)).await.unwrap();
    assert_eq!(bodies(&s), ["m0", "m1", "m2"]);
    drop(s);
    let s = open(dir.path(), async_flush());
    assert_eq!(bodies(&s), ["m0", "m1", "m2"], "after a reopen");
    scenario.teardown();
}

/// An appender that queued behind a write that then failed is written by
/// the flusher's next try, not left waiting for an append that may never
/// come (under `async` appenders write, and the failed writer is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appender_behind_a_failed_write_is_not_left_waiting() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), async_flush()));
    // The next write blocks 400 ms, then fails.
    fail::cfg("segment::write_at", "1*return(400)").unwrap();
    let put = |i| {
        let s = s.clone();
        tokio::spawn(async move { s.put(msg(i), QueueSelect::Queue(0)).await })
    };
    let first = put(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = put(1);
    // Whichever reached the log first led the failed write (on a busy
    // machine it may be the second); the other queued behind it, or, had
    // it come after the failure, led the retry itself.
    let mut failed = 0;
    for p in [first, second] {
        let r = tokio::time::timeout(Duration::from_secs(20), p)
            .await
            .expect("an appender hung behind the failed write")
            .unwrap();
        failed += usize::from(r.is_err());
    }
    assert_eq!(failed, 1, "one write failed, and only one");
    let mut got = bodies(&s);
    got.sort();
    assert_eq!(got, ["m0", "m1"]);
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sync_nothing_is_acknowledged_while_writes_fail() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), FlushPolicy::Sync));
    fail::cfg("segment::write_at", "return").unwrap();
    let put = {
        let s = s.clone();
        tokio::spawn(async move { s.put(msg(0), QueueSelect::Queue(0)).await })
    };
    // Several of the flusher's rounds (200 ms) fail meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!put.is_finished(), "acknowledged before any write landed");
    fail::remove("segment::write_at");
    tokio::time::timeout(Duration::from_secs(20), put)
        .await
        .expect("not acknowledged once writes work again")
        .unwrap()
        .unwrap();
    drop(s);
    let s = open(dir.path(), FlushPolicy::Sync);
    assert_eq!(bodies(&s), ["m0"]);
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_log_and_a_restart_recovers() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), FlushPolicy::Sync);
    s.put(msg(0), QueueSelect::Queue(0)).await.unwrap();
    fail::cfg("segment::sync", "return").unwrap();
    let e = s.put(msg(1), QueueSelect::Queue(0)).await.unwrap_err();
    assert!(matches!(e, Error::LogFailed), "{e}");
    fail::remove("segment::sync");
    // Not tried again: a later fsync's success proves nothing.
    let e = s.put(msg(2), QueueSelect::Queue(0)).await.unwrap_err();
    assert!(matches!(e, Error::LogFailed), "{e}");
    drop(s);
    let s = open(dir.path(), FlushPolicy::Sync);
    let got = bodies(&s);
    assert_eq!(got.first().map(String::as_str), Some("m0"), "{got:?}");
    assert!(!got.iter().any(|b| b == "m2"), "refused, never stored");
    s.put(msg(3), QueueSelect::Queue(0)).await.unwrap();
    assert_eq!(bodies(&s).last().map(String::as_str), Some("m3"));
    scenario.teardown();
}
