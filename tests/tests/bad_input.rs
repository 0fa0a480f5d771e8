//! Every bad-input case of the gateway issue gets the right status and a
//! JSON error naming the field; the bounds on headers, bodies, connections
//! and time hold against slow and oversized clients.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cellgate_tests::server::{ADMIN, ANT, BETA};
use cellgate_tests::{edited_example, Api, Server};
use serde_json::{json, Value};
use sha2::Digest;

const READER: &str = "beta-read-token";

/// BETA narrowed: a few cells, topic and group patterns, a tight quota and
/// a 1 KiB message limit; plus a subscribe-only token.
fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let reader = hex::encode(sha2::Sha256::digest(READER.as_bytes()));
    let beta = "cells: [RZ00A, RZ01A, GZ00A, CZSH0]\n    topics: [\"ORDER_.*\"]\n    groups: [\"GID_.*\"]\n    \
         quotas:\n      publish_rate: 1\n      publish_burst: 3\n      max_message_bytes: 1024\n    routes:";
    let token = format!(
        "permissions: [publish, subscribe]\n      - name: beta-read\n        sha256: {reader}\n        permissions: [subscribe]\n    cells: [\"*\"]\n    routes:"
    );
    let (path, _) = edited_example(
        dir.path(),
        "ldc.yaml",
        &[(
            "permissions: [publish, subscribe]\n    cells: [\"*\"]\n    routes:",
            &token,
        )],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("cells: [\"*\"]\n    routes:", beta, 1);
    std::fs::write(&path, text).unwrap();
    let s = Server::start(&path, &dir.path().join("data"), extra).unwrap();
    (dir, s)
}

fn assert_error(got: &(u16, Value), status: u16, field: &str) {
    let (st, v) = got;
    assert_eq!(*st, status, "{v}");
    assert_eq!(v["error"]["field"], field, "{v}");
    assert!(
        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
}

#[tokio::test]
async fn malformed_requests_name_the_field() {
    let (_d, s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let p = "/v1/topics/T/messages";
    assert_error(
        &api.post_raw(p, "{\"body\": \"x\",").await.unwrap(),
        400,
        "body",
    );
    assert_error(&api.post_raw(p, "[1, 2]").await.unwrap(), 400, "body");
    assert_error(
        &api.post(p, &json!({"body": "x", "colour": "red"}))
            .await
            .unwrap(),
        400,
        "colour",
    );
    assert_error(
        &api.post(p, &json!({"body_base64": "%%%"})).await.unwrap(),
        400,
        "body_base64",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "body_base64": "eA=="}))
            .await
            .unwrap(),
        400,
        "body_base64",
    );
    assert_error(&api.post(p, &json!({})).await.unwrap(), 400, "body");
    assert_error(
        &api.post(
            p,
            &json!({"body": "x", "properties": {"__UNIT.ORIUNIT": "RZ01A"}}),
        )
        .await
        .unwrap(),
        400,
        "properties.__UNIT.ORIUNIT",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "properties": {"a": ""}}))
            .await
            .unwrap(),
        400,
        "properties.a",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "properties": {"a": "tab\there"}}))
            .await
            .unwrap(),
        400,
        "properties.a",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "tag": "A|B"}))
            .await
            .unwrap(),
        400,
        "tag",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "keys": ["ok", ""]}))
            .await
            .unwrap(),
        400,
        "keys[1]",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "sharding_key": "k".repeat(64)}))
            .await
            .unwrap(),
        400,
        "sharding_key",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "uid": ""})).await.unwrap(),
        400,
        "uid",
    );
    assert_error(
        &api.post(p, &json!({"body": "x", "delay_ms": 1, "deliver_at_ms": 2}))
            .await
            .unwrap(),
        400,
        "deliver_at_ms",
    );
    let many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("p{i}"), json!("v"))).collect();
    assert_error(
        &api.post(p, &json!({"body": "x", "properties": many}))
            .await
            .unwrap(),
        400,
        "properties",
    );
    // Names.
    assert_error(
        &api.post("/v1/topics/a%25b/messages", &json!({"body": "x"}))
            .await
            .unwrap(),
        400,
        "topic",
    );
    assert_error(
        &api.post(
            &format!("/v1/topics/{}/messages", "T".repeat(65)),
            &json!({"body": "x"}),
        )
        .await
        .unwrap(),
        400,
        "topic",
    );
    assert_error(
        &api.post("/v1/topics/TBW102/messages", &json!({"body": "x"}))
            .await
            .unwrap(),
        400,
        "topic",
    );
    assert_error(
        &api.post("/v1/groups/G%7C1/topics/T/receive", &json!({}))
            .await
            .unwrap(),
        400,
        "group",
    );
    // Batches name the message.
    let (st, v) = api
        .post(
            "/v1/topics/T/messages:batch",
            &json!({"messages": [{"body": "ok"}, {"body": "x", "tag": "a|b"}]}),
        )
        .await
        .unwrap();
    assert_error(&(st, v), 400, "messages[1].tag");
    // Nothing of the refused batch was stored.
    assert!(api.receive("G", "T", &json!({})).await.unwrap().is_empty());
    // Receive options.
    let r = "/v1/groups/G/topics/T/receive";
    assert_error(
        &api.post(r, &json!({"subscription": "planet"}))
            .await
            .unwrap(),
        400,
        "subscription",
    );
    assert_error(
        &api.post(r, &json!({"wait_ms": 30001})).await.unwrap(),
        400,
        "wait_ms",
    );
    assert_error(
        &api.post(r, &json!({"max_messages": 0})).await.unwrap(),
        400,
        "max_messages",
    );
    assert_error(
        &api.post(r, &json!({"mode": "broadcast"})).await.unwrap(),
        400,
        "consumer_id",
    );
    assert_error(
        &api.post(r, &json!({"tags": "a|||b"})).await.unwrap(),
        400,
        "tags",
    );
    // Unknown routes and methods.
    assert_error(&api.get("/v2/nothing").await.unwrap(), 404, "path");
    assert_error(
        &api.send(api.http.delete(s.url("/v1/topics/T/messages")))
            .await
            .unwrap(),
        405,
        "method",
    );
}

#[tokio::test]
async fn auth_cells_permissions_and_quotas() {
    let (_d, s) = start(&[]);
    let beta = Api::new(&s, BETA, "RZ00A");
    let p = "/v1/topics/ORDER_1/messages";
    let body = json!({"body": "x"});
    assert_error(
        &beta.token(None).post(p, &body).await.unwrap(),
        401,
        "Authorization",
    );
    assert_error(
        &beta.token(Some("nope")).post(p, &body).await.unwrap(),
        401,
        "Authorization",
    );
    let basic = beta
        .http
        .post(s.url(p))
        .header("Authorization", "Basic YTpi")
        .json(&body);
    assert_error(&beta.send(basic).await.unwrap(), 401, "Authorization");
    assert_error(
        &beta.token(Some(READER)).post(p, &body).await.unwrap(),
        403,
        "Authorization",
    );
    assert_error(
        &beta.post("/v1/topics/BILL/messages", &body).await.unwrap(),
        403,
        "topic",
    );
    assert_error(
        &beta
            .post("/v1/groups/G1/topics/ORDER_1/receive", &json!({}))
            .await
            .unwrap(),
        403,
        "group",
    );
    assert_error(
        &beta.cell("NOPE").post(p, &body).await.unwrap(),
        404,
        "X-Cell",
    );
    assert_error(
        &beta.cell("RZ03A").post(p, &body).await.unwrap(),
        403,
        "X-Cell",
    );
    let mut no_cell = beta.clone();
    no_cell.cell = None;
    assert_error(&no_cell.post(p, &body).await.unwrap(), 400, "X-Cell");
    // An admin token must name the tenant; a tenant token may not name another.
    assert_error(
        &beta.token(Some(ADMIN)).post(p, &body).await.unwrap(),
        400,
        "X-Namespace",
    );
    let other_ns = beta
        .http
        .post(s.url(p))
        .bearer_auth(BETA)
        .header("X-Cell", "RZ00A")
        .header("X-Namespace", "ANT")
        .json(&body);
    assert_error(&beta.send(other_ns).await.unwrap(), 403, "X-Namespace");
    let as_admin = beta
        .http
        .post(s.url(p))
        .bearer_auth(ADMIN)
        .header("X-Cell", "RZ00A")
        .header("X-Namespace", "BETA")
        .json(&body);
    assert_eq!(beta.send(as_admin).await.unwrap().0, 200);
    // 1 KiB message limit: 413 naming the body.
    assert_error(
        &beta
            .post(p, &json!({"body": "x".repeat(1025)}))
            .await
            .unwrap(),
        413,
        "body",
    );
    // Quota: burst 3 at 1/s; the admin publish above took one.
    beta.publish("ORDER_1", &body).await.unwrap();
    beta.publish("ORDER_1", &body).await.unwrap();
    let resp = beta
        .http
        .post(s.url(p))
        .bearer_auth(BETA)
        .header("X-Cell", "RZ00A")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after), "{after}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn receipt_handles_are_checked() {
    let (_d, s) = start(&[]);
    let ant = Api::new(&s, ANT, "RZ00A");
    let beta = Api::new(&s, BETA, "RZ00A");
    ant.publish("ORDER_1", &json!({"body": "a"})).await.unwrap();
    beta.publish("ORDER_1", &json!({"body": "b"}))
        .await
        .unwrap();
    let a = ant.receive("GID_1", "ORDER_1", &json!({})).await.unwrap();
    let b = beta.receive("GID_1", "ORDER_1", &json!({})).await.unwrap();
    assert_eq!((a.len(), b.len()), (1, 1));
    let ack = "/v1/groups/GID_1/topics/ORDER_1/ack";
    // BETA's handle, for the same logical group and topic, is not ANT's.
    let r = ant
        .post(ack, &json!({"receipt_handles": [b[0]["receipt_handle"]]}))
        .await
        .unwrap();
    assert_error(&r, 400, "receipt_handles[0]");
    // One bad handle settles nothing, even the good one before it.
    let r = ant
        .post(
            ack,
            &json!({"receipt_handles": [a[0]["receipt_handle"], "garbage"]}),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "receipt_handles[1]");
    // The same handle in another cell or group is refused too.
    let r = ant
        .cell("RZ01A")
        .post(ack, &json!({"receipt_handles": [a[0]["receipt_handle"]]}))
        .await
        .unwrap();
    assert_error(&r, 400, "receipt_handles[0]");
    assert_error(
        &ant.post(ack, &json!({"receipt_handles": []}))
            .await
            .unwrap(),
        400,
        "receipt_handles",
    );
    // Still in flight for both tenants: the good handles work.
    ant.ack("GID_1", "ORDER_1", &a).await.unwrap();
    beta.ack("GID_1", "ORDER_1", &b).await.unwrap();
}

fn raw(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

fn read_all(mut c: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_bodies_are_refused_without_reading_them() {
    let (_d, s) = start(&[]);
    let head = |len: &str| {
        format!(
            "POST /v1/topics/ORDER_1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BETA}\r\n\
             X-Cell: RZ00A\r\nContent-Type: application/json\r\n{len}\r\n"
        )
    };
    // A declared 100 MiB body: answered at once, nothing sent.
    let mut c = raw(&s);
    c.write_all(head("Content-Length: 104857600\r\n").as_bytes())
        .unwrap();
    let text = read_all(c);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"field\":\"body\""), "{text}");
    // A chunked body with no declared end: cut off at the limit.
    let mut c = raw(&s);
    c.write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 16384, "x".repeat(16384));
    for _ in 0..64 {
        if c.write_all(chunk.as_bytes()).is_err() {
            break; // the server stopped reading: expected
        }
    }
    let text = read_all(c);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let (_d, s) = start(&["--header-timeout", "1s", "--body-timeout", "1s"]);
    // Slowloris: headers that never finish.
    let started = Instant::now();
    let mut c = raw(&s);
    c.write_all(b"POST /v1/topics/T/messages HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let _ = read_all(c);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "header timeout not enforced: {took:?}"
    );
    // A body that trickles: 408.
    let mut c = raw(&s);
    c.write_all(
        format!(
            "POST /v1/topics/T/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ANT}\r\n\
             X-Cell: RZ00A\r\nContent-Length: 100\r\n\r\n{{\"body\""
        )
        .as_bytes(),
    )
    .unwrap();
    let text = read_all(c);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // Oversized headers: refused by the HTTP layer (431).
    let mut c = raw(&s);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = c.write_all(big.as_bytes());
    let text = read_all(c);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    // Service goes on.
    let ok = reqwest::get(s.url("/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    // Its own server, with the default header timeout: the held connections
    // must not time out while the test counts them.
    let (_d, s) = start(&["--max-connections", "8"]);
    // Connection limit: 8 idle connections held, the 9th is closed at once.
    let held: Vec<TcpStream> = (0..8).map(|_| raw(&s)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = raw(&s);
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = read_all(extra);
    assert!(text.is_empty(), "the 9th connection was served: {text}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cellgate_connections_refused_total 1"),
        "{metrics}"
    );
    // Once they are gone, service resumes.
    let ok = reqwest::get(s.url("/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn random_bodies_never_crash_the_server() {
    let (_d, s) = start(&[]);
    let api = Api::new(&s, ANT, "RZ00A");
    let paths = [
        "/v1/topics/T/messages",
        "/v1/topics/T/messages:batch",
        "/v1/groups/G/topics/T/receive",
        "/v1/groups/G/topics/T/ack",
        "/v1/groups/G/topics/T/nack",
        "/v1/groups/G/topics/T/reset",
    ];
    let samples: Vec<Vec<u8>> = (0u32..200)
        .map(|i| {
            let mut x = i.wrapping_mul(2_654_435_761) | 1;
            // Half of them look like an object, to get past the first check.
            let open = if i % 2 == 0 {
                &b"{\"body\":"[..]
            } else {
                &b""[..]
            };
            open.iter()
                .copied()
                .chain((0..(i % 97)).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let alphabet = b"{}[]\":,0123456789abcdef_ \\\x00\xff";
                    alphabet[x as usize % alphabet.len()]
                }))
                .collect()
        })
        .collect();
    for (i, body) in samples.into_iter().enumerate() {
        let p = paths[i % paths.len()];
        let r = api
            .http
            .post(s.url(p))
            .bearer_auth(ANT)
            .header("X-Cell", "RZ00A")
            .body(body);
        let (st, v) = api.send(r).await.unwrap();
        assert!((200..500).contains(&st), "{p}: {st} {v}");
        if st >= 400 {
            assert!(v["error"]["field"].is_string(), "{p}: {v}");
        }
    }
    assert_eq!(reqwest::get(s.url("/healthz")).await.unwrap().status(), 200);
}

/// The sentence matters as much as the status: each names the problem.
#[tokio::test]
async fn error_messages_say_what_is_wrong() {
    let (_d, s) = start(&[]);
    let ant = Api::new(&s, ANT, "RZ00A");
    let beta = Api::new(&s, BETA, "RZ00A");
    let p = "/v1/topics/T/messages";
    let cases: Vec<((u16, Value), &str)> = vec![
        (
            ant.post(p, &json!({"body": "x", "colour": "red"}))
                .await
                .unwrap(),
            "unknown field `colour`",
        ),
        (
            ant.post(p, &json!({"body": "x", "body_base64": "eA=="}))
                .await
                .unwrap(),
            "give body or body_base64, not both",
        ),
        (
            ant.post(p, &json!({"body_base64": "%%%"})).await.unwrap(),
            "is not valid base64",
        ),
        (
            ant.post(p, &json!({"body": "x", "properties": {"__X": "1"}}))
                .await
                .unwrap(),
            "reserved for cellgate",
        ),
        (
            ant.post(p, &json!({"body": "x", "properties": {"a": ""}}))
                .await
                .unwrap(),
            "property value must not be empty",
        ),
        (
            ant.post(p, &json!({"body": "x", "tag": "A|B"}))
                .await
                .unwrap(),
            "must not contain `|`",
        ),
        (
            ant.post(p, &json!({"body": "x", "sharding_key": "k".repeat(64)}))
                .await
                .unwrap(),
            "shorter than 64 bytes",
        ),
        (
            ant.post_raw(p, "{\"body\": ").await.unwrap(),
            "malformed JSON",
        ),
        (
            ant.post(
                &format!("/v1/topics/{}/messages", "T".repeat(65)),
                &json!({"body": "x"}),
            )
            .await
            .unwrap(),
            "at most 64 characters",
        ),
        (
            beta.post(
                "/v1/topics/ORDER_1/messages",
                &json!({"body": "x".repeat(1025)}),
            )
            .await
            .unwrap(),
            "over the tenant's limit of 1024",
        ),
        (
            beta.post("/v1/topics/BILL/messages", &json!({"body": "x"}))
                .await
                .unwrap(),
            "may not use this topic",
        ),
        (
            ant.cell("NOPE")
                .post(p, &json!({"body": "x"}))
                .await
                .unwrap(),
            "no cell has this name",
        ),
        (
            beta.cell("RZ03A")
                .post("/v1/topics/ORDER_1/messages", &json!({"body": "x"}))
                .await
                .unwrap(),
            "may not use this cell",
        ),
        (
            ant.token(Some("nope"))
                .post(p, &json!({"body": "x"}))
                .await
                .unwrap(),
            "the token is not known",
        ),
        (
            ant.token(Some(READER))
                .post(p, &json!({"body": "x"}))
                .await
                .unwrap(),
            "lacks the publish permission",
        ),
        (
            ant.post("/v1/groups/G/topics/T/receive", &json!({"wait_ms": 30001}))
                .await
                .unwrap(),
            "must be at most 30000",
        ),
        (
            ant.post(
                "/v1/groups/G/topics/T/ack",
                &json!({"receipt_handles": ["junk"]}),
            )
            .await
            .unwrap(),
            "not issued for this group, topic and cell",
        ),
    ];
    for ((st, v), want) in cases {
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            st >= 400 && msg.contains(want),
            "want {want:?}, got {st} {v}"
        );
    }
}
