//! Crash test: a child process appends with many producers under `sync`
//! and prints each acknowledged message; the parent SIGKILLs it mid-stream,
//! reopens the store and checks that every acknowledged message is there
//! exactly once and that nothing corrupt is served. Three rounds on one
//! data directory, so recovery runs on an already recovered log too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{Message, QueueSelect, Store, StoreConfig};

const CHILD_ENV: &str = "CELLGATE_CRASH_CHILD";
const TOPIC: &str = "ANT|RZ00A%CRASH";

fn cfg() -> StoreConfig {
    StoreConfig {
        // Small segments: kills land around segment rolls too.
        log: LogConfig {
            segment_bytes: 256 * 1024,
            flush: FlushPolicy::Sync,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(Store::open(Path::new(&dir), cfg()).unwrap());
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

fn run_child_until_killed(dir: &Path, round: usize, acks_before_kill: usize) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env("CELLGATE_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(body) = line.strip_prefix("ACK ") {
            acked.push(body.to_owned());
            if acked.len() == acks_before_kill {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), acks_before_kill, "the child stopped early");
    acked
}

#[test]
fn sigkill_mid_write_loses_no_acknowledged_message() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = Vec::new();
    for (round, n) in [700usize, 1100, 500].into_iter().enumerate() {
        all_acked.extend(run_child_until_killed(dir.path(), round, n));
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
