//! The RocketMQ backend against a real name server and broker (Apache
//! RocketMQ's Rust port), through broker-core's interface: what the gateway
//! and the router rely on, checked below HTTP.

#![allow(clippy::unwrap_used)]
#![recursion_limit = "256"]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{Broker, ConsumeMode, Message, QueueSelect, ReceiveOptions};
use cellgate_broker_rocketmq::{Config, RocketMqBroker};
use cellgate_tests::rocketmq::Cluster;

fn msg(topic: &str, body: &str, key: &str) -> Message {
    Message {
        topic: topic.into(),
        body: body.as_bytes().to_vec(),
        tag: Some("TagA".into()),
        keys: vec![key.into()],
        properties: [("__UNIT.ORIUNIT".to_string(), "RZ00A".to_string())]
            .into_iter()
            .collect(),
        born_ms: 1_700_000_000_000,
    }
}

/// `n` messages spread over the topic's queues by sharding key.
fn spread(topic: &str, n: usize) -> Vec<(Message, QueueSelect)> {
    (0..n)
        .map(|i| {
            let sel = QueueSelect::ShardingKey(format!("s{i}"));
            (msg(topic, &format!("m{i}"), "k"), sel)
        })
        .collect()
}

/// `n` messages `m0`, `m1`, … sent one by one to queue 0 (in order).
async fn send_in_order(b: &RocketMqBroker, topic: &str, n: usize) {
    for i in 0..n {
        b.send(msg(topic, &format!("m{i}"), "k"), QueueSelect::Queue(0))
            .await
            .unwrap();
    }
}

/// Receive options: at most `max` messages, waiting up to `wait_ms`,
/// invisible for `invisible_ms`.
fn opts(max: usize, wait_ms: u64, invisible_ms: u64) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::from_millis(wait_ms),
        invisible: Duration::from_millis(invisible_ms),
        ..ReceiveOptions::default()
    }
}

async fn connect(c: &Cluster) -> RocketMqBroker {
    let mut cfg = Config::new(vec![format!("127.0.0.1:{}", c.namesrv_port)]);
    cfg.delivery.retry_levels = vec![Duration::from_millis(500)];
    cfg.delivery.max_attempts = 3;
    RocketMqBroker::connect(cfg).await.unwrap()
}

/// Two backends on one cluster: two gateways that may serve one group at
/// once.
async fn two_gateways(c: &Cluster) -> (Arc<RocketMqBroker>, Arc<RocketMqBroker>) {
    (Arc::new(connect(c).await), Arc::new(connect(c).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_keep_ids_fields_and_order_and_read_back() {
    let c = Cluster::start("t1").unwrap();
    let b = connect(&c).await;
    let topic = "ANT|RZ00A%T1";
    let one = b
        .send(msg(topic, "m0", "k0"), QueueSelect::Queue(1))
        .await
        .unwrap();
    let batch: Vec<_> = (1..5)
        .map(|i| {
            (
                msg(topic, &format!("m{i}"), &format!("k{i}")),
                QueueSelect::Queue(1),
            )
        })
        .collect();
    let many = b.send_batch(batch).await.unwrap();
    let got = b.read(topic, 1, 0, 100).await.unwrap();
    assert_eq!(got.len(), 5, "{got:?}");
    let sent: Vec<_> = std::iter::once(one).chain(many).collect();
    for (i, (m, r)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(m.id, r.id, "message {i}: the id the send returned");
        assert_eq!(m.queue_offset, r.queue_offset);
        assert_eq!(m.body, format!("m{i}").into_bytes());
        assert_eq!(m.tag.as_deref(), Some("TagA"));
        assert_eq!(m.keys, vec![format!("k{i}")]);
        assert_eq!(
            m.properties.get("__UNIT.ORIUNIT").map(String::as_str),
            Some("RZ00A")
        );
        assert_eq!(
            m.properties.len(),
            1,
            "no RocketMQ system property leaks: {:?}",
            m.properties
        );
        assert_eq!(m.born_ms, 1_700_000_000_000);
    }
    let by_id = b.get_by_id(topic, &sent[2].id).await.unwrap().unwrap();
    assert_eq!(by_id.body, b"m2");
    // Not found is an answer, not a failure: the router's dedupe asks
    // targets for copies they may not have, on topics they may not have.
    let unknown = cellgate_broker_core::message_id(1_700_000_000_000);
    assert!(b.get_by_id(topic, &unknown).await.unwrap().is_none());
    assert!(b
        .get_by_id("ANT|RZ00A%NOPE", &sent[2].id)
        .await
        .unwrap()
        .is_none());
    assert!(b
        .topics()
        .await
        .unwrap()
        .iter()
        .any(|(t, q)| t == topic && *q == 8));

    // The router's replay reads the queues themselves, from a time on:
    // every id stored is found, in whichever queue, and nothing else.
    let spread_out = b.send_batch(spread(topic, 40)).await.unwrap();
    let mut asked: Vec<_> = sent.iter().chain(&spread_out).map(|r| r.id).collect();
    let want: HashSet<_> = asked.iter().copied().collect();
    asked.push(unknown);
    let since = sent[0].stored_ms - 10_000;
    let found = b.find_ids(topic, &asked, (since, i64::MAX)).await.unwrap();
    let found_ids: HashSet<_> = found.iter().map(|m| m.id).collect();
    assert_eq!(found.len(), want.len(), "each found once");
    assert_eq!(found_ids, want);
    assert!(found.iter().any(|m| m.id == sent[2].id && m.body == b"m2"));
    // From a time past them the reads find none; what the key index
    // still finds (its fallback) is theirs, never a stranger.
    let later = spread_out.iter().map(|r| r.stored_ms).max().unwrap() + 60_000;
    let late = b.find_ids(topic, &asked, (later, i64::MAX)).await.unwrap();
    assert!(late.iter().all(|m| want.contains(&m.id)), "{late:?}");
    // A window that ends just after them still holds every one: a queue's
    // read stops only a margin of messages past the window's end.
    let last = spread_out.iter().map(|r| r.stored_ms).max().unwrap();
    let ended = b
        .find_ids(topic, &asked, (since, last + 1_000))
        .await
        .unwrap();
    let ended_ids: HashSet<_> = ended.iter().map(|m| m.id).collect();
    assert_eq!(ended_ids, want);
    assert!(b
        .find_ids("ANT|RZ00A%NOPE", &asked, (since, i64::MAX))
        .await
        .unwrap()
        .is_empty());
}

/// One call's round-robin messages share a queue (one RocketMQ batch, as
/// RocketMQ's producer sends a batch), the round robin moves on per call,
/// sharding keys keep the queue the embedded broker gives them, and each
/// queue keeps the call's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_goes_as_one_send_per_queue_in_order() {
    let c = Cluster::start("t4").unwrap();
    let b = connect(&c).await;
    let topic = "ANT|RZ00A%T4";
    let mut batch = Vec::new();
    for i in 0..12 {
        let sel = match i % 3 {
            0 => QueueSelect::RoundRobin,
            1 => QueueSelect::ShardingKey("order-1".into()),
            _ => QueueSelect::ShardingKey("order-2".into()),
        };
        batch.push((msg(topic, &format!("m{i}"), &format!("k{i}")), sel));
    }
    let first = b.send_batch(batch).await.unwrap();
    assert_eq!(first.len(), 12);
    let rr = std::sync::atomic::AtomicU32::new(0);
    let key_q = |k: &str| {
        QueueSelect::ShardingKey(k.into())
            .pick(topic, 8, &rr)
            .unwrap()
    };
    let rr_q = first[0].queue;
    for (i, r) in first.iter().enumerate() {
        let want = match i % 3 {
            0 => rr_q,
            1 => key_q("order-1"),
            _ => key_q("order-2"),
        };
        assert_eq!(r.queue, want, "message {i}: {r:?}");
    }
    // Within a queue, offsets follow the call's order.
    for q in 0..8u16 {
        let offs: Vec<u64> = first
            .iter()
            .filter(|r| r.queue == q)
            .map(|r| r.queue_offset)
            .collect();
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "queue {q}: {offs:?}");
        let stored = b.read(topic, q, 0, 100).await.unwrap();
        let ids: Vec<_> = stored.iter().map(|m| m.id).collect();
        let sent: Vec<_> = first
            .iter()
            .filter(|r| r.queue == q)
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, sent, "queue {q} holds the call's messages in order");
    }
    // The next call's round-robin messages go to the next queue.
    let again = b
        .send_batch(vec![
            (msg(topic, "n0", "k"), QueueSelect::RoundRobin),
            (msg(topic, "n1", "k"), QueueSelect::RoundRobin),
        ])
        .await
        .unwrap();
    assert_eq!(again[0].queue, again[1].queue);
    assert_eq!(again[0].queue, (rr_q + 1) % 8);
    assert_eq!(again[1].queue_offset, again[0].queue_offset + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_gets_each_message_once_retries_nacks_and_dead_letters() {
    let c = Cluster::start("t2").unwrap();
    let b = connect(&c).await;
    let (topic, group) = ("ANT|RZ00A%T2", "ANT|RZ00A%G2");
    for i in 0..3 {
        b.send(msg(topic, &format!("m{i}"), "k"), QueueSelect::RoundRobin)
            .await
            .unwrap();
    }
    let opts = || ReceiveOptions {
        max_messages: 16,
        wait: Duration::from_secs(3),
        invisible: Duration::from_secs(30),
        ..ReceiveOptions::default()
    };
    // Retries and dead letters arrive by the broker's timer: wait longer.
    let patient = || ReceiveOptions {
        wait: Duration::from_secs(10),
        ..opts()
    };
    let first = b.receive(group, topic, opts()).await.unwrap();
    assert_eq!(first.len(), 3, "{first:?}");
    let mode = ConsumeMode::Clustering;
    // Nothing more while they are in flight.
    let none = b
        .receive(
            group,
            topic,
            ReceiveOptions {
                wait: Duration::from_millis(300),
                ..opts()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    b.ack(group, topic, &mode, &first[0].receipt).await.unwrap();
    b.ack(group, topic, &mode, &first[1].receipt).await.unwrap();
    assert!(
        b.ack(group, topic, &mode, &first[1].receipt).await.is_err(),
        "a receipt acks once"
    );
    // The third is nacked until it is dead-lettered (3 attempts).
    let id = first[2].message.id;
    b.nack(group, topic, &mode, &first[2].receipt)
        .await
        .unwrap();
    for attempt in 2..=3 {
        let again = b.receive(group, topic, patient()).await.unwrap();
        assert_eq!(again.len(), 1, "attempt {attempt}: {again:?}");
        assert_eq!(again[0].message.id, id);
        assert_eq!(again[0].message.topic, topic);
        assert_eq!(again[0].attempt, attempt);
        b.nack(group, topic, &mode, &again[0].receipt)
            .await
            .unwrap();
    }
    let dlq = format!("%DLQ%{group}");
    let dead = b
        .receive("CELLGATE_DLQ_READER", &dlq, patient())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message.id, id);
    assert_eq!(
        dead[0]
            .message
            .properties
            .get("__ORIGIN_TOPIC")
            .map(String::as_str),
        Some(topic)
    );
    // Re-drive: back to its topic (a new id, the same body), once.
    assert_eq!(b.redrive(group, 10).await.unwrap(), 1);
    assert_eq!(b.redrive(group, 10).await.unwrap(), 0);
    let back = b.receive(group, topic, patient()).await.unwrap();
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].message.body, dead[0].message.body);
    assert!(!back[0].message.properties.contains_key("__ORIGIN_TOPIC"));
    b.ack(group, topic, &mode, &back[0].receipt).await.unwrap();
    let lag: u64 = b
        .lag(group, topic, &mode)
        .await
        .unwrap()
        .iter()
        .map(|q| q.lag)
        .sum();
    assert_eq!(lag, 0);
}

/// Over HTTP: a cluster that does not answer is a 503 that says so and may
/// be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_answers_503_with_the_reason() {
    use cellgate_tests::server::ANT;
    use cellgate_tests::{edited_example, Server};
    use serde_json::json;

    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let (rules, _) = edited_example(
        dir.path(),
        "ldc.yaml",
        &[(
            "{ name: RZ01A, zone: R, city: SH, broker: embedded }",
            &format!(
                "{{ name: RZ01A, zone: R, city: SH, broker: \"rocketmq://127.0.0.1:{silent}\" }}"
            ),
        )],
    );
    let s = Server::start(&rules, &dir.path().join("data"), &["--no-router"]).unwrap();
    let resp = reqwest::Client::new()
        .post(s.url("/v1/topics/BILL/messages"))
        .bearer_auth(ANT)
        .header("X-Cell", "RZ01A")
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: serde_json::Value = resp.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("the cell's broker did not answer"), "{v}");
}

/// The delivery state outlives the gateway that made it: a second
/// gateway of the group (a restart, or the load balancer moving the group)
/// keeps acked messages done and delivered ones invisible until their
/// time, and accepts the first one's receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisibility_and_acks_survive_a_gateway_change() {
    let c = Cluster::start("t5").unwrap();
    let (topic, group) = ("ANT|RZ00A%T5", "ANT|RZ00A%G5");
    let mode = ConsumeMode::Clustering;
    let first = connect(&c).await;
    send_in_order(&first, topic, 4).await;
    let within = |wait_s: u64| opts(16, wait_s * 1000, 4000);
    let got = first.receive(group, topic, within(3)).await.unwrap();
    assert_eq!(got.len(), 4, "{got:?}");
    let body =
        |d: &cellgate_broker_core::Delivery| String::from_utf8(d.message.body.clone()).unwrap();
    // Out of order: m2 is done above the committed offset.
    first
        .ack(group, topic, &mode, &got[0].receipt)
        .await
        .unwrap();
    first
        .ack(group, topic, &mode, &got[2].receipt)
        .await
        .unwrap();
    // The acks reach the journal within its linger.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(first);

    let second = connect(&c).await;
    let none = second.receive(group, topic, within(0)).await.unwrap();
    assert!(none.is_empty(), "m1 and m3 are still invisible: {none:?}");
    // A receipt the first gateway issued settles here.
    second
        .ack(group, topic, &mode, &got[1].receipt)
        .await
        .unwrap();
    // m3 comes again once its invisibility ends, as attempt 2; m0..m2 never.
    let again = second.receive(group, topic, within(8)).await.unwrap();
    let bodies: Vec<String> = again.iter().map(body).collect();
    assert_eq!(bodies, vec!["m3"], "{again:?}");
    assert_eq!(again[0].attempt, 2);
    second
        .ack(group, topic, &mode, &again[0].receipt)
        .await
        .unwrap();
    let lag = second.lag(group, topic, &mode).await.unwrap();
    let q0 = lag.iter().find(|l| l.queue == 0).unwrap();
    assert_eq!((q0.committed, q0.inflight), (4, 0), "{lag:?}");
}

/// Two gateways serving one group at once: the one whose state is stale
/// finds another's writes in the journal (its own append lands at an
/// offset it did not expect) and reloads, so its view converges on the
/// acks made elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reloads_state_another_gateway_changed() {
    let c = Cluster::start("t6").unwrap();
    let (topic, group) = ("ANT|RZ00A%T6", "ANT|RZ00A%G6");
    let mode = ConsumeMode::Clustering;
    let first = connect(&c).await;
    send_in_order(&first, topic, 3).await;
    let got = first
        .receive(group, topic, opts(16, 3000, 30_000))
        .await
        .unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    let second = connect(&c).await;
    second
        .ack(group, topic, &mode, &got[0].receipt)
        .await
        .unwrap();
    second
        .ack(group, topic, &mode, &got[1].receipt)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first still thinks m0 and m1 are in flight; its ack of m2 is
    // journaled after the second's records.
    first
        .ack(group, topic, &mode, &got[2].receipt)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lag = first.lag(group, topic, &mode).await.unwrap();
    let q0 = lag.iter().find(|l| l.queue == 0).unwrap();
    assert_eq!((q0.committed, q0.inflight), (3, 0), "{lag:?}");
}

/// Two gateways serving one group at the same time, each receiving and
/// acking half of what it got through the other: every message is
/// delivered once (the journal orders their claims), and the group ends
/// with nothing in flight and nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_group_deliver_each_message_once() {
    let c = Cluster::start("t8").unwrap();
    let (topic, group) = ("ANT|RZ00A%T8", "ANT|RZ00A%G8");
    let (a, b) = two_gateways(&c).await;
    const N: usize = 400;
    let sent: HashSet<_> = a
        .send_batch(spread(topic, N))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let consumer = |me: Arc<RocketMqBroker>, other: Arc<RocketMqBroker>| async move {
        let mode = ConsumeMode::Clustering;
        let (mut got, mut empty) = (Vec::new(), 0);
        while empty < 3 {
            let ds = me
                .receive(group, topic, opts(16, 500, 60_000))
                .await
                .unwrap();
            empty = if ds.is_empty() { empty + 1 } else { 0 };
            for (i, d) in ds.iter().enumerate() {
                let via = if i % 2 == 0 { &me } else { &other };
                via.ack(group, topic, &mode, &d.receipt).await.unwrap();
            }
            got.extend(ds.into_iter().map(|d| d.message.id));
        }
        got
    };
    let (ga, gb) = tokio::join!(
        tokio::spawn(consumer(a.clone(), b.clone())),
        tokio::spawn(consumer(b.clone(), a.clone()))
    );
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    let mut seen = HashSet::new();
    let twice: Vec<_> = ga
        .iter()
        .chain(&gb)
        .filter(|id| !seen.insert(**id))
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(seen, sent, "every message, once");
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "both gateways served the group: {} and {}",
        ga.len(),
        gb.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for g in [&a, &b] {
        let lag = g.lag(group, topic, &ConsumeMode::Clustering).await.unwrap();
        assert!(
            lag.iter()
                .all(|q| q.lag == 0 && q.inflight == 0 && q.committed == q.max),
            "{lag:?}"
        );
    }
}

/// Deliveries whose invisibility ends come again once, as attempt 2, though
/// both gateways of the group look for expired ones at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_delivery_comes_again_once_across_gateways() {
    let c = Cluster::start("t9").unwrap();
    let (topic, group) = ("ANT|RZ00A%T9", "ANT|RZ00A%G9");
    let (a, b) = two_gateways(&c).await;
    const N: usize = 40;
    a.send_batch(spread(topic, N)).await.unwrap();
    let mut first = Vec::new();
    while first.len() < N {
        let got = a.receive(group, topic, opts(64, 300, 500)).await.unwrap();
        assert!(!got.is_empty(), "only {} of {N}", first.len());
        first.extend(got);
    }
    // Nobody acks; both gateways take what falls due.
    let consumer = |me: Arc<RocketMqBroker>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        let mut got = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let ds = me
                .receive(group, topic, opts(8, 300, 60_000))
                .await
                .unwrap();
            got.extend(ds.into_iter().map(|d| (d.message.id, d.attempt)));
        }
        got
    };
    let (ga, gb) = tokio::join!(
        tokio::spawn(consumer(a.clone())),
        tokio::spawn(consumer(b.clone()))
    );
    let again: Vec<_> = ga.unwrap().into_iter().chain(gb.unwrap()).collect();
    let mut seen = HashSet::new();
    for (id, attempt) in &again {
        assert_eq!(*attempt, 2, "{id}");
        assert!(seen.insert(*id), "{id} came again twice: {again:?}");
    }
    let want: HashSet<_> = first.iter().map(|d| d.message.id).collect();
    assert_eq!(seen, want, "every expired delivery, once");
}

/// A gateway that has not read another's redelivery refuses the nack of
/// the older delivery instead of sending a retry copy beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_of_a_delivery_another_gateway_replaced_is_refused() {
    let c = Cluster::start("t10").unwrap();
    let (topic, group) = ("ANT|RZ00A%T10", "ANT|RZ00A%G10");
    let mode = ConsumeMode::Clustering;
    let (a, b) = (connect(&c).await, connect(&c).await);
    send_in_order(&a, topic, 1).await;
    let old = a.receive(group, topic, opts(4, 3000, 500)).await.unwrap();
    assert_eq!(old.len(), 1);
    // Past its invisibility and the grace another gateway gives it.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let new = b
        .receive(group, topic, opts(4, 3000, 30_000))
        .await
        .unwrap();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].attempt, 2);
    let err = a.nack(group, topic, &mode, &old[0].receipt).await;
    assert!(
        matches!(err, Err(cellgate_broker_core::Error::BadReceipt)),
        "{err:?}"
    );
    b.ack(group, topic, &mode, &new[0].receipt).await.unwrap();
    // No retry copy: the retry back-off (500 ms) passes with nothing.
    for g in [&a, &b] {
        let none = g
            .receive(group, topic, opts(4, 1500, 30_000))
            .await
            .unwrap();
        assert!(none.is_empty(), "{none:?}");
    }
}

/// A reset to a time before the messages makes the group read them again,
/// through whichever gateway loads the group next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_rewinds_the_group_for_every_gateway() {
    let c = Cluster::start("t11").unwrap();
    let (topic, group) = ("ANT|RZ00A%T11", "ANT|RZ00A%G11");
    let mode = ConsumeMode::Clustering;
    let a = connect(&c).await;
    let before = cellgate_broker_core::now_ms() - 1000;
    a.send_batch(spread(topic, 6)).await.unwrap();
    let opts = opts(16, 500, 30_000);
    let mut got = Vec::new();
    while got.len() < 6 {
        let ds = a.receive(group, topic, opts.clone()).await.unwrap();
        assert!(!ds.is_empty(), "only {} of 6", got.len());
        for d in &ds {
            a.ack(group, topic, &mode, &d.receipt).await.unwrap();
        }
        got.extend(ds);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset_to_time(group, topic, &mode, before).await.unwrap();
    let b = connect(&c).await;
    let mut again = HashSet::new();
    loop {
        let ds = b.receive(group, topic, opts.clone()).await.unwrap();
        if ds.is_empty() {
            break;
        }
        again.extend(ds.into_iter().map(|d| d.message.id));
    }
    let want: HashSet<_> = got.iter().map(|d| d.message.id).collect();
    assert_eq!(again, want, "every message, again");
}

/// Shutting a backend down stores the trace hops still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stores_the_queued_trace_hops() {
    let c = Cluster::start("t7").unwrap();
    let b = connect(&c).await;
    let id = cellgate_broker_core::message_id(1_700_000_000_000);
    b.record_trace(vec![cellgate_broker_core::Hop::new(
        id, "publish", 1, "RZ00A", "app",
    )]);
    b.shutdown().await;
    let again = connect(&c).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hops = again.trace_of("ANT|RZ00A%T7", &id).await.unwrap();
        if !hops.is_empty() {
            assert_eq!(hops.len(), 1, "{hops:?}");
            assert_eq!(hops[0].kind, "publish");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hop was not stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
