//! The gateway's OpenTelemetry spans (docs/observability.md): `send` and
//! `store` on publish, `receive` and `settle` on consume.
//!
//! Every helper starts with `cellgate_telemetry::span`, which returns at
//! once while tracing is off: names and attributes are built only for
//! spans that will be exported.

use std::collections::BTreeMap;

use http::HeaderMap;

use cellgate_broker_core::{PutResult, StoredMessage};
use cellgate_telemetry::{self as tel, attr, Kind, Parent, Span, Val, FIELDS, TRACEPARENT};

use super::message::{Built, Kind as MsgKind, Target};

/// The trace context a request came with.
#[derive(Debug, Default)]
pub struct Incoming {
    /// Extracted through the propagator (tracing on).
    pub parent: Parent,
    /// The raw W3C fields (tracing off): copied into the message
    /// unchanged, so the app's own trace still reaches its consumers.
    raw: Vec<(&'static str, String)>,
}

/// Reads the request's `traceparent`, `tracestate` and `baggage`.
pub fn incoming(headers: &HeaderMap) -> Incoming {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if tel::enabled() {
        return Incoming {
            parent: tel::extract(get),
            raw: Vec::new(),
        };
    }
    let mut raw = Vec::new();
    if get(TRACEPARENT).is_some_and(valid_traceparent) {
        for f in FIELDS {
            if let Some(v) = get(f) {
                raw.push((f, v.to_owned()));
            }
        }
    }
    Incoming {
        parent: Parent::none(),
        raw,
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: the W3C shape, checked before an
/// untraced gateway stores it.
fn valid_traceparent(v: &str) -> bool {
    let p: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    p.len() >= 4 && hex(p[0], 2) && hex(p[1], 32) && hex(p[2], 16) && hex(p[3], 2)
}

/// Writes the trace context into a message: the send span's when tracing
/// is on, else whatever the request brought.
pub fn stamp(send: &Span, inc: &Incoming, props: &mut BTreeMap<String, String>) {
    if tel::enabled() {
        send.inject(props);
        return;
    }
    for (k, v) in &inc.raw {
        props.entry((*k).to_owned()).or_insert_with(|| v.clone());
    }
}

fn message_type(t: &Target<'_>, k: &MsgKind) -> &'static str {
    match k {
        MsgKind::Delayed(_) => "delay",
        MsgKind::Transactional(_) => "transaction",
        MsgKind::Normal if t.ordered => "fifo",
        MsgKind::Normal => "normal",
    }
}

/// `send {topic}` (PRODUCER): one per publish request, a batch included.
pub fn send(t: &Target<'_>, ns: &str, inc: &Incoming, first: &Built, count: usize) -> Span {
    let m = &first.msg;
    let s = tel::span(Kind::Producer, || format!("send {}", t.logical))
        .parent(&inc.parent)
        .attr(attr::SYSTEM, Val::Static(tel::SYSTEM))
        .attr(attr::OPERATION_TYPE, Val::Static("send"))
        .attr(attr::OPERATION_NAME, Val::Static("send"))
        .attr(attr::DESTINATION, t.physical.as_str())
        .attr(attr::TOPIC, t.logical)
        .attr(attr::CELL, t.rules.cell_name(t.cell))
        .attr(attr::RMQ_NAMESPACE, ns)
        .attr(
            attr::RMQ_MESSAGE_TYPE,
            Val::Static(message_type(t, &first.kind)),
        );
    if count > 1 {
        return s.attr(attr::BATCH_COUNT, count).start();
    }
    let s = s
        .attr(attr::BODY_SIZE, m.body.len())
        .attr_opt(attr::RMQ_TAG, m.tag.as_ref())
        .attr_opt(
            attr::RMQ_GROUP,
            m.properties.get(cellgate_rules::SHARDING_KEY),
        );
    let s = if m.keys.is_empty() {
        s
    } else {
        s.attr(attr::RMQ_KEYS, m.keys.as_slice())
    };
    match first.kind {
        MsgKind::Delayed(at) => s.attr(attr::RMQ_DELIVERY_TS, at),
        _ => s,
    }
    .start()
}

/// `store {topic}` (INTERNAL): the broker's append, flush included. Lean:
/// the destination, cell and message id are its parent's.
pub fn store(send: &Span, t: &Target<'_>) -> Span {
    if !tel::enabled() {
        return Span::none();
    }
    tel::span(Kind::Internal, || format!("store {}", t.logical))
        .parent(&send.as_parent())
        .attr(attr::SYSTEM, Val::Static(tel::SYSTEM))
        .start()
}

/// Records where the broker put a message on the publish spans.
pub fn stored(send: &mut Span, store: &mut Span, r: &PutResult, held: bool) {
    if !tel::enabled() {
        return;
    }
    let mut buf = uuid::Uuid::encode_buffer();
    send.set(attr::MESSAGE_ID, &*r.id.hyphenated().encode_lower(&mut buf));
    store.set(attr::PARTITION, r.queue);
    if !held {
        store.set(attr::OFFSET, r.queue_offset);
    }
}

/// The creation context a message carries in its properties.
pub fn creation(m: &StoredMessage) -> Parent {
    tel::extract(|k| m.properties.get(k).map(String::as_str))
}

/// Where a consume request's span hangs: under the request's own context
/// when it brings one, else under the one message's creation context; the
/// messages' contexts are links otherwise (a batch).
fn consumer_span(name: String, req: &Parent, contexts: &[Parent]) -> tel::SpanStart {
    let s = tel::span(Kind::Consumer, || name);
    match contexts {
        [one] if !req.is_some() => s.parent(one),
        many => many.iter().fold(s.parent(req), |s, c| s.link(c)),
    }
}

/// Names of one subscription, for the consume spans.
pub struct SubNames<'a> {
    pub topic: &'a str,
    pub physical_topic: &'a str,
    pub group: &'a str,
    pub cell: &'a str,
    pub ns: &'a str,
    pub broadcast: bool,
}

fn consume_attrs(s: tel::SpanStart, n: &SubNames<'_>) -> tel::SpanStart {
    s.attr(attr::SYSTEM, Val::Static(tel::SYSTEM))
        .attr(attr::DESTINATION, n.physical_topic)
        .attr(attr::TOPIC, n.topic)
        .attr(attr::CONSUMER_GROUP, n.group)
        .attr(attr::CELL, n.cell)
        .attr(attr::RMQ_NAMESPACE, n.ns)
        .attr(
            attr::RMQ_CONSUMPTION,
            if n.broadcast {
                "broadcasting"
            } else {
                "clustering"
            },
        )
}

/// `receive {topic}` (CONSUMER), for a receive that returned messages (or
/// came with its own trace context).
pub fn receive(n: &SubNames<'_>, req: &Parent, got: &[cellgate_broker_core::Delivery]) -> Span {
    if !tel::enabled() || (got.is_empty() && !req.is_some()) {
        return Span::none();
    }
    let contexts: Vec<Parent> = got.iter().map(|d| creation(&d.message)).collect();
    let s = consumer_span(format!("receive {}", n.topic), req, &contexts)
        .attr(attr::OPERATION_TYPE, Val::Static("receive"))
        .attr(attr::OPERATION_NAME, Val::Static("receive"))
        .attr(attr::BATCH_COUNT, got.len());
    let s = match got {
        [d] => s
            .attr(attr::MESSAGE_ID, d.message.id.to_string().as_str())
            .attr(attr::PARTITION, d.message.queue)
            .attr(attr::ATTEMPT, i64::from(d.attempt))
            .attr_opt(attr::RMQ_TAG, d.message.tag.as_ref()),
        _ => s,
    };
    consume_attrs(s, n).start()
}

/// `settle {topic}` (CONSUMER): an ack or nack of some handles, linked or
/// parented to the settled messages' creation contexts (which the receipt
/// handles carry).
pub fn settle(n: &SubNames<'_>, req: &Parent, traceparents: &[Option<String>], ack: bool) -> Span {
    if !tel::enabled() {
        return Span::none();
    }
    let contexts: Vec<Parent> = traceparents
        .iter()
        .flatten()
        .map(|tp| tel::extract(|k| (k == TRACEPARENT).then_some(tp.as_str())))
        .collect();
    let op = if ack { "ack" } else { "nack" };
    let s = consumer_span(format!("settle {}", n.topic), req, &contexts)
        .attr(attr::OPERATION_TYPE, Val::Static("settle"))
        .attr(attr::OPERATION_NAME, Val::Static(op))
        .attr(attr::BATCH_COUNT, traceparents.len());
    consume_attrs(s, n).start()
}
