//! Crash test: a child process appends with many producers and prints each
//! acknowledged message; the parent SIGKILLs it mid-stream, reopens the
//! store and checks that every acknowledged message is there exactly once
//! and that nothing corrupt is served. Three rounds on one data directory,
//! so recovery runs on an already recovered log too. Under `sync`, and
//! under `async` (a process crash must not lose what was acknowledged: it
//! is in the page cache), where the kill also lands while the dispatcher's
//! index entries lag the log.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{Message, QueueSelect, Store, StoreConfig};

const CHILD_ENV: &str = "CELLGATE_CRASH_CHILD";
const FLUSH_ENV: &str = "CELLGATE_CRASH_FLUSH";
const TOPIC: &str = "ANT|RZ00A%CRASH";

fn cfg(flush: FlushPolicy) -> StoreConfig {
    StoreConfig {
        // Small segments: kills land around segment rolls too.
        log: LogConfig {
            segment_bytes: 256 * 1024,
            flush,
            preallocate: true,
        },
        default_queues: 4,
        ..StoreConfig::default()
    }
}

/// The child: runs only when the parent sets CHILD_ENV.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: usize = std::env::var("CELLGATE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let flush = flush_policy(&std::env::var(FLUSH_ENV).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(Store::open(Path::new(&dir), cfg(flush)).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|p| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let body = format!("r{round}-p{p}-{i}");
                        let m = Message {
                            topic: TOPIC.into(),
                            body: format!("{body}:{}", "x".repeat(i % 700)).into_bytes(),
                            keys: vec![body.clone()],
                            ..Message::default()
                        };
                        store.put(m, QueueSelect::RoundRobin).await.unwrap();
                        println!("ACK {body}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn flush_policy(name: &str) -> FlushPolicy {
    match name {
        "sync" => FlushPolicy::Sync,
        _ => FlushPolicy::Async {
            interval: std::time::Duration::from_millis(50),
        },
    }
}

fn run_child_until_killed(
    dir: &Path,
    flush: &str,
    round: usize,
    acks_before_kill: usize,
) -> Vec<String> {
    let envs = [
        (CHILD_ENV, dir.display().to_string()),
        (FLUSH_ENV, flush.to_owned()),
        ("CELLGATE_CRASH_ROUND", round.to_string()),
    ];
    let mut acked = Vec::new();
    common::run_child_until_killed("child_writer", &envs, acks_before_kill, |line| {
        let body = line.strip_prefix("ACK ");
        acked.extend(body.map(str::to_owned));
        body.is_some()
    });
    acked
}

#[test]
fn sigkill_mid_write_loses_no_acknowledged_message() {
    kill_rounds("sync", [700, 1100, 500]);
}

#[test]
fn sigkill_under_async_loses_no_acknowledged_message() {
    // More messages per round: the kill should land with the index behind.
    kill_rounds("async", [5000, 9000, 3000]);
}

fn kill_rounds(flush: &str, acks: [usize; 3]) {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let cfg = || cfg(flush_policy(flush));
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = Vec::new();
    for (round, n) in acks.into_iter().enumerate() {
        all_acked.extend(run_child_until_killed(dir.path(), flush, round, n));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = Store::open(dir.path(), cfg()).unwrap();
        // Count every stored message by its key, reading every entry: a
        // corrupt record would be an error here.
        let mut count: HashMap<String, usize> = HashMap::new();
        for q in 0..4 {
            let (lo, hi) = store.queue_range(TOPIC, q).unwrap();
            let mut off = lo;
            while off < hi {
                for e in store.entries(TOPIC, q, off, 256).unwrap() {
                    let m = store.read(&e).unwrap();
                    *count.entry(m.keys[0].clone()).or_default() += 1;
                    off += 1;
                }
            }
        }
        for body in &all_acked {
            assert_eq!(
                count.get(body),
                Some(&1),
                "round {round}: acknowledged {body} stored {:?} times",
                count.get(body)
            );
        }
        assert!(
            count.values().all(|c| *c == 1),
            "round {round}: a message stored twice"
        );
        // The store still takes writes after recovery.
        rt.block_on(store.put(
            Message {
                topic: TOPIC.into(),
                body: b"after".to_vec(),
                keys: vec![format!("after-{round}")],
                ..Message::default()
            },
            QueueSelect::RoundRobin,
        ))
        .unwrap();
        all_acked.push(format!("after-{round}"));
        store.close().unwrap();
    }
}
