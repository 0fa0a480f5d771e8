//! Crash test for transactions: a child process runs transactions with
//! many producers (half, then commit or rollback, some left undecided) and
//! prints each step as it is acknowledged; the parent SIGKILLs it mid-stream
//! (kills land between a half and its decision, and between a decision and
//! its answer), restarts the broker on the same directory and checks:
//!
//! - an acknowledged commit is committed and its message is in its topic
//!   exactly once; an acknowledged rollback is rolled back and its message
//!   is nowhere;
//! - a half without an acknowledged decision is pending, or decided either
//!   way, never delivered twice; once decided after the restart it is
//!   delivered exactly once, and deciding again answers the same;
//! - every message in the topic belongs to a half the broker knows.
//!
//! Two rounds on one data directory, so recovery runs on a recovered book.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{
    Broker, Decision, DeliveryConfig, EmbeddedBroker, Error, Message, QueueSelect, Store,
    StoreConfig,
};
use uuid::Uuid;

const CHILD_ENV: &str = "CELLGATE_TXN_CRASH_CHILD";
const TOPIC: &str = "ANT|RZ00A%TXN";
const GROUP: &str = "ANT|RZ00A%PG";

fn broker(dir: &Path) -> Arc<EmbeddedBroker> {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: 256 * 1024,
            flush: FlushPolicy::Sync,
            preallocate: true,
        },
        default_queues: 4,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(dir, cfg).unwrap());
    Arc::new(EmbeddedBroker::new(store, DeliveryConfig::default()))
}

/// The child: runs only when the parent sets CHILD_ENV.
#[test]
fn child_transactions() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let b = broker(Path::new(&dir));
        let _tasks = b.start(Duration::from_millis(50));
        let producers: Vec<_> = (0..8)
            .map(|p| {
                let b = b.clone();
                tokio::spawn(async move {
                    for i in 0usize.. {
                        let m = Message {
                            topic: TOPIC.into(),
                            body: format!("p{p}-{i}:{}", "x".repeat(i % 900)).into_bytes(),
                            ..Message::default()
                        };
                        let half = loop {
                            match b
                                .send_transactional(m.clone(), QueueSelect::RoundRobin, GROUP)
                                .await
                            {
                                Ok(r) => break r,
                                // The book is still loading after a restart.
                                Err(Error::Recovering) => {
                                    tokio::time::sleep(Duration::from_millis(5)).await
                                }
                                Err(e) => panic!("{e}"),
                            }
                        };
                        println!("HALF {}", half.id);
                        let decision = match i % 5 {
                            0 => continue, // left undecided
                            1 | 3 => Decision::Rollback,
                            _ => Decision::Commit,
                        };
                        b.end_transaction(&half.id, decision).await.unwrap();
                        let word = if decision == Decision::Commit {
                            "commit"
                        } else {
                            "rollback"
                        };
                        println!("DECIDED {} {word}", half.id);
                    }
                })
            })
            .collect();
        for t in producers {
            t.await.unwrap();
        }
    });
}

/// What the child acknowledged before the kill: every half, and the
/// decision of those it printed one for.
#[derive(Default)]
struct Acked {
    halves: Vec<Uuid>,
    decided: HashMap<Uuid, &'static str>,
}

fn run_child_until_killed(dir: &Path, lines_before_kill: usize, acked: &mut Acked) {
    let envs = [(CHILD_ENV, dir.display().to_string())];
    common::run_child_until_killed("child_transactions", &envs, lines_before_kill, |line| {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("HALF"), Some(id), None) => acked.halves.push(id.parse().unwrap()),
            (Some("DECIDED"), Some(id), Some(how)) => {
                let how = if how == "commit" {
                    "committed"
                } else {
                    "rolled_back"
                };
                acked.decided.insert(id.parse().unwrap(), how);
            }
            _ => return false,
        }
        true
    });
}

#[test]
fn sigkill_between_halves_and_decisions_keeps_every_answer() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Acked::default();
    for (round, n) in [600, 900].into_iter().enumerate() {
        run_child_until_killed(dir.path(), n, &mut acked);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(check_after_restart(dir.path(), round, &acked));
    }
}

async fn check_after_restart(dir: &Path, round: usize, acked: &Acked) {
    let b = broker(dir);
    let _tasks = b.start(Duration::from_millis(50));
    let state = |id: &Uuid| {
        let b = b.clone();
        let id = *id;
        async move {
            loop {
                match b.transaction(&id) {
                    Ok(Some(info)) => return info.state.as_str(),
                    Err(Error::Recovering) => tokio::time::sleep(Duration::from_millis(5)).await,
                    other => panic!("round {round}: transaction {id}: {other:?}"),
                }
            }
        }
    };
    let delivered = |id: &Uuid| b.find_ids(TOPIC, &[*id]).unwrap().len();
    // Decisions answer `Recovering` (a 503) until the book is rebuilt.
    let commit = |id: Uuid| {
        let b = b.clone();
        async move {
            loop {
                match b.end_transaction(&id, Decision::Commit).await {
                    Err(Error::Recovering) => tokio::time::sleep(Duration::from_millis(5)).await,
                    other => return other.unwrap().state.as_str(),
                }
            }
        }
    };
    for id in &acked.halves {
        let now = state(id).await;
        match acked.decided.get(id) {
            Some(&how) => {
                assert_eq!(now, how, "round {round}: acknowledged decision of {id}");
                let want = usize::from(how == "committed");
                assert_eq!(delivered(id), want, "round {round}: {id} ({how})");
            }
            None => {
                assert!(
                    ["pending", "committed", "rolled_back"].contains(&now),
                    "round {round}: {id} is {now}"
                );
                assert!(delivered(id) <= 1, "round {round}: {id} delivered twice");
            }
        }
    }
    // Decide what is still pending: delivered exactly once; deciding again
    // gives the same answer and no second copy.
    let mut decided_now = HashSet::new();
    for id in &acked.halves {
        if state(id).await == "pending" {
            assert_eq!(commit(*id).await, "committed");
            assert_eq!(commit(*id).await, "committed", "idempotent");
            assert_eq!(delivered(id), 1, "round {round}: {id} after a late commit");
            decided_now.insert(*id);
        }
    }
    assert!(
        round > 0 || !decided_now.is_empty(),
        "the kill left no transaction undecided: the test proves less than it says"
    );
    // Every message in the topic is a transaction's, delivered once.
    let mut seen = HashSet::new();
    for q in 0..4 {
        for m in b.read(TOPIC, q, 0, usize::MAX).unwrap() {
            assert!(seen.insert(m.id), "round {round}: {} twice", m.id);
            assert!(b.transaction(&m.id).unwrap().is_some());
        }
    }
    b.close().unwrap();
}
