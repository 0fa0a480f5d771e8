//! The cases of issue 4: what load, against which gateway flush policy,
//! and which goal each one checks.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::load::Proto;
use crate::procs::Flush;

/// The demo token of tenant ANT in `examples/ldc.yaml`.
pub const TOKEN: &str = "Bearer ant-demo-token";
pub const CELL: &str = "RZ00A";
pub const PUBLISH: &str = "/v1/topics/BENCH/messages";
pub const PUBLISH_BATCH: &str = "/v1/topics/BENCH/messages:batch";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 64 connections, async flush: throughput ≥ 0.8× baseline.
    PublishAsync,
    /// 64 connections, sync flush: throughput ≥ 0.6× baseline.
    PublishSync,
    /// 1 connection, async flush: p50 ≤ 1.5× the baseline's p50.
    PublishOneConn,
    /// h2c, streams per connection: throughput ≥ 0.7× baseline.
    PublishH2c,
    /// Batches over 64 connections, async flush: ≥ 250k msgs/s.
    Batch,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::PublishAsync,
        Kind::PublishSync,
        Kind::PublishOneConn,
        Kind::PublishH2c,
        Kind::Batch,
    ];

    /// The name used on the command line (`--cases`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::PublishAsync => "async",
            Kind::PublishSync => "sync",
            Kind::PublishOneConn => "one-conn",
            Kind::PublishH2c => "h2c",
            Kind::Batch => "batch",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A case, fully resolved from the options.
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: Kind,
    pub proto: Proto,
    pub conns: usize,
    pub flush: Flush,
    /// Messages per request (1, or the batch size).
    pub msgs_per_req: usize,
    pub path: &'static str,
    pub body: Bytes,
}

impl Case {
    /// `HTTP/1.1, 64 conns` / `h2c, 8 conns × 10 streams`.
    pub fn load_label(&self) -> String {
        match self.proto {
            Proto::H1 => format!("HTTP/1.1, {} conn{}", self.conns, plural(self.conns)),
            Proto::H2 { streams } => format!("h2c, {} conns × {streams} streams", self.conns),
        }
    }

    pub fn label(&self) -> String {
        let what = if self.msgs_per_req > 1 {
            format!("batch of {}", self.msgs_per_req)
        } else {
            "publish".to_owned()
        };
        format!("{what}, {}, {}", self.load_label(), self.flush.arg())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The knobs of a run.
#[derive(Debug, Clone)]
pub struct Shape {
    pub conns: usize,
    pub h2_conns: usize,
    pub h2_streams: usize,
    pub batch: usize,
    pub body_bytes: usize,
}

/// `{"body":"xxxx…"}`, the body field `body_bytes` characters long.
pub fn message_json(body_bytes: usize) -> String {
    format!("{{\"body\":\"{}\"}}", "x".repeat(body_bytes))
}

pub fn build(kind: Kind, s: &Shape) -> Case {
    let one = Bytes::from(message_json(s.body_bytes));
    let single = |proto, conns, flush| Case {
        kind,
        proto,
        conns,
        flush,
        msgs_per_req: 1,
        path: PUBLISH,
        body: one.clone(),
    };
    match kind {
        Kind::PublishAsync => single(Proto::H1, s.conns, Flush::Async),
        Kind::PublishSync => single(Proto::H1, s.conns, Flush::Sync),
        Kind::PublishOneConn => single(Proto::H1, 1, Flush::Async),
        Kind::PublishH2c => single(
            Proto::H2 {
                streams: s.h2_streams,
            },
            s.h2_conns,
            Flush::Async,
        ),
        Kind::Batch => {
            let msgs = vec![message_json(s.body_bytes); s.batch].join(",");
            Case {
                kind,
                proto: Proto::H1,
                conns: s.conns,
                flush: Flush::Async,
                msgs_per_req: s.batch,
                path: PUBLISH_BATCH,
                body: Bytes::from(format!("{{\"messages\":[{msgs}]}}")),
            }
        }
    }
}

/// The headers every request carries.
pub fn headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (http::header::AUTHORIZATION, HeaderValue::from_static(TOKEN)),
        (
            HeaderName::from_static("x-cell"),
            HeaderValue::from_static(CELL),
        ),
    ]
}
