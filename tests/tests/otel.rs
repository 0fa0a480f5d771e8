//! OpenTelemetry end to end: a real OTLP/HTTP receiver in the test (it
//! decodes the protobuf with opentelemetry-proto), the real `cellgate`
//! binary exporting to it, one message crossing cells.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};

use cellgate_tests::otlp::{attr, grpc_receiver, hex, receiver, spans_until};
use cellgate_tests::rocketmq::{Backend, Bed};
use cellgate_tests::{cellgate, edited_example, example, Api, Server};

const ANT: &str = "ant-demo-token";
const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

/// `cellgate serve` exporting to `endpoint`, every cell on `backend`.
fn start(endpoint: &str, backend: Backend) -> (tempfile::TempDir, Bed, Server) {
    let dir = tempfile::tempdir().unwrap();
    let bed = Bed::new(backend, dir.path(), &[]).unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        // Export quickly: the test waits for what it asserts.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ];
    let s = Server::start_env(&bed.config, &dir.path().join("data"), &[], &env).unwrap();
    (dir, bed, s)
}

/// Receives the one message waiting for `group` in `api`'s cell and acks it.
async fn consume_one(api: &Api, group: &str, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = api
            .receive(
                group,
                "OTEL",
                &json!({"subscription": kind, "wait_ms": 500}),
            )
            .await
            .unwrap();
        if let Some(m) = got.first() {
            assert_eq!(got.len(), 1, "{got:?}");
            api.ack(group, "OTEL", &got).await.unwrap();
            return m.clone();
        }
        assert!(Instant::now() < deadline, "nothing for {group} in {kind}");
    }
}

cellgate_tests::on_both_backends!(
    multi_thread;
    /// The cells on two RocketMQ clusters: the context travels in the
    /// messages' properties through RocketMQ and across clusters.
    one_trace_follows_a_message_across_cells,
    one_trace_follows_a_message_across_cells_on_rocketmq,
    across_cells
);

async fn across_cells(backend: Backend) {
    let (endpoint, got) = receiver().await;
    let (_dir, _bed, s) = start(&endpoint, backend);
    let api = Api::new(&s, ANT, "RZ00A");
    // uid 12300: shard 00 is RZ00A's own, so the router copies to the
    // GZone and the city's CZone only: two other cells.
    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let (st, sent) = api
        .send(
            api.http
                .post(s.url("/v1/topics/OTEL/messages"))
                .bearer_auth(ANT)
                .header("X-Cell", "RZ00A")
                .header("traceparent", &traceparent)
                .header("tracestate", "vendor=abc")
                .header("baggage", "team=payments")
                .json(&json!({"body": "traced", "tag": "TagT", "keys": ["k-1"], "uid": "12300"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{sent}");
    let id = sent["message_id"].as_str().unwrap().to_owned();
    for (cell, kind) in [("GZ00A", "gzone"), ("CZSH0", "czone"), ("RZ00A", "local")] {
        let m = consume_one(&api.cell(cell), &format!("G_{kind}"), kind).await;
        assert_eq!(m["message_id"], id.as_str());
        let tp = m["properties"]["traceparent"].as_str().unwrap().to_owned();
        assert!(
            tp.contains(APP_TRACE),
            "{cell}: {tp} continues the app's trace"
        );
        // The propagator carries the rest of the context along.
        assert_eq!(m["properties"]["tracestate"], "vendor=abc", "{cell}");
        assert_eq!(m["properties"]["baggage"], "team=payments", "{cell}");
    }
    let in_trace = |s: &Span| hex(&s.trace_id) == APP_TRACE;
    let spans = spans_until(&got, "the whole trace", |spans| {
        let n = |p: &str| {
            spans
                .iter()
                .filter(|s| in_trace(s) && s.name.starts_with(p))
                .count()
        };
        n("send ") == 1
            && n("store ") == 1
            && n("route ") == 2
            && n("receive ") == 3
            && n("settle ") == 3
    })
    .await;
    let trace: Vec<&Span> = spans.iter().filter(|s| in_trace(s)).collect();
    let one = |name: &str| {
        let v: Vec<&&Span> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(v.len(), 1, "{name}");
        *v[0]
    };

    // The app's context is the publish span's parent.
    let send = one("send OTEL");
    assert_eq!(hex(&send.parent_span_id), APP_SPAN);
    assert_eq!(send.kind, SpanKind::Producer as i32);
    assert_eq!(attr(send, "messaging.system").as_deref(), Some("rocketmq"));
    assert_eq!(
        attr(send, "messaging.destination.name").as_deref(),
        Some("ANT|RZ00A%OTEL")
    );
    assert_eq!(
        attr(send, "messaging.rocketmq.namespace").as_deref(),
        Some("ANT")
    );
    assert_eq!(
        attr(send, "messaging.rocketmq.message.tag").as_deref(),
        Some("TagT")
    );
    assert_eq!(
        attr(send, "messaging.rocketmq.message.type").as_deref(),
        Some("normal")
    );
    assert_eq!(
        attr(send, "messaging.message.id").as_deref(),
        Some(id.as_str())
    );
    let send_id = send.span_id.clone();

    let store = one("store OTEL");
    assert_eq!(
        store.parent_span_id, send_id,
        "store is the publish's child"
    );
    assert!(attr(store, "cellgate.queue_offset").is_some());

    // One route span per target, each with its cells.
    let mut routes: Vec<(String, String, String, String)> = trace
        .iter()
        .filter(|s| s.name == "route OTEL")
        .map(|s| {
            assert_eq!(s.parent_span_id, send_id, "a route hangs under the publish");
            (
                attr(s, "cellgate.source_cell").unwrap_or_default(),
                attr(s, "cellgate.target_cell").unwrap_or_default(),
                attr(s, "cellgate.zone_type").unwrap_or_default(),
                attr(s, "cellgate.tenant").unwrap_or_default(),
            )
        })
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        vec![
            ("RZ00A".into(), "CZSH0".into(), "CZone".into(), "ANT".into()),
            ("RZ00A".into(), "GZ00A".into(), "GZone".into(), "ANT".into()),
        ]
    );

    // Each consumer's receive and settle are children of the publish
    // (single-message receives), in the consumer's own cell.
    for name in ["receive OTEL", "settle OTEL"] {
        let mut cells: Vec<String> = trace
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                assert_eq!(s.parent_span_id, send_id, "{name}'s parent");
                assert_eq!(s.kind, SpanKind::Consumer as i32);
                attr(s, "messaging.consumer.group.name").unwrap_or_default();
                attr(s, "cellgate.cell").unwrap_or_default()
            })
            .collect();
        cells.sort();
        assert_eq!(cells, vec!["CZSH0", "GZ00A", "RZ00A"], "{name}");
    }
    let r = trace.iter().find(|s| s.name == "receive OTEL").unwrap();
    assert_eq!(
        attr(r, "messaging.rocketmq.consumption_model").as_deref(),
        Some("clustering")
    );

    // Metrics reach the receiver too: counters from the registry, and the
    // latency histogram.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = got.lock().unwrap().metrics.clone();
        let has = |n: &str| m.get(n).is_some_and(|c| *c > 0);
        if has("cellgate_messages_published")
            && has("cellgate_router_copies")
            && has("cellgate_http_request_duration_seconds")
            && has("cellgate_router_replication_lag_seconds")
        {
            break;
        }
        assert!(Instant::now() < deadline, "metrics not exported: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_receive_links_to_each_message_instead() {
    let (endpoint, got) = receiver().await;
    let (_dir, _bed, s) = start(&endpoint, Backend::Embedded);
    let api = Api::new(&s, ANT, "RZ00A");
    let mut traces = Vec::new();
    for i in 0..2 {
        let trace = format!("{:032x}", 0xabc0 + i);
        let tp = format!("00-{trace}-{APP_SPAN}-01");
        let (st, v) = api
            .send(
                api.http
                    .post(s.url("/v1/topics/LINKED/messages"))
                    .bearer_auth(ANT)
                    .header("X-Cell", "RZ00A")
                    .header("traceparent", tp)
                    .json(&json!({"body": format!("m{i}"), "uid": "12300"})),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        traces.push(trace);
    }
    let got_msgs = api
        .receive(
            "G_BATCH",
            "LINKED",
            &json!({"subscription": "local", "max_messages": 10, "wait_ms": 2000}),
        )
        .await
        .unwrap();
    assert_eq!(got_msgs.len(), 2, "{got_msgs:?}");
    let spans = spans_until(&got, "the batch receive", |spans| {
        spans.iter().any(|s| s.name == "receive LINKED")
            && spans.iter().filter(|s| s.name == "send LINKED").count() == 2
    })
    .await;
    let r = spans.iter().find(|s| s.name == "receive LINKED").unwrap();
    assert!(
        r.parent_span_id.is_empty(),
        "a batch receive is no message's child"
    );
    assert!(!traces.contains(&hex(&r.trace_id)));
    let sends: HashMap<String, Vec<u8>> = spans
        .iter()
        .filter(|s| s.name == "send LINKED")
        .map(|s| (hex(&s.trace_id), s.span_id.clone()))
        .collect();
    let mut linked: Vec<(String, Vec<u8>)> = r
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), l.span_id.clone()))
        .collect();
    linked.sort();
    let mut want: Vec<(String, Vec<u8>)> = traces
        .iter()
        .map(|t| (t.clone(), sends[t].clone()))
        .collect();
    want.sort();
    assert_eq!(linked, want, "one link per message, to its publish span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_an_incoming_traceparent_still_reaches_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&example("ldc.yaml"), &dir.path().join("data"), &[]).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let tp = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let (st, v) = api
        .send(
            api.http
                .post(s.url("/v1/topics/PASS/messages"))
                .bearer_auth(ANT)
                .header("X-Cell", "RZ00A")
                .header("traceparent", &tp)
                .header("baggage", "team=payments")
                .json(&json!({"body": "untraced"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    let got = api
        .receive("G_PASS", "PASS", &json!({"wait_ms": 2000}))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["properties"]["traceparent"], tp.as_str());
    assert_eq!(got[0]["properties"]["baggage"], "team=payments");
    assert!(
        !s.log_text().contains("OpenTelemetry export on"),
        "export stays off without an endpoint"
    );
}

#[test]
fn bad_telemetry_settings_are_refused_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ];
    let Err(e) = Server::start_env(&example("ldc.yaml"), &dir.path().join("data"), &[], &env)
    else {
        panic!("an unsupported protocol is refused at start");
    };
    assert!(
        format!("{e:#}").contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{e:#}"
    );
    // The file's section is checked like every other: file:line:col.
    let rules = dir.path().join("rules.yaml");
    let text = std::fs::read_to_string(example("ldc.yaml")).unwrap()
        + "\ntelemetry:\n  protocol: thrift\n  endpoint: collector:4318\n";
    std::fs::write(&rules, text).unwrap();
    let run = cellgate(&["rules", "check", rules.to_str().unwrap()]).unwrap();
    assert_ne!(run.code, Some(0));
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("telemetry.protocol") && out.contains("thrift"),
        "{out}"
    );
    assert!(out.contains("telemetry.endpoint"), "{out}");
    assert!(out.contains("rules.yaml:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_also_go_over_grpc() {
    let (endpoint, got) = grpc_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let s = Server::start_env(&example("ldc.yaml"), &dir.path().join("data"), &[], &env).unwrap();
    let api = Api::new(&s, ANT, "RZ00A");
    let sent = api
        .publish("GRPC", &json!({"body": "over grpc", "uid": "12300"}))
        .await
        .unwrap();
    let id = sent["message_id"].as_str().unwrap().to_owned();
    let spans = spans_until(&got, "the publish over gRPC", |spans| {
        spans.iter().any(|s| s.name == "send GRPC")
    })
    .await;
    let send = spans.iter().find(|s| s.name == "send GRPC").unwrap();
    assert_eq!(
        attr(send, "messaging.message.id").as_deref(),
        Some(id.as_str())
    );
    assert!(
        send.parent_span_id.is_empty(),
        "no incoming context: a root span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_reload_is_a_span_too() {
    let (endpoint, got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (rules, text) = edited_example(dir.path(), "rules.yaml", &[]);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let _s = Server::start_env(&rules, &dir.path().join("data"), &[], &env).unwrap();
    // A real change (a comment alone hashes differently too).
    std::fs::write(&rules, format!("{text}\n# edited\n")).unwrap();
    // (Whichever reload sees the edit first, the start-up check or the
    // file event, swaps; the other finds nothing new.)
    let swapped =
        |s: &Span| s.name == "rules.reload" && attr(s, "outcome").as_deref() == Some("swapped");
    let spans = spans_until(&got, "the reload span", |spans| spans.iter().any(swapped)).await;
    let r = spans.iter().find(|s| swapped(s)).unwrap();
    assert!(attr(r, "trigger").is_some());
}
