//! Consume: receive, ack, nack, reset and lag on
//! `/v1/groups/{group}/topics/{topic}/…`.
//!
//! The subscription kind (SPEC §4) becomes the broker's property predicate,
//! evaluated while the broker scans the queue: a message the kind does not
//! accept is skipped there and advances the group's progress, so it is
//! never delivered and never stays behind as lag.

use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use cellgate_broker_core::{
    Broker, ConsumeMode, Error as BrokerError, Hop, Predicate, ReceiveOptions, TagFilter,
};
use cellgate_rules::names::Resource;
use cellgate_rules::{CellId, Permission, SubscriptionKind};

use super::view::MessageView;
use super::{body, json, otel, ApiError, ApiResult, App, Caller, Reply};
use crate::validate;

const MAX_MESSAGES: usize = 256;
const MIN_INVISIBLE_MS: u64 = 100;
const MAX_INVISIBLE_MS: u64 = 12 * 3600 * 1000;
/// Small bodies only: these requests carry a few fields and handles.
const SMALL_BODY: usize = 1 << 20;

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Clustering,
    Broadcast,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveRequest {
    #[serde(default = "local")]
    subscription: SubscriptionKind,
    max_messages: Option<u32>,
    wait_ms: Option<u64>,
    invisible_ms: Option<u64>,
    tags: Option<String>,
    #[serde(default)]
    mode: Mode,
    consumer_id: Option<String>,
}

/// Marks a message as load-test traffic (set by the gateway on publish).
pub const LOAD_TEST: &str = "__LOADTEST";

fn local() -> SubscriptionKind {
    SubscriptionKind::Local
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRequest {
    receipt_handles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    timestamp_ms: i64,
    consumer_id: Option<String>,
}

/// A group on a topic in a cell, resolved once per request.
struct Sub<'a> {
    cell: CellId,
    cell_name: &'a str,
    logical_group: &'a str,
    logical_topic: &'a str,
    group: String,
    topic: String,
    broker: std::sync::Arc<dyn Broker>,
}

impl<'a> Sub<'a> {
    fn names(&'a self, ns: &'a str, broadcast: bool) -> otel::SubNames<'a> {
        otel::SubNames {
            topic: self.logical_topic,
            physical_topic: &self.topic,
            group: &self.group,
            cell: self.cell_name,
            ns,
            broadcast,
        }
    }
}

fn sub<'a>(
    app: &App,
    c: &Caller<'a>,
    g: &'a str,
    t: &'a str,
    headers: &http::HeaderMap,
) -> ApiResult<Sub<'a>> {
    c.require(Permission::Subscribe)?;
    c.group(g)?;
    c.topic(t)?;
    let cell = c.cell(headers, app.default_cell.as_deref())?;
    Ok(Sub {
        cell,
        cell_name: c.rules.cell_name(cell),
        logical_group: g,
        logical_topic: t,
        group: c.physical(cell, g, Resource::Group)?,
        topic: c.physical(cell, t, Resource::Topic)?,
        broker: app.brokers.get(c.rules, cell)?,
    })
}

fn consume_mode(mode: Mode, consumer_id: Option<String>) -> ApiResult<ConsumeMode> {
    match (mode, consumer_id) {
        (Mode::Clustering, _) => Ok(ConsumeMode::Clustering),
        (Mode::Broadcast, None) => Err(ApiError::invalid(
            "consumer_id",
            "broadcast consumption needs a consumer_id: each consumer keeps its own progress",
        )),
        (Mode::Broadcast, Some(id)) => {
            cellgate_rules::names::validate(cellgate_rules::NameKind::Group, &id)
                .map_err(|e| ApiError::invalid("consumer_id", format!("consumer_id {e}")))?;
            Ok(ConsumeMode::Broadcast { consumer_id: id })
        }
    }
}

/// Creates the topic with the default queue count if it does not exist, so
/// consumers may start before the first publish.
async fn ensure_topic(app: &App, s: &Sub<'_>) -> ApiResult<()> {
    match s
        .broker
        .create_topic(&s.topic, app.limits.default_queues)
        .await
    {
        Ok(()) | Err(BrokerError::TopicExists { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_broker(&e, "topic")),
    }
}

fn options(app: &App, c: &Caller<'_>, s: &Sub<'_>, r: ReceiveRequest) -> ApiResult<ReceiveOptions> {
    let max_messages = r.max_messages.map(|n| n as usize);
    let (max, wait) = super::count_and_wait(app, max_messages, MAX_MESSAGES, r.wait_ms)?;
    let invisible = r.invisible_ms.unwrap_or(30_000);
    if !(MIN_INVISIBLE_MS..=MAX_INVISIBLE_MS).contains(&invisible) {
        return Err(ApiError::invalid(
            "invisible_ms",
            format!("must be {MIN_INVISIBLE_MS} to {MAX_INVISIBLE_MS}, got {invisible}"),
        ));
    }
    let tags = r.tags.unwrap_or_else(|| "*".to_owned());
    validate::tag_expression(&tags).map_err(|m| ApiError::invalid("tags", m))?;
    let filter = c.rules.subscription_filter(r.subscription, s.cell);
    let tenant = c.tenant()?;
    // SPEC §7: load-test messages reach only allow-listed groups; for the
    // others they are skipped by the broker's scan like any other miss.
    let load_test_ok = tenant.load_test_allowed(s.logical_group);
    let predicate = Predicate::new(move |m| {
        (load_test_ok || !m.properties.contains_key(LOAD_TEST))
            && filter.matches(|k| m.properties.get(k).map(String::as_str))
    });
    Ok(ReceiveOptions {
        max_messages: max,
        wait,
        invisible: Duration::from_millis(invisible),
        tags: TagFilter::parse(&tags),
        predicate: Some(predicate),
        mode: consume_mode(r.mode, r.consumer_id)?,
        ordered: tenant.is_ordered(s.logical_topic),
    })
}

pub async fn receive(
    app: &App,
    c: &Caller<'_>,
    g: &str,
    t: &str,
    req: Request<Incoming>,
) -> ApiResult<Reply> {
    let s = sub(app, c, g, t, req.headers())?;
    let inc = otel::incoming(req.headers());
    let r: ReceiveRequest = body::json(req, SMALL_BODY, app.limits.body_timeout).await?;
    let opts = options(app, c, &s, r)?;
    let consumer = match &opts.mode {
        ConsumeMode::Broadcast { consumer_id } => Some(consumer_id.clone()),
        ConsumeMode::Clustering => None,
    };
    // The topic is created only when missing: creating takes the store's
    // topic map for writing, which every publish reads.
    let got = match s.broker.receive(&s.group, &s.topic, opts.clone()).await {
        Err(BrokerError::UnknownTopic(_)) => {
            ensure_topic(app, &s).await?;
            s.broker.receive(&s.group, &s.topic, opts).await
        }
        other => other,
    }
    .map_err(|e| ApiError::from_broker(&e, "topic"))?;
    let ns = &c.tenant()?.namespace;
    let _span = otel::receive(&s.names(ns, consumer.is_some()), &inc.parent, &got);
    let tracing_on = cellgate_telemetry::enabled();
    let mut bytes = 0u64;
    let now = super::now_ms();
    let mut hops = Vec::with_capacity(got.len());
    let views: Vec<MessageView<'_>> = got
        .iter()
        .map(|d| {
            bytes += d.message.body.len() as u64;
            hops.push(
                Hop::new(d.message.id, "deliver", now, s.cell_name, s.logical_group)
                    .with("attempt", d.attempt.to_string()),
            );
            let mut v = MessageView::new(&d.message, s.logical_topic, s.cell_name);
            let tp = tracing_on
                .then(|| d.message.properties.get(cellgate_telemetry::TRACEPARENT))
                .flatten();
            v.receipt_handle = Some(app.receipts.seal(
                &s.group,
                &s.topic,
                &d.receipt,
                consumer.as_deref(),
                &d.message.id,
                tp.map(String::as_str),
            ));
            v.delivery_attempt = Some(d.attempt);
            v
        })
        .collect();
    if app.trace_messages {
        s.broker.record_trace(hops);
    }
    app.metrics
        .delivered(ns, s.cell_name, views.len() as u64, bytes);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "messages": views }),
    ))
}

/// Ack (`ack = true`) or nack every handle. Every handle is checked before
/// any is applied: one forged handle settles nothing.
pub async fn settle(
    app: &App,
    c: &Caller<'_>,
    g: &str,
    t: &str,
    req: Request<Incoming>,
    ack: bool,
) -> ApiResult<Reply> {
    let s = sub(app, c, g, t, req.headers())?;
    let inc = otel::incoming(req.headers());
    let r: SettleRequest = body::json(req, SMALL_BODY, app.limits.body_timeout).await?;
    if r.receipt_handles.is_empty() || r.receipt_handles.len() > 1024 {
        return Err(ApiError::invalid(
            "receipt_handles",
            "must hold 1 to 1024 handles",
        ));
    }
    let mut opened = Vec::with_capacity(r.receipt_handles.len());
    for (i, h) in r.receipt_handles.iter().enumerate() {
        let o = app.receipts.open(&s.group, &s.topic, h).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_receipt",
                "the receipt handle is malformed, or was not issued for this group, topic and cell",
            )
            .field(format!("receipt_handles[{i}]"))
        })?;
        opened.push(o);
    }
    let mut span = if cellgate_telemetry::enabled() {
        let tps: Vec<Option<String>> = opened.iter().map(|o| o.traceparent.clone()).collect();
        let broadcast = opened.iter().any(|o| o.consumer_id.is_some());
        let ns = &c.tenant()?.namespace;
        otel::settle(&s.names(ns, broadcast), &inc.parent, &tps, ack)
    } else {
        cellgate_telemetry::Span::none()
    };
    let mut failed = Vec::new();
    let (now, kind) = (super::now_ms(), if ack { "ack" } else { "nack" });
    let mut hops = Vec::new();
    for (i, o) in opened.into_iter().enumerate() {
        let mode = match o.consumer_id {
            Some(id) => ConsumeMode::Broadcast { consumer_id: id },
            None => ConsumeMode::Clustering,
        };
        let res = if ack {
            s.broker.ack(&s.group, &s.topic, &mode, &o.receipt).await
        } else {
            s.broker.nack(&s.group, &s.topic, &mode, &o.receipt).await
        };
        match (res, o.message_id) {
            (Err(e), _) => failed.push((i, ApiError::from_broker(&e, "receipt_handles"))),
            (Ok(()), Some(id)) => hops.push(Hop::new(id, kind, now, s.cell_name, s.logical_group)),
            (Ok(()), None) => {}
        }
    }
    if app.trace_messages {
        s.broker.record_trace(hops);
    }
    let verb = if ack { "acked" } else { "nacked" };
    let done = r.receipt_handles.len() - failed.len();
    if !failed.is_empty() {
        span.error("settle_failed");
    }
    span.end();
    let Some((first, e)) = failed.first() else {
        return Ok(json(StatusCode::OK, &serde_json::json!({ verb: done })));
    };
    let mut body = e.clone().field(format!("receipt_handles[{first}]")).body();
    body["error"][verb] = done.into();
    body["error"]["failed"] = failed
        .iter()
        .map(|(i, e)| serde_json::json!({"index": i, "code": e.code, "message": e.message}))
        .collect();
    Ok(json(e.status, &body))
}

pub async fn reset(
    app: &App,
    c: &Caller<'_>,
    g: &str,
    t: &str,
    req: Request<Incoming>,
) -> ApiResult<Reply> {
    let s = sub(app, c, g, t, req.headers())?;
    let r: ResetRequest = body::json(req, SMALL_BODY, app.limits.body_timeout).await?;
    let mode = match r.consumer_id {
        Some(id) => consume_mode(Mode::Broadcast, Some(id))?,
        None => ConsumeMode::Clustering,
    };
    ensure_topic(app, &s).await?;
    s.broker
        .reset_to_time(&s.group, &s.topic, &mode, r.timestamp_ms)
        .await
        .map_err(|e| ApiError::from_broker(&e, "timestamp_ms"))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "group": s.logical_group, "topic": s.logical_topic, "cell": s.cell_name,
            "timestamp_ms": r.timestamp_ms,
        }),
    ))
}

pub async fn lag(
    app: &App,
    c: &Caller<'_>,
    g: &str,
    t: &str,
    req: &Request<Incoming>,
) -> ApiResult<Reply> {
    let s = sub(app, c, g, t, req.headers())?;
    let consumer = super::query_param(req, "consumer_id");
    let mode = match consumer {
        Some(id) => consume_mode(Mode::Broadcast, Some(id))?,
        None => ConsumeMode::Clustering,
    };
    let queues = match s.broker.lag(&s.group, &s.topic, &mode).await {
        Ok(q) => q,
        Err(BrokerError::UnknownTopic(_)) => Vec::new(),
        Err(e) => return Err(ApiError::from_broker(&e, "topic")),
    };
    let total: u64 = queues.iter().map(|q| q.lag).sum();
    let queues: Vec<_> = queues
        .iter()
        .map(|q| {
            serde_json::json!({
                "queue": q.queue, "committed": q.committed, "max": q.max,
                "lag": q.lag, "inflight": q.inflight,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "group": s.logical_group, "topic": s.logical_topic, "cell": s.cell_name,
            "lag": total, "queues": queues,
        }),
    ))
}
