//! cellgate's OpenTelemetry: message spans, trace context carried in
//! message properties, and OTLP export of traces and metrics.
//!
//! This crate knows OpenTelemetry and the messaging semantic conventions;
//! it knows nothing about HTTP routes, rules or storage. The gateway and
//! the router call it at the few points where a message changes hands
//! (publish, store, route, receive, settle).
//!
//! Three ways to run, which the benchmarks compare (docs/benchmarks.md):
//! - **built without the `otel` feature**: every function here is an empty
//!   inline body and no OpenTelemetry crate is compiled;
//! - **built with it, off** (the default at run time): [`enabled`] is one
//!   atomic load, and every span helper returns at once without building a
//!   name or an attribute;
//! - **on** ([`install`] found an endpoint): spans are built with the
//!   OpenTelemetry API directly and exported in batches by the SDK's
//!   background thread.
//!
//! Message spans use the OpenTelemetry API rather than `tracing` spans:
//! their parents come from message properties (not from the task that
//! happens to run them), they need explicit kinds, links and start times,
//! and they are the per-message cost the benchmark limits. The process's
//! own `tracing` spans reach the same exporter through
//! `tracing-opentelemetry` ([`tracing_layer`]).

#![forbid(unsafe_code)]

#[cfg(feature = "otel")]
mod otel;
#[cfg(feature = "otel")]
pub use otel::*;

#[cfg(not(feature = "otel"))]
mod noop;
#[cfg(not(feature = "otel"))]
pub use noop::*;

pub mod settings;
pub use settings::{Endpoint, FileSettings, Protocol, Settings};

/// The W3C trace context and baggage fields, as message properties and as
/// HTTP headers (the same names in both places).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";
pub const FIELDS: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// What can go wrong setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting (environment variable or `telemetry.*` field) is wrong.
    #[error("{name}: {why}")]
    Setting { name: String, why: String },
    /// The exporter could not be built.
    #[error("OpenTelemetry exporter: {0}")]
    Exporter(String),
}

/// Span kinds of the messaging conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Producer,
    Consumer,
    Client,
    Internal,
}

/// An attribute value, borrowed until the span is really built (so an off
/// switch costs no allocation).
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    /// A literal: stored without a copy.
    Static(&'static str),
    Str(&'a str),
    I64(i64),
    Strs(&'a [String]),
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Str(v)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(v: &'a String) -> Self {
        Val::Str(v)
    }
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::I64(v)
    }
}

impl From<u64> for Val<'_> {
    fn from(v: u64) -> Self {
        Val::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u16> for Val<'_> {
    fn from(v: u16) -> Self {
        Val::I64(i64::from(v))
    }
}

impl From<usize> for Val<'_> {
    fn from(v: usize) -> Self {
        Val::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl<'a> From<&'a [String]> for Val<'a> {
    fn from(v: &'a [String]) -> Self {
        Val::Strs(v)
    }
}

/// Attribute names of the OpenTelemetry messaging conventions (and
/// cellgate's own, under `cellgate.`), in one place so the docs' table and
/// the code agree.
pub mod attr {
    pub const SYSTEM: &str = "messaging.system";
    pub const OPERATION_TYPE: &str = "messaging.operation.type";
    pub const OPERATION_NAME: &str = "messaging.operation.name";
    pub const DESTINATION: &str = "messaging.destination.name";
    pub const PARTITION: &str = "messaging.destination.partition.id";
    pub const MESSAGE_ID: &str = "messaging.message.id";
    pub const BODY_SIZE: &str = "messaging.message.body.size";
    pub const BATCH_COUNT: &str = "messaging.batch.message_count";
    pub const CONSUMER_GROUP: &str = "messaging.consumer.group.name";
    pub const RMQ_NAMESPACE: &str = "messaging.rocketmq.namespace";
    pub const RMQ_MESSAGE_TYPE: &str = "messaging.rocketmq.message.type";
    pub const RMQ_TAG: &str = "messaging.rocketmq.message.tag";
    pub const RMQ_KEYS: &str = "messaging.rocketmq.message.keys";
    pub const RMQ_GROUP: &str = "messaging.rocketmq.message.group";
    pub const RMQ_DELIVERY_TS: &str = "messaging.rocketmq.message.delivery_timestamp";
    pub const RMQ_CONSUMPTION: &str = "messaging.rocketmq.consumption_model";
    pub const OFFSET: &str = "cellgate.queue_offset";
    pub const CELL: &str = "cellgate.cell";
    pub const TOPIC: &str = "cellgate.topic";
    pub const TENANT: &str = "cellgate.tenant";
    pub const SOURCE_CELL: &str = "cellgate.source_cell";
    pub const TARGET_CELL: &str = "cellgate.target_cell";
    pub const ZONE_TYPE: &str = "cellgate.zone_type";
    pub const ATTEMPT: &str = "cellgate.delivery_attempt";
}

/// `messaging.system`: the model cellgate follows (topics with queues,
/// groups, tags and keys are RocketMQ's).
pub const SYSTEM: &str = "rocketmq";
