//! Model test: random sequences of publish / receive / ack / nack /
//! expiry / restart against the embedded broker, checked against an
//! in-memory model of what a clustering group must see.
//!
//! Expiry is driven by nacks with a zero back-off (the message is visible
//! again at once) and by a short invisibility time; restarts close the
//! broker and open a new one on the same directory.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{
    Broker, ConsumeMode, DeliveryConfig, EmbeddedBroker, Error, Message, QueueSelect,
    ReceiveOptions, Store, StoreConfig,
};
use proptest::prelude::*;

const T: &str = "T";
const G: &str = "G";
const INVISIBLE: Duration = Duration::from_millis(150);

#[derive(Debug, Clone)]
enum Op {
    Publish(u8),
    Receive(u8),
    Ack(u8),
    Nack(u8),
    /// Wait out the invisibility time: every unacked message comes back.
    Expire,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..5).prop_map(Op::Publish),
        3 => (1u8..6).prop_map(Op::Receive),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => any::<u8>().prop_map(Op::Nack),
        1 => Just(Op::Expire),
        1 => Just(Op::Restart),
    ]
}

fn open(dir: &Path) -> Arc<EmbeddedBroker> {
    let cfg = StoreConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            flush: FlushPolicy::Async {
                interval: Duration::from_millis(5),
            },
            preallocate: false,
        },
        default_queues: 3,
        ..StoreConfig::default()
    };
    let d = DeliveryConfig {
        retry_levels: vec![Duration::ZERO],
        max_attempts: 1000,
    };
    Arc::new(EmbeddedBroker::new(
        Arc::new(Store::open(dir, cfg).unwrap()),
        d,
    ))
}

/// What the group must observe.
#[derive(Debug, Default)]
struct Model {
    published: BTreeSet<String>,
    acked: BTreeSet<String>,
    /// Delivered and not acked: body -> the newest receipt.
    inflight: BTreeMap<String, String>,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut b = open(dir.path());
        let mut m = Model::default();
        let mut n = 0usize;
        let cm = ConsumeMode::Clustering;
        for op in ops {
            match op {
                Op::Publish(k) => {
                    for _ in 0..k {
                        let body = format!("m{n}");
                        n += 1;
                        let msg = Message {
                            topic: T.into(),
                            body: body.clone().into_bytes(),
                            ..Message::default()
                        };
                        b.send(msg, QueueSelect::RoundRobin).await.unwrap();
                        m.published.insert(body);
                    }
                }
                Op::Receive(k) => {
                    let o = ReceiveOptions {
                        max_messages: k.into(),
                        invisible: INVISIBLE,
                        ..ReceiveOptions::default()
                    };
                    for d in b.receive(G, T, o).await.unwrap() {
                        let body = String::from_utf8(d.message.body).unwrap();
                        prop_assert!(
                            m.published.contains(&body),
                            "delivered {body}, never published"
                        );
                        prop_assert!(!m.acked.contains(&body), "delivered {body} after its ack");
                        // A redelivery of an in-flight message voids its old receipt.
                        m.inflight.insert(body, d.receipt);
                    }
                }
                Op::Ack(i) | Op::Nack(i) if !m.inflight.is_empty() => {
                    let idx = usize::from(i) % m.inflight.len();
                    let (body, receipt) = m
                        .inflight
                        .iter()
                        .nth(idx)
                        .map(|(b, r)| (b.clone(), r.clone()))
                        .unwrap();
                    let res = if matches!(op, Op::Ack(_)) {
                        b.ack(G, T, &cm, &receipt)
                    } else {
                        b.nack(G, T, &cm, &receipt)
                    };
                    match res {
                        Ok(()) => {
                            m.inflight.remove(&body);
                            if matches!(op, Op::Ack(_)) {
                                m.acked.insert(body);
                            }
                        }
                        // Only a receipt voided by a restart or an expiry can fail.
                        Err(Error::BadReceipt) => {
                            m.inflight.remove(&body);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Ack(_) | Op::Nack(_) => {}
                Op::Expire => tokio::time::sleep(INVISIBLE + Duration::from_millis(20)).await,
                Op::Restart => {
                    b.close().unwrap();
                    drop(b);
                    b = open(dir.path());
                }
            }
            let lag: u64 = b
                .lag(G, T, &cm)
                .map(|l| l.iter().map(|q| q.lag).sum())
                .unwrap_or(0);
            prop_assert_eq!(lag, (m.published.len() - m.acked.len()) as u64, "lag");
        }
        // Drain: everything not acked arrives (once more at most per expiry), then all is acked.
        let o = ReceiveOptions {
            max_messages: 1000,
            invisible: INVISIBLE,
            wait: Duration::from_secs(5),
            ..ReceiveOptions::default()
        };
        while m.acked.len() < m.published.len() {
            let got = b.receive(G, T, o.clone()).await.unwrap();
            prop_assert!(
                !got.is_empty(),
                "unacked messages never came back: {:?}",
                m.published.difference(&m.acked).collect::<Vec<_>>()
            );
            for d in got {
                let body = String::from_utf8(d.message.body).unwrap();
                prop_assert!(!m.acked.contains(&body), "delivered {body} after its ack");
                b.ack(G, T, &cm, &d.receipt).unwrap();
                m.acked.insert(body);
            }
        }
        prop_assert_eq!(&m.acked, &m.published);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_group_sees_what_the_model_says(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
