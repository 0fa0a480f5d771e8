//! Publish: `POST /v1/topics/{topic}/messages` and `…/messages:batch`.
//!
//! A request is checked whole before anything is stored: a batch with one
//! bad message stores none and names the bad one (`messages[3].tag`).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use cellgate_broker_core::{Message, PutResult, QueueSelect};
use cellgate_rules::names::Resource;
use cellgate_rules::{CellId, Permission, RuleSet, TenantId, UnitHeaders};

use super::{body, json, ApiError, ApiResult, App, Caller, Reply};
use crate::validate;

/// One message to publish (SPEC §9).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub body: Option<String>,
    pub body_base64: Option<String>,
    pub tag: Option<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    pub uid: Option<String>,
    pub sharding_key: Option<String>,
    pub delay_ms: Option<u64>,
    pub deliver_at_ms: Option<i64>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub transaction: Option<TransactionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionRequest {
    pub producer_group: String,
}

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
    offset: u64,
    stored_at_ms: i64,
    unit: UnitView<'a>,
}

#[derive(Debug, Serialize)]
struct BatchPublished<'a> {
    results: Vec<Published<'a>>,
}

/// Where a publish goes, resolved once per request.
struct Target<'r> {
    rules: &'r RuleSet,
    tenant: TenantId,
    cell: CellId,
    logical: &'r str,
    physical: String,
}

fn published<'a>(t: &'a Target<'_>, h: &UnitHeaders, r: &PutResult) -> Published<'a> {
    let name = |c: CellId| t.rules.cell_name(c);
    Published {
        message_id: r.id,
        topic: t.logical,
        cell: name(t.cell),
        queue: r.queue,
        offset: r.queue_offset,
        stored_at_ms: r.stored_ms,
        unit: UnitView {
            ORIUNIT: name(h.ori),
            TARGET_G: name(h.target_g),
            TARGET_C: name(h.target_c),
            TARGET_R: h.target_r.map(name),
        },
    }
}

/// A message id as `Display` writes it (hyphenated, lower case), from a
/// stack buffer: no `String` per message, no formatting machinery.
fn hyphenated<S: serde::Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = uuid::Uuid::encode_buffer();
    s.serialize_str(id.hyphenated().encode_lower(&mut buf))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a message sits in its request: field names get a `messages[3].`
/// prefix in a batch. Formatted only when an error names a field, so a
/// valid message costs no string.
#[derive(Debug, Clone, Copy)]
enum At {
    Single,
    Batch(usize),
}

impl At {
    fn field(self, name: &str) -> String {
        match self {
            At::Single => name.to_owned(),
            At::Batch(i) => format!("messages[{i}].{name}"),
        }
    }
}

/// Checks one request and builds the message to store, for `topic` (the
/// target's physical name: a single publish moves it in, a batch clones it
/// per message).
fn build(
    t: &Target<'_>,
    topic: String,
    req: PublishRequest,
    at: At,
    max_body: usize,
    born_ms: i64,
) -> ApiResult<(Message, QueueSelect, UnitHeaders)> {
    let f = |name: &str| at.field(name);
    if req.delay_ms.is_some() && req.deliver_at_ms.is_some() {
        return Err(ApiError::invalid(
            f("deliver_at_ms"),
            "give delay_ms or deliver_at_ms, not both",
        ));
    }
    if let Some(tx) = &req.transaction {
        cellgate_rules::names::validate(cellgate_rules::NameKind::Group, &tx.producer_group)
            .map_err(|e| {
                ApiError::invalid(f("transaction.producer_group"), format!("group name {e}"))
            })?;
    }
    if req.delay_ms.is_some() || req.deliver_at_ms.is_some() || req.transaction.is_some() {
        let field = if req.transaction.is_some() {
            "transaction"
        } else if req.delay_ms.is_some() {
            "delay_ms"
        } else {
            "deliver_at_ms"
        };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported",
            "delayed and transactional messages are not available in this version of the gateway",
        )
        .field(f(field)));
    }
    let body = match (req.body, req.body_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                f("body_base64"),
                "give body or body_base64, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                f("body"),
                "one of body or body_base64 is required",
            ))
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(b)) => B64.decode(b.as_bytes()).map_err(|e| {
            ApiError::invalid(f("body_base64"), format!("is not valid base64: {e}"))
        })?,
    };
    if body.is_empty() {
        return Err(ApiError::invalid(f("body"), "must not be empty"));
    }
    if body.len() > max_body {
        return Err(ApiError::too_large(
            f("body"),
            format!(
                "the message body is {} bytes, over the tenant's limit of {max_body}",
                body.len()
            ),
        ));
    }
    if let Some(tag) = &req.tag {
        validate::tag(tag).map_err(|m| ApiError::invalid(f("tag"), m))?;
    }
    validate::keys(&req.keys).map_err(|(i, m)| ApiError::invalid(f(&format!("keys[{i}]")), m))?;
    validate::properties(&req.properties).map_err(|(k, m)| ApiError::invalid(f(&k), m))?;
    let select = match req.sharding_key {
        Some(k) => {
            validate::sharding_key(&k).map_err(|m| ApiError::invalid(f("sharding_key"), m))?;
            QueueSelect::ShardingKey(k)
        }
        None => QueueSelect::RoundRobin,
    };
    if let Some(uid) = &req.uid {
        validate::printable(uid).map_err(|m| ApiError::invalid(f("uid"), m))?;
    }
    let headers = t
        .rules
        .unit_headers(t.tenant, t.cell, req.uid.as_deref())
        .map_err(|e| ApiError::invalid(f("uid"), format!("uid {e}")))?;
    let mut properties = req.properties;
    headers.write(t.rules, |k, v| {
        properties.insert(k.to_owned(), v.to_owned());
    });
    if let QueueSelect::ShardingKey(k) = &select {
        properties.insert(cellgate_rules::SHARDING_KEY.to_owned(), k.clone());
    }
    let msg = Message {
        topic,
        body,
        tag: req.tag,
        keys: req.keys,
        properties,
        born_ms,
    };
    Ok((msg, select, headers))
}

fn oneway(req: &Request<Incoming>) -> bool {
    super::query_param(req, "mode").as_deref() == Some("oneway")
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
    Ok(Target {
        rules: c.rules,
        tenant: c.tenant_id()?,
        cell,
        logical: topic,
        physical: c.physical(cell, topic, Resource::Topic)?,
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
    let mut t = target(app, c, topic, &req)?;
    let tenant = c.tenant()?;
    let max_body = usize::try_from(tenant.quotas.max_message_bytes).unwrap_or(usize::MAX);
    let oneway = oneway(&req);
    let parsed: PublishRequest =
        body::json(req, request_limit(max_body), app.limits.body_timeout).await?;
    let physical = std::mem::take(&mut t.physical);
    let (msg, select, headers) = build(&t, physical, parsed, At::Single, max_body, now_ms())?;
    let cell_name = t.rules.cell_name(t.cell);
    app.quotas.take(tenant, 1)?;
    let bytes = msg.body.len() as u64;
    if oneway {
        let broker = app.brokers.get(t.rules, t.cell)?;
        let metrics = app.metrics.clone();
        let (ns, cell) = (tenant.namespace.to_string(), cell_name.to_owned());
        tokio::spawn(async move {
            match broker.send(msg, select).await {
                Ok(_) => metrics.published(&ns, &cell, 1, bytes),
                Err(e) => tracing::warn!(error = %e, "one-way publish failed"),
            }
        });
        return Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"accepted": true, "topic": topic, "cell": cell_name}),
        ));
    }
    let combiner = app
        .combiners
        .get(cell_name, || app.brokers.get(t.rules, t.cell))?;
    let r = combiner.send(msg, select).await?;
    app.metrics
        .published(&tenant.namespace, cell_name, 1, bytes);
    Ok(json(StatusCode::OK, &published(&t, &headers, &r)))
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
    let mut msgs = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut bytes = 0u64;
    // One clock read per request: a batch's messages are born together.
    let born_ms = now_ms();
    for (i, m) in parsed.messages.into_iter().enumerate() {
        let (msg, select, h) = build(&t, t.physical.clone(), m, At::Batch(i), max_body, born_ms)?;
        bytes += msg.body.len() as u64;
        msgs.push((msg, select));
        headers.push(h);
    }
    let broker = app.brokers.get(t.rules, t.cell)?;
    app.quotas.take(tenant, n as u32)?;
    let results = broker
        .send_batch(msgs)
        .await
        .map_err(|e| ApiError::from_broker(&e, "messages"))?;
    let cell_name = t.rules.cell_name(t.cell);
    app.metrics
        .published(&tenant.namespace, cell_name, n as u64, bytes);
    let results: Vec<Published<'_>> = results
        .iter()
        .zip(&headers)
        .map(|(r, h)| published(&t, h, r))
        .collect();
    // Serialised straight from the structs: no `serde_json::Value` tree.
    Ok(json(StatusCode::OK, &BatchPublished { results }))
}
