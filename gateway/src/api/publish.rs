//! Publish: `POST /v1/topics/{topic}/messages` and `…/messages:batch`.
//!
//! A request is checked whole before anything is stored: a batch with one
//! bad message stores none and names the bad one (`messages[3].tag`).
//! Normal messages go to the broker at once (single ones through the
//! cell's combiner); delayed ones are held by the broker's timer and
//! transactional ones as half messages (see `message.rs`).

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use cellgate_broker_core::{Broker, Hop, PutResult};
use cellgate_rules::names::Resource;
use cellgate_rules::{CellId, Permission, UnitHeaders};

use super::message::{build, At, Built, Kind, PublishRequest, Target};
use super::{body, json, now_ms, otel, ApiError, ApiResult, App, Caller, Reply};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    messages: Vec<PublishRequest>,
}

/// The unit headers as the client sees them.
#[derive(Debug, Serialize)]
#[allow(non_snake_case)]
struct UnitView<'a> {
    ORIUNIT: &'a str,
    TARGET_G: &'a str,
    TARGET_C: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    TARGET_R: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Published<'a> {
    #[serde(serialize_with = "hyphenated")]
    message_id: uuid::Uuid,
    topic: &'a str,
    cell: &'a str,
    queue: u16,
    /// None while the message is held (delayed, or an open transaction):
    /// it gets its offset when it reaches the topic.
    offset: Option<u64>,
    stored_at_ms: i64,
    unit: UnitView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct BatchPublished<'a> {
    results: Vec<Published<'a>>,
}

fn published<'a>(t: &'a Target<'_>, h: &UnitHeaders, r: &PutResult, kind: &Kind) -> Published<'a> {
    let name = |c: CellId| t.rules.cell_name(c);
    Published {
        message_id: r.id,
        topic: t.logical,
        cell: name(t.cell),
        queue: r.queue,
        offset: (*kind == Kind::Normal).then_some(r.queue_offset),
        stored_at_ms: r.stored_ms,
        unit: UnitView {
            ORIUNIT: name(h.ori),
            TARGET_G: name(h.target_g),
            TARGET_C: name(h.target_c),
            TARGET_R: h.target_r.map(name),
        },
        deliver_at_ms: match kind {
            Kind::Delayed(at) => Some(*at),
            _ => None,
        },
        transaction_id: match kind {
            Kind::Transactional(_) => Some(r.id.to_string()),
            _ => None,
        },
    }
}

/// A message id as `Display` writes it (hyphenated, lower case), from a
/// stack buffer: no `String` per message, no formatting machinery.
fn hyphenated<S: serde::Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = uuid::Uuid::encode_buffer();
    s.serialize_str(id.hyphenated().encode_lower(&mut buf))
}

/// The publish and store hops of a stored message; `actor` is the token's
/// name.
fn hops(actor: &str, cell: &str, born: i64, r: &PutResult, kind: &Kind) -> [Hop; 2] {
    let publish = Hop::new(r.id, "publish", born, cell, actor);
    let store =
        Hop::new(r.id, "store", r.stored_ms, cell, "broker").with("queue", r.queue.to_string());
    let store = match kind {
        Kind::Normal => store.with("offset", r.queue_offset.to_string()),
        Kind::Delayed(at) => store.with("deliver_at_ms", at.to_string()),
        Kind::Transactional(g) => store.with("transaction", "half").with("producer_group", g),
    };
    [publish, store]
}

/// Stores a delayed or transactional message.
async fn send_held(
    c: &Caller<'_>,
    broker: &dyn Broker,
    t: &Target<'_>,
    b: Built,
) -> ApiResult<PutResult> {
    let r = match &b.kind {
        Kind::Delayed(at) => broker.schedule(b.msg, b.select, *at).await,
        Kind::Transactional(group) => {
            c.group(group)
                .map_err(|e| e.field("transaction.producer_group"))?;
            let physical = c.physical(t.cell, group, Resource::Group)?;
            broker.send_transactional(b.msg, b.select, &physical).await
        }
        Kind::Normal => broker.send(b.msg, b.select).await,
    };
    r.map_err(|e| ApiError::from_broker(&e, "deliver_at_ms"))
}

fn oneway(req: &Request<Incoming>) -> bool {
    super::query_param(req, "mode").as_deref() == Some("oneway")
}

/// `X-Load-Test: true` marks every message of the request (SPEC §7).
fn load_test_header(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("x-load-test")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
}

fn target<'r>(
    app: &App,
    c: &Caller<'r>,
    topic: &'r str,
    req: &Request<Incoming>,
) -> ApiResult<Target<'r>> {
    c.require(Permission::Publish)?;
    c.topic(topic)?;
    let cell = c.cell(req.headers(), app.default_cell.as_deref())?;
    let tenant = c.tenant()?;
    Ok(Target {
        rules: c.rules,
        tenant: c.tenant_id()?,
        cell,
        logical: topic,
        physical: c.physical(cell, topic, Resource::Topic)?,
        ordered: tenant.is_ordered(topic),
        load_test: load_test_header(req),
    })
}

/// JSON may escape every byte of a text body as `\u00XX`; allow for it.
fn request_limit(max_body: usize) -> usize {
    max_body.saturating_mul(6).saturating_add(64 * 1024)
}

pub async fn one(
    app: &App,
    c: &Caller<'_>,
    topic: &str,
    req: Request<Incoming>,
) -> ApiResult<Reply> {
    let t = target(app, c, topic, &req)?;
    let tenant = c.tenant()?;
    let max_body = usize::try_from(tenant.quotas.max_message_bytes).unwrap_or(usize::MAX);
    let oneway = oneway(&req);
    let inc = otel::incoming(req.headers());
    let parsed: PublishRequest =
        body::json(req, request_limit(max_body), app.limits.body_timeout).await?;
    let born = now_ms();
    let mut b = build(&t, parsed, At::Single, max_body, born)?;
    if oneway && matches!(b.kind, Kind::Transactional(_)) {
        return Err(ApiError::invalid(
            "transaction",
            "a transactional publish cannot be one-way: the answer carries the transaction id",
        ));
    }
    let cell_name = t.rules.cell_name(t.cell);
    app.quotas.take(tenant, 1)?;
    let bytes = b.msg.body.len() as u64;
    let mut send = otel::send(&t, &tenant.namespace, &inc, &b, 1);
    otel::stamp(&send, &inc, &mut b.msg.properties);
    let mut store = otel::store(&send, &t);
    if oneway {
        let broker = app.brokers.get(t.rules, t.cell)?;
        let metrics = app.metrics.clone();
        let (ns, cell) = (tenant.namespace.to_string(), cell_name.to_owned());
        let actor = app.trace_messages.then(|| c.grant.name.to_string());
        tokio::spawn(async move {
            let kind = b.kind;
            let r = match kind {
                Kind::Delayed(at) => broker.schedule(b.msg, b.select, at).await,
                _ => broker.send(b.msg, b.select).await,
            };
            match r {
                Ok(r) => {
                    otel::stored(&mut send, &mut store, &r, kind != Kind::Normal);
                    metrics.published(&ns, &cell, 1, bytes);
                    if let Some(actor) = actor {
                        broker.record_trace(hops(&actor, &cell, born, &r, &kind).into());
                    }
                }
                Err(e) => {
                    store.error("broker");
                    send.error("broker");
                    tracing::warn!(error = %e, "one-way publish failed")
                }
            }
        });
        return Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"accepted": true, "topic": topic, "cell": cell_name}),
        ));
    }
    // The combiner holds the cell's broker: a normal publish (the hot
    // path) looks up neither the broker map nor a second Arc.
    let combiner = app
        .combiners
        .get(cell_name, || app.brokers.get(t.rules, t.cell))?;
    let broker = combiner.broker();
    let (headers, kind) = (b.headers, b.kind.clone());
    let r = if kind == Kind::Normal {
        combiner.send(b.msg, b.select).await
    } else {
        send_held(c, &**broker, &t, b).await
    };
    let r = r.inspect_err(|e| {
        store.error(e.code);
        send.error(e.code);
    })?;
    otel::stored(&mut send, &mut store, &r, kind != Kind::Normal);
    store.end();
    app.metrics
        .published(&tenant.namespace, cell_name, 1, bytes);
    if app.trace_messages {
        broker.record_trace(hops(&c.grant.name, cell_name, born, &r, &kind).into());
    }
    Ok(json(StatusCode::OK, &published(&t, &headers, &r, &kind)))
}

pub async fn batch(
    app: &App,
    c: &Caller<'_>,
    topic: &str,
    req: Request<Incoming>,
) -> ApiResult<Reply> {
    let t = target(app, c, topic, &req)?;
    let tenant = c.tenant()?;
    let max_body = usize::try_from(tenant.quotas.max_message_bytes).unwrap_or(usize::MAX);
    let inc = otel::incoming(req.headers());
    let limit = app.limits.max_batch_request_bytes;
    let parsed: BatchRequest = body::json(req, limit, app.limits.body_timeout).await?;
    let n = parsed.messages.len();
    if n == 0 || n > app.limits.max_batch_messages {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "must hold 1 to {} messages, got {n}",
                app.limits.max_batch_messages
            ),
        ));
    }
    let mut built = Vec::with_capacity(n);
    let mut bytes = 0u64;
    // One clock read per request: a batch's messages are born together.
    let born = now_ms();
    for (i, m) in parsed.messages.into_iter().enumerate() {
        let b = build(&t, m, At::Batch(i), max_body, born)?;
        bytes += b.msg.body.len() as u64;
        built.push(b);
    }
    let broker = app.brokers.get(t.rules, t.cell)?;
    app.quotas.take(tenant, n as u32)?;
    // One send span for the request: its context is every message's
    // creation context.
    let mut send = match built.first() {
        Some(first) => otel::send(&t, &tenant.namespace, &inc, first, n),
        None => cellgate_telemetry::Span::none(),
    };
    for b in &mut built {
        otel::stamp(&send, &inc, &mut b.msg.properties);
    }
    let mut store = otel::store(&send, &t);
    let mut headers = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let results = if built.iter().all(|b| b.kind == Kind::Normal) {
        let msgs = built
            .into_iter()
            .map(|b| {
                headers.push(b.headers);
                kinds.push(b.kind);
                (b.msg, b.select)
            })
            .collect();
        broker
            .send_batch(msgs)
            .await
            .map_err(|e| ApiError::from_broker(&e, "messages"))
    } else {
        // Held messages are stored one by one, in order.
        let mut out = Vec::with_capacity(n);
        let mut failed = None;
        for b in built {
            headers.push(b.headers);
            kinds.push(b.kind.clone());
            match send_held(c, &*broker, &t, b).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        failed.map_or(Ok(out), Err)
    };
    let results = results.inspect_err(|e| {
        store.error(e.code);
        send.error(e.code);
    })?;
    if let [r] = results.as_slice() {
        otel::stored(
            &mut send,
            &mut store,
            r,
            kinds.first() != Some(&Kind::Normal),
        );
    }
    store.end();
    let cell_name = t.rules.cell_name(t.cell);
    app.metrics
        .published(&tenant.namespace, cell_name, n as u64, bytes);
    if app.trace_messages {
        let hops = results
            .iter()
            .zip(&kinds)
            .flat_map(|(r, k)| hops(&c.grant.name, cell_name, born, r, k))
            .collect();
        broker.record_trace(hops);
    }
    let results: Vec<Published<'_>> = results
        .iter()
        .zip(headers.iter().zip(&kinds))
        .map(|(r, (h, k))| published(&t, h, r, k))
        .collect();
    // Serialised straight from the structs: no `serde_json::Value` tree.
    Ok(json(StatusCode::OK, &BatchPublished { results }))
}
