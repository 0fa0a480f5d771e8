//! Message types over HTTP (issue 6): delayed and scheduled, transactional,
//! ordered; query by time; the message trace; load-test traffic — each
//! against the real `cellgate serve` on the example topology, with restarts
//! (kill -9) while delays and transactions are pending.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cellgate_tests::rocketmq::{start_on, Backend};
use cellgate_tests::server::{ANT, BETA};
use cellgate_tests::{now_ms, start_example as start, Api};
use serde_json::{json, Value};

/// Receives (local subscription) until `n` messages came or `within`
/// passed; acks them.
async fn drain(api: &Api, group: &str, topic: &str, n: usize, within: Duration) -> Vec<Value> {
    drain_as(api, "local", group, topic, n, within).await
}

async fn drain_as(
    api: &Api,
    subscription: &str,
    group: &str,
    topic: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let req = json!({"subscription": subscription, "max_messages": 64, "wait_ms": 500});
    while got.len() < n && Instant::now() < deadline {
        let ms = api.receive(group, topic, &req).await.unwrap();
        api.ack(group, topic, &ms).await.ok();
        got.extend(ms);
    }
    got
}

#[tokio::test]
async fn a_delayed_message_arrives_at_its_time_and_holds_up_nothing() {
    let (_d, s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let sent_at = now_ms();
    let r = api
        .publish("DLY", &json!({"body": "later", "delay_ms": 1500}))
        .await
        .unwrap();
    assert_eq!(r["offset"], Value::Null, "held messages get no offset yet");
    let due = r["deliver_at_ms"].as_i64().unwrap();
    assert!((sent_at + 1500..sent_at + 3000).contains(&due), "{r}");
    let (st, q) = api
        .get(&format!(
            "/v1/topics/DLY/messages/{}",
            r["message_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["properties"]["__STATE"], "scheduled");
    // A normal message published after it is delivered first, at once.
    api.publish("DLY", &json!({"body": "now"})).await.unwrap();
    let first = drain(&api, "G1", "DLY", 1, Duration::from_secs(1)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["body"], "now");
    let later = drain(&api, "G1", "DLY", 1, Duration::from_secs(10)).await;
    let arrived = now_ms();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0]["body"], "later");
    assert_eq!(later[0]["message_id"], r["message_id"], "same id once due");
    assert!(arrived >= due, "delivered {} ms early", due - arrived);
    let at: i64 = later[0]["properties"]["__DELIVER_AT_MS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(at, due);
    assert!(drain(&api, "G1", "DLY", 1, Duration::from_millis(600))
        .await
        .is_empty());
}

#[tokio::test]
async fn delays_survive_kill_9_and_none_fires_twice() {
    let (_d, mut s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let soon = api
        .publish("DLYR", &json!({"body": "soon", "delay_ms": 300}))
        .await
        .unwrap();
    let at = now_ms() + 4000;
    api.publish("DLYR", &json!({"body": "after", "deliver_at_ms": at}))
        .await
        .unwrap();
    let got = drain(&api, "G1", "DLYR", 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["message_id"], soon["message_id"]);
    // Let the ack and the timer's progress reach disk, then crash.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.kill9();
    s.restart().unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let got = drain(&api, "G1", "DLYR", 2, Duration::from_secs(8)).await;
    let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        vec!["after"],
        "the pending one once, the fired one not again"
    );
    assert!(now_ms() >= at);
}

async fn txn(api: &Api, topic: &str, body: &str) -> String {
    let r = api
        .publish(
            topic,
            &json!({"body": body, "transaction": {"producer_group": "PG1"}}),
        )
        .await
        .unwrap();
    assert_eq!(r["offset"], Value::Null);
    r["transaction_id"].as_str().unwrap().to_owned()
}

cellgate_tests::on_both_backends!(
    transactions_commit_roll_back_and_conflict,
    transactions_commit_roll_back_and_conflict_on_rocketmq,
    transactions
);

async fn transactions(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &["--no-router"]);
    let api = Api::new(&s, ANT, "RZ00A");
    let a = txn(&api, "TX", "a").await;
    let b = txn(&api, "TX", "b").await;
    assert!(drain(&api, "G1", "TX", 1, Duration::from_millis(600))
        .await
        .is_empty());
    let commit = |id: &str| format!("/v1/transactions/{id}/commit");
    let rollback = |id: &str| format!("/v1/transactions/{id}/rollback");
    // Another tenant cannot see, let alone decide, ANT's transaction.
    let beta = Api::new(&s, BETA, "RZ00A");
    let (st, v) = beta.post(&commit(&a), &json!({})).await.unwrap();
    assert_eq!(
        (st, &v["error"]["field"]),
        (404, &json!("transaction_id")),
        "{v}"
    );

    let state = |id: &str| format!("/v1/transactions/{id}");
    let (st, v) = api.get(&state(&a)).await.unwrap();
    assert_eq!((st, v["state"].as_str()), (200, Some("pending")), "{v}");
    let (st, _) = beta.get(&state(&a)).await.unwrap();
    assert_eq!(st, 404);

    let (st, v) = api.post(&commit(&a), &json!({})).await.unwrap();
    assert_eq!((st, v["state"].as_str()), (200, Some("committed")), "{v}");
    assert_eq!(v["topic"], "TX");
    let (st, v) = api.get(&state(&a)).await.unwrap();
    assert_eq!((st, v["state"].as_str()), (200, Some("committed")), "{v}");
    let (st, _) = api.post(&commit(&a), &json!({})).await.unwrap();
    assert_eq!(st, 200, "committing twice is idempotent");
    let (st, v) = api.post(&rollback(&a), &json!({})).await.unwrap();
    assert_eq!(st, 409, "{v}");

    let (st, v) = api.post(&rollback(&b), &json!({})).await.unwrap();
    assert_eq!((st, v["state"].as_str()), (200, Some("rolled_back")), "{v}");
    let (st, v) = api.post(&commit(&b), &json!({})).await.unwrap();
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rolled_back"),
        "{v}"
    );

    let got = drain(&api, "G1", "TX", 2, Duration::from_secs(2)).await;
    let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["a"], "only the committed message is delivered");
    assert_eq!(got[0]["message_id"].as_str(), Some(a.as_str()));

    let unknown = "0190f0f0-0000-7000-8000-000000000000";
    let (st, _) = api.post(&commit(unknown), &json!({})).await.unwrap();
    assert_eq!(st, 404);
    let (st, v) = api.post(&commit("garbage"), &json!({})).await.unwrap();
    assert_eq!((st, &v["error"]["field"]), (400, &json!("transaction_id")));
}

#[tokio::test]
async fn undecided_transactions_are_checked_back_then_rolled_back() {
    let fast = [
        "--txn-first-check",
        "300ms",
        "--txn-check-interval",
        "300ms",
    ];
    let (_d, s) = start(&[&fast[..], &["--txn-max-checks", "3"]].concat());
    let api = Api::new(&s, ANT, "RZ00A");
    let id = txn(&api, "TXC", "check me").await;
    let (st, v) = api
        .post(
            "/v1/producer-groups/PG1/transaction-checks",
            &json!({"wait_ms": 5000}),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{v}");
    assert_eq!(checks[0]["transaction_id"].as_str(), Some(id.as_str()));
    assert_eq!(checks[0]["message"]["body"], "check me");
    assert_eq!(checks[0]["topic"], "TXC");
    // Nobody answers: three check-backs (0.3, 0.6, 0.9 s), then at 1.2 s
    // the broker rolls back and says why.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    commit_is_refused(&api, &id, "no decision after 3 check-backs").await;
    assert!(drain(&api, "G1", "TXC", 1, Duration::from_millis(500))
        .await
        .is_empty());
}

/// A commit of rolled-back transaction `id` answers 409, saying `why`.
async fn commit_is_refused(api: &Api, id: &str, why: &str) {
    let (st, v) = api
        .post(&format!("/v1/transactions/{id}/commit"), &json!({}))
        .await
        .unwrap();
    assert_eq!(st, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(why), "{v}");
}

/// RocketMQ's broker times the check-backs (the test bed: the first after
/// about 3 s, then every 2 s); the gateway answers them from the app's
/// decisions, queues the undecided for the long poll, and rolls back after
/// `--txn-max-checks` unanswered ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_on_rocketmq_are_checked_back_then_decided() {
    let (_d, _bed, s) = start_on(Backend::RocketMq, &["--no-router", "--txn-max-checks", "1"]);
    let api = Api::new(&s, ANT, "RZ00A");
    let answered = txn(&api, "TXC", "answered").await;
    let ignored = txn(&api, "TXC", "ignored").await;
    let mut asked = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while asked.len() < 2 && Instant::now() < deadline {
        let (st, v) = api
            .post(
                "/v1/producer-groups/PG1/transaction-checks",
                &json!({"wait_ms": 5000}),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        for c in v["checks"].as_array().unwrap() {
            assert_eq!(c["topic"], "TXC", "{c}");
            asked.insert(
                c["transaction_id"].as_str().unwrap().to_owned(),
                c["message"]["body"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert_eq!(asked.get(&answered).map(String::as_str), Some("answered"));
    assert_eq!(asked.get(&ignored).map(String::as_str), Some("ignored"));
    // Decided after its check-back: END goes to the renewed half.
    let (st, v) = api
        .post(&format!("/v1/transactions/{answered}/commit"), &json!({}))
        .await
        .unwrap();
    assert_eq!((st, v["state"].as_str()), (200, Some("committed")), "{v}");
    let got = drain(&api, "G1", "TXC", 1, Duration::from_secs(10)).await;
    let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["answered"]);
    assert_eq!(got[0]["message_id"].as_str(), Some(answered.as_str()));
    // The other one's next check-back rolls it back, and says why.
    let deadline = Instant::now() + Duration::from_secs(15);
    let state = loop {
        let (st, v) = api
            .get(&format!("/v1/transactions/{ignored}"))
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        if v["state"] != "pending" || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(state["state"], "rolled_back", "{state}");
    assert_eq!(
        state["reason"], "no decision after 1 check-backs",
        "{state}"
    );
    commit_is_refused(&api, &ignored, "no decision after 1 check-backs").await;
    assert!(drain(&api, "G1", "TXC", 1, Duration::from_secs(3))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_pending_transaction_survives_kill_9() {
    let (_d, mut s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let id = txn(&api, "TXR", "durable half").await;
    s.kill9();
    s.restart().unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let deadline = Instant::now() + Duration::from_secs(5);
    let v = loop {
        let (st, v) = api
            .post(&format!("/v1/transactions/{id}/commit"), &json!({}))
            .await
            .unwrap();
        if st == 200 {
            break v;
        }
        assert!(st == 503 && Instant::now() < deadline, "{st} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["state"], "committed");
    let got = drain(&api, "G1", "TXR", 1, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["body"], "durable half");
}

#[tokio::test]
async fn ordered_topic_keeps_per_key_order_across_four_consumers_with_nacks() {
    let (_d, s) = start(&["--retry-levels", "50ms"]);
    let api = Api::new(&s, ANT, "RZ00A");
    const KEYS: usize = 6;
    const PER_KEY: usize = 15;
    for i in 0..PER_KEY {
        let msgs: Vec<Value> = (0..KEYS)
            .map(|k| json!({"body": format!("{k}:{i}"), "sharding_key": format!("key-{k}")}))
            .collect();
        let (st, v) = api
            .post(
                "/v1/topics/FIFO_BOOK/messages:batch",
                &json!({"messages": msgs}),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        // Same key, same queue.
        for (k, r) in v["results"].as_array().unwrap().iter().enumerate() {
            assert_eq!(r["queue"], v["results"][k]["queue"]);
        }
    }
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<usize, Vec<usize>>::new()));
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (api, acked) = (api.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c + 1);
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if acked.lock().unwrap().values().map(Vec::len).sum::<usize>() == KEYS * PER_KEY {
                    return;
                }
                let got = api
                    .receive(
                        "OG",
                        "FIFO_BOOK",
                        &json!({"max_messages": 8, "wait_ms": 200, "invisible_ms": 10000}),
                    )
                    .await
                    .unwrap();
                for m in got {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let (k, i) = m["body"].as_str().unwrap().split_once(':').unwrap();
                    let (k, i): (usize, usize) = (k.parse().unwrap(), i.parse().unwrap());
                    let path = if seed.is_multiple_of(4) {
                        "nack"
                    } else {
                        "ack"
                    };
                    if path == "ack" {
                        // Recorded before the ack: the next of this key can
                        // only be delivered after the ack answers.
                        acked.lock().unwrap().entry(k).or_default().push(i);
                    }
                    let (st, v) = api
                        .post(
                            &format!("/v1/groups/OG/topics/FIFO_BOOK/{path}"),
                            &json!({"receipt_handles": [m["receipt_handle"]]}),
                        )
                        .await
                        .unwrap();
                    assert_eq!(st, 200, "{v}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap();
    for k in 0..KEYS {
        let want: Vec<usize> = (0..PER_KEY).collect();
        assert_eq!(
            acked.get(&k),
            Some(&want),
            "key {k} out of order or incomplete"
        );
    }
}

#[tokio::test]
async fn bad_message_type_inputs_name_their_field() {
    let (_d, s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let forty_days: i64 = 40 * 24 * 3600 * 1000;
    let cases = [
        (
            json!({"body": "x", "delay_ms": forty_days + 1000}),
            "delay_ms",
        ),
        (
            json!({"body": "x", "deliver_at_ms": now_ms() + forty_days + 60_000}),
            "deliver_at_ms",
        ),
        (
            json!({"body": "x", "delay_ms": 10, "deliver_at_ms": now_ms() + 10}),
            "deliver_at_ms",
        ),
        (
            json!({"body": "x", "sharding_key": "k".repeat(64)}),
            "sharding_key",
        ),
        (
            json!({"body": "x", "delay_ms": 10, "transaction": {"producer_group": "PG1"}}),
            "transaction",
        ),
        (
            json!({"body": "x", "transaction": {"producer_group": "bad group"}}),
            "transaction.producer_group",
        ),
    ];
    for (body, field) in cases {
        let (st, v) = api.post("/v1/topics/T1/messages", &body).await.unwrap();
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    // An ordered topic needs something to order by.
    let (st, v) = api
        .post("/v1/topics/FIFO_X/messages", &json!({"body": "x"}))
        .await
        .unwrap();
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("sharding_key")),
        "{v}"
    );
    // 40 days exactly is fine.
    let (st, v) = api
        .post(
            "/v1/topics/T1/messages",
            &json!({"body": "x", "delay_ms": forty_days - 1000}),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn query_by_time_range_trace_and_load_test_traffic() {
    let (_d, s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let t0 = now_ms();
    api.publish("QT", &json!({"body": "one"})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t1 = now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    api.publish("QT", &json!({"body": "two"})).await.unwrap();
    let (st, v) = api
        .get(&format!("/v1/topics/QT/messages?start_ms={t0}&end_ms={t1}"))
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let bodies: Vec<&Value> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, vec!["one"]);
    let (_, v) = api
        .get(&format!("/v1/topics/QT/messages?start_ms={t0}"))
        .await
        .unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    let (st, v) = api
        .get("/v1/topics/QT/messages?start_ms=yesterday")
        .await
        .unwrap();
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("start_ms")));

    // Load-test traffic reaches only the allow-listed PT_ groups.
    api.publish("LT", &json!({"body": "pressure", "load_test": true}))
        .await
        .unwrap();
    assert!(drain(&api, "G1", "LT", 1, Duration::from_millis(600))
        .await
        .is_empty());
    let pt = drain(&api, "PT_1", "LT", 1, Duration::from_secs(2)).await;
    assert_eq!(pt.len(), 1);
    assert_eq!(pt[0]["properties"]["__LOADTEST"], "true");
}

cellgate_tests::on_both_backends!(
    the_trace_shows_every_hop_across_cells,
    the_trace_shows_every_hop_across_cells_on_rocketmq,
    trace_across_cells
);

async fn trace_across_cells(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    // uid 12375 lives in RZ03A: copies go to RZ03A, GZ00A and CZSH0.
    let r = api
        .publish("TRC", &json!({"body": "follow me", "uid": "12375"}))
        .await
        .unwrap();
    let id = r["message_id"].as_str().unwrap().to_owned();
    let rz03 = api.cell("RZ03A");
    let got = drain_as(&rz03, "rzone", "G1", "TRC", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the copy reached RZ03A");
    let deadline = Instant::now() + Duration::from_secs(10);
    let hops = loop {
        let (st, v) = api
            .get(&format!("/v1/topics/TRC/messages/{id}/trace"))
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        let hops = v["hops"].as_array().unwrap().clone();
        if hops.iter().any(|h| h["kind"] == "ack")
            && hops.iter().filter(|h| h["kind"] == "route").count() == 3
        {
            break hops;
        }
        assert!(Instant::now() < deadline, "incomplete trace: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<(&str, &str)> = hops
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["cell"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("publish", "RZ00A")), "{kinds:?}");
    assert!(kinds.contains(&("store", "RZ00A")), "{kinds:?}");
    assert!(kinds.contains(&("deliver", "RZ03A")), "{kinds:?}");
    assert!(kinds.contains(&("ack", "RZ03A")), "{kinds:?}");
    let mut targets: Vec<&str> = hops
        .iter()
        .filter(|h| h["kind"] == "route")
        .map(|h| {
            assert_eq!(h["detail"]["source_cell"], "RZ00A");
            assert_eq!(h["actor"], "router");
            h["detail"]["target_cell"].as_str().unwrap()
        })
        .collect();
    targets.sort();
    assert_eq!(targets, vec!["CZSH0", "GZ00A", "RZ03A"]);
    assert!(hops
        .windows(2)
        .all(|w| w[0]["at_ms"].as_i64() <= w[1]["at_ms"].as_i64()));
    // A batch's hops are stored together (on RocketMQ, one trace message
    // for many ids); each message's trace still shows its own hops only.
    let (st, v) = api
        .post(
            "/v1/topics/TRC/messages:batch",
            &json!({"messages": [{"body": "a"}, {"body": "b"}, {"body": "c"}]}),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    for r in v["results"].as_array().unwrap() {
        let id = r["message_id"].as_str().unwrap();
        let kinds = hops_until(&api, "TRC", id, &["publish", "store"]).await;
        assert_eq!(
            kinds.iter().filter(|k| *k == "publish").count(),
            1,
            "{id}: {kinds:?}"
        );
        let stores = kinds.iter().filter(|k| *k == "store").count();
        assert_eq!(stores, 1, "{id}: only its own hops: {kinds:?}");
    }
    // Another tenant gets a 404, not ANT's trace.
    let (st, _) = Api::new(&s, BETA, "RZ00A")
        .get(&format!("/v1/topics/TRC/messages/{id}/trace"))
        .await
        .unwrap();
    assert_eq!(st, 404);
}

/// Kinds of the hops of `id` once `want` are all there.
async fn hops_until(api: &Api, topic: &str, id: &str, want: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = api
            .get(&format!("/v1/topics/{topic}/messages/{id}/trace"))
            .await
            .unwrap();
        // RocketMQ's key index lags a send by up to about a second.
        assert!(
            st == 200 || (st == 404 && Instant::now() < deadline),
            "{st} {v}"
        );
        let kinds: Vec<String> = v["hops"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|h| h["kind"].as_str().unwrap().to_owned())
            .collect();
        if want.iter().all(|w| kinds.iter().any(|k| k == w)) {
            return kinds;
        }
        assert!(Instant::now() < deadline, "missing some of {want:?}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

cellgate_tests::on_both_backends!(
    the_trace_records_release_nack_dead_letter_and_commit,
    the_trace_records_release_nack_dead_letter_and_commit_on_rocketmq,
    trace_of_broker_events
);

/// On RocketMQ a delayed message (and a retry) falls due in RocketMQ's
/// timer; the backend records its `release` when it reads it.
async fn trace_of_broker_events(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &["--retry-levels", "50ms", "--max-attempts", "2"]);
    let api = Api::new(&s, ANT, "RZ00A");
    let r = api
        .publish("DLT", &json!({"body": "doomed", "delay_ms": 200}))
        .await
        .unwrap();
    let id = r["message_id"].as_str().unwrap().to_owned();
    // Two deliveries, both nacked; the next receive dead-letters it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut nacked = 0;
    while nacked < 2 {
        assert!(Instant::now() < deadline, "only {nacked} deliveries");
        let got = api
            .receive("G1", "DLT", &json!({"wait_ms": 500}))
            .await
            .unwrap();
        for m in got {
            let (st, v) = api
                .post(
                    "/v1/groups/G1/topics/DLT/nack",
                    &json!({"receipt_handles": [m["receipt_handle"]]}),
                )
                .await
                .unwrap();
            assert_eq!(st, 200, "{v}");
            nacked += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = api
        .receive("G1", "DLT", &json!({"wait_ms": 300}))
        .await
        .unwrap();
    assert!(again.is_empty(), "past max attempts: {again:?}");
    let kinds = hops_until(&api, "DLT", &id, &["release", "nack", "dlq"]).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "deliver").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "nack").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds[..2],
        ["publish".to_owned(), "store".to_owned()],
        "{kinds:?}"
    );
    // A second group reads the same released message: it was released
    // once, so the trace keeps one release for it (RocketMQ: each group's
    // read records the hop; the reader keeps one per release time).
    let releases = |k: &[String]| k.iter().filter(|k| *k == "release").count();
    let before = releases(&kinds);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = api
            .receive("G2", "DLT", &json!({"wait_ms": 500}))
            .await
            .unwrap();
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message_id"].as_str(), Some(id.as_str()));
    api.ack("G2", "DLT", &got).await.unwrap();
    hops_until(&api, "DLT", &id, &["ack"]).await;
    // G2's release hop was queued before its ack's, but may be stored in
    // an earlier trace message that a query finds a moment later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kinds = hops_until(&api, "DLT", &id, &["ack"]).await;
    assert_eq!(releases(&kinds), before, "{kinds:?}");

    let t = txn(&api, "DLT", "paid").await;
    let (st, v) = api
        .post(&format!("/v1/transactions/{t}/commit"), &json!({}))
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    hops_until(&api, "DLT", &t, &["publish", "store", "commit"]).await;
}

#[tokio::test]
async fn bad_time_ranges_name_their_field() {
    let (_d, s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let cases = [
        ("start_ms=100&end_ms=100", "end_ms", "after start_ms"),
        ("start_ms=100&limit=0", "limit", "1 to 1024"),
        ("start_ms=100&end_ms=soon", "end_ms", "milliseconds"),
        ("", "key", "start_ms"),
    ];
    for (q, field, says) in cases {
        let (st, v) = api
            .get(&format!("/v1/topics/QT/messages?{q}"))
            .await
            .unwrap();
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{q}: {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{q}: {msg}");
    }
}
