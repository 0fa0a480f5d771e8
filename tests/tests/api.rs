//! Every endpoint's happy path, over real sockets against `cellgate serve`
//! on the example topology, on both backends: each cell on the embedded
//! broker, or on RocketMQ clusters (the `_on_rocketmq` twins).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cellgate_tests::rocketmq::{start_on, Backend};
use cellgate_tests::server::{ADMIN, ANT};
use cellgate_tests::{now_ms, Api, Server};
use serde_json::{json, Value};

cellgate_tests::on_both_backends!(
    publish_receive_ack_keeps_every_field,
    publish_receive_ack_keeps_every_field_on_rocketmq,
    publish_receive_ack_keeps_every_field_on
);

async fn publish_receive_ack_keeps_every_field_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let sent = json!({
        "body": "bill for B", "tag": "TagA", "keys": ["order-1", "order-2"],
        "uid": "12375", "sharding_key": "user-B", "properties": {"app": "billing"},
    });
    let r = api.publish("BILL", &sent).await.unwrap();
    assert_eq!(r["topic"], "BILL");
    assert_eq!(r["cell"], "RZ00A");
    assert_eq!(
        r["unit"],
        json!({"ORIUNIT": "RZ00A", "TARGET_G": "GZ00A", "TARGET_C": "CZSH0", "TARGET_R": "RZ03A"})
    );
    assert!(r["message_id"].as_str().unwrap().len() == 36 && r["offset"] == 0);

    let got = api
        .receive(
            "G1",
            "BILL",
            &json!({"subscription": "local", "max_messages": 16}),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m["message_id"], r["message_id"]);
    assert_eq!(m["body"], "bill for B");
    assert_eq!(m["tag"], "TagA");
    assert_eq!(m["keys"], json!(["order-1", "order-2"]));
    assert_eq!(m["topic"], "BILL", "logical name only");
    assert_eq!(m["delivery_attempt"], 1);
    assert_eq!(m["queue"], r["queue"]);
    let p = &m["properties"];
    assert_eq!(p["app"], "billing");
    assert_eq!(p["__UNIT.ORIUNIT"], "RZ00A");
    assert_eq!(p["__UNIT.TARGET_R"], "RZ03A");
    assert_eq!(p["__UNIT.RULES_VERSION"], "1");
    assert_eq!(p["__SHARDINGKEY"], "user-B");
    assert!(m["born_at_ms"].as_i64().unwrap() > 0);
    assert!(!m.to_string().contains("ANT|"), "no physical names: {m}");

    api.ack("G1", "BILL", &got).await.unwrap();
    let again = api
        .receive("G1", "BILL", &json!({"subscription": "local"}))
        .await
        .unwrap();
    assert!(again.is_empty());
    let (st, lag) = api.get("/v1/groups/G1/topics/BILL/lag").await.unwrap();
    assert_eq!((st, lag["lag"].clone()), (200, json!(0)));

    // A binary body comes back as base64; the same sharding key, the same queue.
    let bin = api
        .publish(
            "BILL",
            &json!({"body_base64": "AAEC/w==", "sharding_key": "user-B"}),
        )
        .await
        .unwrap();
    assert_eq!(bin["queue"], r["queue"]);
    let got = api.receive("G1", "BILL", &json!({})).await.unwrap();
    assert_eq!(got[0]["body_base64"], "AAEC/w==");
    assert!(got[0].get("body").is_none());
}

cellgate_tests::on_both_backends!(
    subscription_kinds_filter_in_the_broker_and_leave_no_lag,
    subscription_kinds_filter_in_the_broker_and_leave_no_lag_on_rocketmq,
    subscription_kinds_filter_in_the_broker_and_leave_no_lag_on
);

async fn subscription_kinds_filter_in_the_broker_and_leave_no_lag_on(backend: Backend) {
    // One cell at a time: no router, so nothing arrives from other cells.
    let (_d, _bed, s) = start_on(backend, &["--no-router"]);
    let rz00 = Api::new(&s, ANT, "RZ00A");
    // uid 12300 -> shard 00 -> RZ00A; uid 12375 -> shard 75 -> RZ03A.
    let mine = rz00
        .publish("T1", &json!({"body": "mine", "uid": "12300"}))
        .await
        .unwrap();
    rz00.publish("T1", &json!({"body": "theirs", "uid": "12375"}))
        .await
        .unwrap();
    rz00.publish("T1", &json!({"body": "no uid"}))
        .await
        .unwrap();

    let rzone = rz00
        .receive("GR", "T1", &json!({"subscription": "rzone"}))
        .await
        .unwrap();
    assert_eq!(rzone.len(), 1);
    assert_eq!(rzone[0]["message_id"], mine["message_id"]);
    rz00.ack("GR", "T1", &rzone).await.unwrap();
    let (_, lag) = rz00.get("/v1/groups/GR/topics/T1/lag").await.unwrap();
    assert_eq!(lag["lag"], 0, "filtered-out messages are not lag: {lag}");

    let local = rz00
        .receive("GL", "T1", &json!({"subscription": "local"}))
        .await
        .unwrap();
    assert_eq!(local.len(), 3);
    // RZ00A is neither the GZone nor a CZone: nothing for those kinds here.
    for kind in ["gzone", "czone"] {
        let got = rz00
            .receive(&format!("G{kind}"), "T1", &json!({"subscription": kind}))
            .await
            .unwrap();
        assert!(got.is_empty(), "{kind}: {got:?}");
        let (_, lag) = rz00
            .get(&format!("/v1/groups/G{kind}/topics/T1/lag"))
            .await
            .unwrap();
        assert_eq!(lag["lag"], 0, "{kind}");
    }
    // In the GZone, a gzone subscriber takes what was published there.
    let gz = rz00.cell("GZ00A");
    gz.publish("T1", &json!({"body": "global"})).await.unwrap();
    let got = gz
        .receive("GG", "T1", &json!({"subscription": "gzone"}))
        .await
        .unwrap();
    assert_eq!((got.len(), got[0]["body"].clone()), (1, json!("global")));
    let cz = rz00.cell("CZSH0");
    cz.publish("T1", &json!({"body": "city"})).await.unwrap();
    let got = cz
        .receive("GC", "T1", &json!({"subscription": "czone"}))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

cellgate_tests::on_both_backends!(
    batch_and_oneway_publish,
    batch_and_oneway_publish_on_rocketmq,
    batch_and_oneway_publish_on
);

async fn batch_and_oneway_publish_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let (st, v) = api
        .post(
            "/v1/topics/T2/messages:batch",
            &json!({"messages": [{"body": "a", "tag": "X"}, {"body": "b", "uid": "7"}, {"body": "c"}]}),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["unit"]["TARGET_R"], "RZ00A");
    let (st, v) = api
        .post("/v1/topics/T2/messages?mode=oneway", &json!({"body": "d"}))
        .await
        .unwrap();
    assert_eq!(st, 202, "{v}");
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bodies.len() < 4 && Instant::now() < deadline {
        let got = api.receive("G", "T2", &json!({"wait_ms": 500})).await;
        let got = got.unwrap_or_else(|e| panic!("{e:#}\n{}", s.log_text()));
        for m in got {
            bodies.push(m["body"].as_str().unwrap().to_owned());
        }
    }
    bodies.sort();
    assert_eq!(bodies, ["a", "b", "c", "d"]);
}

cellgate_tests::on_both_backends!(
    nack_and_invisibility_redeliver_then_dead_letter,
    nack_and_invisibility_redeliver_then_dead_letter_on_rocketmq,
    nack_and_invisibility_redeliver_then_dead_letter_on
);

async fn nack_and_invisibility_redeliver_then_dead_letter_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &["--retry-levels", "200ms", "--max-attempts", "3"]);
    let api = Api::new(&s, ANT, "RZ00A");
    api.publish("T3", &json!({"body": "flaky"})).await.unwrap();
    let first = api
        .receive("G", "T3", &json!({"invisible_ms": 300}))
        .await
        .unwrap();
    assert_eq!(first[0]["delivery_attempt"], 1);
    // Not acked: back after the invisibility time.
    let second = api
        .receive("G", "T3", &json!({"wait_ms": 3000}))
        .await
        .unwrap();
    assert_eq!(second[0]["delivery_attempt"], 2);
    // The first handle is void now.
    let (st, v) = api
        .post(
            "/v1/groups/G/topics/T3/ack",
            &json!({"receipt_handles": [first[0]["receipt_handle"]]}),
        )
        .await
        .unwrap();
    assert_eq!(st, 409, "{v}");
    let (st, v) = api
        .post(
            "/v1/groups/G/topics/T3/nack",
            &json!({"receipt_handles": [second[0]["receipt_handle"]]}),
        )
        .await
        .unwrap();
    assert_eq!((st, v), (200, json!({"nacked": 1})));
    let third = api
        .receive("G", "T3", &json!({"wait_ms": 3000}))
        .await
        .unwrap();
    assert_eq!(third[0]["delivery_attempt"], 3);
    api.post(
        "/v1/groups/G/topics/T3/nack",
        &json!({"receipt_handles": [third[0]["receipt_handle"]]}),
    )
    .await
    .unwrap();
    // Attempts exhausted: dead-lettered, not delivered again.
    let none = api
        .receive("G", "T3", &json!({"wait_ms": 800}))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}

cellgate_tests::on_both_backends!(
    tag_filter_and_broadcast,
    tag_filter_and_broadcast_on_rocketmq,
    tag_filter_and_broadcast_on
);

async fn tag_filter_and_broadcast_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    for tag in ["A", "B", "C"] {
        api.publish("T4", &json!({"body": tag, "tag": tag}))
            .await
            .unwrap();
    }
    let got = api
        .receive("GT", "T4", &json!({"tags": "A || C"}))
        .await
        .unwrap();
    let mut tags: Vec<&str> = got.iter().map(|m| m["tag"].as_str().unwrap()).collect();
    tags.sort();
    assert_eq!(tags, ["A", "C"]);
    // Broadcast: each consumer id sees everything, with its own progress.
    for c in ["c1", "c2"] {
        let b = json!({"mode": "broadcast", "consumer_id": c});
        let got = api.receive("GB", "T4", &b).await.unwrap();
        assert_eq!(got.len(), 3, "{c}");
        api.ack("GB", "T4", &got).await.unwrap();
        assert!(api.receive("GB", "T4", &b).await.unwrap().is_empty());
    }
    let (_, lag) = api
        .get("/v1/groups/GB/topics/T4/lag?consumer_id=c1")
        .await
        .unwrap();
    assert_eq!(lag["lag"], 0);
}

cellgate_tests::on_both_backends!(
    reset_rewinds_a_group,
    reset_rewinds_a_group_on_rocketmq,
    reset_rewinds_a_group_on
);

async fn reset_rewinds_a_group_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let before = now_ms() - 1;
    for i in 0..3 {
        api.publish("T5", &json!({"body": format!("m{i}")}))
            .await
            .unwrap();
    }
    let got = api.receive("G", "T5", &json!({})).await.unwrap();
    assert_eq!(got.len(), 3);
    api.ack("G", "T5", &got).await.unwrap();
    let (st, v) = api
        .post(
            "/v1/groups/G/topics/T5/reset",
            &json!({"timestamp_ms": before}),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let (_, lag) = api.get("/v1/groups/G/topics/T5/lag").await.unwrap();
    assert_eq!(lag["lag"], 3, "{lag}");
    assert_eq!(api.receive("G", "T5", &json!({})).await.unwrap().len(), 3);
}

/// GETs `path` until it answers 200 with a body `done` accepts, or 5 s
/// pass; returns the last answer.
async fn get_until(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, v) = api.get(path).await.unwrap();
        if (st == 200 && done(&v)) || Instant::now() > deadline {
            return (st, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

cellgate_tests::on_both_backends!(
    query_by_id_and_by_key,
    query_by_id_and_by_key_on_rocketmq,
    query_by_id_and_by_key_on
);

async fn query_by_id_and_by_key_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let r = api
        .publish("T6", &json!({"body": "x", "keys": ["order-9"]}))
        .await
        .unwrap();
    api.publish("T6", &json!({"body": "y", "keys": ["order-9", "z"]}))
        .await
        .unwrap();
    let id = r["message_id"].as_str().unwrap();
    // RocketMQ indexes ids and keys a moment after the send: ask again.
    let (st, m) = get_until(&api, &format!("/v1/topics/T6/messages/{id}"), |_| true).await;
    assert_eq!(
        (st, m["body"].clone(), m["topic"].clone()),
        (200, json!("x"), json!("T6"))
    );
    let both = |v: &Value| v["messages"].as_array().is_some_and(|m| m.len() >= 2);
    let (st, v) = get_until(&api, "/v1/topics/T6/messages?key=order-9", both).await;
    assert_eq!(st, 200);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    // The same id under another topic, or in another cell: not found.
    let (st, _) = api
        .get(&format!("/v1/topics/T7/messages/{id}"))
        .await
        .unwrap();
    assert_eq!(st, 404);
    let (st, _) = api
        .cell("RZ01A")
        .get(&format!("/v1/topics/T6/messages/{id}"))
        .await
        .unwrap();
    assert_eq!(st, 404);
}

cellgate_tests::on_both_backends!(
    operations_endpoints,
    operations_endpoints_on_rocketmq,
    operations_endpoints_on
);

async fn operations_endpoints_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &["--cell", "RZ00A"]);
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(s.url(p)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    // Default cell: no X-Cell needed.
    let mut api = Api::new(&s, ANT, "RZ00A");
    api.cell = None;
    let r = api.publish("T8", &json!({"body": "x"})).await.unwrap();
    assert_eq!(r["cell"], "RZ00A");
    assert_eq!(api.receive("G", "T8", &json!({})).await.unwrap().len(), 1);
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    for want in [
        "cellgate_http_requests_total{endpoint=\"publish\",status=\"200\"} 1",
        "cellgate_messages_published_total{tenant=\"ANT\",cell=\"RZ00A\"} 1",
        "cellgate_published_bytes_total{tenant=\"ANT\",cell=\"RZ00A\"} 1",
        "cellgate_messages_delivered_total{tenant=\"ANT\",cell=\"RZ00A\"} 1",
        "cellgate_delivered_bytes_total{tenant=\"ANT\",cell=\"RZ00A\"} 1",
        "cellgate_http_request_duration_seconds_count{endpoint=\"receive\"} 1",
        "cellgate_http_request_duration_seconds_bucket",
        "cellgate_rules_version 1",
        "cellgate_rules_reloads{outcome=\"invalid\"} 0",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    let admin = api.token(Some(ADMIN));
    let (st, rules) = admin.get("/v1/rules").await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(rules["version"], 1);
    assert_eq!(rules["sha256"].as_str().unwrap().len(), 64);
    assert!(rules["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(rules["last_error"].is_null());
    let (st, topo) = api.get("/v1/topology").await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(topo["gzone"], "GZ00A");
    assert_eq!(topo["cells"].as_array().unwrap().len(), 7);
    assert_eq!(
        topo["shards"][3],
        json!({"range": "75-99", "cell": "RZ03A"})
    );
}

cellgate_tests::on_both_backends!(
    long_poll_wakes_on_publish,
    long_poll_wakes_on_publish_on_rocketmq,
    long_poll_wakes_on_publish_on
);

async fn long_poll_wakes_on_publish_on(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let api = Api::new(&s, ANT, "RZ00A");
    // Create the topic and the group's position first.
    assert!(api.receive("G", "T9", &json!({})).await.unwrap().is_empty());
    let mut lateness = Vec::new();
    for i in 0..5 {
        let poller = api.clone();
        let poll = tokio::spawn(async move {
            let got = poller
                .receive("G", "T9", &json!({"wait_ms": 10000}))
                .await
                .unwrap();
            (Instant::now(), got)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        api.publish("T9", &json!({"body": format!("m{i}")}))
            .await
            .unwrap();
        let (woke, got) = poll.await.unwrap();
        assert_eq!(got.len(), 1);
        api.ack("G", "T9", &got).await.unwrap();
        lateness.push(woke.saturating_duration_since(sent));
    }
    lateness.sort();
    // The median, so one scheduling hiccup on a shared machine does not
    // decide; every wake must in any case be far from the 10 s wait.
    assert!(lateness[2] < Duration::from_millis(50), "{lateness:?}");
    assert!(lateness[4] < Duration::from_secs(2), "{lateness:?}");
}

#[tokio::test]
async fn hot_reload_applies_to_requests_after_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    let (path, text) = cellgate_tests::edited_example(dir.path(), "ldc.yaml", &[]);
    let s = Server::start(&path, &dir.path().join("data"), &[]).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let r = api
        .publish("T", &json!({"body": "x", "uid": "12375"}))
        .await
        .unwrap();
    assert_eq!(r["unit"]["TARGET_R"], "RZ03A");
    // RZ02A takes over RZ03A.
    let new = text.replace("takeover: []", "takeover:\n  - { cell: RZ03A, by: RZ02A }");
    std::fs::write(dir.path().join("tmp.yaml.part"), &new).unwrap();
    std::fs::rename(dir.path().join("tmp.yaml.part"), &path).unwrap();
    let admin = api.token(Some(ADMIN));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, rules) = admin.get("/v1/rules").await.unwrap();
        if rules["version"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no reload: {rules}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = api
        .publish("T", &json!({"body": "x", "uid": "12375"}))
        .await
        .unwrap();
    assert_eq!(r["unit"]["TARGET_R"], "RZ02A");
    let got = api.receive("G", "T", &json!({})).await.unwrap();
    assert_eq!(got[1]["properties"]["__UNIT.RULES_VERSION"], "2");
    // A broken file: the last good rules stay, the error is reported.
    std::fs::write(&path, "cells: [\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let err: Value = loop {
        let (_, rules) = admin.get("/v1/rules").await.unwrap();
        if !rules["last_error"].is_null() {
            assert_eq!(rules["version"], 2);
            break rules["last_error"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no error reported: {}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        err["message"].as_str().unwrap().contains("ldc.yaml:2:1"),
        "{err}"
    );
    // A tenant token sees that a reload failed, not the text.
    let (_, rules) = api.get("/v1/rules").await.unwrap();
    assert!(!rules["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("ldc.yaml"));
    let r = api
        .publish("T", &json!({"body": "x", "uid": "12375"}))
        .await
        .unwrap();
    assert_eq!(r["unit"]["TARGET_R"], "RZ02A");
}
