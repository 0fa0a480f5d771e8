//! Consumer groups over a real store: clustering, invisibility and
//! redelivery, nack back-off, dead letters and re-drive, broadcast, server
//! side filters, long polling, durable progress, reset and lag.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{
    Broker, ConsumeMode, DeliveryConfig, EmbeddedBroker, Error, Message, Predicate, QueueSelect,
    ReceiveOptions, Store, StoreConfig, TagFilter,
};

const T: &str = "ANT|RZ00A%T1";
const G: &str = "ANT|RZ00A%G1";

fn broker(dir: &Path, levels_ms: &[u64], max_attempts: u32) -> Arc<EmbeddedBroker> {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: 1 << 20,
            flush: FlushPolicy::Sync,
            preallocate: false,
        },
        default_queues: 2,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(dir, cfg).unwrap());
    let d = DeliveryConfig {
        retry_levels: levels_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
        max_attempts,
    };
    Arc::new(EmbeddedBroker::new(store, d))
}

fn msg(i: usize, tag: &str) -> Message {
    Message {
        topic: T.into(),
        body: format!("m{i}").into_bytes(),
        tag: Some(tag.into()),
        keys: vec![format!("k{i}")],
        properties: [("n".to_owned(), i.to_string())].into(),
        born_ms: 0,
    }
}

async fn publish(b: &EmbeddedBroker, n: usize) {
    for i in 0..n {
        b.send(msg(i, "A"), QueueSelect::RoundRobin).await.unwrap();
    }
}

fn opts(max: usize, invisible_ms: u64) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        invisible: Duration::from_millis(invisible_ms),
        ..ReceiveOptions::default()
    }
}

fn bodies(ds: &[cellgate_broker_core::Delivery]) -> BTreeSet<String> {
    ds.iter()
        .map(|d| String::from_utf8(d.message.body.clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn clustering_delivers_each_message_to_one_consumer_and_acks_clear_lag() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    publish(&b, 20).await;
    let first = b.receive(G, T, opts(7, 30_000)).await.unwrap();
    let second = b.receive(G, T, opts(100, 30_000)).await.unwrap();
    assert_eq!(first.len() + second.len(), 20);
    assert!(bodies(&first).is_disjoint(&bodies(&second)));
    let lag: u64 = b
        .lag(G, T, &ConsumeMode::Clustering)
        .unwrap()
        .iter()
        .map(|l| l.lag)
        .sum();
    assert_eq!(lag, 20, "in flight still counts");
    for d in first.iter().chain(&second) {
        assert_eq!(d.attempt, 1);
        b.ack(G, T, &ConsumeMode::Clustering, &d.receipt).unwrap();
    }
    let lags = b.lag(G, T, &ConsumeMode::Clustering).unwrap();
    assert!(
        lags.iter()
            .all(|l| l.lag == 0 && l.inflight == 0 && l.committed == l.max),
        "{lags:?}"
    );
    assert!(b.receive(G, T, opts(10, 30_000)).await.unwrap().is_empty());
}

#[tokio::test]
async fn unacked_messages_come_back_after_the_invisibility_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    publish(&b, 1).await;
    let d1 = b.receive(G, T, opts(1, 100)).await.unwrap().remove(0);
    // Waits (woken at the visibility deadline, not by polling) for the redelivery.
    let o = ReceiveOptions {
        wait: Duration::from_secs(20),
        ..opts(1, 100)
    };
    let d2 = b.receive(G, T, o).await.unwrap().remove(0);
    assert_eq!(d2.message.id, d1.message.id);
    assert_eq!(d2.attempt, 2);
    let stale = b
        .ack(G, T, &ConsumeMode::Clustering, &d1.receipt)
        .unwrap_err();
    assert!(matches!(stale, Error::BadReceipt));
    assert_eq!(stale.to_string(), "receipt handle is invalid or expired");
    b.ack(G, T, &ConsumeMode::Clustering, &d2.receipt).unwrap();
    // Acking again is harmless.
    b.ack(G, T, &ConsumeMode::Clustering, &d2.receipt).unwrap();
}

#[tokio::test]
async fn nacks_back_off_then_dead_letter_then_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[30, 60], 3);
    publish(&b, 1).await;
    let wait = |inv| ReceiveOptions {
        wait: Duration::from_secs(20),
        ..opts(1, inv)
    };
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let d = b.receive(G, T, wait(30_000)).await.unwrap().remove(0);
        attempts.push(d.attempt);
        b.nack(G, T, &ConsumeMode::Clustering, &d.receipt).unwrap();
    }
    assert_eq!(attempts, [1, 2, 3]);
    // The fourth attempt would exceed the limit: it goes to %DLQ%<group>.
    let none = b
        .receive(
            G,
            T,
            ReceiveOptions {
                wait: Duration::from_millis(300),
                ..opts(1, 30_000)
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    let dlq = format!("%DLQ%{G}");
    let dead = b.receive("AUDIT", &dlq, opts(10, 30_000)).await.unwrap();
    assert_eq!(dead.len(), 1);
    let p = &dead[0].message.properties;
    assert_eq!(
        (
            p["__ORIGIN_TOPIC"].as_str(),
            p["__DELIVERY_ATTEMPTS"].as_str()
        ),
        (T, "3")
    );
    assert_eq!(
        b.lag(G, T, &ConsumeMode::Clustering)
            .unwrap()
            .iter()
            .map(|l| l.lag)
            .sum::<u64>(),
        0
    );
    // Re-drive puts it back on its topic, where the group gets it afresh.
    assert_eq!(b.redrive(G, 10).await.unwrap(), 1);
    let again = b.receive(G, T, opts(1, 30_000)).await.unwrap();
    assert_eq!(again[0].message.body, b"m0");
    assert_eq!(again[0].attempt, 1);
    assert!(!again[0].message.properties.contains_key("__ORIGIN_TOPIC"));
}

#[tokio::test]
async fn broadcast_gives_every_consumer_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    publish(&b, 5).await;
    for id in ["c1", "c2"] {
        let o = ReceiveOptions {
            mode: ConsumeMode::Broadcast {
                consumer_id: id.into(),
            },
            ..opts(10, 30_000)
        };
        assert_eq!(b.receive(G, T, o).await.unwrap().len(), 5, "{id}");
    }
}

#[tokio::test]
async fn filters_skip_messages_without_leaving_lag() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    for i in 0..12 {
        let tag = ["A", "B", "C"][i % 3];
        b.send(msg(i, tag), QueueSelect::Queue(0)).await.unwrap();
    }
    let only_even_n = Predicate::new(|m| {
        m.properties
            .get("n")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n % 2 == 0)
    });
    let o = ReceiveOptions {
        tags: TagFilter::parse("A||B"),
        predicate: Some(only_even_n),
        ..opts(100, 30_000)
    };
    let got = b.receive(G, T, o).await.unwrap();
    // Tags A (0, 3, 6, 9) or B (1, 4, 7, 10), and an even n.
    assert_eq!(
        bodies(&got),
        ["m0", "m10", "m4", "m6"].map(String::from).into()
    );
    for d in &got {
        b.ack(G, T, &ConsumeMode::Clustering, &d.receipt).unwrap();
    }
    let lag: u64 = b
        .lag(G, T, &ConsumeMode::Clustering)
        .unwrap()
        .iter()
        .map(|l| l.lag)
        .sum();
    assert_eq!(lag, 0, "filtered-out messages are not lag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    b.create_topic(T, 2).unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let o = ReceiveOptions {
                wait: Duration::from_secs(60),
                ..opts(1, 30_000)
            };
            b.receive(G, T, o).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&b, 1).await;
    // Without a wake-up this would sit out the 60 s wait.
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn progress_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path(), &[1000], 16);
        publish(&b, 10).await;
        let got = b.receive(G, T, opts(6, 100)).await.unwrap();
        for d in &got[..4] {
            b.ack(G, T, &ConsumeMode::Clustering, &d.receipt).unwrap();
        }
        b.close().unwrap();
    }
    let b = broker(dir.path(), &[1000], 16);
    let o = ReceiveOptions {
        wait: Duration::from_secs(20),
        ..opts(100, 30_000)
    };
    let mut seen = BTreeSet::new();
    while seen.len() < 6 {
        for d in b.receive(G, T, o.clone()).await.unwrap() {
            assert!(seen.insert(d.message.id), "delivered twice after restart");
        }
    }
    assert_eq!(
        seen.len(),
        6,
        "4 acked before the restart are not redelivered"
    );
}

/// Each state file's inode: a rewrite (temp file renamed over) changes it.
fn state_files(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "json") {
                out.push((e.path().display().to_string(), m.ino()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn maintenance_rewrites_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    b.start(Duration::from_secs(3600));
    publish(&b, 4).await;
    let got = b.receive(G, T, opts(1, 30_000)).await.unwrap();
    b.ack(G, T, &ConsumeMode::Clustering, &got[0].receipt)
        .unwrap();
    b.maintain().unwrap();
    let first = state_files(dir.path());
    let names: Vec<_> = first
        .iter()
        .map(|(p, _)| p.rsplit('/').next().unwrap())
        .collect();
    for f in ["checkpoint.json", "timer.json", "txn.json"] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    // Idle: nothing is rewritten (each rewrite is an fsync).
    b.maintain().unwrap();
    assert_eq!(state_files(dir.path()), first);
    // A publish moves the checkpoint and an ack the group's progress; the
    // timer and transaction files stay.
    publish(&b, 1).await;
    let got = b.receive(G, T, opts(1, 30_000)).await.unwrap();
    b.ack(G, T, &ConsumeMode::Clustering, &got[0].receipt)
        .unwrap();
    b.maintain().unwrap();
    let changed: Vec<_> = state_files(dir.path())
        .into_iter()
        .filter(|f| !first.contains(f))
        .map(|(p, _)| p.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert!(
        changed.contains(&"checkpoint.json".to_owned()),
        "{changed:?}"
    );
    assert!(!changed.contains(&"timer.json".to_owned()), "{changed:?}");
    assert!(!changed.contains(&"txn.json".to_owned()), "{changed:?}");
    assert_eq!(
        changed.len(),
        2,
        "checkpoint and the group file: {changed:?}"
    );
    b.close().unwrap();
}

#[tokio::test]
async fn reset_to_time_replays_and_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 16);
    publish(&b, 4).await;
    for d in b.receive(G, T, opts(10, 30_000)).await.unwrap() {
        b.ack(G, T, &ConsumeMode::Clustering, &d.receipt).unwrap();
    }
    b.reset_to_time(G, T, &ConsumeMode::Clustering, 0).unwrap();
    assert_eq!(b.receive(G, T, opts(10, 30_000)).await.unwrap().len(), 4);
    for bad in ["", "x", "1.2", "0.1.zz", "9.0.00", "0.99.0000000000000001"] {
        let e = b.ack(G, T, &ConsumeMode::Clustering, bad).unwrap_err();
        assert!(matches!(e, Error::BadReceipt), "{bad}: {e}");
    }
    let e = b
        .ack(G, "NOPE", &ConsumeMode::Clustering, "0.0.0")
        .unwrap_err();
    assert_eq!(e.to_string(), "topic NOPE does not exist");
}

/// Concurrent commits: every one lands exactly once, under its
/// transaction id, and survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_each_land_once() {
    use cellgate_broker_core::Decision;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &[1000], 3);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let r = b
                .send_transactional(msg(i, "A"), QueueSelect::RoundRobin, "ANT|RZ00A%P1")
                .await
                .unwrap();
            b.end_transaction(&r.id, Decision::Commit).await.unwrap();
            r.id
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 200);
    let mut got = Vec::new();
    loop {
        let d = b.receive(G, T, opts(256, 60_000)).await.unwrap();
        if d.is_empty() {
            break;
        }
        got.extend(d);
    }
    let delivered: BTreeSet<_> = got.iter().map(|d| d.message.id).collect();
    assert_eq!(got.len(), 200, "each commit delivered once");
    assert_eq!(delivered, ids, "under the transaction ids");
    b.close().unwrap();
    drop(b);
    let b = broker(dir.path(), &[1000], 3);
    for id in &ids {
        assert!(
            b.get_by_id(id).unwrap().is_some(),
            "{id} survives a restart"
        );
    }
}
