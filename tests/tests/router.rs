//! Cross-cell replication, end to end over HTTP on the example topology:
//! SPEC §4's worked example, a failover drill under load, and kill -9 of
//! the process mid-stream; each on the embedded brokers and on two RocketMQ
//! clusters (the SH cells on one, the HZ cells on the other).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cellgate_tests::rocketmq::{Backend, Bed};
use cellgate_tests::server::ANT;
use cellgate_tests::{edited_example, example, Api, Server};
use serde_json::{json, Value};

/// Receives until `quiet` passes with nothing new; acks as it goes. A
/// topic the router has not created in this cell yet (its first copy makes
/// it; a replay after kill -9 first waits out the lookup lag) is waited
/// for, up to 15 s.
async fn drain(api: &Api, group: &str, topic: &str, kind: &str, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let wait = quiet.as_millis() as u64;
    let created_by = Instant::now() + Duration::from_secs(15);
    let path = format!("/v1/groups/{group}/topics/{topic}/receive");
    loop {
        let body = json!({"subscription": kind, "max_messages": 256, "wait_ms": wait});
        let (st, v) = api.post(&path, &body).await.unwrap();
        if st == 404 && v["error"]["field"] == "topic" && Instant::now() < created_by {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(st, 200, "receive: {v}");
        let got = v["messages"].as_array().cloned().unwrap_or_default();
        if got.is_empty() {
            return out;
        }
        api.ack(group, topic, &got).await.unwrap();
        out.extend(got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_worked_example_end_to_end() {
    worked_example(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_worked_example_end_to_end_on_rocketmq() {
    worked_example(Backend::RocketMq).await;
}

async fn worked_example(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let bed = Bed::new(backend, dir.path(), &[]).unwrap();
    let s = Server::start(&bed.config, &dir.path().join("data"), &[]).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let sent = api
        .publish(
            "BILL",
            &json!({"body": "bill for B", "tag": "TagA", "keys": ["order-7"], "uid": "12375",
                    "properties": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}),
        )
        .await
        .unwrap();
    let id = sent["message_id"].clone();
    let quiet = Duration::from_millis(1500);
    let expect = [
        ("RZ03A", "rzone", 1),
        ("GZ00A", "gzone", 1),
        ("CZSH0", "czone", 1),
        ("RZ00A", "local", 1),
        ("CZHZ0", "czone", 0),
        ("RZ00A", "rzone", 0),
        ("RZ03A", "local", 0),
    ];
    for (cell, kind, n) in expect {
        let got = drain(&api.cell(cell), &format!("G_{kind}"), "BILL", kind, quiet).await;
        assert_eq!(got.len(), n, "{cell} {kind}: {got:?}");
        if let Some(m) = got.first() {
            assert_eq!(m["message_id"], id, "{cell}: the copy keeps the id");
            assert_eq!(m["body"], "bill for B");
            assert_eq!(m["tag"], "TagA");
            assert_eq!(m["keys"], json!(["order-7"]));
            assert_eq!(m["cell"], cell);
            let p = &m["properties"];
            assert_eq!(
                p["traceparent"],
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            );
            assert_eq!(p["__UNIT.ORIUNIT"], "RZ00A");
            assert_eq!(p["__UNIT.TARGET_R"], "RZ03A");
            assert_eq!(p["__UNIT.TARGET_G"], "GZ00A");
            assert_eq!(p["__UNIT.TARGET_C"], "CZSH0");
        }
    }
    let metrics = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "cellgate_router_copies_total{tenant=\"ANT\",source=\"RZ00A\",target=\"RZ03A\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("cellgate_router_replication_lag_seconds_bucket"),
        "{metrics}"
    );
}

/// The first warnings and errors cellgate logged, for a failure message.
fn warnings(dir: &std::path::Path) -> String {
    let log = std::fs::read_to_string(dir.join("data/server.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cellgate") && (l.contains("WARN") || l.contains("ERROR")))
        .take(20)
        .collect();
    lines.join("\n")
}

/// Every rzone subscriber's messages: message id → the cells it came
/// from. A message that comes twice is also printed with where each came
/// from (cell, queue, offset, attempt): two offsets mean two copies, one
/// offset a delivery made twice.
async fn rzone_receipts(api: &Api, group: &str, topic: &str) -> HashMap<String, Vec<&'static str>> {
    let mut seen: HashMap<String, Vec<&'static str>> = HashMap::new();
    let mut at: HashMap<String, Vec<String>> = HashMap::new();
    for cell in ["RZ00A", "RZ01A", "RZ02A", "RZ03A"] {
        for m in drain(
            &api.cell(cell),
            group,
            topic,
            "rzone",
            // Well above a RocketMQ broker's lookup lag (1 s), which a
            // replay after kill -9 waits out before it copies.
            Duration::from_millis(3500),
        )
        .await
        {
            let id = m["message_id"].as_str().unwrap().to_owned();
            let place = format!(
                "{cell} q{} @{} attempt {}",
                m["queue"], m["offset"], m["delivery_attempt"]
            );
            at.entry(id.clone()).or_default().push(place);
            seen.entry(id).or_default().push(cell);
        }
    }
    for (id, places) in at.iter().filter(|(_, p)| p.len() > 1) {
        eprintln!("received twice: {id}: {places:?}");
    }
    seen
}

/// Publishes `n` messages per uid batch until `stop`, recording uid per id.
async fn publish_load(api: Api, stop: tokio::sync::watch::Receiver<bool>) -> BTreeMap<String, u32> {
    let mut sent = BTreeMap::new();
    let mut i: u32 = 0;
    while !*stop.borrow() {
        let uid = i % 100; // every shard, in turn
        let body = json!({"body": format!("m{i}"), "uid": uid.to_string(), "sharding_key": format!("k{}", i % 7)});
        let (st, v) = api.post("/v1/topics/PAY/messages", &body).await.unwrap();
        assert_eq!(st, 200, "{v}");
        sent.insert(v["message_id"].as_str().unwrap().to_owned(), uid);
        i += 1;
    }
    sent
}

/// The RZone that owns a uid's shard in examples/ldc.yaml.
fn owner(uid: u32) -> &'static str {
    match uid % 100 {
        0..=24 => "RZ00A",
        25..=49 => "RZ01A",
        50..=74 => "RZ02A",
        _ => "RZ03A",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_loses_duplicates_and_misroutes_nothing() {
    failover_drill(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_on_rocketmq() {
    failover_drill(Backend::RocketMq).await;
}

async fn failover_drill(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let bed = Bed::new(backend, dir.path(), &[]).unwrap();
    let (path, text) = (bed.config.clone(), bed.text.clone());
    let s = Server::start(&path, &dir.path().join("data"), &[]).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(publish_load(api.clone(), stop));
    let swap = |t: &str| {
        let tmp = dir.path().join("next.part");
        std::fs::write(&tmp, t).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    swap(&text.replace("takeover: []", "takeover:\n  - { cell: RZ03A, by: RZ02A }"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    swap(&text);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(true).unwrap();
    let sent = load.await.unwrap();
    assert!(sent.len() > 100, "{}", sent.len());
    let seen = rzone_receipts(&api, "G_PAY", "PAY").await;
    let (mut lost, mut dup, mut wrong) = (0, 0, 0);
    for (id, uid) in &sent {
        match seen.get(id).map(Vec::as_slice) {
            None | Some([]) => lost += 1,
            Some([cell]) => {
                let ok = *cell == owner(*uid) || (owner(*uid) == "RZ03A" && *cell == "RZ02A");
                wrong += usize::from(!ok);
            }
            Some(_) => dup += 1,
        }
    }
    assert_eq!(
        (lost, dup, wrong),
        (0, 0, 0),
        "lost, duplicated, wrong cell of {}; the server's warnings:\n{}",
        sent.len(),
        warnings(dir.path())
    );
    // The drill did exercise the takeover.
    let redirected = sent
        .iter()
        .filter(|(id, uid)| owner(**uid) == "RZ03A" && seen[*id] == ["RZ02A"])
        .count();
    assert!(
        redirected > 0,
        "no message was served by RZ02A during the takeover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    kill_9_mid_stream(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_on_rocketmq() {
    kill_9_mid_stream(Backend::RocketMq).await;
}

async fn kill_9_mid_stream(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // Batches outrun ANT's 5000/s publish quota in a release build.
    let bed = Bed::new(
        backend,
        dir.path(),
        &[("publish_rate: 5000", "publish_rate: 1000000")],
    )
    .unwrap();
    let rules = bed.config.clone();
    let mut s = Server::start(&rules, &dir.path().join("data"), &[]).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let mut sent: BTreeMap<String, u32> = BTreeMap::new();
    let started = Instant::now();
    let mut i = 0u32;
    // Publish in bursts so the router is mid-copy when the kill comes.
    while started.elapsed() < Duration::from_millis(1500) {
        let msgs: Vec<Value> = (0..32)
            .map(|k| json!({"body": format!("m{i}-{k}"), "uid": format!("{}", (i * 32 + k) % 100)}))
            .collect();
        let (st, v) = api
            .post(
                "/v1/topics/KIL/messages:batch",
                &json!({ "messages": msgs }),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        for (k, r) in v["results"].as_array().unwrap().iter().enumerate() {
            sent.insert(
                r["message_id"].as_str().unwrap().to_owned(),
                (i * 32 + k as u32) % 100,
            );
        }
        i += 1;
    }
    s.kill9();
    s.restart().unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let seen = rzone_receipts(&api, "G_K", "KIL").await;
    for (id, cells) in &seen {
        assert!(
            cells.iter().all(|c| *c == owner(sent[id])),
            "{id} in {cells:?}"
        );
    }
    let lost: Vec<_> = sent
        .iter()
        .filter(|(id, _)| !seen.contains_key(*id))
        .collect();
    let dup = seen.values().filter(|cells| cells.len() > 1).count();
    let dups: Vec<String> = seen
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(id, cells)| format!("{id} (uid {}) in {cells:?}", sent[id]))
        .collect();
    let mut by_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, uid) in &lost {
        *by_owner.entry(owner(**uid)).or_default() += 1;
    }
    // On RocketMQ the replay reads the destination's queues rather than
    // trusting the broker's key index, which can miss an entry: an exact
    // dedupe, on both backends.
    let max_dup = 0;
    assert!(
        lost.is_empty() && dup <= max_dup,
        "of {}: {} lost, {dup} duplicated (at most {max_dup}: {dups:?}); lost by owner cell: {by_owner:?}; the server's warnings:\n{}",
        sent.len(),
        lost.len(),
        warnings(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_router_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut gw = Server::start(&example("ldc.yaml"), &data, &["--no-router"]).unwrap();
    let api = Api::new(&gw, ANT, "RZ00A");
    api.publish("SOLO", &json!({"body": "to RZ03A", "uid": "12399"}))
        .await
        .unwrap();
    // One embedded store, one process: a second one on the data dir is refused.
    let second = Server::start_command("router", &example("ldc.yaml"), &data, &[]);
    let err = second.unwrap_err().to_string();
    assert!(
        err.contains("another cellgate process is using this data directory"),
        "{err}"
    );
    assert!(gw.terminate(Duration::from_secs(15)).unwrap().success());
    // The router alone: no message API, but it copies, and shows metrics.
    let mut router = Server::start_command("router", &example("ldc.yaml"), &data, &[]).unwrap();
    let (st, _) = Api::new(&router, ANT, "RZ00A")
        .post("/v1/topics/SOLO/messages", &json!({"body": "x"}))
        .await
        .unwrap();
    assert_eq!(st, 404);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = reqwest::get(router.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains(
            "cellgate_router_copies_total{tenant=\"ANT\",source=\"RZ00A\",target=\"RZ03A\"} 1",
        ) {
            break;
        }
        assert!(Instant::now() < deadline, "no copy made:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(router.terminate(Duration::from_secs(15)).unwrap().success());
    let gw = Server::start(&example("ldc.yaml"), &data, &["--no-router"]).unwrap();
    let got = drain(
        &Api::new(&gw, ANT, "RZ03A"),
        "G",
        "SOLO",
        "rzone",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["body"], "to RZ03A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (path, text) = edited_example(dir.path(), "ldc.yaml", &[]);
    let s = Server::start(&path, &dir.path().join("data"), &[]).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let quiet = Duration::from_millis(1500);
    let first = api
        .publish("RT", &json!({"body": "before", "uid": "12375"}))
        .await
        .unwrap();
    // Copied to the GZone under the first rules (waited for, so the reload
    // below cannot overtake it).
    let gz = drain(&api.cell("GZ00A"), "G", "RT", "gzone", quiet).await;
    assert_eq!(gz.len(), 1);
    // ANT's route now replicates R only: no more copies for G and C.
    let r_only = text.replacen("targets: [R, G, C]", "targets: [R]", 1);
    let tmp = dir.path().join("next.part");
    std::fs::write(&tmp, &r_only).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let admin = api.token(Some(cellgate_tests::server::ADMIN));
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.get("/v1/rules").await.unwrap().1["version"] != 2 {
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = api
        .publish("RT", &json!({"body": "after", "uid": "12375"}))
        .await
        .unwrap();
    let ids =
        |got: Vec<Value>| -> Vec<Value> { got.iter().map(|m| m["message_id"].clone()).collect() };
    let gz = drain(&api.cell("GZ00A"), "G", "RT", "gzone", quiet).await;
    assert!(
        gz.is_empty(),
        "copied for G after the route dropped it: {gz:?}"
    );
    let rz = drain(&api.cell("RZ03A"), "G", "RT", "rzone", quiet).await;
    let mut got = ids(rz);
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![first["message_id"].clone(), second["message_id"].clone()];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
}
